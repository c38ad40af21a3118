"""A model and its external data file are written as a pair: the data file under a freshly claimed name
first, the model last, old data files removed only when no other model in the folder reads them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_helpers import conv_bn_model, invoke, save_external

import normfold
from normfold import atomic_write


def _locations(path: Path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


def _run(path: Path) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_save_model_with_its_defaults_keeps_external_tensors_external(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    save_external(conv_bn_model(), source)
    target = tmp_path / "out.onnx"
    normfold.save_model(normfold.load_model(source), target)
    onnx.checker.check_model(str(target), full_check=True)
    assert _locations(target) == {"out.onnx.data"}
    np.testing.assert_array_equal(_run(target), _run(source))


def test_in_place_keeps_a_data_file_another_model_shares(tmp_path: Path) -> None:
    source, sibling = tmp_path / "m.onnx", tmp_path / "sibling.onnx"
    save_external(conv_bn_model(), source)
    save_external(conv_bn_model(), sibling)  # the same w.data, written again: both models read it
    expected = _run(sibling)
    assert invoke("fold", source, "--in-place", "--provider", "cpu").exit_code == 0
    assert (tmp_path / "w.data").exists()
    np.testing.assert_array_equal(_run(sibling), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data", "sibling.onnx", "w.data"]


def test_in_place_removes_a_data_file_nothing_else_reads(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    save_external(conv_bn_model(), source)
    assert invoke("fold", source, "--in-place", "--provider", "cpu").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_writing_over_an_output_claims_a_fresh_data_file_and_drops_the_old(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    save_external(conv_bn_model(), source)
    target = tmp_path / "out.onnx"
    names = []
    for _ in range(3):
        assert invoke("fold", source, "-o", target, "--provider", "cpu").exit_code == 0
        names.append(_locations(target))
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", "w.data", "out.onnx", *names[-1]])
    assert names == [{"out.onnx.data"}, {"out.onnx.1.data"}, {"out.onnx.data"}]


def test_a_crash_between_the_two_renames_leaves_the_old_pair_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "m.onnx"
    save_external(conv_bn_model(), source)
    target = tmp_path / "out.onnx"
    assert invoke("fold", source, "-o", target, "--provider", "cpu").exit_code == 0
    before = _run(target)
    other = conv_bn_model()
    weight = other.graph.initializer[0]
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 2, weight.name))
    model = normfold.fold(other).model  # another model's fold, whose data must not end up beside the old model
    real_replace = os.replace

    def crash_on_the_model(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst) == target:
            raise KeyboardInterrupt  # the process dies after the data file's rename, before the model's
        real_replace(src, dst)

    monkeypatch.setattr(atomic_write.os, "replace", crash_on_the_model)
    with pytest.raises(KeyboardInterrupt):
        atomic_write.save_model(model, target, external_data=True)
    monkeypatch.undo()
    onnx.checker.check_model(str(target), full_check=True)
    assert _locations(target) == {"out.onnx.data"}
    np.testing.assert_array_equal(_run(target), before)

"""`normfold fold` on models with external data: the output keeps its own data file, and missing,
escaping, linked or truncated data files are refused in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import (
    MODELS,
    RESNET_LINES,
    RESNET_SUMMARY,
    assert_equivalent_fold,
    assert_one_line_error,
    data_locations,
    fold_lines,
    invoke,
    save_external,
    set_data_location,
    snapshot,
    temp_leftovers,
)
from onnx import numpy_helper


@pytest.mark.parametrize("cwd", ["model_folder", "elsewhere"])
def test_external_data_folds_and_stays_external(
    external_model: Path, cwd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model with external data folds; the output keeps its tensors in `OUT.data` beside OUT."""
    folder = external_model.parent
    monkeypatch.chdir(folder if cwd == "model_folder" else tmp_path)
    before = snapshot(folder)
    target = folder / "out.onnx"
    result = invoke("fold", external_model, "-o", target)
    assert result.exit_code == 0, result.output
    assert fold_lines(result.stdout) == [*RESNET_LINES, RESNET_SUMMARY, f"wrote {target}"]
    assert (folder / "out.onnx.data").is_file()
    assert data_locations(target) == {"out.onnx.data"}
    after = snapshot(folder)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {"out.onnx", "out.onnx.data"}
    assert temp_leftovers(folder) == []
    assert_equivalent_fold(MODELS / "resnet_block.onnx", target)


def test_output_data_file_does_not_clobber_input_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fold a.onnx -o b.onnx` where a.onnx keeps its tensors in `b.onnx.data` folds, writing `b.onnx.1.data`."""
    monkeypatch.chdir(tmp_path)
    source, target = tmp_path / "a.onnx", tmp_path / "b.onnx"
    original = onnx.load(str(MODELS / "resnet_block.onnx"))
    save_external(original, source, location="b.onnx.data")
    before = snapshot(tmp_path)
    result = invoke("fold", source, "-o", target)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert fold_lines(result.stdout) == [*RESNET_LINES, RESNET_SUMMARY, f"wrote {target}"]
    assert data_locations(target) == {"b.onnx.1.data"}
    after = snapshot(tmp_path)
    assert {name: after[name] for name in before} == before
    assert set(after) - set(before) == {"b.onnx", "b.onnx.1.data"}
    assert_equivalent_fold(source, target)
    reloaded = onnx.load(str(source))
    for expected, actual in zip(original.graph.initializer, reloaded.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(actual), numpy_helper.to_array(expected))


def test_external_data_missing(external_model: Path) -> None:
    """Deleting the data file: one line naming the file and a tensor, exit 3, nothing written."""
    folder = external_model.parent
    (folder / "w.data").unlink()
    before = snapshot(folder)
    result = invoke("fold", external_model)
    assert_one_line_error(
        result, f"{external_model}: external data file 'w.data' of tensor 'conv_w1' is missing", exit_code=3
    )
    assert snapshot(folder) == before


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_external_data_outside_the_folder(external_model: Path, where: str) -> None:
    """`../outside.data` and absolute locations are refused before anything is read."""
    folder = external_model.parent
    outside = folder.parent / "outside.data"
    shutil.copyfile(folder / "w.data", outside)
    location = "../outside.data" if where == "parent" else str(outside)
    path = folder / "escaping.onnx"
    set_data_location(external_model, path, location)
    before = snapshot(folder.parent)
    result = invoke("fold", path)
    assert_one_line_error(
        result, f"{path}: tensor 'conv_w1' points outside the model's folder for its data ('{location}')", exit_code=3
    )
    assert "outside the model's folder" in result.stderr
    assert snapshot(folder.parent) == before


def test_external_data_symlink_escaping_the_folder(external_model: Path) -> None:
    """A symlink inside the folder that points at a file outside it is refused like `../`."""
    folder = external_model.parent
    outside = folder.parent / "outside.data"
    shutil.copyfile(folder / "w.data", outside)
    (folder / "link.data").symlink_to(Path("..") / "outside.data")
    path = folder / "linked.onnx"
    set_data_location(external_model, path, "link.data")
    before = snapshot(folder.parent)
    result = invoke("fold", path)
    assert_one_line_error(
        result, f"{path}: tensor 'conv_w1' points outside the model's folder for its data ('link.data')", exit_code=3
    )
    assert snapshot(folder.parent) == before


def test_external_data_symlink_inside_the_folder(external_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A symlink that stays inside the folder is refused by onnx's checker, as one line naming it; nothing written."""
    folder = external_model.parent
    monkeypatch.chdir(folder)
    (folder / "link.data").symlink_to("w.data")
    path = folder / "linked.onnx"
    set_data_location(external_model, path, "link.data")
    before = snapshot(folder)
    result = invoke("fold", path, "-o", folder / "out.onnx")
    assert_one_line_error(
        result,
        f"{path}: invalid ONNX model: Data of TensorProto ( tensor name: conv_w1) should be stored in "
        f"{folder / 'link.data'}, but it is a symbolic link.",
        exit_code=3,
    )
    assert snapshot(folder) == before


def test_truncated_external_data_without_length_is_one_line(tmp_path: Path) -> None:
    """A data file shorter than its tensors, with no `length` entries, is refused naming the file and tensor."""
    source = tmp_path / "m.onnx"
    save_external(onnx.load(str(MODELS / "resnet_block.onnx")), source, location="w.data")
    model = onnx.load(str(source), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in list(tensor.external_data):
            if entry.key == "length":
                tensor.external_data.remove(entry)
    onnx.save(model, str(source))
    with open(tmp_path / "w.data", "r+b") as handle:
        handle.truncate(1000)
    result = invoke("fold", source)
    assert_one_line_error(
        result, f"{source}: external data file 'w.data' is too short for tensor 'conv_w1'", exit_code=3
    )

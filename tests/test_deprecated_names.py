"""Renamed options: `mc --passes` (was --samples), one `--momentum` with ONNX's meaning (was also --alpha).

The old names still work, hidden from --help, each with one `normfold: warning: ...` line on stderr.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import invoke
from graphs import bn_node, bn_params, make_model, rng
from onnx import helper, numpy_helper


def _dropout_model(folder: Path) -> Path:
    """x -> Dropout(0.3) -> MatMul: something for `normfold mc` to sample."""
    w = np.random.default_rng(1).normal(0, 1, (8, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Dropout", ["x", "ratio"], ["d"], name="drop"),
        helper.make_node("MatMul", ["d", "w"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.3, np.float32), "ratio")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    path = folder / "drop.onnx"
    onnx.save(model, path)
    return path


def _bn_model(folder: Path) -> dict[str, Path]:
    """One BatchNormalization over 3 channels and three calibration batches for it."""
    model = make_model([bn_node("x", "y", "bn")], {"x": ["N", 3, 4, 4]}, ["y"], bn_params("bn", 3, rng(1)), opset=15)
    onnx.save(model, folder / "bn.onnx")
    np.savez(folder / "calib.npz", x=rng(2).standard_normal((3, 2, 3, 4, 4)).astype(np.float32))
    return {"model": folder / "bn.onnx", "data": folder / "calib.npz"}


def _training_momentum(path: Path) -> float:
    """The momentum of the training branch of the first BN that `mode --train` wrote."""
    switch = onnx.load(path).graph.node[0]
    train_bn = next(a.g for a in switch.attribute if a.name == "then_branch").node[0]
    return next(a.f for a in train_bn.attribute if a.name == "momentum")


def test_mc_passes_is_the_option_and_samples_still_works(tmp_path: Path) -> None:
    model = _dropout_model(tmp_path)
    new = invoke("mc", model, "--provider", "cpu", "--passes", "5", "-o", tmp_path / "new.npz")
    assert new.exit_code == 0, new.output
    assert new.stderr == ""
    assert new.stdout.splitlines()[0] == "5 passes on cpu, Dropout active in 1 node(s): drop"
    old = invoke("mc", model, "--provider", "cpu", "--samples", "5", "-o", tmp_path / "old.npz")
    assert old.exit_code == 0, old.output
    assert old.stderr == "normfold: warning: --samples is deprecated for mc; use --passes 5\n"
    assert old.stdout.splitlines()[0] == new.stdout.splitlines()[0]
    with np.load(tmp_path / "new.npz") as a, np.load(tmp_path / "old.npz") as b:
        np.testing.assert_array_equal(a["y_std"], b["y_std"])


def test_mc_refuses_both_names(tmp_path: Path) -> None:
    result = invoke("mc", _dropout_model(tmp_path), "--provider", "cpu", "--passes", "5", "--samples", "6")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        "normfold: error: --samples is deprecated and --passes replaces it; give --passes only"
    )


@pytest.mark.parametrize(
    ("command", "shown", "hidden"),
    [("mc", "--passes", "--samples"), ("mode", "--momentum", "--alpha"), ("calibrate", "--momentum", "--alpha")],
)
def test_help_lists_only_the_new_name(command: str, shown: str, hidden: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert shown in result.stdout and hidden not in result.stdout


def test_mode_alpha_warns_with_the_momentum_to_give(tmp_path: Path) -> None:
    files = _bn_model(tmp_path)
    old = invoke("mode", files["model"], "--train", "--alpha", "0.25", "-o", tmp_path / "old.onnx")
    assert old.exit_code == 0, old.output
    assert old.stderr == (
        "normfold: warning: --alpha is deprecated for mode; use --momentum 0.75 (ONNX's momentum, "
        "the weight of the old running statistic: 1 - alpha)\n"
    )
    new = invoke("mode", files["model"], "--train", "--momentum", "0.75", "-o", tmp_path / "new.onnx")
    assert new.exit_code == 0 and new.stderr == ""
    assert _training_momentum(tmp_path / "old.onnx") == _training_momentum(tmp_path / "new.onnx") == pytest.approx(0.75)


def test_calibrate_alpha_warns_and_gives_the_same_statistics(tmp_path: Path) -> None:
    files = _bn_model(tmp_path)
    base = ["calibrate", files["model"], "--data", files["data"], "--method", "running", "--provider", "cpu"]
    old = invoke(*base, "--alpha", "0.5", "-o", tmp_path / "old.onnx")
    assert old.exit_code == 0, old.output
    assert old.stderr.splitlines()[0] == (
        "normfold: warning: --alpha is deprecated for calibrate; use --momentum 0.5 "
        "(ONNX's momentum, the weight of the old running statistic: 1 - alpha)"
    )
    new = invoke(*base, "--momentum", "0.5", "-o", tmp_path / "new.onnx")
    assert new.exit_code == 0, new.output
    assert "deprecated" not in new.stderr
    assert onnx.load(tmp_path / "old.onnx") == onnx.load(tmp_path / "new.onnx")
    both = invoke(*base, "--alpha", "0.5", "--momentum", "0.5")
    assert both.exit_code == 2
    assert both.stderr.splitlines()[-1] == (
        "normfold: error: --alpha is deprecated and --momentum replaces it; give --momentum only"
    )


@pytest.mark.parametrize("command", ["mc", "mode", "calibrate"])
def test_help_speaks_the_field_s_words(command: str) -> None:
    """No references to design notes ("seed 2.2", "PyTorch/seed momentum"); --seed, the RNG seed, is fine."""
    text = " ".join(invoke(command, "--help").stdout.split())
    assert not re.search(r"seed [0-9]|seed's|/seed|\bissue\b", text), text

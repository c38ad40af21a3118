"""Errors stay one line and outputs never damage anything: onnx_ir's warnings about an invalid input are
held back, output names must mean binary ONNX, and an output's data file never replaces the input's."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from graphs import bn_node, bn_params, make_model, rng
from onnx import helper

from normfold.cli import main
from normfold.model_reading import _HeldLogs

NORMFOLD = shutil.which("normfold")


def _conv_bn() -> onnx.ModelProto:
    g = rng(4)
    inits = {"w": g.normal(0, 0.5, (16, 3, 3, 3)).astype(np.float32), **bn_params("bn", 16, g)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), bn_node("y", "z", "bn")]
    return make_model(nodes, {"x": [1, 3, 6, 6]}, ["z"], inits)


@pytest.mark.skipif(NORMFOLD is None, reason="the normfold console script is not installed")
def test_invalid_model_error_is_one_line_without_onnx_ir_deserialization_warning(tmp_path: Path) -> None:
    """load_model deserializes beside the checker; onnx_ir's own warning about the invalid model ('Input
    'ghost' of node 'add' ... cannot be found in any scope ...') must not precede normfold's one line."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "ghost"], ["y"], name="add")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "ghost.onnx"))
    done = subprocess.run(
        [NORMFOLD, "fold", str(tmp_path / "ghost.onnx"), "--no-validate"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3
    assert done.stderr.splitlines() == [
        line for line in done.stderr.splitlines() if line.startswith("normfold: error: ")
    ]
    assert len(done.stderr.splitlines()) == 1, done.stderr


@pytest.mark.parametrize("suffix", ["json", "textproto"])
def test_output_named_for_a_text_format_is_readable_or_refused(tmp_path: Path, suffix: str) -> None:
    """normfold writes binary protobuf; onnx.load picks the format from the name, so a text-format name
    is refused before anything is written."""
    onnx.save(_conv_bn(), str(tmp_path / "m.onnx"))
    target = tmp_path / f"out.{suffix}"
    result = CliRunner().invoke(main, ["fold", str(tmp_path / "m.onnx"), "-o", str(target), "--no-validate"])
    if result.exit_code == 0:
        onnx.load(str(target))  # written: it must be readable as what its name says
    else:
        assert not target.exists()


def test_fold_never_overwrites_the_inputs_external_data_file(tmp_path: Path) -> None:
    """The input's data file is named `<output>.data`; every tensor in it is folded away, and still the
    output's data must go to another name."""
    onnx.save(
        _conv_bn(), str(tmp_path / "a.onnx"), save_as_external_data=True, location="b.onnx.data", size_threshold=0
    )
    before = hashlib.sha256((tmp_path / "b.onnx.data").read_bytes()).hexdigest()
    result = CliRunner().invoke(main, ["fold", str(tmp_path / "a.onnx"), "-o", str(tmp_path / "b.onnx")])
    assert result.exit_code == 0, result.output
    assert (
        onnx.load(str(tmp_path / "b.onnx"), load_external_data=False).graph.initializer[0].external_data[0].value
        == "b.onnx.1.data"
    )
    assert hashlib.sha256((tmp_path / "b.onnx.data").read_bytes()).hexdigest() == before
    onnx.checker.check_model(str(tmp_path / "a.onnx"), full_check=True)
    onnx.load(str(tmp_path / "a.onnx"))  # its external data still fits


def test_held_onnx_ir_warnings_are_passed_on_for_a_valid_model_and_dropped_otherwise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("onnx_ir.serde")
    with caplog.at_level(logging.WARNING):
        with _HeldLogs("onnx_ir") as held:
            logger.warning("kept %s", 1)
            assert caplog.messages == []
            held.pass_on()
        with _HeldLogs("onnx_ir"):
            logger.warning("dropped")
        logger.warning("after")
    assert caplog.messages == ["kept 1", "after"]
    assert logging.getLogger("onnx_ir").propagate


def test_text_format_output_is_refused_with_its_reason(tmp_path: Path) -> None:
    onnx.save(_conv_bn(), str(tmp_path / "m.onnx"))
    result = CliRunner().invoke(main, ["fold", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.json")])
    assert result.exit_code == 2
    assert result.stderr == (
        f"normfold: error: {tmp_path / 'out.json'}: onnx reads a '.json' file as json, but "
        "normfold writes binary ONNX; name the output .onnx\n"
    )
    assert not (tmp_path / "out.json").exists()

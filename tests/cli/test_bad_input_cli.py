"""Unusable input to `normfold fold`: one exact line on stderr, exit 3 (2 for an empty folder), nothing
written."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from cli_helpers import (
    MODELS,
    assert_equivalent_fold,
    assert_one_line_error,
    build_model,
    conv_bn_model,
    invoke,
    run_script,
    snapshot,
    temp_leftovers,
)
from onnx import helper


def _bad_input(folder: Path, kind: str) -> tuple[Path, str]:
    """Create a bad input of the given kind in `folder`; returns its path and the expected message."""
    path = folder / f"{kind}.onnx"
    if kind == "missing":
        return path, f"{path}: no such file"
    if kind == "directory":
        path.mkdir()
        return path, "no .onnx files in the given folders"
    if kind == "empty":
        path.write_bytes(b"")
        return path, f"{path}: empty file, not an ONNX model"
    corrupt = "not a readable ONNX model (Error parsing message with type 'onnx.ModelProto': Wire format was corrupt)"
    if kind == "truncated":
        data = (MODELS / "resnet_block.onnx").read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, f"{path}: {corrupt}"
    if kind == "text":
        path.write_text("hello, I am a text file\n")
        return path, f"{path}: {corrupt}"
    if kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(64)))
        return path, f"{path}: {corrupt}"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "truncated", "text", "png"])
def test_unreadable_input(tmp_path: Path, kind: str) -> None:
    """Missing, empty, truncated and non-ONNX inputs: exact one-line error, exit 3, no files (an empty folder: 2)."""
    path, message = _bad_input(tmp_path, kind)
    before = snapshot(tmp_path)
    result = invoke("fold", path)
    assert_one_line_error(result, message, exit_code=2 if kind == "directory" else 3)
    assert snapshot(tmp_path) == before
    assert temp_leftovers(tmp_path) == []


def test_unreadable_input_in_a_real_process(tmp_path: Path) -> None:
    """The installed script prints no traceback either."""
    path, message = _bad_input(tmp_path, "truncated")
    process = run_script("fold", path.name, cwd=tmp_path)
    assert process.returncode == 3
    assert process.stdout == ""
    assert process.stderr == f"normfold: error: {message.replace(str(path), path.name)}\n"


def test_inconsistent_batchnorm_parameters(tmp_path: Path) -> None:
    """A BN whose mean has 4 values while the others have 8 is named, with every shape."""
    path = tmp_path / "bad_bn.onnx"
    onnx.save(conv_bn_model(mean_channels=4), str(path))
    before = snapshot(tmp_path)
    result = invoke("fold", path)
    assert_one_line_error(
        result,
        "BatchNormalization 'bn' has inconsistent parameter shapes: scale [8], B [8], mean [4], var [8]",
        exit_code=3,
    )
    assert snapshot(tmp_path) == before


def test_consistent_batchnorm_control(tmp_path: Path) -> None:
    """The same model with consistent parameters folds (so the previous test's failure is the shapes)."""
    path = tmp_path / "good_bn.onnx"
    onnx.save(conv_bn_model(mean_channels=8), str(path))
    result = invoke("fold", path)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "FOLDED   BatchNormalization 'bn': into Conv 'conv' (backward)"
    assert_equivalent_fold(path, tmp_path / "good_bn.folded.onnx")


def test_undefined_value_is_an_invalid_graph(tmp_path: Path) -> None:
    """A node consuming a value nothing defines is rejected by the checker, as one line."""
    path = tmp_path / "undefined.onnx"
    onnx.save(build_model([helper.make_node("Relu", ["nope"], ["y"], name="relu")], {}, check=False), str(path))
    before = snapshot(tmp_path)
    result = invoke("fold", path)
    message = result.stderr.removeprefix("normfold: error: ").rstrip("\n")
    assert message.startswith(f"{path}: invalid ONNX model: ")
    assert "'nope'" in message
    assert_one_line_error(result, message, exit_code=3)
    assert snapshot(tmp_path) == before

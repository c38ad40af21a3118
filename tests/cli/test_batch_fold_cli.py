"""`normfold fold` on several models: one line each, a summary, the worst exit code; one failure never
stops the others."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import MODELS, assert_one_line_error, invoke


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_batch_fold_of_a_folder(tmp_path: Path, jobs: str) -> None:
    """A folder with a broken model: FAILED and FOLDED lines, the summary, exit 3; -o with a folder is refused."""
    for name in ("resnet_block.onnx", "mlp.onnx"):
        shutil.copy(MODELS / name, tmp_path / name)
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    result = invoke("fold", tmp_path, "-j", jobs, "--provider", "cpu")
    assert result.exit_code == 3, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 100 for line in lines), result.stdout
    assert lines[0].startswith("FAILED    ") and "broken.onnx: not a readable ONNX model (Error parsing" in lines[0]
    assert (
        lines[1].startswith("FOLDED    ") and lines[1].endswith("mlp.folded.onnx") and ": validated, wrote " in lines[1]
    )
    assert lines[2].startswith("FOLDED    ") and lines[2].endswith("resnet_block.folded.onnx")
    assert lines[-1] == "2 of 3 model(s) folded and written"
    assert (tmp_path / "mlp.folded.onnx").is_file() and (tmp_path / "resnet_block.folded.onnx").is_file()
    lines = invoke("fold", tmp_path, "-j", jobs, "--provider", "cpu", "-v").stdout.splitlines()
    assert (
        lines[0] == f"FAILED    {tmp_path / 'broken.onnx'}: {tmp_path / 'broken.onnx'}: not a readable ONNX model "
        "(Error parsing message with type 'onnx.ModelProto': Wire format was corrupt)"
    )
    assert lines[1].startswith(
        f"FOLDED    {tmp_path / 'mlp.onnx'}: BatchNormalization folded 2/2, Dropout stripped 2/2"
    )
    assert lines[2].startswith(f"FOLDED    {tmp_path / 'resnet_block.onnx'}: BatchNormalization folded 6/6")
    assert lines[-1] == "2 of 3 model(s) folded and written"
    again = invoke("fold", tmp_path / "mlp.onnx", tmp_path / "resnet_block.onnx", "--provider", "cpu", "--json")
    document = json.loads(again.stdout)
    assert again.exit_code == 0 and [m["status"] for m in document["models"]] == ["FOLDED", "FOLDED"]
    assert_one_line_error(
        invoke("fold", tmp_path, "-o", tmp_path / "x.onnx"),
        "-o names one output; with several models each is written beside its input",
        exit_code=2,
    )

"""Where `normfold fold` (and `mode`) may write: --in-place, -o, outputs that must be refused, and the
input's external data never overwritten or orphaned."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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
    sha256,
    snapshot,
    temp_leftovers,
)


def test_in_place_replaces_the_input(workdir: Path) -> None:
    """`--in-place` writes the folded model over MODEL and nothing else."""
    source = workdir / "resnet_block.onnx"
    pristine = workdir / "pristine.onnx"
    shutil.copyfile(source, pristine)
    result = invoke("fold", source, "--in-place")
    assert result.exit_code == 0, result.output
    assert fold_lines(result.stdout) == [*RESNET_LINES, RESNET_SUMMARY, f"wrote {source}"]
    assert sha256(source) != sha256(pristine)
    assert_equivalent_fold(pristine, source)
    assert not (workdir / "resnet_block.folded.onnx").exists()
    assert temp_leftovers(workdir) == []


@pytest.mark.parametrize("spelling", ["same", "dotted"])
def test_output_equal_to_input_needs_in_place(workdir: Path, spelling: str) -> None:
    """`-o MODEL` (however spelled) is a usage error that leaves MODEL untouched."""
    source = workdir / "resnet_block.onnx"
    target = source if spelling == "same" else workdir / "." / ".." / workdir.name / "resnet_block.onnx"
    before = snapshot(workdir)
    result = invoke("fold", source, "-o", target)
    assert_one_line_error(result, f"{target}: refusing to overwrite the input; use --in-place", exit_code=2)
    assert snapshot(workdir) == before


def test_in_place_with_output_is_a_usage_error(workdir: Path) -> None:
    """`--in-place` and `-o` together exit 2 and write nothing."""
    source = workdir / "resnet_block.onnx"
    before = snapshot(workdir)
    result = invoke("fold", source, "--in-place", "-o", workdir / "out.onnx")
    assert_one_line_error(result, "--in-place and --output exclude each other", exit_code=2)
    assert snapshot(workdir) == before


def test_output_folder_missing(workdir: Path) -> None:
    """An output in a folder that does not exist is a one-line error, and nothing is created."""
    source = workdir / "resnet_block.onnx"
    target = workdir / "nowhere" / "out.onnx"
    before = snapshot(workdir)
    result = invoke("fold", source, "-o", target)
    assert_one_line_error(result, f"{target}: output folder '{target.parent}' does not exist", exit_code=3)
    assert snapshot(workdir) == before


def test_output_that_is_not_a_regular_file_is_refused(workdir: Path) -> None:
    """-o naming a FIFO or a folder is a usage error (exit 2) with its exact message."""
    source = workdir / "resnet_block.onnx"
    fifo = workdir / "pipe.onnx"
    os.mkfifo(fifo)
    result = invoke("fold", source, "-o", fifo)
    assert_one_line_error(result, f"{fifo}: exists and is not a regular file; refusing to replace it", exit_code=2)
    folder = invoke("fold", source, "-o", workdir)
    assert folder.exit_code == 2 and folder.stdout == ""
    assert (
        folder.stderr.splitlines()[-1]
        == f"Error: Invalid value for '-o' / '--output': File '{workdir}' is a directory."
    )


def test_output_onto_the_inputs_external_data_is_refused(tmp_path: Path) -> None:
    """`fold` and `mode` refuse -o naming the input's external data file (exit 2) and write nothing."""
    source = tmp_path / "m.onnx"
    save_external(onnx.load(str(MODELS / "resnet_block.onnx")), source, location="m.onnx.data")
    before = snapshot(tmp_path)
    for command in (["fold"], ["mode", "--eval"]):
        result = invoke(*command, source, "-o", tmp_path / "m.onnx.data")
        assert_one_line_error(
            result, f"{tmp_path / 'm.onnx.data'}: refusing to overwrite an external data file of the input", exit_code=2
        )
    assert snapshot(tmp_path) == before


def test_in_place_with_external_data_leaves_no_orphan(tmp_path: Path) -> None:
    """Folding in place twice leaves the model and exactly one data file, and the result stays equivalent."""
    source = tmp_path / "m.onnx"
    save_external(onnx.load(str(MODELS / "resnet_block.onnx")), source, location="m.onnx.data")
    for _ in range(2):
        assert invoke("fold", source, "--in-place", "--provider", "cpu").exit_code == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", data_locations(source).pop()]
    assert_equivalent_fold(MODELS / "resnet_block.onnx", source)

"""`normfold fold` on good models: the report's lines, the default output beside the input, the installed
script, --json, and training-form nodes reported as skipped."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from cli_helpers import (
    RESNET_LINES,
    RESNET_SUMMARY,
    assert_equivalent_fold,
    fold_lines,
    invoke,
    run_script,
    sha256,
    temp_leftovers,
)
from graphs import op_types


def test_fold_with_output_reports_every_node_and_writes_equivalent_model(workdir: Path) -> None:
    """`fold MODEL -o OUT`: one line per BN/Dropout, the summary, `wrote OUT`, and a valid folded model."""
    source, target = workdir / "resnet_block.onnx", workdir / "out.onnx"
    before = sha256(source)
    result = invoke("fold", source, "-o", target)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert fold_lines(result.stdout) == [*RESNET_LINES, RESNET_SUMMARY, f"wrote {target}"]
    assert sha256(source) == before
    assert_equivalent_fold(source, target)
    assert not (workdir / "resnet_block.folded.onnx").exists()
    assert temp_leftovers(workdir) == []


def test_default_output_is_beside_the_input(workdir: Path) -> None:
    """Without -o the model goes to `NAME.folded.onnx` in the input's folder, not the working directory."""
    source = workdir / "resnet_block.onnx"
    before = sha256(source)
    result = invoke("fold", source)
    expected = workdir / "resnet_block.folded.onnx"
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"wrote {expected}"
    assert sha256(source) == before
    assert_equivalent_fold(source, expected)
    assert sorted(p.name for p in workdir.iterdir()) == [
        "resnet_block.folded.onnx",
        "resnet_block.onnx",
        "training_export.onnx",
    ]


def test_installed_script_with_relative_paths(workdir: Path) -> None:
    """The console script works as a real process, relative to its working directory."""
    source = workdir / "resnet_block.onnx"
    before = sha256(source)
    process = run_script("fold", "resnet_block.onnx", cwd=workdir)
    assert process.returncode == 0, process.stderr
    assert process.stderr == ""
    assert fold_lines(process.stdout) == [*RESNET_LINES, RESNET_SUMMARY, "wrote resnet_block.folded.onnx"]
    assert sha256(source) == before
    assert_equivalent_fold(source, workdir / "resnet_block.folded.onnx")


def test_json_report(workdir: Path) -> None:
    """`--json` prints one JSON document: the report, its counts, every node, input and output paths."""
    source, target = workdir / "resnet_block.onnx", workdir / "out.onnx"
    before = sha256(source)
    result = invoke("fold", source, "-o", target, "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert set(report) == {"normfold_report", "version", "summary", "nodes", "input", "output", "validation"}
    assert report["validation"]["normfold_report"] == "validate" and report["validation"]["passed"] is True
    assert report["normfold_report"] == "fold"
    assert report["version"] == 1
    assert report["summary"] == {
        "batchnorm_total": 6,
        "batchnorm_folded": 6,
        "dropout_total": 1,
        "dropout_stripped": 1,
        "affine_total": 0,
        "affine_folded": 0,
        "switched_to_inference": 0,
        "nodes_before": 23,
        "nodes_after": 16,
    }
    bn_pairs = [
        ("batchnormalization7", "conv2"),
        ("batchnormalization15", "conv10"),
        ("batchnormalization23", "conv18"),
        ("batchnormalization32", "conv27"),
        ("batchnormalization40", "conv35"),
        ("batchnormalization47", "conv42"),
    ]
    expected_nodes = [
        {
            "graph": "main",
            "node": bn,
            "op_type": "BatchNormalization",
            "action": "folded",
            "detail": f"into Conv '{conv}' (backward)",
            "reason": "",
        }
        for bn, conv in bn_pairs
    ] + [
        {
            "graph": "main",
            "node": "dropout53",
            "op_type": "Dropout",
            "action": "stripped",
            "detail": "removed",
            "reason": "",
        }
    ]
    assert [{k: v for k, v in node.items() if k != "tensors"} for node in report["nodes"]] == expected_nodes
    assert report["nodes"][0]["tensors"] == {
        "conv_w1_folded": ["conv_w1", "bn_scale3", "bn_bias4", "bn_mean5", "bn_var6"],
        "conv2_bias_folded": ["bn_scale3", "bn_bias4", "bn_mean5", "bn_var6"],
    }
    assert report["nodes"][-1]["tensors"] == {}
    assert report["input"] == str(source)
    assert report["output"] == str(target)
    assert sha256(source) == before
    assert_equivalent_fold(source, target)


def test_training_form_is_reported_as_skipped(workdir: Path) -> None:
    """Training-mode BN and constant-true Dropout are left in place, each with its reason; exit 0."""
    source = workdir / "training_export.onnx"
    before = sha256(source)
    result = invoke("fold", source)
    assert result.exit_code == 0, result.output
    lines = fold_lines(result.stdout)
    assert len(lines) == 5, lines
    bn_line, dropout_line, summary, left, wrote = lines
    assert bn_line.startswith("SKIPPED  BatchNormalization 'batchnormalization8': training_mode=1: ")
    assert dropout_line.startswith("SKIPPED  Dropout 'dropout14': training_mode is constant true")
    assert summary == "BatchNormalization folded 0/1, Dropout stripped 0/1, nodes 7 -> 7"
    assert left == "2 node(s) left in training mode (add --eval to convert them first)"
    target = workdir / "training_export.folded.onnx"
    assert wrote == f"wrote {target}"
    assert all(len(line) <= 100 for line in result.stdout.splitlines()), result.stdout
    verbose = fold_lines(invoke("fold", source, "-v").stdout)
    assert verbose[2] == (
        "BatchNormalization folded 0/1, Dropout stripped 0/1, nodes 7 -> 7; 2 node(s) left in "
        "training mode (add --eval to convert them first)"
    )
    assert verbose[0].startswith(bn_line.removesuffix("...")) and len(verbose[0]) > 100
    assert sha256(source) == before
    onnx.checker.check_model(str(target), full_check=True)
    assert op_types(onnx.load(str(target))).count("BatchNormalization") == 1
    assert op_types(onnx.load(str(target))).count("Dropout") == 1

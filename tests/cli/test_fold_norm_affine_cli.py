"""`normfold fold --fold-norm-affine` on a LayerNorm -> Q/K/V block: folded, validated, written; off by default."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from cli_helpers import invoke
from graphs import layernorm_qkv_model


def test_the_option_folds_validates_and_writes(tmp_path: Path) -> None:
    """With the option the LN record says where its affine went and validation passes; without it, no record."""
    source = tmp_path / "ln.onnx"
    onnx.save(layernorm_qkv_model(), str(source))
    result = invoke("fold", source, "-o", tmp_path / "out.onnx", "--fold-norm-affine", "--provider", "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(n["node"], n["action"]) for n in report["nodes"]] == [("ln", "folded")]
    assert report["validation"]["passed"] is True
    plain = invoke("fold", source, "-o", tmp_path / "plain.onnx", "--provider", "cpu", "--json")
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout)["nodes"] == []

"""`normfold fold --no-validate` runs without importing ONNX Runtime, onnxscript or onnx's reference
evaluator: the whole-process time users pay is the fold's, not the validator's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from examples import MODELS

HEAVY = ("onnxruntime", "onnxscript", "onnx.reference")
PROBE = f"""
import json, sys
from normfold.cli import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    code = done.code
print(json.dumps({{"code": code, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def _loaded_by(folder: Path, *args: str) -> dict[str, object]:
    """Run the CLI in a fresh interpreter; from `folder`, so that `python -c` does not import the source tree."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True, cwd=folder)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fold_without_validation_imports_no_runtime_or_optimizer(tmp_path: Path) -> None:
    probe = _loaded_by(tmp_path, "fold", str(MODELS / "resnet_block.onnx"), "-o", str(tmp_path / "f.onnx"), "--no-validate")
    assert probe == {"code": 0, "loaded": []}


def test_fold_with_validation_and_simplify_imports_what_they_use(tmp_path: Path) -> None:
    probe = _loaded_by(tmp_path, "fold", str(MODELS / "resnet_block.onnx"), "-o", str(tmp_path / "f.onnx"), "--simplify",
                       "--provider", "cpu")
    assert probe["code"] == 0
    assert {"onnxruntime", "onnxscript"} <= set(probe["loaded"])  # type: ignore[arg-type]

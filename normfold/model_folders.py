"""How a folder given on the command line becomes models: every *.onnx below it, in one sorted order."""

from __future__ import annotations

from pathlib import Path


def onnx_files(folder: Path) -> list[Path]:
    """Every *.onnx file below `folder`, sorted (fold, validate and check read a folder the same way)."""
    return sorted(folder.rglob("*.onnx"))

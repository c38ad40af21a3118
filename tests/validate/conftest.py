"""Fixtures shared by the validation tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from examples import MODELS
from normfold import fold, save_model


@pytest.fixture()
def resnet(tmp_path: Path) -> tuple[Path, Path]:
    """resnet_block.onnx (float32) and its fold, in tmp_path."""
    source = tmp_path / "resnet.onnx"
    shutil.copy(MODELS / "resnet_block.onnx", source)
    target = tmp_path / "resnet.folded.onnx"
    save_model(fold(source).model, target)
    return source, target

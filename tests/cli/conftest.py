"""Fixtures of the command-line tests: private copies of the example models."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
from cli_helpers import MODELS, data_locations, save_external


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A private folder holding copies of the example models."""
    for name in ("resnet_block.onnx", "training_export.onnx"):
        shutil.copyfile(MODELS / name, tmp_path / name)
    return tmp_path


@pytest.fixture
def external_model(tmp_path: Path) -> Path:
    """resnet_block saved as `models/m.onnx` with all tensors in `models/w.data`."""
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / "m.onnx"
    save_external(onnx.load(str(MODELS / "resnet_block.onnx")), path)
    assert data_locations(path) == {"w.data"}
    return path

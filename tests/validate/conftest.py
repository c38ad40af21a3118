"""Fixtures shared by the validation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from examples import shipped_and_folded
from onnx import numpy_helper


@pytest.fixture()
def resnet(tmp_path: Path) -> tuple[Path, Path]:
    """resnet_block.onnx (float32) and its fold, in tmp_path."""
    return shipped_and_folded(tmp_path, "resnet_block.onnx", "resnet.onnx", "resnet.folded.onnx")


@pytest.fixture()
def expected_set(tmp_path: Path, resnet: tuple[Path, Path]) -> tuple[Path, np.ndarray]:
    """A model-zoo test_data_set_0 folder: one seeded input and the reference's output on ONNX Runtime CPU."""
    import onnxruntime as ort

    folder = tmp_path / "test_data_set_0"
    folder.mkdir()
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    (folder / "input_0.pb").write_bytes(numpy_helper.from_array(x, "input").SerializeToString())
    y = ort.InferenceSession(str(resnet[0]), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    (folder / "output_0.pb").write_bytes(numpy_helper.from_array(y, "logits").SerializeToString())
    return folder, y

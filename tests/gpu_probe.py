"""Whether the GPU tests can run here: a CUDA session on a one-node model, through normfold's own provider check."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import onnx
from onnx import helper

from normfold.errors import NormfoldError
from normfold.validate.providers import open_session


@functools.cache
def cuda_usable() -> str:
    """'' when a CUDA session runs on this machine, else the reason (used to skip GPU tests)."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "probe.onnx"
        onnx.save(model, path)
        try:
            open_session(path, "cuda")
        except NormfoldError as error:
            return str(error)
    return ""

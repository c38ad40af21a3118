"""Numeric checks for tests: ONNX Runtime at ORT_DISABLE_ALL, and a float64 reference evaluation."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator

FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


def as_proto(model: onnx.ModelProto | ir.Model) -> onnx.ModelProto:
    """ModelProto of either kind of model."""
    return model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)


def run_ort(model: onnx.ModelProto | ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs on ONNX Runtime CPU with every graph optimization disabled (so ORT fuses nothing itself)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        onnx.save(as_proto(model), path)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run(None, feeds)


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model computing in float64: every float tensor, type and Cast target made double."""
    model = copy.deepcopy(model)
    _graph_to_float64(model.graph)
    for function in model.functions:
        for node in function.node:
            _node_to_float64(node)
    return model


def _graph_to_float64(graph: onnx.GraphProto) -> None:
    for tensor in graph.initializer:
        _tensor_to_float64(tensor)
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.tensor_type.elem_type in FLOATS:
            info.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in graph.node:
        _node_to_float64(node)


def _node_to_float64(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            _tensor_to_float64(attr.t)
        elif attr.type == onnx.AttributeProto.GRAPH:
            _graph_to_float64(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for graph in attr.graphs:
                _graph_to_float64(graph)
        elif node.op_type == "Cast" and attr.name == "to" and attr.i in FLOATS:
            attr.i = TensorProto.DOUBLE


def _tensor_to_float64(tensor: onnx.TensorProto) -> None:
    if tensor.data_type in FLOATS:
        array = numpy_helper.to_array(tensor).astype(np.float64)
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def run_float64(model: onnx.ModelProto | ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of the model evaluated in float64 by onnx's reference evaluator."""
    proto = to_float64(as_proto(model))
    wide = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in feeds.items()}
    return ReferenceEvaluator(proto).run(None, wide)


def assert_fold_exact(
    original: onnx.ModelProto | ir.Model,
    folded: onnx.ModelProto | ir.Model,
    feeds: dict[str, np.ndarray],
    run=run_ort,
    truth_model: onnx.ModelProto | None = None,
) -> None:
    """The folded model is as close to the float64 truth as the original is, up to rounding.

    Both models run on `run` (ORT CPU, no optimizations, by default); the truth is the original
    evaluated in float64 (or `truth_model`, an equivalent form the reference evaluator supports).
    A wrong fold gives errors of the order of the activations and fails.
    """
    truth = run_float64(original if truth_model is None else truth_model, feeds)
    before, after = run(original, feeds), run(folded, feeds)
    assert len(before) == len(after) == len(truth)
    for index, (exact, a, b) in enumerate(zip(truth, before, after)):
        assert a.shape == b.shape == exact.shape, f"output {index}: shapes {a.shape} {b.shape} {exact.shape}"
        assert a.dtype == b.dtype, f"output {index}: dtypes {a.dtype} {b.dtype}"
        eps = float(np.finfo(a.dtype).eps) if a.dtype.kind == "f" else 0.0
        scale = float(np.abs(exact).max()) if exact.size else 0.0
        error_before = float(np.abs(a.astype(np.float64) - exact).max()) if exact.size else 0.0
        error_after = float(np.abs(b.astype(np.float64) - exact).max()) if exact.size else 0.0
        bound = 2 * error_before + 8 * eps * scale
        assert error_after <= bound, (
            f"output {index}: folded error {error_after:.3g} vs float64 exceeds {bound:.3g} "
            f"(original's own error {error_before:.3g}, scale {scale:.3g})"
        )


def random_feeds(model: onnx.ModelProto | ir.Model, seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs for every graph input (symbolic dims become `batch`)."""
    rng = np.random.default_rng(seed)
    proto = as_proto(model)
    initializers = {t.name for t in proto.graph.initializer}
    feeds = {}
    for info in proto.graph.input:
        if info.name in initializers:
            continue
        tensor_type = info.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        feeds[info.name] = rng.standard_normal(shape).astype(dtype)
    return feeds

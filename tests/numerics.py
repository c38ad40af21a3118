"""Numeric checks for tests: ONNX Runtime at ORT_DISABLE_ALL, and a float64 reference evaluation."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from normfold.validate.float64 import run_float64 as float64_reference


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


def run_float64(model: onnx.ModelProto | ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of the model evaluated in float64 by onnx's reference evaluator."""
    return float64_reference(as_proto(model), feeds)


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

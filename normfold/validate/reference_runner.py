"""The `reference` execution choice: both models run by onnx's reference evaluator in float64.

For models ONNX Runtime cannot run here, bfloat16 above all: its CPU build has no bfloat16 Conv, Gemm,
MatMul or BatchNormalization kernels. Every float tensor is widened exactly to float64 (`run_float64`),
so the outputs of reference and candidate differ by what the rewrite changed (the rounding of folded
weights to the model's dtype) and by nothing else. Outputs stay float64; tolerances and eps units
follow the dtype each model declares for the output. Seeded random nodes draw from their seed alone,
as on ONNX Runtime, so two identically seeded models draw the same masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from normfold.errors import NormfoldError
from normfold.validate.compare import is_float
from normfold.validate.float64 import Float64Unavailable, run_float64_samples


def run_reference(
    path: Path, model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], max_bytes: int
) -> list[list[np.ndarray]]:
    """The model's (read from `path`) outputs per sample, float outputs as float64, within `max_bytes`; an error
    when the evaluator cannot run it or it is over budget (the whole choice is then unusable)."""
    try:
        return [widen(outputs) for outputs in run_float64_samples(model, feeds, max_bytes)]
    except Float64Unavailable as error:
        raise NormfoldError(f"{path}: --provider reference cannot run the model: {error}") from None


def widen(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """Float arrays as float64 (exact); others unchanged."""
    return [np.asarray(a, dtype=np.float64) if is_float(np.asarray(a).dtype) else np.asarray(a) for a in outputs]


def declared_dtypes(model: onnx.ModelProto) -> list[np.dtype | None]:
    """The element type each graph output declares (None when it declares none)."""
    types = []
    for output in model.graph.output:
        elem = output.type.tensor_type.elem_type if output.type.HasField("tensor_type") else 0
        types.append(np.dtype(helper.tensor_dtype_to_np_dtype(elem)) if elem else None)
    return types

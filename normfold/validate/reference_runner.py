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

from normfold.errors import NormfoldError, describe
from normfold.validate.compare import is_float
from normfold.validate.float64 import run_float64


def run_reference(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """The model's outputs per sample, float outputs as float64; an error if the evaluator cannot run it."""
    model = onnx.load(str(path))
    try:
        return [widen(run_float64(model, feed)) for feed in feeds]
    except Exception as error:  # an op or dtype onnx's evaluator lacks: the whole choice is unusable
        raise NormfoldError(f"{path}: onnx's reference evaluator cannot run the model: {describe(error, 300)}") from None


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

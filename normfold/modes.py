"""Whether a BatchNormalization or Dropout node runs in training mode, in each opset's own terms.

BN: `training_mode=1` (opset 14+), `is_test=0` (opset 6), or running-statistics outputs (opsets 7-9).
Dropout: a `training_mode` input that is constant true or set at run time (opset 12+), `is_test=0`
(opset 6); opsets 7-10 Dropout is always the identity at inference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from normfold.graph_edit import constant_array

# ONNX's default epsilon is the float32 attribute value 1e-5, i.e. 9.99999974737875e-06 (not the double 1e-5).
DEFAULT_BN_EPSILON = float(np.float32(1e-5))


def bn_epsilon(bn: ir.Node) -> float:
    """A BatchNormalization's epsilon exactly as ONNX Runtime and onnx's evaluator apply it (a float32)."""
    return bn.attributes.get_float("epsilon", DEFAULT_BN_EPSILON)


BN_ROLES = ("scale", "B", "mean", "var")


@dataclasses.dataclass(frozen=True)
class BnParameterFaults:
    """What is wrong with a BatchNormalization's constant parameters: the one check that fold, check and
    mode --eval share."""

    nonfinite: tuple[str, ...]  # roles ('scale', 'B', 'mean', 'var') holding NaN or Inf
    negative_variance: int  # channels whose running variance is negative
    no_inference_form: int  # channels where variance + epsilon <= 0 (no finite inference form)


def bn_parameter_faults(arrays: Sequence[np.ndarray | None], epsilon: float) -> BnParameterFaults:
    """The faults of parameters given in BN_ROLES order (None where a parameter is not a constant)."""
    if (
        len(arrays) == len(BN_ROLES)
        and all(_plain_vector(a) for a in arrays)
        and len({a.shape for a in arrays if a is not None}) == 1
    ):
        # The common case, with a few numpy calls instead of a dozen: four float vectors of one length, all
        # finite, checked at once; the counts below are then zero unless the smallest variance says otherwise.
        together = np.concatenate(arrays, dtype=np.float64)  # type: ignore[arg-type]
        if np.isfinite(together).all():
            lowest = np.float64(together[3 * len(together) // 4 :].min())  # the smallest variance
            if lowest >= 0 and lowest + np.float64(epsilon) > 0:
                return BnParameterFaults((), 0, 0)
    values = dict(zip(BN_ROLES, arrays))
    nonfinite = tuple(
        role for role, a in values.items() if a is not None and not np.isfinite(a.astype(np.float64)).all()
    )
    var = values.get("var")
    if var is None or "var" in nonfinite:
        return BnParameterFaults(nonfinite, 0, 0)
    var64 = var.astype(np.float64)
    return BnParameterFaults(nonfinite, int((var64 < 0).sum()), int((var64 + np.float64(epsilon) <= 0).sum()))


_PLAIN_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _plain_vector(array: np.ndarray | None) -> bool:
    """A non-empty 1-D numpy float16/32/64 array (what a BN's constant parameters usually are)."""
    return array is not None and array.ndim == 1 and array.size > 0 and array.dtype in _PLAIN_FLOATS


def bn_training_form(opset: int, bn: ir.Node) -> str:
    """'' for an inference BN, else how it is marked as training (for reports)."""
    if opset >= 14 and bn.attributes.get_int("training_mode", 0) != 0:
        return "training_mode=1"
    if opset < 7 and not bn.attributes.get_int("is_test", 0):
        return f"is_test=0 (opset {opset} training mode)"
    if any(out.name or out.uses() for out in bn.outputs[1:]):
        return "it has running-statistics outputs (training mode)"
    return ""


def dropout_training_form(opset: int, node: ir.Node) -> str:
    """'' for an inference Dropout, else how it samples masks (for reports)."""
    if opset < 7:
        return "" if node.attributes.get_int("is_test", 0) else f"is_test=0 (opset {opset} training mode)"
    if opset < 12 or len(node.inputs) < 3 or node.inputs[2] is None:
        return ""
    training = node.inputs[2]
    flag = constant_array(training)
    if flag is None:
        return f"its training_mode input '{training.name}' is set at run time"
    if bool(np.asarray(flag).reshape(-1)[0]):
        return "training_mode is constant true: it samples a new mask on every run"
    return ""


DEFAULT_DROPOUT_RATIO = 0.5


def dropout_ratio(node: ir.Node, opset: int) -> float | None:
    """A Dropout's drop probability: the `ratio` attribute before opset 12, the `ratio` input from 12 on.

    Either defaults to 0.5 when absent; None when the input is not a constant scalar (set at run time).
    """
    if opset < 12:
        return node.attributes.get_float("ratio", DEFAULT_DROPOUT_RATIO)
    value = node.inputs[1] if len(node.inputs) > 1 else None
    if value is None:
        return DEFAULT_DROPOUT_RATIO
    array = constant_array(value)
    if array is None or array.size != 1:
        return None
    return float(array.reshape(-1)[0])

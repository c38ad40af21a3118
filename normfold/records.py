"""What a pass did to each node it looked at: folded, stripped, or skipped and why."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Literal

import onnx_ir as ir

from normfold.columns import Cuttable, Squeezable, fit

Action = Literal["folded", "stripped", "converted", "rewritten", "skipped"]
# Machine-readable causes of a skip (NodeRecord.reason, the JSON report's "reason"; README "Reason codes").
TRAINING_MODE = "training-mode"  # the node runs in training mode: convert it to inference mode first (--eval)
NOT_CONSTANT = "not-constant"  # a parameter, weight or bias is a graph input or computed at run time
NOT_PER_CHANNEL = "not-per-channel"  # parameters or a constant vary along an axis other than the channels
NON_FINITE = "non-finite"  # NaN/Inf parameters, variance + epsilon <= 0, a division by zero
NO_LAYER = "no-linear-neighbour"  # neither neighbour is a Conv/ConvTranspose/Gemm/MatMul with a constant weight
SHARED_VALUE = "shared-value"  # the value between node and layer has other consumers or is a graph output
AXIS_MISMATCH = "axis-mismatch"  # the channel axis is not the layer's feature axis, or cannot be matched to it
PADDED_CONV = "padded-conv"  # a shift cannot go forward into a Conv that pads its input
ROUNDING = "rounding"  # the folded values would overflow the dtype or lose precision in subnormals
UNSUPPORTED = "unsupported-layer"  # the layer's form is not folded (integer weight, weight rank, transA)
MASK_UNSPECIFIED = "mask-unspecified"  # a Dropout's used mask has no specified inference value (opset < 12)
MISSING_INPUT = "missing-input"  # the node lacks an input it needs
UNUSABLE_STATISTICS = "unusable-statistics"  # running statistics cannot replace batch statistics (--batch-stats)
STATISTICS_IN_USE = "statistics-in-use"  # a training-mode BN's running-statistics outputs are read
UNKNOWN_TYPE = "unknown-type"  # a value's type is unknown where the rewrite needs it
REASON_CODES = (TRAINING_MODE, NOT_CONSTANT, NOT_PER_CHANNEL, NON_FINITE, NO_LAYER, SHARED_VALUE, AXIS_MISMATCH,
                PADDED_CONV, ROUNDING, UNSUPPORTED, MASK_UNSPECIFIED, MISSING_INPUT, UNUSABLE_STATISTICS,
                STATISTICS_IN_USE, UNKNOWN_TYPE)


class Refusal(str):
    """Why a rewrite was not made: the message for people (the string itself) and a machine-readable `code`."""

    code: str

    def __new__(cls, message: str, code: str) -> Refusal:
        refusal = super().__new__(cls, message)
        refusal.code = code
        return refusal

    def prefixed(self, prefix: str) -> Refusal:
        """The same refusal with its message prefixed (e.g. by the layer's label)."""
        return Refusal(prefix + self, self.code)


def code_of(reason: str) -> str:
    """The code of a Refusal, '' for a plain message."""
    return getattr(reason, "code", "")


def combined_code(backward: str, forward: str) -> str:
    """One code for a node refused in both directions: the backward one, unless it only says there is no layer."""
    return code_of(forward) if code_of(backward) in ("", NO_LAYER) and code_of(forward) else code_of(backward)


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    """One BatchNormalization, Dropout or elementwise affine node and what happened to it.

    A fold's `tensors` names every tensor it wrote and the tensors each was computed from (the layer's
    weight and bias, the BN's scale, B, mean and var, the Mul/Add constant), so a fused weight can be
    traced back to its source.
    """

    graph: str
    node: str
    op_type: str
    action: Action
    detail: str
    reason: str = ""  # machine-readable cause of a skip (TRAINING_MODE, ...); "" when not given
    tensors: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # provenance: new tensor -> sources

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON reports."""
        return dataclasses.asdict(self)

    def to_line(self, width: int | None = None) -> str:
        """One human-readable report line; in `width` columns when given (names lose their middle, the detail
        its end)."""
        where = ["", "", ""] if self.graph == "main" else [" [", Squeezable(self.graph), "]"]
        return fit([f"{self.action.upper():8} {self.op_type} '", Squeezable(self.node), "'", *where, ": ",
                    Cuttable(self.detail)], width if width is not None else sys.maxsize)


@dataclasses.dataclass
class RewriteResult(ir.passes.PassResult):
    """onnx_ir's PassResult plus the per-node record of what changed and what was skipped."""

    records: list[NodeRecord] = dataclasses.field(default_factory=list)

"""Why a rewrite was not made, for machines: the reason codes of skipped records, and the Refusal that carries one.

Light on purpose (no onnx_ir): `check` and the report formats read these without loading a model.
"""

from __future__ import annotations

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
REASON_CODES = (
    TRAINING_MODE,
    NOT_CONSTANT,
    NOT_PER_CHANNEL,
    NON_FINITE,
    NO_LAYER,
    SHARED_VALUE,
    AXIS_MISMATCH,
    PADDED_CONV,
    ROUNDING,
    UNSUPPORTED,
    MASK_UNSPECIFIED,
    MISSING_INPUT,
    UNUSABLE_STATISTICS,
    STATISTICS_IN_USE,
    UNKNOWN_TYPE,
)


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

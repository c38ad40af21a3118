"""Training-side lints: BatchNorm and Dropout set-ups known to train badly, for `mode --train` and `normfold check`."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from normfold.graph_walk import is_op, iter_scopes, node_label
from normfold.modes import bn_epsilon, dropout_ratio

HIGH_DROP_RATIO = 0.7


@dataclasses.dataclass(frozen=True)
class Lint:
    """One finding: the rule's name, the node, and what to do about it."""

    rule: str
    node: str
    message: str

    def to_line(self) -> str:
        """One report line."""
        return f"LINT     {self.rule} '{self.node}': {self.message}"


def training_lints(model: ir.Model) -> list[Lint]:
    """Dropout right before BN, drop ratio above 0.7, BN on a static batch below 2, non-positive epsilon."""
    lints = []
    for scope in iter_scopes(model):
        for node in scope.body:
            if is_op(node, "BatchNormalization"):
                lints += _batchnorm_lints(node)
            elif is_op(node, "Dropout"):
                lints += _dropout_lints(node, scope.opset)
    return lints


def _batchnorm_lints(bn: ir.Node) -> list[Lint]:
    label, found = node_label(bn), []
    epsilon = bn_epsilon(bn)
    if epsilon <= 0:
        found.append(Lint("non-positive-epsilon", label, f"epsilon={epsilon:g}: a zero batch variance divides by zero"))
    x = bn.inputs[0]
    batch = _static_batch(x)
    if isinstance(batch, int) and batch < 2:
        found.append(
            Lint(
                "bn-batch-below-2",
                label,
                f"static batch size {batch}: batch statistics of one sample are degenerate in training "
                "mode (keep the batch at 32 or more, or use GroupNorm/LayerNorm, which do not depend on the "
                "batch)",
            )
        )
    producer = x.producer() if x is not None else None
    if producer is not None and is_op(producer, "Dropout"):
        found.append(
            Lint(
                "dropout-before-bn",
                label,
                f"Dropout '{node_label(producer)}' feeds it directly: Dropout's variance shift corrupts the "
                "batch statistics, which then differ from what inference (without Dropout) normalizes with "
                "(put Dropout after BN)",
            )
        )
    return found


def _dropout_lints(node: ir.Node, opset: int) -> list[Lint]:
    value = dropout_ratio(node, opset)
    if value is not None and value > HIGH_DROP_RATIO:
        return [
            Lint(
                "high-drop-ratio",
                node_label(node),
                f"ratio={value:g} drops more than {HIGH_DROP_RATIO:g} of activations (keep probability "
                f"p = 1 - ratio = {1 - value:g}), which tends to underfit (common ratios are 0.1 to 0.5)",
            )
        ]
    return []


def _static_batch(value: ir.Value | None, depth: int = 64) -> int | ir.SymbolicDim | None:
    """Axis 0 of the value's shape, or of the nearest ancestor (through first inputs) whose shape is known.

    The layers between a graph input and a BN (Conv, Relu, Add, pooling) keep the batch axis.
    """
    while value is not None and depth > 0:
        if value.shape is not None and len(value.shape):
            return value.shape[0]
        producer = value.producer()
        value = producer.inputs[0] if producer is not None and producer.inputs else None
        depth -= 1
    return None

"""Fold a Mul, Div, Add or Sub by a per-channel constant into the adjacent linear layer.

This is BatchNormalization exported as arithmetic (torchvision's FrozenBatchNorm2d, Keras BN after
Dense lowered to Mul/Add, input normalization `(x - mean) / std` before the first Conv): backward
into the Conv / ConvTranspose / Gemm / MatMul that produces the activation, forward into the one
that consumes the result. The constant may be a scalar or vary along the layer's channel axis only.
An Add or Sub right after a MatMul is its bias and stays. Only nodes next to a linear layer with
constant weights are candidates, and each candidate gets a record.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from normfold.bn_math import Affine
from normfold.constant_cone import runtime_values
from normfold.graph_edit import NameSource, constant_array, sort_scopes
from normfold.graph_walk import Scope, is_op, iter_scopes, node_label
from normfold.layer_fold import (
    AffineFor,
    AffineSite,
    Edit,
    apply_edit,
    describe,
    per_axis,
    plan_backward,
    plan_forward,
    sole_consumer,
)
from normfold.linear_layers import LINEAR_OPS, LinearLayer, read_linear_layer
from normfold.passes.copy_or_in_place import CopyOrInPlacePass
from normfold.ranks import RankOracle
from normfold.reason_codes import NON_FINITE, NOT_PER_CHANNEL, Refusal, combined_code
from normfold.records import NodeRecord, RewriteResult

AFFINE_OPS = ("Mul", "Div", "Add", "Sub")


class FoldAffinePass(CopyOrInPlacePass):
    """Returns the model with every foldable per-channel Mul/Div/Add/Sub folded, plus one record per candidate."""

    def call(self, model: ir.Model) -> RewriteResult:
        with runtime_values():  # its rewrites are apply_edit's
            return self._fold_all(self.target(model))

    def _fold_all(self, model: ir.Model) -> RewriteResult:
        ranks, names = RankOracle(model), NameSource(model, deferred=True)  # apply_edit reserves
        records: dict[ir.Node, NodeRecord] = {}
        changed = True
        while changed:  # a fold can make the next node a candidate (Conv -> Mul -> Add)
            changed = False
            for scope in iter_scopes(model):
                for node in list(scope.body):
                    if node.op_type not in AFFINE_OPS or node.graph is None:
                        continue  # most nodes: no call into _candidate
                    site = _candidate(node, ranks)
                    if site is None:
                        continue
                    records[node] = _fold_one(scope, site, ranks, names)
                    changed = changed or records[node].action == "folded"
        folded = any(r.action == "folded" for r in records.values())
        if folded:
            sort_scopes(model)
        return RewriteResult(model, folded, list(records.values()))


def _fold_one(scope: Scope, site: AffineSite, ranks: RankOracle, names: NameSource) -> NodeRecord:
    node = site.node
    reasons = []
    for plan in (plan_backward, plan_forward):
        edit = plan(site, ranks)
        if isinstance(edit, Edit):
            provenance = apply_edit(scope, site, edit, names)
            return NodeRecord(scope.name, node_label(node), node.op_type, "folded", describe(edit), "", provenance)
        reasons.append(edit)
    detail = f"into its producer: {reasons[0]}; into its consumer: {reasons[1]}"
    return NodeRecord(scope.name, node_label(node), node.op_type, "skipped", detail, combined_code(*reasons))


def _candidate(node: ir.Node, ranks: RankOracle) -> AffineSite | None:
    """The node as an affine site, if it is a float Mul/Div/Add/Sub by a constant next to a foldable layer."""
    if not is_op(node, *AFFINE_OPS) or len(node.inputs) != 2 or None in node.inputs:
        return None
    arrays = [constant_array(value) for value in node.inputs]
    if (arrays[0] is None) == (arrays[1] is None):
        return None
    index = 0 if arrays[0] is None else 1
    constant = arrays[1 - index]
    assert constant is not None
    if constant.dtype.kind != "f" and constant.dtype.name != "bfloat16":
        return None
    if node.op_type == "Div" and index == 1:
        return None  # c / x is not affine in x
    activation = node.inputs[index]
    assert activation is not None
    if not (_after_layer(node, activation, ranks) or _before_layer(node, ranks)):
        return None
    name = node.inputs[1 - index].name or ""  # type: ignore[union-attr]
    sources = (("constant", name),) if name else ()
    return AffineSite(node, activation, _affine_for(node.op_type, constant, index), None, None, sources)


def _after_layer(node: ir.Node, activation: ir.Value, ranks: RankOracle) -> bool:
    """The activation comes from a linear layer with a constant weight, or from such a layer's bias Add; an Add or
    Sub right after a MatMul is its bias, not a candidate."""
    producer = activation.producer()
    through_add = producer is not None and is_op(producer, "Add")
    if through_add:
        inner = [v.producer() for v in producer.inputs if v is not None and constant_array(v) is None]  # type: ignore[union-attr]
        producer = inner[0] if len(inner) == 1 else None
    if producer is None or not is_op(producer, *LINEAR_OPS):
        return False
    if node.op_type in ("Add", "Sub") and producer.op_type == "MatMul" and not through_add:
        return False
    return isinstance(read_linear_layer(producer, ranks), LinearLayer)


def _before_layer(node: ir.Node, ranks: RankOracle) -> bool:
    """The result is the activation input of one Conv, Gemm or MatMul with a constant weight (or of one Gemm
    or MatMul through a Flatten or Reshape)."""
    value = node.outputs[0]
    consumer = sole_consumer(value)
    if consumer is not None and is_op(consumer, "Flatten", "Reshape"):
        value = consumer.outputs[0]
        consumer = sole_consumer(value)
        if consumer is None or not is_op(consumer, "Gemm", "MatMul"):
            return False
    if consumer is None or not is_op(consumer, "Conv", "Gemm", "MatMul") or consumer.inputs[0] is not value:
        return False
    return isinstance(read_linear_layer(consumer, ranks), LinearLayer)


def _affine_for(op: str, constant: np.ndarray, index: int) -> AffineFor:
    """The node's affine map z = s * x + t on a layer's channels, from its constant c:
    x * c, x / c, x + c, x - c, or c - x (the activation is input `index`)."""

    def affine_for(channels: int, axis: int, rank: int) -> Affine | Refusal:
        vector = per_axis(constant, rank, axis, channels)
        if vector is None:
            return Refusal(
                f"its constant has shape {list(constant.shape)}, not one value per channel (axis {axis} of "
                f"rank {rank})",
                NOT_PER_CHANNEL,
            )
        ones, zeros = np.ones(channels), np.zeros(channels)
        if not np.isfinite(vector).all():
            return Refusal("its constant contains NaN or Inf", NON_FINITE)
        if op == "Mul":
            return Affine(vector, zeros)
        if op == "Div":
            if not vector.all():
                return Refusal("it divides by zero", NON_FINITE)
            return Affine(1.0 / vector, zeros)
        if op == "Add":
            return Affine(ones, vector)
        return Affine(ones, -vector) if index == 0 else Affine(-ones, vector)

    return affine_for

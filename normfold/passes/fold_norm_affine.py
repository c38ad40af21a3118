"""Fold the scale and shift of a normalization into every linear layer that reads it (opt-in).

LayerNormalization (opset 17), RMSNormalization (opset 23) and their decomposed form (a Mul, and an
optional Add, by constants over the last axis) end in a per-feature affine map y = s * n + t. When
every consumer of y is a MatMul or Gemm with a constant weight (a transformer's Q, K, V projections),
W' = diag(s) W and b' = b + t W are computed in float64 and rounded once, and the normalization is
left with unit scale and no shift (the decomposed Mul/Add are removed). This is the preparation that
rotation-based quantization needs. Opt-in because it changes the normalization's parameters, which
some deployments read.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from normfold.bn_math import input_factor, input_shift_response, round_once
from normfold.folded_tensor import FoldedTensor
from normfold.graph_edit import NameSource, add_constant, constant_array, drop_if_unused, sort_scopes, take_over
from normfold.graph_walk import Scope, is_op, iter_scopes, node_label
from normfold.layer_fold import insert_bias_add, per_axis, scaled_weight, sole_consumer
from normfold.linear_layers import LinearLayer, read_linear_layer
from normfold.passes.copy_or_in_place import CopyOrInPlacePass
from normfold.ranks import RankOracle
from normfold.reason_codes import (
    AXIS_MISMATCH,
    NO_LAYER,
    NOT_CONSTANT,
    NOT_PER_CHANNEL,
    ROUNDING,
    SHARED_VALUE,
    UNSUPPORTED,
    Refusal,
    code_of,
)
from normfold.records import NodeRecord, RewriteResult

NORM_OPS = ("LayerNormalization", "RMSNormalization")


@dataclasses.dataclass
class _Site:
    """A per-feature affine map at the end of a normalization: y = scale * n + shift over the last axis."""

    node: ir.Node  # the normalization, or the decomposed form's Mul
    output: ir.Value  # what the linear layers read
    scale: np.ndarray
    shift: np.ndarray
    decomposed: tuple[ir.Node, ...] = ()  # the Mul (and Add) to remove; empty for LayerNormalization
    sources: tuple[str, ...] = ()


@dataclasses.dataclass
class _LayerEdit:
    """One consumer's rounded new weight, and its new bias (into Gemm's C, a MatMul's bias Add, or a new Add)."""

    layer: LinearLayer
    weight: np.ndarray | FoldedTensor | None
    bias: np.ndarray | None
    bias_add: ir.Node | None = None


class FoldNormAffinePass(CopyOrInPlacePass):
    """Returns the model with each normalization's affine folded into its linear consumers, one record per site."""

    def call(self, model: ir.Model) -> RewriteResult:
        model = self.target(model)
        ranks, names = RankOracle(model), NameSource(model)
        records = []
        for scope in iter_scopes(model):
            for node in list(scope.body):
                if node.graph is None:
                    continue
                site = _site(node, ranks)
                if isinstance(site, str):
                    records.append(
                        NodeRecord(scope.name, node_label(node), node.op_type, "skipped", site, code_of(site))
                    )
                elif site is not None:
                    records.append(_fold(scope, site, ranks, names))
        folded = any(r.action == "folded" for r in records)
        if folded:
            sort_scopes(model)
        return RewriteResult(model, folded, records)


def _site(node: ir.Node, ranks: RankOracle) -> _Site | Refusal | None:
    """The node as a site, the reason a normalization is not one, or None for any other node."""
    if is_op(node, *NORM_OPS):
        return _norm_site(node, ranks)
    if is_op(node, "Mul"):
        return _decomposed_site(node, ranks)
    return None


def _norm_site(node: ir.Node, ranks: RankOracle) -> _Site | Refusal:
    x = node.inputs[0]
    rank = None if x is None else ranks.rank(x)
    axis = node.attributes.get_int("axis", -1)
    if rank is None or axis not in (-1, rank - 1):
        return Refusal(
            f"it normalizes from axis {axis} of a rank-{rank} input, not over the last axis alone", AXIS_MISMATCH
        )
    scale = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    shift_value = node.inputs[2] if len(node.inputs) > 2 else None
    shift = None if shift_value is None else constant_array(shift_value)
    if scale is None or (shift_value is not None and shift is None):
        return Refusal("its scale or bias is not a constant", NOT_CONSTANT)
    if scale.dtype.kind != "f" or scale.ndim > 1 or (shift is not None and shift.shape != scale.shape):
        return Refusal(f"its scale has shape {list(scale.shape)}, not one value per feature", NOT_PER_CHANNEL)
    features = scale.size
    s = np.broadcast_to(scale.astype(np.float64).reshape(-1), (features,))
    t = np.zeros(features) if shift is None else np.broadcast_to(shift.astype(np.float64).reshape(-1), (features,))
    names = [v.name for v in node.inputs[1:3] if v is not None and v.name]
    return _Site(node, node.outputs[0], s.copy(), t.copy(), (), tuple(names))


def _decomposed_site(mul: ir.Node, ranks: RankOracle) -> _Site | None:
    """Mul by a constant over the last axis, optionally then Add of one, read only by linear layers."""
    if len(mul.inputs) != 2 or None in mul.inputs:
        return None
    arrays = [constant_array(v) for v in mul.inputs]
    if (arrays[0] is None) == (arrays[1] is None):
        return None
    index = 0 if arrays[0] is None else 1
    activation, constant = mul.inputs[index], arrays[1 - index]
    rank = ranks.rank(activation)  # type: ignore[arg-type]
    if constant is None or rank is None or constant.dtype.kind != "f" or constant.ndim == 0:
        return None
    features = constant.shape[-1]
    scale = per_axis(constant, rank, rank - 1, features)
    if scale is None:
        return None
    nodes, output, shift = [mul], mul.outputs[0], np.zeros(features)
    names = [mul.inputs[1 - index].name or ""]  # type: ignore[union-attr]
    add = sole_consumer(output)
    if add is not None and is_op(add, "Add") and len(add.inputs) == 2:
        other = add.inputs[1] if add.inputs[0] is output else add.inputs[0]
        bias = constant_array(other)
        vector = None if bias is None else per_axis(bias, rank, rank - 1, features)
        if vector is not None:
            nodes.append(add)
            output, shift = add.outputs[0], vector
            names.append(other.name or "")  # type: ignore[union-attr]
    if not _only_linear_consumers(output):
        return None
    return _Site(mul, output, scale, shift, tuple(nodes), tuple(n for n in names if n))


def _only_linear_consumers(value: ir.Value) -> bool:
    uses = list(value.uses())
    return (
        bool(uses)
        and not value.is_graph_output()
        and all(is_op(use.node, "MatMul", "Gemm") and use.idx == 0 for use in uses)
    )


def _fold(scope: Scope, site: _Site, ranks: RankOracle, names: NameSource) -> NodeRecord:
    label, op = node_label(site.node), site.node.op_type
    plans = _plan(site, ranks)
    if isinstance(plans, str):
        return NodeRecord(scope.name, label, op, "skipped", plans, code_of(plans))
    provenance = _apply(scope, site, plans, names)
    layers = ", ".join(plan.layer.label for plan in plans)
    return NodeRecord(scope.name, label, op, "folded", f"its scale and shift into {layers} (forward)", "", provenance)


def _plan(site: _Site, ranks: RankOracle) -> list[_LayerEdit] | Refusal:
    """A rounded edit for every consumer, or why one of them cannot take the affine map."""
    if site.output.is_graph_output():
        return Refusal("its output is a graph output", SHARED_VALUE)
    uses = list(site.output.uses())
    if not uses:
        return Refusal("its output has no consumer", NO_LAYER)
    plans = []
    shifts = bool(np.any(site.shift != 0))
    for use in uses:
        if not is_op(use.node, "MatMul", "Gemm"):
            return Refusal(
                f"its output also feeds {use.node.op_type} '{node_label(use.node)}', not only MatMul or Gemm layers",
                SHARED_VALUE,
            )
        layer = read_linear_layer(use.node, ranks)
        if isinstance(layer, str):
            return layer
        if use.idx != 0:
            return Refusal(f"its output is not the activation input of {layer.label}", NO_LAYER)
        if layer.op == "Gemm" and use.node.attributes.get_int("transA", 0) != 0:
            return Refusal(f"{layer.label} transposes its input (transA=1)", UNSUPPORTED)
        if layer.in_channels != site.scale.size:
            return Refusal(f"{layer.label} reads {layer.in_channels} features, not {site.scale.size}", AXIS_MISMATCH)
        plan = _plan_layer(layer, site, shifts)
        if isinstance(plan, str):
            return plan
        plans.append(plan)
    return plans


def _plan_layer(layer: LinearLayer, site: _Site, shifts: bool) -> _LayerEdit | Refusal:
    dtype = layer.weight.dtype
    weight = None
    if np.any(site.scale != 1):
        weight, reason = scaled_weight(layer.weight, input_factor(layer.weight.shape, site.scale, layer.layout), dtype)
        if weight is None:
            return Refusal(f"{layer.label}: {reason}", ROUNDING)
    if not shifts:
        return _LayerEdit(layer, weight, None)
    response = input_shift_response(layer.weight, site.shift, layer.layout)
    bias_add = None
    if layer.op == "Gemm":
        alpha, beta = layer.attr_float("alpha", 1.0), layer.attr_float("beta", 1.0)
        exact = (0.0 if layer.bias is None else beta * layer.bias.astype(np.float64)) + alpha * response
    else:
        bias_add, own = _bias_add(layer)
        exact = own + response
    bias, reason = round_once(np.asarray(exact), dtype)
    if bias is None:
        return Refusal(f"{layer.label}: {reason}", ROUNDING)
    return _LayerEdit(layer, weight, bias, bias_add)


def _bias_add(layer: LinearLayer) -> tuple[ir.Node | None, np.ndarray | float]:
    """The MatMul's bias Add (its sole consumer, adding a constant over the last axis) and that bias, if any."""
    add = sole_consumer(layer.node.outputs[0])
    if add is None or not is_op(add, "Add") or len(add.inputs) != 2:
        return None, 0.0
    other = add.inputs[1] if add.inputs[0] is layer.node.outputs[0] else add.inputs[0]
    bias = constant_array(other)
    features = layer.out_channels
    if bias is None or bias.ndim > 1 or bias.size not in (1, features):
        return None, 0.0
    return add, np.broadcast_to(bias.astype(np.float64).reshape(-1), (features,)).copy()


def _apply(scope: Scope, site: _Site, plans: list[_LayerEdit], names: NameSource) -> dict[str, list[str]]:
    provenance: dict[str, list[str]] = {}
    dropped: list[ir.Value | None] = []
    for plan in plans:
        node, label = plan.layer.node, node_label(plan.layer.node)
        old_weight = node.inputs[1]
        assert old_weight is not None  # read_linear_layer found a constant weight there
        if plan.weight is not None:
            weight = add_constant(
                scope, node, plan.weight, names.fresh(f"{old_weight.name or label}_normfolded"), names
            )
            provenance[weight.name or ""] = [old_weight.name or "", *site.sources]
            node.replace_input_with(1, weight)
            dropped.append(old_weight)
        if plan.bias is None:
            continue
        sources = [old_weight.name or "", *site.sources]
        bias = add_constant(scope, node, plan.bias, names.fresh(f"{label}_bias_normfolded"), names)
        provenance[bias.name or ""] = sources
        if node.op_type == "Gemm":
            dropped.append(node.inputs[2] if len(node.inputs) > 2 else None)
            if len(node.inputs) < 3:
                node.resize_inputs(3)
            node.replace_input_with(2, bias)
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        elif plan.bias_add is not None:
            index = 1 if plan.bias_add.inputs[0] is node.outputs[0] else 0
            dropped.append(plan.bias_add.inputs[index])
            plan.bias_add.replace_input_with(index, bias)
        else:
            insert_bias_add(scope, node, bias, names)
    if site.decomposed:
        activation = site.node.inputs[0] if constant_array(site.node.inputs[1]) is not None else site.node.inputs[1]
        take_over(site.output, activation)  # type: ignore[arg-type]
        for node in reversed(site.decomposed):
            dropped.extend(node.inputs)
            scope.body.remove(node, safe=True)
    else:
        _unit_affine(scope, site, names)
    drop_if_unused(dropped)
    return provenance


def _unit_affine(scope: Scope, norm: _Site, names: NameSource) -> None:
    """The normalization keeps unit scale (a new constant: a shared scale is never changed) and no bias."""
    node = norm.node
    old = list(node.inputs[1:])
    dtype = constant_array(node.inputs[1]).dtype  # type: ignore[union-attr]
    ones = add_constant(
        scope, node, np.ones(norm.scale.size, dtype), names.fresh(f"{node_label(node)}_unit_scale"), names
    )
    node.replace_input_with(1, ones)
    if len(node.inputs) > 2:
        node.resize_inputs(2)
    drop_if_unused(old)

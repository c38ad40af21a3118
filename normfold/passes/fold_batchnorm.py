"""Fold every inference BatchNormalization with constant statistics into an adjacent linear layer.

Backward first (BN after Conv / ConvTranspose / Gemm / MatMul, optionally through an Add of a
constant bias), forward otherwise (BN before Gemm, MatMul, or an unpadded Conv). The mathematics
is in `normfold.bn_math`; every folded tensor is computed in float64 and rounded once. A BN that
cannot be folded is left exactly as it was, and its record says why.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx_ir as ir

from normfold.bn_math import (
    Affine,
    Factor,
    bn_affine,
    check_scale,
    input_factor,
    input_shift_response,
    output_factor,
    round_once,
    scale_and_round,
)
from normfold.errors import NormfoldError
from normfold.folded_tensor import STREAM_BYTES, FoldedTensor
from normfold.graph_edit import NameSource, add_constant, constant_array, drop_if_unused, take_over, why_not_constant
from normfold.graph_walk import Scope, is_op, iter_scopes, node_label
from normfold.linear_layers import LinearLayer, read_linear_layer
from normfold.modes import bn_epsilon, bn_training_form
from normfold.passes.copy_or_in_place import CopyOrInPlacePass
from normfold.ranks import RankOracle
from normfold.records import TRAINING_MODE, NodeRecord, RewriteResult

PARAM_ROLES = ("scale", "B", "mean", "var")


@dataclasses.dataclass
class _Edit:
    """A checked rewrite, with every new tensor already rounded: applying it cannot fail."""

    layer: LinearLayer
    weight: np.ndarray | FoldedTensor
    bias: np.ndarray
    direction: str
    add_node: ir.Node | None = None
    to_gemm: bool = False
    keep_add: bool = False


class FoldBatchNormPass(CopyOrInPlacePass):
    """Returns a copy of the model with every foldable BatchNormalization folded, plus one record per BN."""

    def call(self, model: ir.Model) -> RewriteResult:
        model = self.target(model)
        ranks, names = RankOracle(model), NameSource(model)
        records: dict[ir.Node, NodeRecord] = {}
        pending = [(scope, node) for scope in iter_scopes(model) for node in list(scope.body) if _is_batchnorm(node)]
        while pending:
            retry = []
            for scope, node in pending:
                if node.graph is None:
                    continue
                records[node] = _fold_one(scope, node, ranks, names)
                if records[node].action == "skipped":
                    retry.append((scope, node))
            if len(retry) == len(pending):
                break  # a fold can unlock a neighbour (forward after backward): retry until none does
            pending = retry
        folded = any(r.action == "folded" for r in records.values())
        if folded:
            for scope in iter_scopes(model):
                scope.body.sort()
        return RewriteResult(model, folded, list(records.values()))


def _is_batchnorm(node: ir.Node) -> bool:
    return is_op(node, "BatchNormalization")


def _fold_one(scope: Scope, bn: ir.Node, ranks: RankOracle, names: NameSource) -> NodeRecord:
    label = node_label(bn)

    def record(action: str, detail: str, reason: str = "") -> NodeRecord:
        return NodeRecord(scope.name, label, bn.op_type, action, detail, reason)  # type: ignore[arg-type]

    training = _training_reason(scope.opset, bn)
    if training:
        return record("skipped", training, TRAINING_MODE)
    affine = _read_affine(scope, bn)
    if isinstance(affine, str):
        return record("skipped", affine)
    backward = _plan_backward(bn, affine, ranks)
    if isinstance(backward, _Edit):
        _apply(scope, bn, backward, names)
        return record("folded", _describe(backward))
    forward = _plan_forward(bn, affine, ranks)
    if isinstance(forward, _Edit):
        _apply(scope, bn, forward, names)
        return record("folded", _describe(forward))
    return record("skipped", f"into its producer: {backward}; into its consumer: {forward}")


def _describe(edit: _Edit) -> str:
    via = f" through Add '{node_label(edit.add_node)}'" if edit.add_node is not None else ""
    as_gemm = " (MatMul rewritten as Gemm)" if edit.to_gemm else ""
    return f"into {edit.layer.label}{via} ({edit.direction}){as_gemm}"


def _read_affine(scope: Scope, bn: ir.Node) -> Affine | str:
    """BN's inference affine map, or why it has none that folding may use."""
    label = node_label(bn)
    values = list(bn.inputs[1:5]) + [None] * (5 - len(bn.inputs))
    arrays = []
    for role, value in zip(PARAM_ROLES, values):
        array = constant_array(value)
        if array is None:
            return why_not_constant(value, role)
        arrays.append(array)
    shapes = [a.shape for a in arrays]
    if len(set(shapes)) != 1:
        described = ", ".join(f"{r} {list(s)}" for r, s in zip(PARAM_ROLES, shapes))
        raise NormfoldError(f"BatchNormalization '{label}' has inconsistent parameter shapes: {described}")
    if arrays[0].ndim != 1:
        return f"its parameters have shape {list(shapes[0])}, not one value per channel (spatial=0)"
    eps = bn_epsilon(bn)
    stacked = np.stack([a.astype(np.float64) for a in arrays])
    if not np.isfinite(stacked).all():
        return "its parameters contain NaN or Inf"
    bad = int((stacked[3] + eps <= 0).sum())
    if bad:
        return f"variance + epsilon is not positive in {bad} channel(s), so it has no finite inference form"
    return bn_affine(*arrays, eps)


def _training_reason(opset: int, bn: ir.Node) -> str:
    """Why this BN must not be folded as it is (training mode), or ''."""
    form = bn_training_form(opset, bn)
    if not form:
        return ""
    return (
        f"{form}: it normalizes with batch statistics, so folding its running statistics would change the "
        "outputs; convert it to inference mode first (normfold mode --eval, or fold --eval)"
    )


def _channels_error(bn: ir.Node, channels: int, layer: LinearLayer, actual: int) -> NormfoldError:
    return NormfoldError(
        f"BatchNormalization '{node_label(bn)}' has {channels} channels but {layer.label} "
        f"{'produces' if actual == layer.out_channels else 'reads'} {actual}"
    )


def _sole_consumer(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node


def _plan_backward(bn: ir.Node, affine: Affine, ranks: RankOracle) -> _Edit | str:
    """Fold into the layer that produces BN's input (y = W x + b  ->  s W x + s b + t)."""
    x = bn.inputs[0]
    producer = None if x is None else x.producer()
    if x is None or producer is None:
        return "its input is a graph input or constant"
    if _sole_consumer(x) is not bn:
        return f"its input '{x.name}' has other consumers or is a graph output"
    add_node, add_bias = None, None
    if is_op(producer, "Add"):
        add_node = producer
        split = _split_add(add_node)
        if isinstance(split, str):
            return split
        layer_out, add_bias = split
        producer = layer_out.producer()
        if producer is None:
            return f"Add '{node_label(add_node)}' adds a bias to a graph input"
        if _sole_consumer(layer_out) is not add_node:
            return f"output '{layer_out.name}' of {producer.op_type} '{node_label(producer)}' has other consumers"
    if producer.graph is not bn.graph:
        return f"its producer {producer.op_type} '{node_label(producer)}' is in an enclosing graph"
    layer = read_linear_layer(producer, ranks)
    if isinstance(layer, str):
        return layer
    channels = affine.scale.shape[0]
    if layer.out_rank is None:
        return f"the rank of {layer.label}'s output is unknown, so BN's channel axis cannot be matched to it"
    if layer.op in ("Gemm", "MatMul") and layer.out_rank != 2:
        return f"{layer.label} outputs rank {layer.out_rank}; BN's channel axis 1 is not its feature axis"
    if layer.out_channels != channels:
        raise _channels_error(bn, channels, layer, layer.out_channels)
    add_vector = np.zeros(channels)
    if add_bias is not None:
        per_channel = _per_channel(add_bias, layer.out_rank, channels)
        if per_channel is None:
            return f"Add '{node_label(add_node)}' adds a bias of shape {list(add_bias.shape)}, not one value per channel"
        add_vector = per_channel
    s, t = affine.scale, affine.shift
    factor = output_factor(layer.weight.shape, s, layer.layout, layer.group)
    if layer.op == "Gemm":
        beta = layer.attr_float("beta", 1.0)
        c = np.zeros(channels) if layer.bias is None else beta * layer.bias.astype(np.float64)
        bias = s * (c + add_vector) + t
    elif layer.op == "MatMul":
        bias = s * add_vector + t
    else:
        own = np.zeros(channels) if layer.bias is None else layer.bias.astype(np.float64).reshape(-1)
        bias = s * (own + add_vector) + t
    keep_add = layer.op == "MatMul" and add_node is not None
    return _rounded(layer, factor, bias, "backward", add_node, layer.op == "MatMul" and not keep_add, keep_add)


def _plan_forward(bn: ir.Node, affine: Affine, ranks: RankOracle) -> _Edit | str:
    """Fold into the layer that consumes BN's output (W (s u + t) + b  ->  (W s) u + (W t + b))."""
    y = bn.outputs[0]
    consumer = _sole_consumer(y)
    if consumer is None:
        return "its output has several consumers or is a graph output"
    if not is_op(consumer, "Gemm", "MatMul", "Conv"):
        return f"its output feeds {consumer.op_type} '{node_label(consumer)}', not Gemm, MatMul or Conv"
    if consumer.graph is not bn.graph:
        return f"its consumer {consumer.op_type} '{node_label(consumer)}' is in another graph"
    if consumer.inputs[0] is not y:
        return f"its output is not the activation input of {consumer.op_type} '{node_label(consumer)}'"
    layer = read_linear_layer(consumer, ranks)
    if isinstance(layer, str):
        return layer
    if layer.op == "Gemm" and consumer.attributes.get_int("transA", 0):
        return f"{layer.label} transposes its input (transA=1)"
    if layer.op == "MatMul":
        rank = None if bn.inputs[0] is None else ranks.rank(bn.inputs[0])
        if rank != 2:
            return f"{layer.label} multiplies along the last axis, which is not BN's channel axis (input rank {rank})"
    if layer.op == "Conv" and _pads_input(consumer):
        return f"{layer.label} pads its input, and padding zeros are not shifted by BN"
    channels = affine.scale.shape[0]
    if layer.in_channels != channels:
        raise _channels_error(bn, channels, layer, layer.in_channels)
    s, t = affine.scale, affine.shift
    factor = input_factor(layer.weight.shape, s, layer.layout, layer.group)
    response = input_shift_response(layer.weight, t, layer.layout, layer.group)
    if layer.op == "Gemm":
        alpha, beta = layer.attr_float("alpha", 1.0), layer.attr_float("beta", 1.0)
        c = np.zeros(1) if layer.bias is None else beta * layer.bias.astype(np.float64)
        bias = c + alpha * response
    elif layer.op == "Conv":
        bias = response + (0.0 if layer.bias is None else layer.bias.astype(np.float64))
    else:
        bias = response
    return _rounded(layer, factor, bias, "forward", None, layer.op == "MatMul", False)


def _rounded(
    layer: LinearLayer, factor: np.ndarray, bias: np.ndarray, direction: str,
    add_node: ir.Node | None, to_gemm: bool, keep_add: bool,
) -> _Edit | str:
    dtype = layer.weight.dtype
    new_weight, reason = _scaled_weight(layer.weight, factor, dtype)
    if new_weight is None:
        return f"{layer.label}: {reason}"
    new_bias, reason = round_once(bias, dtype)
    if new_bias is None:
        return f"{layer.label}: {reason}"
    return _Edit(layer, new_weight, new_bias, direction, add_node, to_gemm, keep_add)


def _scaled_weight(weight: np.ndarray, factor: Factor, dtype: np.dtype) -> tuple[np.ndarray | FoldedTensor | None, str]:
    """The folded weight, or why it cannot be rounded; from STREAM_BYTES on, computed only when written.

    Only read-only weights (memory-mapped or parsed from the file) are streamed: a writable array
    could change between the fold and the write.
    """
    if weight.nbytes < STREAM_BYTES or weight.flags.writeable:
        return scale_and_round(weight, factor, dtype)
    reason = check_scale(weight, factor, dtype)
    return (None, reason) if reason else (FoldedTensor(weight, factor, dtype), "")


def _split_add(add: ir.Node) -> tuple[ir.Value, np.ndarray] | str:
    """(activation, constant bias) of an Add, or why it is not one."""
    if len(add.inputs) != 2 or add.inputs[0] is None or add.inputs[1] is None:
        return f"Add '{node_label(add)}' does not have two inputs"
    for activation, bias in (add.inputs, add.inputs[::-1]):
        array = constant_array(bias)
        if array is not None and constant_array(activation) is None:
            return activation, array
    return f"Add '{node_label(add)}' does not add a constant bias"


def _per_channel(bias: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """The bias as one value per channel (axis 1 of a rank-`rank` output), or None if it varies elsewhere."""
    if bias.ndim > rank:
        return None
    shape = (1,) * (rank - bias.ndim) + bias.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(bias.astype(np.float64).reshape(-1), (channels,)).copy()


def _pads_input(conv: ir.Node) -> bool:
    auto_pad = conv.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return True
    return auto_pad == "NOTSET" and any(conv.attributes.get_ints("pads", ()))


_FOLDED_SUFFIX = re.compile(r"(_folded(_\d+)?)+$")


def _folded_name(names: NameSource, value: ir.Value | None, fallback: str) -> str:
    base = _FOLDED_SUFFIX.sub("", value.name) if value is not None and value.name else fallback
    return names.fresh(f"{base}_folded")


def _apply(scope: Scope, bn: ir.Node, edit: _Edit, names: NameSource) -> None:
    """Rewrite the graph as planned. New tensors get new names: a shared weight is never changed."""
    node = edit.layer.node
    old_inputs = list(node.inputs) + list(bn.inputs[1:])
    label = node_label(node)
    weight = add_constant(scope, node, edit.weight, _folded_name(names, node.inputs[1], f"{label}_weight"), names)
    if edit.keep_add:
        _replace_add_bias(scope, edit.add_node, edit.bias, names)
        node.replace_input_with(1, weight)
        final = edit.add_node.outputs[0]
    elif edit.to_gemm:
        bias_name = names.fresh(f"{label}_bias_folded")
        bias = add_constant(scope, node, edit.bias, bias_name, names)
        activation = bn.inputs[0] if edit.direction == "forward" else node.inputs[0]
        legacy = [ir.AttrInt64("broadcast", 1)] if scope.opset < 7 else []
        gemm = ir.Node("", "Gemm", [activation, weight, bias], attributes=legacy, name=names.fresh(f"{label}_gemm"))
        scope.body.insert_after(node, gemm)
        take_over(node.outputs[0], gemm.outputs[0])
        final = gemm.outputs[0]
        scope.body.remove(node, safe=True)
    else:
        old_bias = node.inputs[2] if len(node.inputs) > 2 else None
        bias = add_constant(scope, node, edit.bias, _folded_name(names, old_bias, f"{label}_bias"), names)
        if len(node.inputs) < 3:
            node.resize_inputs(3)
        node.replace_input_with(1, weight)
        node.replace_input_with(2, bias)
        if node.op_type == "Gemm":
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        if edit.direction == "forward":
            node.replace_input_with(0, bn.inputs[0])
        final = node.outputs[0]
    if edit.direction == "backward":
        take_over(bn.outputs[0], final)
    scope.body.remove(bn, safe=True)
    if edit.add_node is not None and not edit.keep_add:
        old_inputs.extend(edit.add_node.inputs)
        scope.body.remove(edit.add_node, safe=True)
    drop_if_unused(old_inputs)


def _replace_add_bias(scope: Scope, add: ir.Node, bias: np.ndarray, names: NameSource) -> None:
    index = 0 if constant_array(add.inputs[0]) is not None else 1
    old = add.inputs[index]
    add.replace_input_with(index, add_constant(scope, add, bias, _folded_name(names, old, "bias"), names))
    drop_if_unused([old])

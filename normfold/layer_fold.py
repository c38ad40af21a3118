"""Fold a per-channel affine map z = s * x + t into the linear layer beside it, planned then applied.

The map is carried by a node (an inference BatchNormalization, or a Mul/Add/Sub/Div by a constant):
backward into the Conv / ConvTranspose / Gemm / MatMul that produces its input (optionally through an
Add of a constant bias), forward into the one that consumes its output. A plan is checked and every new
tensor rounded before anything is changed, so applying it cannot fail. The mathematics is in
`normfold.bn_math`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from normfold.bn_math import (
    Affine,
    Factor,
    check_scale,
    input_factor,
    input_shift_response,
    output_factor,
    round_once,
    scale_and_round,
)
from normfold.errors import NormfoldError
from normfold.folded_tensor import STREAM_BYTES, FoldedTensor
from normfold.graph_edit import NameSource, add_constant, constant_array, drop_if_unused, take_over
from normfold.graph_walk import Scope, is_op, node_label
from normfold.linear_layers import LinearLayer, read_linear_layer
from normfold.ranks import RankOracle
from normfold.reason_codes import (
    AXIS_MISMATCH,
    NO_LAYER,
    NOT_PER_CHANNEL,
    PADDED_CONV,
    ROUNDING,
    SHARED_VALUE,
    UNSUPPORTED,
    Refusal,
)

# The site's affine map on `channels` channels along `axis` of a rank-`rank` activation -> one float64 scale
# and shift per channel, or why there is none.
AffineFor = Callable[[int, int, int], "Affine | Refusal"]


@dataclasses.dataclass(frozen=True)
class AffineSite:
    """A node applying a per-channel affine map to one activation input.

    `axis` and `channels` are the channel axis and count the node fixes (1 and its parameters' length for
    BatchNormalization), or None when its constant broadcasts onto whichever axis the adjacent layer's
    channels are on (Mul/Add by a constant). `sources` maps each role of its parameters ('scale', 'B',
    'mean', 'var', 'constant') to a tensor name.
    """

    node: ir.Node
    activation: ir.Value
    affine_for: AffineFor
    axis: int | None
    channels: int | None
    sources: tuple[tuple[str, str], ...] = ()

    @property
    def kind(self) -> str:
        """How reports name the node's operator (BN's channel axis, or the elementwise op)."""
        return "BN" if self.node.op_type == "BatchNormalization" else self.node.op_type


@dataclasses.dataclass
class Edit:
    """A checked rewrite, with every new tensor already rounded: applying it cannot fail.

    `weight` None keeps the layer's weight (a pure shift changes only the bias).
    """

    layer: LinearLayer
    weight: np.ndarray | FoldedTensor | None
    bias: np.ndarray | None
    direction: str
    add_node: ir.Node | None = None
    to_gemm: bool = False
    keep_add: bool = False
    through: ir.Node | None = None  # a forward fold's Flatten or Reshape between the site and the layer
    layout: tuple[ir.Node, ...] = ()  # a backward fold's Reshape/Transpose chain between the layer and the site
    insert_add: bool = False  # an N-D MatMul without a bias Add gets one for the shift


def describe(edit: Edit) -> str:
    """The report's detail for a fold: the layer it went into, and how."""
    via = f" through Add '{node_label(edit.add_node)}'" if edit.add_node is not None else ""
    if edit.through is not None:
        via = f" through {edit.through.op_type} '{node_label(edit.through)}'"
    if edit.layout:
        via += " through " + ", ".join(f"{n.op_type} '{node_label(n)}'" for n in edit.layout)
    if edit.insert_add:
        via += " and a new bias Add"
    as_gemm = " (MatMul rewritten as Gemm)" if edit.to_gemm else ""
    return f"into {edit.layer.label}{via} ({edit.direction}){as_gemm}"


def feature_axis(layer: LinearLayer, rank: int) -> int:
    """The axis of a rank-`rank` activation (input or output) that holds the layer's channels."""
    return 1 if layer.op in ("Conv", "ConvTranspose") else rank - 1


def sole_consumer(value: ir.Value) -> ir.Node | None:
    """The one node reading `value`, None if several do or it is a graph output."""
    uses = value.uses()  # a tuple already
    if len(uses) != 1 or value.is_graph_output():
        return None
    return next(iter(uses)).node


def plan_backward(site: AffineSite, ranks: RankOracle) -> Edit | Refusal:
    """Fold into the layer that produces the site's input (y = W x + b  ->  s W x + s b + t)."""
    x, node = site.activation, site.node
    if x.producer() is None:
        return Refusal("its input is a graph input or constant", NO_LAYER)
    if sole_consumer(x) is not node:
        return Refusal(f"its input '{x.name}' has other consumers or is a graph output", SHARED_VALUE)
    site_axis = site.axis
    layout: tuple[ir.Node, ...] = ()
    traced = _through_layout(x, site.axis, ranks) if site.axis is not None else None
    if traced is not None:
        x, site_axis, layout = traced
    producer = x.producer()
    assert producer is not None
    add_node, add_bias = None, None
    if is_op(producer, "Add"):
        add_node = producer
        split = split_add(add_node)
        if isinstance(split, str):
            return split
        layer_out, add_bias = split
        producer = layer_out.producer()
        if producer is None:
            return Refusal(f"Add '{node_label(add_node)}' adds a bias to a graph input", NO_LAYER)
        if sole_consumer(layer_out) is not add_node:
            return Refusal(
                f"output '{layer_out.name}' of {producer.op_type} '{node_label(producer)}' has other consumers",
                SHARED_VALUE,
            )
    if producer.graph is not node.graph:
        return Refusal(f"its producer {producer.op_type} '{node_label(producer)}' is in an enclosing graph", NO_LAYER)
    layer = read_linear_layer(producer, ranks)
    if isinstance(layer, str):
        return layer
    if layer.out_rank is None:
        return Refusal(
            f"the rank of {layer.label}'s output is unknown, so the channel axis cannot be matched to it", AXIS_MISMATCH
        )
    axis = feature_axis(layer, layer.out_rank)
    if site_axis is not None and site_axis != axis:
        return Refusal(
            f"{layer.label} outputs rank {layer.out_rank}; {site.kind}'s channel axis {site_axis} is not its "
            "feature axis",
            AXIS_MISMATCH,
        )
    channels = layer.out_channels
    if site.channels is not None and site.channels != channels:
        raise channels_error(site.node, site.channels, layer, "backward")
    affine = site.affine_for(channels, axis, layer.out_rank)
    if isinstance(affine, str):
        return affine
    add_vector = np.zeros(channels)
    if add_bias is not None:
        per_channel = per_axis(add_bias, layer.out_rank, axis, channels)
        if per_channel is None:
            assert add_node is not None
            return Refusal(
                f"Add '{node_label(add_node)}' adds a bias of shape {list(add_bias.shape)}, not one value per channel",
                NOT_PER_CHANNEL,
            )
        add_vector = per_channel
    s, t = affine.scale, affine.shift
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
    to_gemm = layer.op == "MatMul" and not keep_add and bool((bias != 0).any())
    if not keep_add and not to_gemm and layer.bias is None and not (bias != 0).any():
        bias = None  # nothing to add: a layer without a bias keeps none
    insert_add = to_gemm and layer.out_rank != 2
    factor = None if (s == 1).all() else output_factor(layer.weight.shape, s, layer.layout, layer.group)
    edit = _rounded(layer, factor, bias, "backward", add_node, to_gemm and not insert_add, keep_add)
    if isinstance(edit, Edit):
        edit.layout, edit.insert_add = layout, insert_add
    return edit


LAYOUT_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
MAX_LAYOUT_NODES = 8


def _through_layout(x: ir.Value, axis: int, ranks: RankOracle) -> tuple[ir.Value, int, tuple[ir.Node, ...]] | None:
    """Follow Transpose/Reshape/Flatten/Squeeze/Unsqueeze nodes back from `x` while the channel axis stays one
    whole axis, to a linear layer (or its bias Add): (the layer-side value, its channel axis, the chain), or None.

    BatchNorm1d over tokens (MatMul -> Reshape (N*L, C) -> BN) and over a transposed (N, L, C) tensor
    (MatMul -> Transpose (N, C, L) -> BN), and NHWC exports' Transpose pairs, keep BN's channels on the
    layer's feature axis; the layout nodes stay, the BN goes into the layer."""
    chain: list[ir.Node] = []
    value = x
    while len(chain) < MAX_LAYOUT_NODES:
        node = value.producer()
        if node is None or not is_op(node, *LAYOUT_OPS) or node.inputs[0] is None:
            break
        source = node.inputs[0]
        mapped = _axis_before(node, source, value, axis, ranks)
        if mapped is None or sole_consumer(source) is not node or node.graph is not x.producer().graph:  # type: ignore[union-attr]
            break
        chain.append(node)
        value, axis = source, mapped
    producer = value.producer()
    if not chain or producer is None:
        return None
    if is_op(producer, "Add"):
        split = split_add(producer)
        producer = None if isinstance(split, str) else split[0].producer()
    if producer is None or not is_op(producer, "Conv", "ConvTranspose", "Gemm", "MatMul"):
        return None
    return value, axis, tuple(reversed(chain))


def _axis_before(node: ir.Node, source: ir.Value, result: ir.Value, axis: int, ranks: RankOracle) -> int | None:
    """The axis of a layout node's input that becomes `axis` of its output whole (same size, same stride), or None."""
    if node.op_type == "Transpose":
        rank = ranks.rank(source)
        if rank is None:
            return None
        perm = list(node.attributes.get_ints("perm", list(range(rank - 1, -1, -1))))
        return perm[axis] if 0 <= axis < len(perm) else None
    before, after = ranks.shape(source), ranks.shape(result)
    if before is None or after is None or not 0 <= axis < len(after) or after[axis] is None:
        return None
    stride = _trailing(after[axis + 1 :])
    if stride is None:
        return None
    for index, size in enumerate(before):
        if size == after[axis] and _trailing(before[index + 1 :]) == stride:
            return index
    return None


def _trailing(dims: tuple[int | None, ...]) -> int | None:
    """The product of static dims (the stride of the axis before them), None if one is symbolic."""
    static = [d for d in dims if d is not None]
    return None if len(static) < len(dims) else int(np.prod(static, dtype=np.int64))


def plan_forward(site: AffineSite, ranks: RankOracle) -> Edit | Refusal:
    """Fold into the layer that consumes the site's output (W (s u + t) + b  ->  (W s) u + (W t + b))."""
    node = site.node
    y = node.outputs[0]
    consumer = sole_consumer(y)
    if consumer is None:
        return Refusal("its output has several consumers or is a graph output", SHARED_VALUE)
    through = None
    if is_op(consumer, "Flatten", "Reshape"):
        through, consumer = consumer, sole_consumer(consumer.outputs[0])
        if consumer is None or not is_op(consumer, "Gemm", "MatMul"):
            return Refusal(f"{through.op_type} '{node_label(through)}' does not feed one Gemm or MatMul", NO_LAYER)
    if not is_op(consumer, "Gemm", "MatMul", "Conv"):
        return Refusal(
            f"its output feeds {consumer.op_type} '{node_label(consumer)}', not Gemm, MatMul or Conv", NO_LAYER
        )
    if consumer.graph is not node.graph:
        return Refusal(f"its consumer {consumer.op_type} '{node_label(consumer)}' is in another graph", NO_LAYER)
    if consumer.inputs[0] is not (y if through is None else through.outputs[0]):
        return Refusal(
            f"its output is not the activation input of {consumer.op_type} '{node_label(consumer)}'", NO_LAYER
        )
    layer = read_linear_layer(consumer, ranks)
    if isinstance(layer, str):
        return layer
    if layer.op == "Gemm" and consumer.attributes.get_int("transA", 0) != 0:
        return Refusal(f"{layer.label} transposes its input (transA=1)", UNSUPPORTED)
    rank = ranks.rank(site.activation)
    if rank is None:
        return Refusal(
            f"the rank of its input is unknown, so {layer.label}'s channel axis cannot be matched to it", AXIS_MISMATCH
        )
    if through is not None:
        affine = _flattened_affine(site, through, layer, ranks.shape(site.activation) or (None,) * rank)
        rank = 2
    else:
        axis = feature_axis(layer, rank)
        if site.axis is not None and site.axis != axis:
            return Refusal(
                f"{layer.label} multiplies along the last axis, which is not {site.kind}'s channel axis "
                f"(input rank {rank})",
                AXIS_MISMATCH,
            )
        if site.channels is not None and site.channels != layer.in_channels:
            raise channels_error(site.node, site.channels, layer, "forward")
        affine = site.affine_for(layer.in_channels, axis, rank)
    if isinstance(affine, str):
        return affine
    s, t = affine.scale, affine.shift
    shifts = bool((t != 0).any())
    if layer.op == "Conv" and shifts and pads_input(consumer):
        return Refusal(f"{layer.label} pads its input, and padding zeros are not shifted by {site.kind}", PADDED_CONV)
    if layer.op == "MatMul" and shifts and rank != 2:
        return Refusal(f"{layer.label} reads rank {rank} and has no bias to take the shift", UNSUPPORTED)
    response = input_shift_response(layer.weight, t, layer.layout, layer.group) if shifts else 0.0
    bias: np.ndarray | None
    if not shifts and layer.op != "MatMul":
        bias = None  # a pure scale leaves the bias as it is
    elif layer.op == "Gemm":
        alpha, beta = layer.attr_float("alpha", 1.0), layer.attr_float("beta", 1.0)
        c = np.zeros(1) if layer.bias is None else beta * layer.bias.astype(np.float64)
        bias = c + alpha * response
    elif layer.op == "Conv":
        own = np.zeros(layer.out_channels) if layer.bias is None else layer.bias.astype(np.float64)
        bias = response + own
    else:
        bias = np.asarray(response) if shifts else None
    factor = None if (s == 1).all() else input_factor(layer.weight.shape, s, layer.layout, layer.group)
    edit = _rounded(layer, factor, bias, "forward", None, layer.op == "MatMul" and shifts, False)
    if isinstance(edit, Edit):
        edit.through = through
    return edit


def _flattened_affine(
    site: AffineSite, through: ir.Node, layer: LinearLayer, shape: tuple[int | None, ...]
) -> Affine | Refusal:
    """The site's map on the features of a layer that reads it flattened: channel c of an (N, C, ...) tensor
    is the contiguous block of features [c * k, (c + 1) * k), k the product of the other axes."""
    label = f"{through.op_type} '{node_label(through)}'"
    rank = len(shape)
    if site.axis not in (None, 1) or rank < 2:
        return Refusal(f"{label} flattens a rank-{rank} tensor whose channel axis is not 1", AXIS_MISMATCH)
    why = _keeps_batch_rows(through, shape, layer.in_channels)
    if why:
        return Refusal(f"{label} {why}", AXIS_MISMATCH)
    static = all(d is not None for d in shape[1:])
    channels = site.channels or shape[1]
    if channels is None:
        return Refusal(f"the channel count of {label}'s input is unknown", AXIS_MISMATCH)
    features = layer.in_channels
    if features % channels or (static and _trailing(shape[1:]) != features):
        return Refusal(
            f"{label} gives {features} features to {layer.label}, not a whole block per each of {channels} channels",
            AXIS_MISMATCH,
        )
    affine = site.affine_for(channels, 1, rank)
    if isinstance(affine, str):
        return affine
    block = features // channels
    return Affine(np.repeat(affine.scale, block), np.repeat(affine.shift, block))


def _keeps_batch_rows(node: ir.Node, shape: tuple[int | None, ...], features: int) -> str:
    """Why a Flatten or Reshape does not turn (N, C, ...) into (N, C * ...) row by row ('' if it does)."""
    if node.op_type == "Flatten":
        return "" if node.attributes.get_int("axis", 1) == 1 else "does not flatten from axis 1"
    target = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is None or target.shape != (2,):
        return "reshapes to a run-time or non-2-D shape"
    if node.attributes.get_int("allowzero", 0):
        return "uses allowzero=1"
    first, second = (int(v) for v in target)
    if second not in (-1, features):
        return f"reshapes to [{first}, {second}], not [N, {features}]"
    if first == 0 or (shape[0] is not None and first == shape[0]):
        return ""
    rest = shape[1:]
    if first == -1 and second == features and _trailing(rest) == features:
        return ""
    return f"reshapes to [{first}, {second}], which may not keep one row per batch element"


def _rounded(
    layer: LinearLayer,
    factor: Factor | None,
    bias: np.ndarray | None,
    direction: str,
    add_node: ir.Node | None,
    to_gemm: bool,
    keep_add: bool,
) -> Edit | Refusal:
    dtype = layer.weight.dtype
    new_weight = None
    if factor is not None:
        new_weight, reason = scaled_weight(layer.weight, factor, dtype)
        if new_weight is None:
            return Refusal(f"{layer.label}: {reason}", ROUNDING)
    new_bias = None
    if bias is not None:
        new_bias, reason = round_once(bias, dtype)
        if new_bias is None:
            return Refusal(f"{layer.label}: {reason}", ROUNDING)
    return Edit(layer, new_weight, new_bias, direction, add_node, to_gemm, keep_add)


def scaled_weight(weight: np.ndarray, factor: Factor, dtype: np.dtype) -> tuple[np.ndarray | FoldedTensor | None, str]:
    """The folded weight, or why it cannot be rounded; from STREAM_BYTES on, computed only when written.

    Only read-only weights (memory-mapped or parsed from the file) are streamed: a writable array
    could change between the fold and the write.
    """
    if weight.nbytes < STREAM_BYTES or weight.flags.writeable:
        return scale_and_round(weight, factor, dtype)
    reason = check_scale(weight, factor, dtype)
    return (None, reason) if reason else (FoldedTensor(weight, factor, dtype), "")


def split_add(add: ir.Node) -> tuple[ir.Value, np.ndarray] | Refusal:
    """(activation, constant bias) of an Add, or why it is not one."""
    if len(add.inputs) != 2 or add.inputs[0] is None or add.inputs[1] is None:
        return Refusal(f"Add '{node_label(add)}' does not have two inputs", NO_LAYER)
    first, second = add.inputs
    for activation, bias in ((first, second), (second, first)):
        array = constant_array(bias)
        if activation is not None and array is not None and constant_array(activation) is None:
            return activation, array
    return Refusal(f"Add '{node_label(add)}' does not add a constant bias", NO_LAYER)


def per_axis(constant: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """A constant broadcast against a rank-`rank` tensor, as one float64 value per channel on `axis`;
    None if it varies along another axis or would enlarge the tensor."""
    if constant.ndim > rank:
        return None
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(constant.astype(np.float64).reshape(-1), (channels,)).copy()


def pads_input(conv: ir.Node) -> bool:
    """Whether a Conv reads padding zeros (explicit pads or SAME auto-padding)."""
    auto_pad = conv.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return True
    return auto_pad == "NOTSET" and any(conv.attributes.get_ints("pads", ()))


def channels_error(node: ir.Node, channels: int, layer: LinearLayer, direction: str) -> NormfoldError:
    """A BN whose channel count differs from its layer's: the model itself is inconsistent."""
    actual = layer.out_channels if direction == "backward" else layer.in_channels
    return NormfoldError(
        f"BatchNormalization '{node_label(node)}' has {channels} channels but {layer.label} "
        f"{'produces' if direction == 'backward' else 'reads'} {actual}"
    )


_FOLDED_SUFFIX = re.compile(r"(_folded(_\d+)?)+$")


def _folded_name(names: NameSource, value: ir.Value | None, fallback: str) -> str:
    base = _FOLDED_SUFFIX.sub("", value.name) if value is not None and value.name else fallback
    return names.fresh(f"{base}_folded")


def apply_edit(scope: Scope, site: AffineSite, edit: Edit, names: NameSource) -> dict[str, list[str]]:
    """Rewrite the graph as planned; new tensors get new names, so a shared weight is never changed.

    Returns the provenance: each new tensor's name and the names of the tensors it was computed from.
    """
    names.reserve()  # a deferred source reads the names before this first change
    node, carrier = edit.layer.node, site.node
    old_inputs = list(node.inputs) + [v for v in carrier.inputs if v is not site.activation]
    label = node_label(node)
    params = [name for _, name in site.sources]
    old_weight = node.inputs[1]
    old_bias = node.inputs[2] if len(node.inputs) > 2 else None
    read = [old_weight] if edit.direction == "forward" else []  # a forward shift's response is W t
    bias_sources = _names([old_bias, _add_bias_value(edit.add_node), *read]) + params
    provenance: dict[str, list[str]] = {}
    weight = old_weight
    if edit.weight is not None:
        weight = add_constant(scope, node, edit.weight, _folded_name(names, old_weight, f"{label}_weight"), names)
        provenance[weight.name or ""] = _names([old_weight]) + params
    if edit.keep_add:
        assert edit.add_node is not None and edit.bias is not None
        provenance[_replace_add_bias(scope, edit.add_node, edit.bias, names)] = bias_sources
        node.replace_input_with(1, weight)
        final = edit.add_node.outputs[0]
    elif edit.to_gemm:
        assert edit.bias is not None
        bias = add_constant(scope, node, edit.bias, names.fresh(f"{label}_bias_folded"), names)
        provenance[bias.name or ""] = bias_sources
        activation = site.activation if edit.direction == "forward" else node.inputs[0]
        if edit.through is not None:
            edit.through.replace_input_with(0, site.activation)
            activation = edit.through.outputs[0]
        legacy = [ir.AttrInt64("broadcast", 1)] if scope.opset < 7 else []
        gemm = ir.Node("", "Gemm", [activation, weight, bias], attributes=legacy, name=names.fresh(f"{label}_gemm"))
        scope.body.insert_after(node, gemm)
        take_over(node.outputs[0], gemm.outputs[0])
        final = gemm.outputs[0]
        scope.body.remove(node, safe=True)
    else:
        node.replace_input_with(1, weight)
        if edit.bias is not None and not edit.insert_add:
            bias = add_constant(scope, node, edit.bias, _folded_name(names, old_bias, f"{label}_bias"), names)
            provenance[bias.name or ""] = bias_sources
            if len(node.inputs) < 3:
                node.resize_inputs(3)
            node.replace_input_with(2, bias)
            if node.op_type == "Gemm":
                node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        if edit.direction == "forward":
            (edit.through or node).replace_input_with(0, site.activation)
        final = node.outputs[0]
    if edit.insert_add:
        assert edit.bias is not None
        constant = add_constant(scope, node, edit.bias, names.fresh(f"{label}_bias_folded"), names)
        provenance[constant.name or ""] = bias_sources
        final = insert_bias_add(scope, node, constant, names)
    if edit.layout:
        final = site.activation  # the layout chain now carries the folded layer's output
    if edit.direction == "backward":
        take_over(carrier.outputs[0], final)
    scope.body.remove(carrier, safe=True)
    if edit.add_node is not None and not edit.keep_add:
        old_inputs.extend(edit.add_node.inputs)
        scope.body.remove(edit.add_node, safe=True)
    drop_if_unused(old_inputs)
    return provenance


def insert_bias_add(scope: Scope, layer: ir.Node, bias: ir.Value, names: NameSource) -> ir.Value:
    """An Add of `bias` right after a layer without a bias input (an N-D MatMul), taking over its consumers
    (and its place among the graph outputs, with its name)."""
    output = layer.outputs[0]
    uses = list(output.uses())
    add = ir.Node("", "Add", [output, bias], name=names.fresh(f"{node_label(layer)}_bias_add"))
    result = add.outputs[0]
    result.type, result.shape = output.type, output.shape
    scope.body.insert_after(layer, add)
    for use in uses:
        use.node.replace_input_with(use.idx, result)
    if output.is_graph_output():
        outputs = scope.body.outputs
        for index, value in enumerate(outputs):
            if value is output:
                outputs[index] = result
        name = output.name
        output.name = names.fresh(f"{name}_unbiased")
        result.name = name
    else:
        result.name = names.fresh(f"{output.name or node_label(layer)}_biased")
    return result


def _names(values: list[ir.Value | None]) -> list[str]:
    return [v.name for v in values if v is not None and v.name]


def _add_bias_value(add: ir.Node | None) -> ir.Value | None:
    if add is None:
        return None
    return add.inputs[0] if constant_array(add.inputs[0]) is not None else add.inputs[1]


def _replace_add_bias(scope: Scope, add: ir.Node, bias: np.ndarray, names: NameSource) -> str:
    index = 0 if constant_array(add.inputs[0]) is not None else 1
    old = add.inputs[index]
    value = add_constant(scope, add, bias, _folded_name(names, old, "bias"), names)
    add.replace_input_with(index, value)
    drop_if_unused([old])
    return value.name or ""

"""What a float64 reference run costs, known before it runs: the executor's schedule (topological order, and
when each tensor is dropped), the float64 bytes alive at its peak, and the arithmetic of its contractions.

Sizes come from static shapes: onnx's shape inference on a light copy of the model (large initializers
replaced by typed inputs, graph inputs given the feeds' concrete shapes). Every float tensor counts 8 bytes
an element, as the run widens it, except the weights the kernels widen block by block (their own size); a
tensor whose shape inference leaves open is listed in `unknown` and counted as 0 (the executor's runtime
guard still sees it).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from normfold.external_data import stored_bytes
from normfold.graph_walk import STANDARD_DOMAINS, is_op
from normfold.validate.float64_kernels import ITEM, KERNELS

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})
CONTRACTIONS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
KEPT_INITIALIZER_BYTES = 1 << 16  # smaller initializers stay in the light copy: shape data (Reshape) lives there

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Float64Cost:
    """The estimated cost of one float64 reference run.

    flops: 2 per multiply-add of Conv, ConvTranspose, Gemm and MatMul (the ops that dominate; others are
    not counted). peak_bytes: the most bytes alive at once under the executor's schedule (inputs, widened
    weights from first to last use, intermediates until their last use, outputs to the end). total_bytes:
    every tensor kept to the end, as the whole-model evaluator holds them. weight_bytes: the initializers as
    the run holds them (widened, or in their own dtype where a kernel widens them block by block). unknown:
    tensors without a static size, counted as 0.
    """

    flops: float
    peak_bytes: int
    total_bytes: int
    weight_bytes: int
    unknown: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The main graph's nodes in the order the executor runs them, and the names dropped after each step."""

    order: list[onnx.NodeProto]
    drops: list[list[str]]
    initializers: dict[str, onnx.TensorProto]
    used: frozenset[str]
    outputs: list[str]
    narrow: frozenset[str] = frozenset()  # initializers held in their own dtype (blockwise_weights)


def schedule(graph: onnx.GraphProto) -> Schedule:
    """Topological order (the graph's own when it is sorted), and after each step the tensors no later step
    reads: inputs at their last use, outputs nothing reads; graph outputs are never dropped."""
    initializers = {t.name: t for t in graph.initializer}
    order = _topological(list(graph.node), {i.name for i in graph.input} | set(initializers))
    outputs = [o.name for o in graph.output]
    last = {}
    for step, node in enumerate(order):
        for name in node.input:
            if name:
                last[name] = step
    keep = set(outputs)
    drops: list[list[str]] = [[] for _ in order]
    for name, step in last.items():
        if name not in keep:
            drops[step].append(name)
    for step, node in enumerate(order):
        drops[step] += [name for name in node.output if name and name not in last and name not in keep]
    narrow = blockwise_weights(order, initializers, keep)
    return Schedule(order, drops, initializers, frozenset(last) | keep, outputs, narrow)


# Weights the kernels widen block by block: float32 and float16 (numpy promotes them to float64 exactly).
BLOCKWISE_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16})


def blockwise_weights(
    order: list[onnx.NodeProto], initializers: Mapping[str, onnx.TensorProto], outputs: set[str]
) -> frozenset[str]:
    """The float32 and float16 initializers that only kernels' blockwise inputs read (a Conv's weight): held in
    their own dtype, never widened whole (a 429 MB weight would be 858 MB of float64 beside it)."""
    only_blockwise: dict[str, bool] = {}
    for node in order:
        kernel = KERNELS.get(node.op_type) if node.domain in STANDARD_DOMAINS else None
        for slot, name in enumerate(node.input):
            if name in initializers:
                blockwise = kernel is not None and slot in kernel.blockwise_inputs
                only_blockwise[name] = only_blockwise.get(name, True) and blockwise
    return frozenset(
        name
        for name, blockwise in only_blockwise.items()
        if blockwise and name not in outputs and initializers[name].data_type in BLOCKWISE_TYPES
    )


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """The nodes in an order where each runs after the producers of its inputs (stable: graph order first)."""
    produced = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    needs = [
        {produced[n] for n in node.input if n in produced and n not in available} - {index}
        for index, node in enumerate(nodes)
    ]
    if all(max(need, default=-1) < index for index, need in enumerate(needs)):
        return nodes
    waiting = [len(need) for need in needs]
    users: list[list[int]] = [[] for _ in nodes]
    for index, need in enumerate(needs):
        for producer in need:
            users[producer].append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(nodes[index])
        for user in users[index]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) < len(nodes):
        stuck = next(nodes[i] for i, count in enumerate(waiting) if count)
        raise ValueError(f"the graph has a cycle through node '{stuck.name or stuck.op_type}'")
    return order


def estimate_cost(
    model: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    *,
    plan: Schedule | None = None,
    base_dir: Path | None = None,
) -> Float64Cost:
    """The flops and float64 memory of running `model` on `feeds` with the executor, from static shapes
    (`plan`: the model's schedule, when the caller has it already; `base_dir`: where external data not
    loaded into `model` lives)."""
    plan = plan or schedule(model.graph)
    types = static_types(model, {name: value.shape for name, value in feeds.items()}, base_dir)
    sizes: dict[str, int | None] = {name: _float64_bytes(value.dtype, value.shape) for name, value in feeds.items()}
    # A string initializer has no float64 size: it counts 0, as a tensor of unknown size does.
    weights = {
        name: (stored_bytes(t) if name in plan.narrow else _float64_bytes(t.data_type, tuple(t.dims))) or 0
        for name, t in plan.initializers.items()
        if name not in feeds
    }
    unknown: list[str] = []

    def size(name: str) -> int:
        if name not in sizes:
            sizes[name] = _float64_bytes(*types.get(name, (0, None)))
            if sizes[name] is None:
                unknown.append(name)
        return sizes[name] or 0

    live = sum(size(name) for name in feeds if name in plan.used)
    peak, flops, loaded = live, 0.0, set()
    for node, drops in zip(plan.order, plan.drops):
        fresh = {name for name in node.input if name in weights and name not in loaded}
        loaded |= fresh
        live += sum(weights[name] for name in fresh) + sum(size(name) for name in node.output if name)
        peak = max(peak, live)
        flops += _node_flops(node, types, feeds, plan.initializers, unknown)
        live -= sum(weights[name] if name in weights else size(name) for name in drops)
    total = sum(size(name) for name in feeds) + sum(weights.values())
    total += sum(size(name) for node in plan.order for name in node.output if name)
    return Float64Cost(flops, peak, total, sum(weights.values()), tuple(dict.fromkeys(unknown)))


def _node_flops(
    node: onnx.NodeProto,
    types: dict[str, tuple[int, Shape | None]],
    feeds: Mapping[str, np.ndarray],
    initializers: dict[str, onnx.TensorProto],
    unknown: list[str],
) -> float:
    """The node's contraction flops from static shapes (0 for other ops; unknown shapes are noted)."""
    if not is_op(node, *CONTRACTIONS):
        return 0.0

    def shape(name: str) -> Shape | None:
        if name in feeds:
            return tuple(feeds[name].shape)
        if name in initializers:
            return tuple(initializers[name].dims)
        return types.get(name, (0, None))[1]

    inputs = [s for n in node.input[:2] if (s := shape(n)) is not None]
    outputs = [s for n in node.output[:1] if (s := shape(n)) is not None]
    if len(inputs) < 2 or not outputs:  # an input or the output is absent or of unknown shape
        unknown.append(node.output[0] if node.output else node.name)
        return 0.0
    return kernel_flops(node.op_type, inputs, outputs)


def kernel_flops(op_type: str, inputs: list[Shape], outputs: list[Shape]) -> float:
    """2 per multiply-add of a contraction, from its first two input shapes and its output shape."""
    x, w, y = inputs[0], inputs[1], outputs[0]
    if op_type == "Conv":
        return 2.0 * math.prod(y) * math.prod(w[1:])
    if op_type == "ConvTranspose":
        return 2.0 * math.prod(x) * math.prod(w[1:])
    if op_type == "Gemm":
        rows = y[0]
        return 2.0 * math.prod(y) * (math.prod(x) // rows if rows else 0)
    if op_type == "MatMul":
        return 2.0 * math.prod(y) * x[-1]
    return 0.0


def static_types(
    model: onnx.ModelProto, shapes: Mapping[str, Shape], base_dir: Path | None = None
) -> dict[str, tuple[int, Shape | None]]:
    """{name: (element type, shape or None)} for every tensor shape inference can size, inputs at `shapes`."""
    light = _light_copy(model, shapes, base_dir)
    try:
        light = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        pass  # a model shape inference rejects: sizes stay unknown and the runtime guard bounds the run
    graph = light.graph
    return {info.name: _type_of(info.type) for info in [*graph.input, *graph.value_info, *graph.output]}


def _light_copy(model: onnx.ModelProto, shapes: Mapping[str, Shape], base_dir: Path | None = None) -> onnx.ModelProto:
    """The model without its large initializers (typed inputs instead), the fed inputs at concrete shapes; small
    initializers stored outside the model are read from `base_dir` (shape inference needs Reshape's shapes)."""
    graph = model.graph
    kept = [t for t in graph.initializer if stored_bytes(t) <= KEPT_INITIALIZER_BYTES]
    if base_dir is not None:
        kept = [
            numpy_helper.from_array(numpy_helper.to_array(t, base_dir=str(base_dir)), t.name)
            if t.data_location == TensorProto.EXTERNAL
            else t
            for t in kept
        ]
    kept_names = {t.name for t in kept}
    inputs = []
    for info in graph.input:
        if info.name in shapes:
            elem = info.type.tensor_type.elem_type if info.type.HasField("tensor_type") else TensorProto.FLOAT
            info = helper.make_tensor_value_info(info.name, elem, list(shapes[info.name]))
        inputs.append(info)
    declared = {info.name for info in graph.input}
    inputs += [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in graph.initializer
        if t.name not in kept_names and t.name not in declared
    ]
    light = helper.make_graph(list(graph.node), graph.name, inputs, list(graph.output), kept, value_info=[])
    copy = helper.make_model(light, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    copy.functions.extend(model.functions)
    return copy


def _type_of(proto: onnx.TypeProto) -> tuple[int, Shape | None]:
    if not proto.HasField("tensor_type"):
        return 0, None
    tensor = proto.tensor_type
    if not tensor.HasField("shape"):
        return tensor.elem_type, None
    shape = tuple(d.dim_value for d in tensor.shape.dim)
    if 0 in shape and not all(d.HasField("dim_value") for d in tensor.shape.dim):  # 0: a size or an unset dim
        return tensor.elem_type, None
    return tensor.elem_type, shape


def _float64_bytes(dtype: np.dtype | int, shape: Shape | None) -> int | None:
    """Bytes of the tensor as the run holds it (float types widened to 8 bytes); None when unknown."""
    if shape is None:
        return None
    if isinstance(dtype, int):
        if dtype in FLOAT_TYPES:
            return ITEM * math.prod(shape)
        if dtype in (TensorProto.STRING, TensorProto.UNDEFINED):
            return None
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(dtype))
    itemsize = ITEM if dtype.kind == "f" or dtype.name == "bfloat16" else dtype.itemsize
    return itemsize * math.prod(shape)


def format_bytes(count: float) -> str:
    """A byte count for messages: 3.1 GiB, 512 MiB, 12 KiB, 100 B."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.3g} {unit}"
    return f"{int(count)} B"

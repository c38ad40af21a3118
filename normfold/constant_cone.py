"""A value computed from constants alone (`Constant -> CastLike -> Expand`, `Reshape(Constant, Constant)`) is a
constant: its cone of producers is evaluated once, with onnx's reference evaluator, when it is small.

Exporters emit such subexpressions for parameters (the dynamo exporter's zero Conv bias, paddle2onnx's
reshaped ConvTranspose bias); without this the fold would refuse them as computed at run time. The cone must
be deterministic standard-domain nodes of one graph whose leaves are initializers (not graph inputs) or
Constant nodes, at most MAX_NODES nodes and MAX_BYTES of output, so reading a parameter stays cheap.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir

from normfold.graph_walk import NOT_CONSTANT, STANDARD_DOMAINS

MAX_NODES = 64  # the dynamo exporter computes FrozenBatchNorm2d's shift in a 31-node chain
MAX_BYTES = 64 << 20


def evaluate_cone(value: ir.Value) -> np.ndarray | None:
    """The value's contents when it is computed from constants alone (see the module's docstring), else None."""
    nodes = _cone(value)
    graph = value.graph
    if not nodes or not isinstance(graph, ir.Graph):
        return None
    members = set(map(id, nodes))
    leaves: dict[str, ir.Value] = {}
    read: set[str] = set()  # leaves whose contents are read, not only their type or shape
    shaped: set[str] = set()  # leaves whose shape is read (Shape)
    for node in nodes:
        for index, leaf in enumerate(node.inputs):
            if leaf is not None and id(leaf.producer()) not in members:
                leaves[leaf.name or ""] = leaf
                if (node.op_type, index) not in _TYPE_ONLY:
                    read.add(leaf.name or "")
                elif node.op_type == "Shape":
                    shaped.add(leaf.name or "")
    tensors, stand_ins = [], {}
    for name, leaf in leaves.items():
        if leaf.const_value is not None and name:
            tensors.append(ir.serde.serialize_tensor(leaf.const_value))
            tensors[-1].name = name
        elif name in read or (stand_in := _stand_in(leaf, name in shaped)) is None:
            return None
        else:
            stand_ins[name] = stand_in
    if sum(t.const_value.nbytes for t in leaves.values() if t.const_value is not None) > MAX_BYTES:
        return None
    from onnx.reference import ReferenceEvaluator  # only for models that have such cones

    proto = onnx.helper.make_graph(
        [ir.serde.serialize_node(node) for node in _topological(nodes)],
        "cone",
        [onnx.helper.make_tensor_value_info(name, 0, None) for name in stand_ins],
        [onnx.ValueInfoProto(name=value.name)],
        tensors,
    )
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in graph.opset_imports.items()]
    try:
        model = onnx.helper.make_model(proto, opset_imports=opsets)
        outputs = ReferenceEvaluator(model).run(None, stand_ins)
        assert isinstance(outputs, list)  # no intermediate results were asked for: the outputs in a list
        result = outputs[0]
    except Exception:  # an op or dtype the evaluator lacks: the value stays what it was, computed at run time
        return None
    result = np.asarray(result)
    return result if result.nbytes <= MAX_BYTES else None


# Inputs whose type or shape alone is read: CastLike's target_type, Shape's data. The dynamo exporter's zero
# Conv bias is CastLike(Constant, <graph input>) expanded to Shape(<weight>)[0:1].
_TYPE_ONLY = frozenset({("CastLike", 1), ("Shape", 0)})


def _stand_in(value: ir.Value, shaped: bool) -> np.ndarray | None:
    """An array with the value's static dtype (and, when `shaped`, its static shape), holding no memory (a zero
    broadcast); None when those are not known."""
    if value.type is None:
        return None
    shape: tuple[int, ...] = ()
    if shaped:
        if value.shape is None:
            return None
        shape = tuple(d for d in value.shape if isinstance(d, int))
        if len(shape) != len(value.shape):  # a symbolic or unknown dim
            return None
    try:
        dtype = value.type.dtype.numpy()
    except (TypeError, ValueError):
        return None
    return np.broadcast_to(np.zeros((), dtype), shape)


class _RuntimeValues:
    """Values known to depend on a graph input through inputs read for their contents (not through
    _TYPE_ONLY ones): `_cone` of such a value is always empty, wherever its walk would stop.

    Filled by one sweep per graph, in node order, when first asked about one of its values, and by walks
    from values added since. A fact stays true under the passes' rewrites: each replaces a value or input
    by one computed from the same activation, or a constant by a constant, so it is kept for a whole pass.
    Without it each parameter read walks up to MAX_NODES producers through the activations above it.
    """

    def __init__(self) -> None:
        self._values: set[ir.Value] = set()
        self._swept: set[ir.Graph] = set()

    def known(self, value: ir.Value) -> bool:
        """Whether `value` is shown to depend on a graph input (a False is no proof of the contrary)."""
        if value in self._values:
            return True
        graph = value.graph
        if isinstance(graph, ir.Graph) and graph not in self._swept:
            self._swept.add(graph)
            self._sweep(graph)
            if value in self._values:
                return True
        if self._reaches_input(value):
            self._values.add(value)
            return True
        return False

    def _sweep(self, graph: ir.Graph) -> None:
        values = self._values
        for node in graph:
            op_type = node.op_type
            for index, input_value in enumerate(node.inputs):
                if input_value is None or (op_type, index) in _TYPE_ONLY:
                    continue
                if input_value.is_graph_input() or input_value in values:
                    values.update(node.outputs)
                    break

    def _reaches_input(self, value: ir.Value) -> bool:
        """A walk up at most MAX_NODES producers (past that, `_cone` is empty anyway) to a graph input or a
        known value."""
        seen: set[ir.Node] = set()
        pending = [value.producer()]
        while pending:
            node = pending.pop()
            if node is None or node in seen:
                continue
            if len(seen) >= MAX_NODES:
                return False
            seen.add(node)
            for index, input_value in enumerate(node.inputs):
                if input_value is None or (node.op_type, index) in _TYPE_ONLY:
                    continue
                if input_value.is_graph_input() or input_value in self._values:
                    return True
                pending.append(input_value.producer())
        return False


_RUNTIME: contextvars.ContextVar[_RuntimeValues | None] = contextvars.ContextVar("normfold_runtime", default=None)


@contextlib.contextmanager
def runtime_values() -> Iterator[None]:
    """Within this context, remember which values depend on graph inputs (see `_RuntimeValues`): for one pass
    whose rewrites are `layer_fold.apply_edit`'s, so that reading a layer's parameters does not walk the
    activations above it."""
    token = _RUNTIME.set(_RuntimeValues())
    try:
        yield
    finally:
        _RUNTIME.reset(token)


def _cone(value: ir.Value) -> list[ir.Node]:
    """The producers `value` depends on, back to its constant leaves (and to values read only for their type or
    shape); empty when it is not such a value."""
    if value.is_graph_input() or value.producer() is None or not value.name:
        return []
    runtime = _RUNTIME.get()
    if runtime is not None and runtime.known(value):
        return []
    graph = value.graph
    found: dict[int, ir.Node] = {}
    pending = [value.producer()]
    while pending:
        node = pending.pop()
        if node is None or id(node) in found:
            continue
        if node.domain not in STANDARD_DOMAINS or node.op_type in NOT_CONSTANT or len(found) >= MAX_NODES:
            return []
        if node.graph is not graph:
            return []
        found[id(node)] = node
        for index, input_value in enumerate(node.inputs):
            if input_value is None or (node.op_type, index) in _TYPE_ONLY:
                continue
            if input_value.is_graph_input():
                return []
            pending.append(input_value.producer())
    return list(found.values())


def _topological(nodes: list[ir.Node]) -> list[ir.Node]:
    """The cone's nodes in graph order."""
    chosen = set(map(id, nodes))
    graph = nodes[0].graph
    assert graph is not None
    return [node for node in graph if id(node) in chosen]

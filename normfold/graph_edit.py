"""Small, safe graph edits shared by the passes: constants in, values swapped, orphans out."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import numpy as np
import onnx_ir as ir

from normfold.graph_walk import NOT_CONSTANT, STANDARD_DOMAINS, Scope, is_op, iter_scopes
from normfold.reason_codes import NOT_CONSTANT as NOT_CONSTANT_CODE
from normfold.reason_codes import Refusal


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant contents (initializer or Constant node), None if it can change at run time.

    An initializer that is also a graph input is not constant: callers may feed a different tensor.
    """
    while value is not None and not value.is_graph_input():
        producer = value.producer()
        if producer is None or not is_op(producer, "Identity"):
            break
        value = producer.inputs[0]  # a loop, not recursion: exporters chain Identity nodes by the thousand
    if value is None or value.is_graph_input():
        return None
    producer = value.producer()
    if producer is not None and is_op(producer, "Constant"):
        return _constant_node_array(producer)
    tensor = value.const_value
    if tensor is None:
        return _evaluate_cone()(value)
    return tensor.numpy()


@functools.cache
def _evaluate_cone() -> Callable[[ir.Value], np.ndarray | None]:
    """constant_cone.evaluate_cone, imported on first use (once: an import statement per call costs a lookup)."""
    from normfold.constant_cone import evaluate_cone

    return evaluate_cone


def _constant_node_array(node: ir.Node) -> np.ndarray | None:
    """A Constant node's value, read without touching its tensor (onnx_ir's helper renames it in place)."""
    if len(node.attributes) != 1:
        return None
    name, attr = next(iter(node.attributes.items()))
    if attr.is_ref():
        return None
    if name == "value":
        return attr.as_tensor().numpy()
    if name in ("value_float", "value_floats"):
        return np.array(attr.value, dtype=np.float32)
    if name in ("value_int", "value_ints"):
        return np.array(attr.value, dtype=np.int64)
    return None


def why_not_constant(value: ir.Value | None, role: str) -> Refusal:
    """A reason, for reports, why `value` is not usable as a constant."""
    if value is None:
        return Refusal(f"{role} is missing", NOT_CONSTANT_CODE)
    if value.is_graph_input():
        return Refusal(
            f"{role} '{value.name}' is a graph input, so callers can override it at run time", NOT_CONSTANT_CODE
        )
    return Refusal(f"{role} '{value.name}' is computed at run time, not a constant", NOT_CONSTANT_CODE)


class NameSource:
    """Hands out names that no value or node of any graph or function of the model used when it was made.

    A `deferred` source reads the model's names only when `reserve` (or `fresh`) is first called, so a pass
    that rewrites nothing never scans the model; its caller must reserve before the model first changes
    (`layer_fold.apply_edit` does), so that the names are those the model had before any rewrite.
    """

    def __init__(self, model: ir.Model, *, deferred: bool = False) -> None:
        self._model = model
        self._taken: set[str] | None = None
        if not deferred:
            self.reserve()

    def reserve(self) -> None:
        """Read the names the model uses, once: before any rewrite that a deferred source names for."""
        if self._taken is not None:
            return
        taken: set[str] = set()
        for scope in iter_scopes(self._model):
            taken.update(v.name for v in _scope_values(scope) if v.name)
            taken.update(node.name for node in scope.body if node.name)
        self._taken = taken

    def fresh(self, base: str) -> str:
        """`base` itself if unused, else `base_1`, `base_2`, ..."""
        if self._taken is None:
            self.reserve()
        taken = self._taken
        assert taken is not None
        name, counter = base, 0
        while name in taken:
            counter += 1
            name = f"{base}_{counter}"
        taken.add(name)
        return name


def _scope_values(scope: Scope) -> Iterable[ir.Value]:
    yield from scope.body.inputs
    if isinstance(scope.body, ir.Graph):
        yield from scope.body.initializers.values()
    for node in scope.body:
        yield from node.outputs


def add_constant(
    scope: Scope, before: ir.Node, array: np.ndarray | ir.TensorProtocol, name: str, names: NameSource
) -> ir.Value:
    """A new constant holding `array` (or a tensor): an initializer in the main graph, a Constant node elsewhere.

    Subgraphs and functions get Constant nodes because functions cannot hold initializers and
    runtimes handle subgraph initializers unevenly.
    """
    if isinstance(array, np.ndarray):
        tensor: ir.TensorProtocol = ir.Tensor(np.ascontiguousarray(array), name=name)
    else:
        tensor = array
        tensor.name = name
    shape = tensor.shape
    assert isinstance(shape, ir.Shape)  # every onnx_ir tensor's; a value takes no other
    if scope.is_main:
        value = ir.Value(name=name, type=ir.TensorType(tensor.dtype), shape=shape, const_value=tensor)
        assert isinstance(scope.body, ir.Graph)
        scope.body.register_initializer(value)
        return value
    node = ir.Node(
        "", "Constant", [], attributes=[ir.AttrTensor("value", tensor)], name=names.fresh(f"{name}_constant")
    )
    node.outputs[0].name = name
    node.outputs[0].type = ir.TensorType(tensor.dtype)
    node.outputs[0].shape = shape
    scope.body.insert_before(before, node)
    return node.outputs[0]


def take_over(old: ir.Value, new: ir.Value) -> None:
    """Make `new` replace `old` for every consumer; a graph output keeps its name and position."""
    if old.is_graph_output():
        name = old.name
        old.name = None
        new.name = name
    if new.type is None:
        new.type = old.type
    if new.shape is None:
        new.shape = old.shape
    old.replace_all_uses_with(new, replace_graph_outputs=True)


def drop_if_unused(values: Iterable[ir.Value | None]) -> None:
    """Remove what a rewrite left without any consumer: initializers, and the nodes that computed the dropped
    value from constants (Constant, Identity chains, a parameter's cone), back to the next value still in use."""
    pending = list(values)
    while pending:  # a work list, not recursion: Identity chains may be thousands of nodes long
        value = pending.pop()
        if value is None or value.uses() or value.is_graph_output() or value.is_graph_input():
            continue
        owner, name = value.graph, value.name
        if value.is_initializer() and owner is not None and name is not None and name in owner.initializers:
            del owner.initializers[name]
            continue
        producer = value.producer()
        if producer is None or producer.graph is None or not _removable(producer):
            continue
        upstream = list(producer.inputs)
        producer.graph.remove(producer, safe=True)
        pending.extend(upstream)


def _removable(node: ir.Node) -> bool:
    """A deterministic standard-domain node none of whose outputs is used any more."""
    if node.domain not in STANDARD_DOMAINS or node.op_type in NOT_CONSTANT:
        return False
    return not any(out.uses() or out.is_graph_output() for out in node.outputs)


def sort_scopes(model: ir.Model) -> None:
    """Sort every graph and function of the model topologically (onnx_ir's stable sort), skipping each graph
    whose nodes are already in order and hold no subgraphs: on those the sort changes nothing and costs
    O(n log n) with a heap entry per node."""
    for scope in iter_scopes(model):
        body = scope.body
        if isinstance(body, ir.Graph) and _in_order(body):
            continue
        body.sort()


_GRAPH_ATTRIBUTES = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)


def _in_order(graph: ir.Graph) -> bool:
    """Every node comes after the producers of its inputs in this graph, and none holds a subgraph.

    onnx_ir's sort pops, among the nodes whose consumers are all placed, the one latest in the current order,
    and places it before them: on such a graph that is the last unplaced node every time, so it keeps the order.
    """
    placed: set[ir.Node] = set()
    for node in graph:
        if node.attributes and any(attr.type in _GRAPH_ATTRIBUTES for attr in node.attributes.values()):
            return False
        for value in node.inputs:
            if value is None:
                continue
            producer = value.producer()
            if producer is not None and producer not in placed and producer.graph is graph:
                return False
        placed.add(node)
    return True

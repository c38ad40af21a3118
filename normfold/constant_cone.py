"""A value computed from constants alone (`Constant -> CastLike -> Expand`, `Reshape(Constant, Constant)`) is a
constant: its cone of producers is evaluated once, with onnx's reference evaluator, when it is small.

Exporters emit such subexpressions for parameters (the dynamo exporter's zero Conv bias, paddle2onnx's
reshaped ConvTranspose bias); without this the fold would refuse them as computed at run time. The cone must
be deterministic standard-domain nodes of one graph whose leaves are initializers (not graph inputs) or
Constant nodes, at most MAX_NODES nodes and MAX_BYTES of output, so reading a parameter stays cheap.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from normfold.graph_walk import NOT_CONSTANT, STANDARD_DOMAINS

MAX_NODES = 16
MAX_BYTES = 64 << 20


def evaluate_cone(value: ir.Value) -> np.ndarray | None:
    """The value's contents when it is computed from constants alone (see the module's docstring), else None."""
    nodes = _cone(value)
    if not nodes:
        return None
    graph = value.graph
    if not isinstance(graph, ir.Graph):
        return None
    members = set(map(id, nodes))
    leaves = {v.name: v for node in nodes for v in node.inputs if v is not None and id(v.producer()) not in members}
    if any(leaf.const_value is None or not leaf.name for leaf in leaves.values()):
        return None
    if sum(leaf.const_value.nbytes for leaf in leaves.values()) > MAX_BYTES:
        return None
    from onnx.reference import ReferenceEvaluator  # only for models that have such cones

    proto = onnx.helper.make_graph(
        [ir.serde.serialize_node(node) for node in _topological(nodes)], "cone", [],
        [onnx.ValueInfoProto(name=value.name)],
        [ir.serde.serialize_tensor(leaf.const_value) for leaf in leaves.values()],
    )
    for tensor, name in zip(proto.initializer, leaves):
        tensor.name = name
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in graph.opset_imports.items()]
    try:
        result = ReferenceEvaluator(onnx.helper.make_model(proto, opset_imports=opsets)).run(None, {})[0]
    except Exception:  # an op or dtype the evaluator lacks: the value stays what it was, computed at run time
        return None
    result = np.asarray(result)
    return result if result.nbytes <= MAX_BYTES else None


def _cone(value: ir.Value) -> list[ir.Node]:
    """The producers `value` depends on, back to its constant leaves; empty when it is not such a value."""
    if value.is_graph_input() or value.producer() is None or not value.name:
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
        for input_value in node.inputs:
            if input_value is None:
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

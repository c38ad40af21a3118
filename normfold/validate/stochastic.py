"""Nodes whose outputs are random at run time: two runs of such a model cannot be compared exactly."""

from __future__ import annotations

from collections.abc import Iterator

import onnx

RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def stochastic_nodes(model: onnx.ModelProto) -> list[str]:
    """Descriptions of unseeded random nodes and training-mode Dropouts, in graph order."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    constants = _constant_names(model.graph)
    found = []
    for node in _all_nodes(model):
        seeded = any(a.name == "seed" for a in node.attribute)
        if node.op_type in RANDOM_OPS and not seeded:
            found.append(f"{node.op_type} '{node.name or node.output[0]}'")
        elif node.op_type == "Dropout" and not seeded and _dropout_trains(node, opset, constants):
            found.append(f"Dropout '{node.name or node.output[0]}' in training mode")
    return found


def _dropout_trains(node: onnx.NodeProto, opset: int, constants: dict[str, bool]) -> bool:
    if opset < 7:
        return not any(a.name == "is_test" and a.i for a in node.attribute)
    if opset < 12 or len(node.input) < 3 or not node.input[2]:
        return False
    return constants.get(node.input[2], True)


def _constant_names(graph: onnx.GraphProto) -> dict[str, bool]:
    """Scalar boolean constants (initializers and Constant nodes) by name."""
    values = {}
    for tensor in graph.initializer:
        if tensor.data_type == onnx.TensorProto.BOOL:
            values[tensor.name] = bool(onnx.numpy_helper.to_array(tensor).reshape(-1)[:1].any())
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            tensor = node.attribute[0].t
            if tensor.data_type == onnx.TensorProto.BOOL:
                values[node.output[0]] = bool(onnx.numpy_helper.to_array(tensor).reshape(-1)[:1].any())
    return values


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    yield from _graph_nodes(model.graph)
    for function in model.functions:
        for node in function.node:
            yield node


def _graph_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graph_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graph_nodes(sub)

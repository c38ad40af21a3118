"""Nodes whose outputs are random at run time, and pinning their seeds so two models compare exactly.

ONNX Runtime draws a seeded Dropout's or Random* node's values from that seed alone, so the same node
(matched by name) seeded the same in reference and candidate gives the same masks in both sessions.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import onnx

from normfold.errors import NormfoldError

RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


class NotComparableError(NormfoldError):
    """The models cannot be compared exactly: their random nodes cannot be matched."""


def random_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Unseeded random nodes and training-mode Dropouts: {node key: description}, in graph order."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    constants = _bool_constants(model.graph)
    found = {}
    for node in _all_nodes(model):
        seeded = any(a.name == "seed" for a in node.attribute)
        key = _key(node)
        if node.op_type in RANDOM_OPS and not seeded:
            found[key] = f"{node.op_type} '{key}'"
        elif node.op_type == "Dropout" and not seeded and _dropout_trains(node, opset, constants):
            found[key] = f"Dropout '{key}' in training mode"
    return found


def pin_seeds(source: Path, keys: set[str], folder: Path) -> Path:
    """A copy of `source` in `folder` whose nodes named in `keys` get a seed derived from their name."""
    model = onnx.load(str(source))
    missing = set(keys)
    for node in _all_nodes(model):
        key = _key(node)
        if key in keys:
            missing.discard(key)
            seed = zlib.crc32(key.encode()) & 0x7FFFFFFF
            value = float(seed) if node.op_type in RANDOM_OPS else seed
            node.attribute.append(onnx.helper.make_attribute("seed", value))
    if missing:
        raise NotComparableError(
            f"{source} has no node matching the reference's random node(s) {', '.join(sorted(missing)[:3])}, "
            "so their random values cannot be made equal"
        )
    target = folder / source.name
    onnx.save(model, str(target), save_as_external_data=True, location=f"{source.name}.data", size_threshold=1 << 20)
    return target


def _key(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _dropout_trains(node: onnx.NodeProto, opset: int, constants: dict[str, bool]) -> bool:
    if opset < 7:
        return not any(a.name == "is_test" and a.i for a in node.attribute)
    if opset < 12 or len(node.input) < 3 or not node.input[2]:
        return False
    return constants.get(node.input[2], True)


def _bool_constants(graph: onnx.GraphProto) -> dict[str, bool]:
    """Boolean constants (initializers and Constant nodes) by name, as their first value."""
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
        yield from function.node


def _graph_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graph_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graph_nodes(sub)

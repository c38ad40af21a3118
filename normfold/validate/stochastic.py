"""Nodes whose outputs are random at run time, and pinning their seeds so two models compare exactly.

ONNX Runtime draws a seeded Dropout's or Random* node's values from that seed alone, so the same node
(matched by name) seeded the same in reference and candidate gives the same masks in both sessions.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from normfold.errors import NormfoldError
from normfold.graph_walk import RANDOM_OPS, is_op, iter_scopes
from normfold.modes import dropout_training_form


class NotComparableError(NormfoldError):
    """The models cannot be compared exactly: their random nodes cannot be matched."""


def random_nodes(model: ir.Model) -> dict[str, str]:
    """Unseeded random nodes and training-mode Dropouts, in every graph: {node key: description}."""
    found = {}
    for scope in iter_scopes(model):
        for node in scope.body:
            seeded = "seed" in node.attributes
            key = node.name or node.outputs[0].name or ""
            if node.op_type in RANDOM_OPS and not seeded:
                found[key] = f"{node.op_type} '{key}'"
            elif is_op(node, "Dropout") and not seeded and dropout_training_form(scope.opset, node):
                found[key] = f"Dropout '{key}' in training mode"
    return found


def pin_seeds(source: Path, keys: set[str], folder: Path) -> Path:
    """A copy of `source` in `folder` whose nodes named in `keys` get a seed derived from their name."""
    model = onnx.load(str(source))
    missing = set(keys)
    for node in proto_nodes(model):
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


def proto_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of a ModelProto: its graphs, subgraphs and functions."""
    yield from _graph_nodes(model.graph)
    for function in model.functions:
        yield from function.node


def _graph_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of the graph and of its subgraphs (an explicit stack, so any nesting depth)."""
    stack = [graph]
    while stack:
        for node in stack.pop().node:
            yield node
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)

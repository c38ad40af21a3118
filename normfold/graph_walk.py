"""Every graph of a model, with the opset it runs at: main graph, control-flow bodies, local functions.

Not onnx_ir's `Model.graphs()` / `ir.traversal`: those yield graphs without the path that reports name them by
(`main/If.then_branch`) or the opset that decides a node's meaning (Dropout, BatchNormalization forms), and
without the model's functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import onnx_ir as ir

DEFAULT_OPSET = 1
STANDARD_DOMAINS = ("", "ai.onnx")
# Standard operators whose outputs are not a function of their inputs (or that hold subgraphs): never
# evaluated ahead of time, never removed as dead code.
RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
NOT_CONSTANT = RANDOM_OPS | {"Dropout", "If", "Loop", "Scan", "SequenceMap"}


def is_op(node: ir.Node, *op_types: str) -> bool:
    """The node is one of these operators of the default ONNX domain (a custom domain's namesake is not)."""
    return node.domain in STANDARD_DOMAINS and node.op_type in op_types


@dataclasses.dataclass(frozen=True)
class Scope:
    """A graph or function to rewrite, named for reports, with its default-domain opset."""

    name: str
    body: ir.Graph | ir.Function
    opset: int

    @property
    def is_main(self) -> bool:
        """The top-level graph is the only one whose constants live in initializers."""
        return self.name == "main"


def iter_scopes(model: ir.Model) -> Iterator[Scope]:
    """Yield the main graph, each subgraph (recursively) and each model-local function."""
    opset = model.opset_imports.get("", DEFAULT_OPSET)
    yield from _with_subgraphs(Scope("main", model.graph, opset))
    for function in model.functions.values():
        function_opset = function.opset_imports.get("", opset)
        name = f"function {function.domain}::{function.name}"
        yield from _with_subgraphs(Scope(name, function, function_opset))


# Standard-domain operators that hold subgraphs; every other standard operator is skipped unread.
_CONTROL_FLOW = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def _with_subgraphs(scope: Scope) -> Iterator[Scope]:
    """The scope, then its subgraphs depth-first in node order (an explicit stack, so any nesting depth).

    A scope's subgraphs are listed after the caller has seen the scope, so they reflect its rewrites."""
    stack = [scope]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(list(_subgraph_scopes(current))))


def _subgraph_scopes(scope: Scope) -> Iterator[Scope]:
    """The scopes of the graphs held by the nodes of `scope` itself (one level down)."""
    for node in list(scope.body):
        if (node.op_type not in _CONTROL_FLOW and node.domain in STANDARD_DOMAINS) or not node.attributes:
            continue  # the operator first: cheaper than the attributes, and it skips almost every node
        for attr in node.attributes.values():
            if attr.is_ref():
                continue
            if attr.type == ir.AttributeType.GRAPH:
                graphs = [attr.as_graph()]
            elif attr.type == ir.AttributeType.GRAPHS:
                graphs = list(attr.as_graphs())
            else:
                continue
            for index, graph in enumerate(graphs):
                suffix = f"[{index}]" if attr.type == ir.AttributeType.GRAPHS else ""
                yield Scope(f"{scope.name}/{node_label(node)}.{attr.name}{suffix}", graph, scope.opset)


def node_label(node: ir.Node) -> str:
    """A node's name, or a stable stand-in for unnamed nodes."""
    if node.name:
        return node.name
    first_output = node.outputs[0].name if node.outputs else ""
    return f"{node.op_type}->{first_output}"


def count_nodes(model: ir.Model) -> int:
    """Number of nodes in all graphs and functions of the model."""
    return sum(len(scope.body) for scope in iter_scopes(model))

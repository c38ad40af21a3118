"""The `If` that `normfold mode --train` puts in place of each BatchNormalization, and how the inference pass
takes its inference BatchNormalization back out."""

from __future__ import annotations

import onnx_ir as ir

from normfold.graph_edit import take_over
from normfold.graph_walk import is_op

# The ending of a mode switch's node name; the rest is the name of the BN it replaced.
MODE_SWITCH_SUFFIX = ".mode_switch"


def unwrap_mode_switch(graph: ir.Graph, switch: ir.Node) -> bool:
    """Replace an If made by SetTrainingModePass by its inference BN; False if `switch` is not one."""
    if switch.op_type != "If" or not switch.name or not switch.name.endswith(MODE_SWITCH_SUFFIX):
        return False
    flag = switch.inputs[0]
    if flag is None or not flag.is_graph_input():
        return False
    branch = switch.attributes.get("else_branch")
    if branch is None:
        return False
    body = branch.as_graph()
    bns = [n for n in body if is_op(n, "BatchNormalization")]
    if len(bns) != 1 or len(body) != 3 or flag.dtype != ir.DataType.BOOL:
        return False
    inner = bns[0]
    bn = ir.Node(
        "",
        "BatchNormalization",
        list(inner.inputs),
        name=switch.name.removesuffix(MODE_SWITCH_SUFFIX),
        attributes=[inner.attributes["epsilon"], inner.attributes["momentum"]],
    )
    graph.insert_before(switch, bn)
    take_over(switch.outputs[0], bn.outputs[0])
    for extra in switch.outputs[1:]:
        while extra in graph.outputs:
            graph.outputs.remove(extra)
    for name in ("then_branch", "else_branch"):
        _detach(switch.attributes[name].as_graph())
    graph.remove(switch, safe=True)
    return True


def _detach(body: ir.Graph) -> None:
    """Drop a discarded branch's references to outer values, so they do not count as consumers."""
    for node in body:
        for index in range(len(node.inputs)):
            node.replace_input_with(index, None)

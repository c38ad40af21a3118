"""Remove every inference-time Dropout: at inference Dropout is the identity and its mask is all true.

Dropout runs in inference mode when it has no `training_mode` input or a constant false one
(opset 12+), always at opsets 7-10, and when `is_test=1` at opset 6. Its output is replaced by its
input; a mask that is consumed or is a graph output is replaced by an all-true tensor of the input's
shape (opset 12+, where the spec says so; before that a used mask keeps the Dropout). Graph inputs
and outputs keep their names and order.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from normfold.graph_edit import NameSource, drop_if_unused, take_over
from normfold.graph_walk import Scope, is_op, iter_scopes, node_label
from normfold.modes import dropout_training_form
from normfold.passes.copy_or_in_place import CopyOrInPlacePass
from normfold.reason_codes import MASK_UNSPECIFIED, MISSING_INPUT, TRAINING_MODE
from normfold.records import NodeRecord, RewriteResult

MASK_SPECIFIED_OPSET = 12


class StripDropoutPass(CopyOrInPlacePass):
    """Returns a copy of the model without inference Dropout nodes, plus one record per Dropout."""

    def call(self, model: ir.Model) -> RewriteResult:
        model = self.target(model)
        names = NameSource(model, deferred=True)  # read at the first strip, before it changes anything
        records = []
        for scope in iter_scopes(model):
            for node in list(scope.body):
                if is_op(node, "Dropout"):
                    records.append(_strip_one(scope, node, names))
        return RewriteResult(model, any(r.action == "stripped" for r in records), records)


def _strip_one(scope: Scope, node: ir.Node, names: NameSource) -> NodeRecord:
    label = node_label(node)
    reason = _training_reason(scope.opset, node)
    if reason:
        return NodeRecord(scope.name, label, "Dropout", "skipped", reason, TRAINING_MODE)
    data, output = node.inputs[0], node.outputs[0]
    mask = node.outputs[1] if len(node.outputs) > 1 else None
    needs_mask = mask is not None and (bool(mask.uses()) or mask.is_graph_output())
    if needs_mask and scope.opset < MASK_SPECIFIED_OPSET:
        return NodeRecord(
            scope.name,
            label,
            "Dropout",
            "skipped",
            f"its mask is used, and at opset {scope.opset} the inference mask is not specified "
            "(ONNX Runtime returns all false; opset 12 made it all true)",
            MASK_UNSPECIFIED,
        )
    if data is None:
        return NodeRecord(scope.name, label, "Dropout", "skipped", "it has no data input", MISSING_INPUT)
    names.reserve()  # before the model's first change
    detail = "removed"
    replacement = data
    producer = data.producer()
    if output.is_graph_output() and (
        data.is_graph_input() or data.is_graph_output() or producer is None or producer.graph is not node.graph
    ):
        identity = ir.Node("", "Identity", [data], name=names.fresh(f"{label}_identity"))
        scope.body.insert_before(node, identity)
        replacement = identity.outputs[0]
        detail = "replaced by Identity: its output is a graph output and its input cannot take that name"
    take_over(output, replacement)
    if mask is not None and needs_mask:
        _replace_mask(scope, node, data, mask, names)
        detail += "; mask replaced by an all-true tensor of the input's shape"
    extra_inputs = list(node.inputs[1:])
    scope.body.remove(node, safe=True)
    drop_if_unused(extra_inputs)
    return NodeRecord(scope.name, label, "Dropout", "stripped", detail)


def _training_reason(opset: int, node: ir.Node) -> str:
    """Why this Dropout must stay (it samples masks), or ''."""
    form = dropout_training_form(opset, node)
    if not form or "set at run time" in form:
        return form
    return f"{form}; convert it to inference mode first (normfold mode --eval, or fold --eval)"


def _replace_mask(scope: Scope, node: ir.Node, data: ir.Value, mask: ir.Value, names: NameSource) -> None:
    """Shape(data) -> ConstantOfShape(true) stands in for the mask of an inference Dropout."""
    label = node_label(node)
    shape = ir.Node("", "Shape", [data], name=names.fresh(f"{label}_mask_shape"))
    ones = ir.Node(
        "",
        "ConstantOfShape",
        [shape.outputs[0]],
        attributes=[ir.AttrTensor("value", ir.tensor(np.array([True])))],
        name=names.fresh(f"{label}_mask"),
    )
    scope.body.insert_before(node, [shape, ones])
    take_over(mask, ones.outputs[0])

"""Switch training-mode BatchNormalization and Dropout to inference mode (`normfold mode --eval`).

A training-mode BN normalizes with batch statistics; in inference mode it uses its running statistics.
Where those statistics are unusable (the initial mean 0 / variance 1 of a BN that never tracked them,
or non-finite values) switching would silently change what the model computes, so such a BN is left as
it is with a reason, or, with `batch_stats`, rewritten into standard inference operators that compute
the batch statistics (biased variance, as the ONNX spec and PyTorch normalize):
    mean = ReduceMean(x, axes), var = ReduceMean((x - mean)^2, axes),
    y = (x - mean) / sqrt(var + eps) * gamma + beta,    axes = every axis but the channel axis 1.
A training-mode Dropout loses its training_mode input (inference Dropout is the identity; `fold`
strips it). Running-statistics outputs disappear: the inference graph has none.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from normfold.graph_edit import NameSource, add_constant, constant_array, drop_if_unused, take_over
from normfold.graph_walk import STANDARD_DOMAINS, Scope, iter_scopes, node_label
from normfold.mode_switch import MODE_SWITCH_SUFFIX, unwrap_mode_switch
from normfold.modes import bn_epsilon, bn_parameter_faults, bn_training_form, dropout_training_form
from normfold.passes.copy_or_in_place import CopyOrInPlacePass
from normfold.ranks import RankOracle
from normfold.reason_codes import STATISTICS_IN_USE, UNUSABLE_STATISTICS
from normfold.records import Action, NodeRecord, RewriteResult


class SetInferenceModePass(CopyOrInPlacePass):
    """Returns a copy of the model with every BN and Dropout in inference mode, plus one record per change."""

    def __init__(self, batch_stats: bool = False, in_place: bool = False) -> None:
        super().__init__(in_place)
        self.batch_stats = batch_stats

    def call(self, model: ir.Model) -> RewriteResult:
        model = self.target(model)
        ranks, names = RankOracle(model), NameSource(model)
        flags = [v for v in model.graph.inputs if v.dtype == ir.DataType.BOOL and v.uses()]
        records = []
        for scope in iter_scopes(model):
            for node in list(scope.body):
                if node.domain not in STANDARD_DOMAINS:
                    continue
                if node.op_type == "BatchNormalization" and (form := bn_training_form(scope.opset, node)):
                    records.append(self._batchnorm(scope, node, form, ranks, names))
                elif node.op_type == "Dropout" and (form := dropout_training_form(scope.opset, node)):
                    records.append(_dropout(scope, node, form))
                elif node.op_type == "If" and scope.is_main and unwrap_mode_switch(model.graph, node):
                    label = node_label(node).removesuffix(MODE_SWITCH_SUFFIX)
                    records.append(
                        NodeRecord(
                            scope.name,
                            label,
                            "BatchNormalization",
                            "converted",
                            "mode switch (normfold mode --train) -> inference BatchNormalization",
                        )
                    )
        _drop_unused_flags(model, flags)
        changed = any(r.action != "skipped" for r in records)
        return RewriteResult(model, changed, records)

    def _batchnorm(self, scope: Scope, bn: ir.Node, form: str, ranks: RankOracle, names: NameSource) -> NodeRecord:
        def record(action: Action, detail: str, reason: str = "") -> NodeRecord:
            return NodeRecord(scope.name, node_label(bn), "BatchNormalization", action, detail, reason)

        unusable = _unusable_statistics(bn)
        if unusable and not self.batch_stats:
            return record(
                "skipped",
                f"{form}, and {unusable}: switching to them would change the outputs; "
                "--batch-stats keeps batch statistics with standard inference operators",
                UNUSABLE_STATISTICS,
            )
        if unusable:
            reason = _rewrite_with_batch_statistics(scope, bn, ranks, names)
            if reason:
                return record(
                    "skipped", f"{form}, and {unusable}; --batch-stats cannot rewrite it: {reason}", UNUSABLE_STATISTICS
                )
            return record("rewritten", f"{form} -> inference operators computing batch statistics ({unusable})")
        reason = _drop_statistics_outputs(bn, scope.is_main)
        if reason:
            return record("skipped", f"{form}: {reason}", STATISTICS_IN_USE)
        if scope.opset >= 14:
            bn.attributes.pop("training_mode", None)
        elif scope.opset < 7:
            bn.attributes["is_test"] = ir.AttrInt64("is_test", 1)
        return record("converted", f"{form} -> inference mode (running statistics)")


def _unusable_statistics(bn: ir.Node) -> str:
    """Why the running statistics cannot stand in for batch statistics, or ''."""
    mean = constant_array(bn.inputs[3] if len(bn.inputs) > 3 else None)
    var = constant_array(bn.inputs[4] if len(bn.inputs) > 4 else None)
    if mean is None or var is None:
        return ""
    faults = bn_parameter_faults([None, None, mean, var], bn_epsilon(bn))
    if faults.nonfinite or faults.negative_variance:
        return "its running statistics are not finite or have a negative variance"
    if (mean == 0).all() and (var == 1).all():
        return "its running statistics are the initial mean 0 / variance 1 (never tracked)"
    return ""


def _drop_statistics_outputs(bn: ir.Node, in_main_graph: bool) -> str:
    """Remove BN's running-statistics outputs: uses of the updated mean/var take the running inputs."""
    extra = list(bn.outputs[1:])
    if not in_main_graph and any(output.is_graph_output() for output in extra):
        return "its running statistics are outputs of the enclosing subgraph, which would change its signature"
    for index, output in enumerate(extra, start=1):
        if output.uses() and index > 2:
            return f"its output '{output.name}' (batch statistics saved for training) is used"
    for index, output in enumerate(extra, start=1):
        if output.uses() and index <= 2:
            running = bn.inputs[2 + index]
            assert running is not None  # BN's mean and var inputs are required
            output.replace_all_uses_with(running)
        _remove_graph_output(output)
    bn.resize_outputs(1)
    return ""


def _remove_graph_output(value: ir.Value) -> None:
    graph = value.graph
    while graph is not None and value in graph.outputs:
        graph.outputs.remove(value)


def _dropout(scope: Scope, node: ir.Node, form: str) -> NodeRecord:
    """Make a training Dropout an inference one: no training_mode input (or is_test=1 at opset 6)."""
    if scope.opset < 7:
        node.attributes["is_test"] = ir.AttrInt64("is_test", 1)
    else:
        flag = node.inputs[2]
        node.replace_input_with(2, None)
        node.resize_inputs(2 if node.inputs[1] is not None else 1)
        drop_if_unused([flag])
    return NodeRecord(scope.name, node_label(node), "Dropout", "converted", f"{form} -> inference mode (identity)")


def _drop_unused_flags(model: ir.Model, flags: list[ir.Value]) -> None:
    """Boolean graph inputs that this pass left without readers (mode flags) go away."""
    for value in flags:
        if not value.uses() and value in model.graph.inputs and not value.is_graph_output():
            model.graph.inputs.remove(value)
            if value.name is not None and value.name in model.graph.initializers:
                del model.graph.initializers[value.name]


def _rewrite_with_batch_statistics(scope: Scope, bn: ir.Node, ranks: RankOracle, names: NameSource) -> str:
    """Replace `bn` by ReduceMean/Sub/Mul/Sqrt/Div/Add nodes computing batch statistics, or say why not."""
    for output in bn.outputs[3:]:
        if output.uses():
            return f"its output '{output.name}' (batch statistics saved for training) is used"
    if any(output.uses() for output in bn.outputs[1:3]):
        return "its updated running statistics are used inside the graph"
    x = bn.inputs[0]
    rank = None if x is None else ranks.rank(x)
    if x is None or rank is None or rank < 2:
        return f"the rank of its input is {rank if rank is not None else 'unknown'}"
    gamma, beta = constant_array(bn.inputs[1]), constant_array(bn.inputs[2])
    if gamma is None or beta is None:
        return "its scale and bias are not constants"
    dtype = x.dtype.numpy() if x.dtype is not None else gamma.dtype
    label = node_label(bn)
    broadcast = (1, -1) + (1,) * (rank - 2)
    axes = [0, *range(2, rank)]
    eps = np.array(bn_epsilon(bn), dtype=dtype)
    constants = {
        "eps": eps,
        "scale": gamma.astype(dtype).reshape(broadcast),
        "bias": beta.astype(dtype).reshape(broadcast),
    }
    if scope.opset >= 18:
        constants["axes"] = np.array(axes, dtype=np.int64)
    values = {
        key: add_constant(scope, bn, array, names.fresh(f"{label}_batch_{key}"), names)
        for key, array in constants.items()
    }

    def reduce_mean(value: ir.Value) -> ir.Node:
        if scope.opset >= 18:
            return ir.Node("", "ReduceMean", [value, values["axes"]], attributes=[ir.AttrInt64("keepdims", 1)])
        return ir.Node("", "ReduceMean", [value], attributes=[ir.AttrInt64s("axes", axes), ir.AttrInt64("keepdims", 1)])

    mean = reduce_mean(x)
    centered = ir.Node("", "Sub", [x, mean.outputs[0]])
    square = ir.Node("", "Mul", [centered.outputs[0], centered.outputs[0]])
    var = reduce_mean(square.outputs[0])
    shifted = ir.Node("", "Add", [var.outputs[0], values["eps"]])
    root = ir.Node("", "Sqrt", [shifted.outputs[0]])
    normalized = ir.Node("", "Div", [centered.outputs[0], root.outputs[0]])
    scaled = ir.Node("", "Mul", [normalized.outputs[0], values["scale"]])
    result = ir.Node("", "Add", [scaled.outputs[0], values["bias"]])
    nodes = [mean, centered, square, var, shifted, root, normalized, scaled, result]
    for index, node in enumerate(nodes):
        node.name = names.fresh(f"{label}_batch_stats_{index}")
        node.outputs[0].name = names.fresh(f"{node.name}_out")
    scope.body.insert_before(bn, nodes)
    for output in bn.outputs[1:]:
        _remove_graph_output(output)
    take_over(bn.outputs[0], result.outputs[0])
    old_inputs = list(bn.inputs[1:])
    scope.body.remove(bn, safe=True)
    drop_if_unused(old_inputs)
    return ""

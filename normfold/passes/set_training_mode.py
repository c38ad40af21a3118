"""Build the training-side graph (`normfold mode --train`): one boolean input switches every BN and Dropout.

With the flag true, each BatchNormalization normalizes with batch statistics and the graph also outputs
its updated running statistics (`<bn>.running_mean`, `<bn>.running_var`, as ONNX computes them:
running = momentum * running + (1 - momentum) * batch, biased batch variance), and each Dropout samples
masks with inverted scaling. With the flag false (its default, so callers may omit it) the outputs are
exactly the inference model's, and the running-statistics outputs repeat the stored statistics.
Each BN becomes an `If` on the flag whose branches hold the training and the inference BN;
`SetInferenceModePass` recognises that shape and takes the inference branch back out.
"""

from __future__ import annotations

import re

import numpy as np
import onnx_ir as ir

from normfold.errors import EXIT_USAGE, NormfoldError, describe
from normfold.finite import require_finite
from normfold.graph_edit import NameSource, take_over
from normfold.graph_walk import node_label
from normfold.modes import bn_training_form
from normfold.records import NodeRecord, RewriteResult

MIN_OPSET = 14
TARGET_OPSET = 15
DEFAULT_FLAG = "training"


class SetTrainingModePass(ir.passes.FunctionalPass):
    """Returns a copy of the model with a `flag` input switching all BN and Dropout nodes of the main graph.

    `momentum` (ONNX's: the weight of the old running value) must be finite and in [0, 1]; None keeps each
    BN's own attribute.
    """

    def __init__(self, flag: str = DEFAULT_FLAG, momentum: float | None = None) -> None:
        super().__init__()
        self.flag = flag
        self.momentum = None if momentum is None else require_finite("momentum", momentum, low=0.0, high=1.0)

    def call(self, model: ir.Model) -> RewriteResult:
        opset = model.opset_imports.get("", 1)
        records = []
        if opset < MIN_OPSET:
            model = _upgraded(model, opset)
            records.append(NodeRecord("main", "(model)", "opset", "converted",
                                      f"opset {opset} -> {TARGET_OPSET} with onnx.version_converter: "
                                      f"BatchNormalization training_mode needs opset {MIN_OPSET}"))
        else:
            model = model.clone()
        names = NameSource(model)
        if any(v.name == self.flag for v in model.graph.inputs) or self.flag in model.graph.initializers:
            raise NormfoldError(f"the model already has an input named '{self.flag}'; choose another with --flag",
                                exit_code=EXIT_USAGE)
        flag = _flag_input(model.graph, names.fresh(self.flag))
        for node in list(model.graph):
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "BatchNormalization":
                records.append(self._switch_batchnorm(model.graph, node, flag, names))
            elif node.op_type == "Dropout":
                node.resize_inputs(3)
                node.replace_input_with(2, flag)
                records.append(NodeRecord("main", node_label(node), "Dropout", "converted",
                                          f"samples masks when '{flag.name}' is true"))
        return RewriteResult(model, True, records)

    def _switch_batchnorm(self, graph: ir.Graph, bn: ir.Node, flag: ir.Value, names: NameSource) -> NodeRecord:
        label = node_label(bn)
        if bn_training_form(MIN_OPSET, bn) and any(o.uses() or o.is_graph_output() for o in bn.outputs[1:]):
            return NodeRecord("main", label, "BatchNormalization", "skipped",
                              "its running-statistics outputs are already used in the graph")
        momentum = self.momentum if self.momentum is not None else bn.attributes.get_float("momentum", 0.9)
        epsilon = bn.attributes.get_float("epsilon", 1e-5)
        inputs = list(bn.inputs)
        base = _safe(label)
        train_branch = _branch(f"{base}_train", inputs, epsilon, momentum, training=True)
        infer_branch = _branch(f"{base}_infer", inputs, epsilon, momentum, training=False)
        switch = ir.Node(
            "", "If", [flag], num_outputs=3, name=names.fresh(f"{base}.mode_switch"),
            attributes=[ir.AttrGraph("then_branch", train_branch), ir.AttrGraph("else_branch", infer_branch)],
        )
        graph.insert_before(bn, switch)
        y, mean, var = switch.outputs
        mean.name, var.name = names.fresh(f"{base}.running_mean"), names.fresh(f"{base}.running_var")
        for value, source in ((mean, inputs[3]), (var, inputs[4])):
            value.type, value.shape = source.type, source.shape
            graph.outputs.append(value)
        take_over(bn.outputs[0], y)
        for extra in bn.outputs[1:]:
            while extra in graph.outputs:
                graph.outputs.remove(extra)
        graph.remove(bn, safe=True)
        return NodeRecord("main", label, "BatchNormalization", "converted",
                          f"batch statistics when '{flag.name}' is true (momentum {momentum:g}); "
                          f"outputs {mean.name}, {var.name}")


def _upgraded(model: ir.Model, opset: int) -> ir.Model:
    """The model converted to TARGET_OPSET by onnx's version converter (weights stay where they were)."""
    from onnx import version_converter

    base_dirs = {v.const_value.base_dir for v in model.graph.initializers.values()
                 if isinstance(v.const_value, ir.ExternalTensor)}
    try:
        converted = version_converter.convert_version(ir.to_proto(model), TARGET_OPSET)
    except Exception as error:  # the converter raises assorted types for ops it cannot adapt
        raise NormfoldError(
            f"mode --train needs opset {MIN_OPSET} or newer (BatchNormalization training_mode) and the model's "
            f"opset {opset} could not be converted: {describe(error, 200)}", exit_code=EXIT_USAGE
        ) from None
    upgraded = ir.from_proto(converted)
    if base_dirs:
        ir.external_data.set_base_dir(upgraded.graph, base_dirs.pop())
    return upgraded


def _flag_input(graph: ir.Graph, name: str) -> ir.Value:
    """A boolean scalar graph input whose default (an initializer of the same name) is false."""
    default = ir.tensor(np.array(False), name=name)
    value = ir.Value(name=name, type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]), const_value=default)
    graph.inputs.append(value)
    graph.register_initializer(value)
    return value


def _branch(name: str, inputs: list[ir.Value | None], epsilon: float, momentum: float, training: bool) -> ir.Graph:
    """One If branch: BN in training mode (3 outputs), or inference BN plus the unchanged statistics."""
    attributes = [ir.AttrFloat32("epsilon", epsilon), ir.AttrFloat32("momentum", momentum)]
    if training:
        attributes.append(ir.AttrInt64("training_mode", 1))
        bn = ir.Node("", "BatchNormalization", inputs, attributes=attributes, num_outputs=3, name=f"{name}_bn")
        outputs, nodes = list(bn.outputs), [bn]
    else:
        bn = ir.Node("", "BatchNormalization", inputs, attributes=attributes, name=f"{name}_bn")
        keep_mean = ir.Node("", "Identity", [inputs[3]], name=f"{name}_mean")
        keep_var = ir.Node("", "Identity", [inputs[4]], name=f"{name}_var")
        outputs, nodes = [bn.outputs[0], keep_mean.outputs[0], keep_var.outputs[0]], [bn, keep_mean, keep_var]
    for index, value in enumerate(outputs):
        value.name = f"{name}_out{index}"
        source = inputs[0] if index == 0 else inputs[2 + index]
        value.type = source.type if source is not None else None
    return ir.Graph([], outputs, nodes=nodes, name=name)


def unwrap_mode_switch(graph: ir.Graph, switch: ir.Node) -> bool:
    """Replace an If made by SetTrainingModePass by its inference BN; False if `switch` is not one."""
    if switch.op_type != "If" or not switch.name or not switch.name.endswith(".mode_switch"):
        return False
    flag = switch.inputs[0]
    if flag is None or not flag.is_graph_input():
        return False
    branch = switch.attributes.get("else_branch")
    if branch is None:
        return False
    body = branch.as_graph()
    bns = [n for n in body if n.op_type == "BatchNormalization"]
    if len(bns) != 1 or len(body) != 3 or flag.dtype != ir.DataType.BOOL:
        return False
    inner = bns[0]
    bn = ir.Node("", "BatchNormalization", list(inner.inputs), name=switch.name.removesuffix(".mode_switch"),
                 attributes=[inner.attributes["epsilon"], inner.attributes["momentum"]])
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


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", label).strip("_") or "bn"

"""Build the training-side graph (`normfold mode --train`): one boolean input switches every BN and Dropout.

With the flag true, each BatchNormalization normalizes with batch statistics (mean mu_B, biased variance
var_B over the n = N*D1*...*Dk values of each channel) and the graph also outputs its updated running
statistics (`<bn>.running_mean`, `<bn>.running_var`):
    running_mean = momentum * running_mean + (1 - momentum) * mu_B
    running_var  = momentum * running_var  + (1 - momentum) * var_B                  biased (ONNX's spec)
    running_var  = momentum * running_var  + (1 - momentum) * var_B * n / (n - 1)    unbiased (PyTorch's)
The unbiased factor is computed in the graph from the batch's shape (n = Size(X) / Shape(X)[1]); where
n is 1 (PyTorch refuses such a batch) n - 1 is taken as 1, so the factor is 1 rather than a NaN.
Each Dropout samples masks with inverted scaling. With the flag false (its default, so callers may omit it)
the outputs are exactly the inference model's, and the running-statistics outputs repeat the stored ones.
Each BN becomes an `If` on the flag whose branches hold the training and the inference BN;
`SetInferenceModePass` recognises that shape and takes the inference branch back out.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx_ir as ir

from normfold.errors import EXIT_USAGE, NormfoldError, describe
from normfold.finite import require_finite
from normfold.graph_edit import NameSource, constant_array, take_over
from normfold.graph_walk import is_op, node_label
from normfold.mode_switch import MODE_SWITCH_SUFFIX
from normfold.modes import bn_epsilon, bn_training_form
from normfold.reason_codes import STATISTICS_IN_USE, UNKNOWN_TYPE
from normfold.records import NodeRecord, RewriteResult

MIN_OPSET = 14
TARGET_OPSET = 15
DEFAULT_FLAG = "training"
RUNNING_VARIANCES = ("biased", "unbiased")

StatisticType = tuple[ir.TypeProtocol, ir.Shape | None]


@dataclasses.dataclass
class TrainingModeResult(RewriteResult):
    """RewriteResult plus the flag input's name and, per main-graph BN of the input in node order, its `If`.

    A BN left as it was (see its record) has None: `switches[i].outputs` are (y, running mean, running var).
    """

    flag: str = DEFAULT_FLAG
    switches: list[ir.Node | None] = dataclasses.field(default_factory=list)


class SetTrainingModePass(ir.passes.FunctionalPass):
    """Returns a copy of the model with a `flag` input switching all BN and Dropout nodes of the main graph.

    `momentum` (ONNX's: the weight of the old running value) must be finite and in [0, 1]; None keeps each
    BN's own attribute. `running_var` is "biased" (ONNX's) or "unbiased" (PyTorch's): which batch variance
    updates the running variance. `dropout=False` leaves Dropout in inference mode (calibration wants batch
    statistics without sampled masks).
    """

    def __init__(
        self, flag: str = DEFAULT_FLAG, momentum: float | None = None, running_var: str = "biased", dropout: bool = True
    ) -> None:
        super().__init__()
        if running_var not in RUNNING_VARIANCES:
            raise NormfoldError(
                f"running_var must be one of {', '.join(RUNNING_VARIANCES)}, got {running_var!r}", exit_code=EXIT_USAGE
            )
        self.flag = flag
        self.momentum = None if momentum is None else require_finite("momentum", momentum, low=0.0, high=1.0)
        self.running_var = running_var
        self.dropout = dropout

    def __call__(self, model_or_result: ir.Model | ir.passes.PassResult, /) -> TrainingModeResult:
        """onnx_ir's run with its checks, typed as what `call` returns: the records, flag and switches too.

        A precondition that fails for a user's reason (see `requires`) is that NormfoldError, not onnx_ir's wrapper.
        """
        try:
            result = super().__call__(model_or_result)
        except ir.passes.PreconditionError as error:
            if isinstance(error.__cause__, NormfoldError):
                raise error.__cause__ from None
            raise
        assert isinstance(result, TrainingModeResult)
        return result

    def requires(self, model: ir.Model) -> None:
        """The flag's name must be free: a graph input or initializer of that name would be shadowed."""
        if any(v.name == self.flag for v in model.graph.inputs) or self.flag in model.graph.initializers:
            raise NormfoldError(
                f"the model already has an input named '{self.flag}'; choose another with --flag", exit_code=EXIT_USAGE
            )

    def call(self, model: ir.Model) -> TrainingModeResult:
        opset = model.opset_imports.get("", 1)
        records = []
        if opset < MIN_OPSET:
            model = _upgraded(model, opset)
            records.append(
                NodeRecord(
                    "main",
                    "(model)",
                    "opset",
                    "converted",
                    f"opset {opset} -> {TARGET_OPSET} with onnx.version_converter: "
                    f"BatchNormalization training_mode needs opset {MIN_OPSET}",
                )
            )
        else:
            model = model.clone()
        names = NameSource(model)
        flag = _flag_input(model.graph, names.fresh(self.flag))
        switches: list[ir.Node | None] = []
        for node in list(model.graph):
            if is_op(node, "BatchNormalization"):
                record, switch = self._switch_batchnorm(model.graph, node, flag, names)
                records.append(record)
                switches.append(switch)
            elif is_op(node, "Dropout") and self.dropout:
                node.resize_inputs(3)
                node.replace_input_with(2, flag)
                records.append(
                    NodeRecord(
                        "main", node_label(node), "Dropout", "converted", f"samples masks when '{flag.name}' is true"
                    )
                )
        assert flag.name is not None
        return TrainingModeResult(model, True, records, flag.name, switches)

    def _switch_batchnorm(
        self, graph: ir.Graph, bn: ir.Node, flag: ir.Value, names: NameSource
    ) -> tuple[NodeRecord, ir.Node | None]:
        label = node_label(bn)
        if bn_training_form(MIN_OPSET, bn) and any(o.uses() or o.is_graph_output() for o in bn.outputs[1:]):
            return NodeRecord(
                "main",
                label,
                "BatchNormalization",
                "skipped",
                "its running-statistics outputs are already used in the graph",
                STATISTICS_IN_USE,
            ), None
        inputs = list(bn.inputs)
        known = [found for found in (_statistic_type(inputs[3]), _statistic_type(inputs[4])) if found is not None]
        if len(known) < 2:
            return NodeRecord(
                "main",
                label,
                "BatchNormalization",
                "skipped",
                "the type of its running statistics is unknown (computed at run time, no type in "
                "the model), and graph outputs need one: run onnx shape inference first",
                UNKNOWN_TYPE,
            ), None
        momentum = self.momentum if self.momentum is not None else bn.attributes.get_float("momentum", 0.9)
        epsilon = bn_epsilon(bn)
        base = _safe(label)
        unbiased = self.running_var == "unbiased"
        train_branch = _train_branch(f"{base}_train", inputs, epsilon, momentum, known, unbiased, names)
        infer_branch = _infer_branch(f"{base}_infer", inputs, epsilon, momentum, known, names)
        switch = ir.Node(
            "",
            "If",
            [flag],
            num_outputs=3,
            name=names.fresh(f"{base}{MODE_SWITCH_SUFFIX}"),
            attributes=[ir.AttrGraph("then_branch", train_branch), ir.AttrGraph("else_branch", infer_branch)],
        )
        graph.insert_before(bn, switch)
        y, mean, var = switch.outputs
        mean.name, var.name = names.fresh(f"{base}.running_mean"), names.fresh(f"{base}.running_var")
        for value, (value_type, shape) in zip((mean, var), known):
            value.type, value.shape = value_type, shape
            graph.outputs.append(value)
        take_over(bn.outputs[0], y)
        for extra in bn.outputs[1:]:
            while extra in graph.outputs:
                graph.outputs.remove(extra)
        graph.remove(bn, safe=True)
        variance = "unbiased, n/(n-1)" if unbiased else "biased"
        return NodeRecord(
            "main",
            label,
            "BatchNormalization",
            "converted",
            f"batch statistics when '{flag.name}' is true (momentum {momentum:g}); "
            f"running variance {variance}; outputs {mean.name}, {var.name}",
        ), switch


def _upgraded(model: ir.Model, opset: int) -> ir.Model:
    """The model converted to TARGET_OPSET by onnx's version converter (weights stay where they were)."""
    from onnx import version_converter

    base_dirs = {
        v.const_value.base_dir
        for v in model.graph.initializers.values()
        if isinstance(v.const_value, ir.ExternalTensor)
    }
    try:
        converted = version_converter.convert_version(ir.to_proto(model), TARGET_OPSET)
    except Exception as error:  # the converter raises assorted types for ops it cannot adapt
        raise NormfoldError(
            f"mode --train needs opset {MIN_OPSET} or newer (BatchNormalization training_mode) and the model's "
            f"opset {opset} could not be converted: {describe(error, 200)}",
            exit_code=EXIT_USAGE,
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


def _statistic_type(value: ir.Value | None) -> StatisticType | None:
    """A running statistic's type and shape: its own, or that of the value or constant behind its Identity chain.

    Exporters reach shared initializers through untyped Identity nodes; graph outputs need a type.
    """
    source = value
    while source is not None and source.type is None:  # a loop, not recursion: chains may be long
        producer = source.producer()
        if producer is None or not is_op(producer, "Identity"):
            break
        source = producer.inputs[0]
    if source is not None and source.type is not None:
        return source.type, source.shape
    array = constant_array(value)
    if array is None:
        return None
    return ir.TensorType(ir.DataType.from_numpy(array.dtype)), ir.Shape(array.shape)


def _infer_branch(
    name: str,
    inputs: list[ir.Value | None],
    epsilon: float,
    momentum: float,
    types: list[StatisticType],
    names: NameSource,
) -> ir.Graph:
    """The else branch: the inference BN, plus the stored statistics unchanged."""
    attributes = [ir.AttrFloat32("epsilon", epsilon), ir.AttrFloat32("momentum", momentum)]
    bn = ir.Node("", "BatchNormalization", inputs, attributes=attributes, name=names.fresh(f"{name}_bn"))
    keep_mean = ir.Node("", "Identity", [inputs[3]], name=names.fresh(f"{name}_mean"))
    keep_var = ir.Node("", "Identity", [inputs[4]], name=names.fresh(f"{name}_var"))
    outputs = [bn.outputs[0], keep_mean.outputs[0], keep_var.outputs[0]]
    return _branch_graph(name, [bn, keep_mean, keep_var], outputs, inputs[0], types, names)


def _train_branch(
    name: str,
    inputs: list[ir.Value | None],
    epsilon: float,
    momentum: float,
    types: list[StatisticType],
    unbiased: bool,
    names: NameSource,
) -> ir.Graph:
    """The then branch: BN in training mode; for the unbiased variance its batch statistics, updated here."""
    attributes = [ir.AttrFloat32("epsilon", epsilon), ir.AttrInt64("training_mode", 1)]
    if not unbiased:
        bn = ir.Node(
            "",
            "BatchNormalization",
            inputs,
            num_outputs=3,
            name=names.fresh(f"{name}_bn"),
            attributes=[*attributes, ir.AttrFloat32("momentum", momentum)],
        )
        return _branch_graph(name, [bn], list(bn.outputs), inputs[0], types, names)
    nodes: list[ir.Node] = []
    step = _Steps(nodes, names, name)
    # With momentum 0 the BN's statistics outputs are mu_B and var_B whatever its statistics inputs are, so it
    # gets zeros of its own: ONNX Runtime (1.31, optimizations off) writes those outputs in place into an
    # outer-scope initializer it reads, which would corrupt the stored statistics for later runs.
    private = [
        step.add(
            "ConstantOfShape",
            [step.add("Shape", [inputs[index]])],
            ir.AttrTensor("value", ir.tensor(np.zeros(1, types[index - 3][0].dtype.numpy()))),
        )
        for index in (3, 4)
    ]
    bn = ir.Node(
        "",
        "BatchNormalization",
        [*inputs[:3], *private],
        num_outputs=3,
        name=names.fresh(f"{name}_bn"),
        attributes=[*attributes, ir.AttrFloat32("momentum", 0.0)],
    )
    nodes.append(bn)
    y, batch_mean, batch_var = bn.outputs
    batch_mean.name, batch_var.name = names.fresh(f"{name}_batch_mean"), names.fresh(f"{name}_batch_var")
    factor = _bessel_factor(step, inputs[0])
    mean = _moving_average(step, inputs[3], batch_mean, momentum, types[0][0].dtype, None)
    var = _moving_average(step, inputs[4], batch_var, momentum, types[1][0].dtype, factor)
    return _branch_graph(name, nodes, [y, mean, var], inputs[0], types, names)


@dataclasses.dataclass
class _Steps:
    """Appends single-output nodes with fresh names to a branch under construction."""

    nodes: list[ir.Node]
    names: NameSource
    prefix: str

    def add(self, op_type: str, inputs: list[ir.Value | None], *attributes: ir.Attr) -> ir.Value:
        """A new `op_type` node reading `inputs`; returns its output."""
        name = self.names.fresh(f"{self.prefix}_{op_type}")
        node = ir.Node("", op_type, inputs, attributes=list(attributes), name=name)
        node.outputs[0].name = self.names.fresh(f"{node.name}_out")
        self.nodes.append(node)
        return node.outputs[0]

    def constant(self, array: np.ndarray) -> ir.Value:
        """A Constant node holding `array` (branches hold no initializers)."""
        return self.add("Constant", [], ir.AttrTensor("value", ir.tensor(array)))


def _bessel_factor(step: _Steps, x: ir.Value | None) -> ir.Value:
    """n / max(n - 1, 1) as a float64 scalar, n = Size(x) / Shape(x)[1]: the values per channel of this batch."""
    one = step.constant(np.array(1, np.int64))
    channels = step.add("Gather", [step.add("Shape", [x]), one], ir.AttrInt64("axis", 0))
    n = step.add("Div", [step.add("Size", [x]), channels])
    denominator = step.add("Max", [step.add("Sub", [n, one]), one])
    to_double = ir.AttrInt64("to", int(ir.DataType.DOUBLE))
    return step.add("Div", [step.add("Cast", [n], to_double), step.add("Cast", [denominator], to_double)])


def _moving_average(
    step: _Steps, stored: ir.Value | None, batch: ir.Value, momentum: float, dtype: ir.DataType, factor: ir.Value | None
) -> ir.Value:
    """momentum * stored + (1 - momentum) * factor * batch, in the statistics' dtype (`factor`: float64 or None)."""
    keep = step.constant(np.array(momentum, dtype.numpy()))
    if factor is None:
        weight = step.constant(np.array(1.0 - momentum, dtype.numpy()))
    else:
        scaled = step.add("Mul", [factor, step.constant(np.array(1.0 - momentum, np.float64))])
        weight = step.add("Cast", [scaled], ir.AttrInt64("to", int(dtype)))
    return step.add("Add", [step.add("Mul", [stored, keep]), step.add("Mul", [batch, weight])])


def _branch_graph(
    name: str,
    nodes: list[ir.Node],
    outputs: list[ir.Value],
    x: ir.Value | None,
    types: list[StatisticType],
    names: NameSource,
) -> ir.Graph:
    """The branch graph with its outputs named and typed: y like X, the statistics like the stored ones."""
    for index, value in enumerate(outputs):
        value.name = names.fresh(f"{name}_out{index}")
    outputs[0].type = x.type if x is not None else None
    for value, (value_type, shape) in zip(outputs[1:], types):
        value.type, value.shape = value_type, shape
    return ir.Graph([], outputs, nodes=nodes, name=name)


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", label).strip("_") or "bn"

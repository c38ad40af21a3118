"""The float64 truth: the model with every float tensor, type and Cast made double, evaluated node by node.
It tells whether a difference between two float32 models is rounding.

The main graph runs in topological order and drops each tensor after its last use (graph outputs are
kept). Conv, ConvTranspose, Gemm, MatMul and BatchNormalization run on normfold's chunked float64 kernels
(float64_kernels); every other node runs on onnx's reference evaluator, one cached evaluator per distinct
node (op, attributes, input types) built from a one-node model with the model's opsets and IR version.
A budget (memory alive at once, flops) is checked against a static estimate (float64_cost) before the run
and against the live tensors during it; when the reference cannot or should not run, Float64Unavailable
says why in one line. Exceptions from normfold's own kernels are bugs and keep their traceback.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from normfold.errors import NormfoldError, describe
from normfold.graph_walk import STANDARD_DOMAINS
from normfold.memory import available_memory
from normfold.validate.config import DEFAULT_FLOAT64_FLOPS
from normfold.validate.float64_cost import (
    CONTRACTIONS,
    FLOAT_TYPES,
    Float64Cost,
    estimate_cost,
    format_bytes,
    kernel_flops,
    schedule,
)
from normfold.validate.float64_kernels import CHUNK_BYTES, ITEM, KERNELS, Kernel, Shape, required

if TYPE_CHECKING:
    from normfold.model_reading import LoadedModel

__all__ = [
    "FLOAT_TYPES",
    "Float64Budget",
    "Float64Unavailable",
    "check_estimate",
    "run_float64",
    "run_float64_samples",
    "to_float64",
]

DEFAULT_MAX_BYTES = 2 << 30
BUDGET_OPTION = "--float64-budget"
FLOPS_OPTION = "--float64-flops"


class Float64Unavailable(NormfoldError):
    """The float64 reference cannot or should not run this model: a one-line reason and a stable `code`.

    Codes: over-memory, over-flops (the estimate, before running), runtime-memory, runtime-flops (the guard,
    while running), no-kernel (an op onnx's evaluator lacks), evaluator-failed (it raised on an op or dtype),
    missing-input (a node reads a tensor nothing gives).
    """

    def __init__(self, reason: str, *, code: str) -> None:
        super().__init__(reason)
        self.code = code


def default_max_bytes() -> int:
    """2 GiB, or a quarter of the memory available now when that is less: the reference must not swap."""
    available = available_memory()
    return min(DEFAULT_MAX_BYTES, available // 4) if available > 0 else DEFAULT_MAX_BYTES


@dataclasses.dataclass(frozen=True)
class Float64Budget:
    """What the float64 reference may use: bytes of float64 tensors alive at once (widened weights included)
    and flops of contractions. Kernel scratch, at most `chunk_bytes` per temporary, comes on top."""

    max_bytes: int = dataclasses.field(default_factory=default_max_bytes)
    max_flops: float = DEFAULT_FLOAT64_FLOPS

    @property
    def chunk_bytes(self) -> int:
        """The kernels' bound on one temporary: a sixteenth of max_bytes, between 4 KiB and 32 MiB."""
        return max(4 << 10, min(CHUNK_BYTES, self.max_bytes // 16))


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model computing in float64."""
    model = copy.deepcopy(model)
    _graph_to_float64(model.graph)
    for function in model.functions:
        for node in function.node:
            _node_to_float64(node)
    return model


def _graph_to_float64(graph: onnx.GraphProto) -> None:
    for tensor in graph.initializer:
        _tensor_to_float64(tensor)
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.tensor_type.elem_type in FLOAT_TYPES:
            info.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    for node in graph.node:
        _node_to_float64(node)


def _node_to_float64(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            _tensor_to_float64(attr.t)
        elif attr.type == onnx.AttributeProto.GRAPH:
            _graph_to_float64(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for graph in attr.graphs:
                _graph_to_float64(graph)
        elif node.op_type == "Cast" and attr.name == "to" and attr.i in FLOAT_TYPES:
            attr.i = onnx.TensorProto.DOUBLE


def _tensor_to_float64(tensor: onnx.TensorProto) -> None:
    if tensor.data_type in FLOAT_TYPES:
        tensor.CopyFrom(numpy_helper.from_array(_widen(numpy_helper.to_array(tensor)), tensor.name))


def _widen(value: Any) -> Any:
    """Float arrays (bfloat16 included) as float64, exactly; anything else unchanged."""
    if isinstance(value, np.ndarray) and (value.dtype.kind == "f" or value.dtype.name == "bfloat16"):
        return value.astype(np.float64, copy=False)
    return value


def run_float64(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, budget: Float64Budget | None = None
) -> list[np.ndarray]:
    """Outputs of the model evaluated in float64 (float inputs widened), within `budget` (default
    Float64Budget()); Float64Unavailable when it is over budget or onnx's evaluator cannot run an op.

    BatchNormalization is normfold's kernel: onnx's BatchNormalization-9 (opsets 9-13) blends batch
    statistics into inference and its versions 6/7 fail to run. ConvTranspose is normfold's too: onnx's
    reshapes a grouped weight wrongly. Models whose main graph has subgraphs (If, Loop, Scan) or calls
    model-local functions run on onnx's whole-model evaluator with normfold's Conv, ConvTranspose and
    BatchNormalization, keeping every tensor to the end (the estimate checks that total).
    """
    return _run_samples(model, [feeds], budget or Float64Budget())[0]


def run_float64_samples(
    model: onnx.ModelProto | LoadedModel,
    samples: Sequence[Mapping[str, np.ndarray]],
    max_bytes: int | None,
    *,
    max_flops: float = DEFAULT_FLOAT64_FLOPS,
) -> list[list[np.ndarray]]:
    """run_float64 for several samples, planning the model once; `max_bytes` None: no memory bound."""
    budget = Float64Budget(max_bytes=sys.maxsize if max_bytes is None else max_bytes, max_flops=max_flops)
    if isinstance(model, onnx.ModelProto):
        return _run_samples(model, samples, budget)
    if model.proto is not None and not _needs_whole_model(model.proto):
        # the proto as read, external data left on disk: each weight is read when first used, freed after last
        return _run_samples(model.proto, samples, budget, model.path.parent)
    return _run_samples(model.full_proto(), samples, budget)


def _run_samples(
    model: onnx.ModelProto,
    samples: Sequence[Mapping[str, np.ndarray]],
    budget: Float64Budget,
    base_dir: Path | None = None,
) -> list[list[np.ndarray]]:
    """Each sample's outputs; the estimate checked once per distinct set of input shapes. `base_dir`: where the
    external data not loaded into `model` lives."""
    whole = _needs_whole_model(model)
    executor = None if whole else _Executor(model, budget, base_dir)
    # onnx's whole-model evaluator runs the float64 copy: every weight widened
    plan = dataclasses.replace(schedule(model.graph), narrow=frozenset()) if executor is None else executor.plan
    checked = set()
    results = []
    with np.errstate(all="ignore"):  # IEEE results (an exp overflowing in a saturated sigmoid) are the truth
        for feeds in samples:
            wide = {name: _widen(value) for name, value in feeds.items()}
            shapes = tuple(sorted((name, getattr(value, "shape", None)) for name, value in wide.items()))
            if shapes not in checked:
                check_estimate(estimate_cost(model, wide, plan=plan, base_dir=base_dir), budget, whole=whole)
                checked.add(shapes)
            results.append(_run_whole_model(model, wide, budget) if executor is None else executor.run(wide))
    return results


def check_estimate(cost: Float64Cost, budget: Float64Budget, *, whole: bool = False) -> None:
    """Float64Unavailable when the estimated memory (`whole`: every tensor kept) or flops pass the budget."""
    needed = cost.total_bytes if whole else cost.peak_bytes
    if needed > budget.max_bytes:
        held = "kept to the end (subgraphs or functions: onnx's evaluator runs it whole)" if whole else "alive at once"
        raise Float64Unavailable(
            f"needs {format_bytes(needed)} of float64 tensors {held}, over the {format_bytes(budget.max_bytes)} "
            f"budget ({BUDGET_OPTION})",
            code="over-memory",
        )
    if cost.flops > budget.max_flops:
        raise Float64Unavailable(
            f"needs {cost.flops:.3g} floating-point operations in float64, over the budget of "
            f"{budget.max_flops:.3g} ({FLOPS_OPTION})",
            code="over-flops",
        )


def _needs_whole_model(model: onnx.ModelProto) -> bool:
    """Whether a main-graph node carries a subgraph or calls a model-local function."""
    functions = {(f.domain, f.name) for f in model.functions}
    return any(
        (node.domain, node.op_type) in functions
        or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        for node in model.graph.node
    )


@dataclasses.dataclass
class _Step:
    """One node as the executor runs it: its kernel (None: onnx's evaluator) and parsed attributes."""

    node: onnx.NodeProto
    kernel: Kernel | None
    attributes: dict[str, Any]
    key: bytes | None = None  # the canonical node's bytes, for the evaluator cache (made on first use)

    @classmethod
    def of(cls, node: onnx.NodeProto) -> _Step:
        kernel = KERNELS.get(node.op_type) if node.domain in STANDARD_DOMAINS else None
        attributes = _attributes(node) if kernel else {}
        if kernel is not None and not kernel.handles(attributes, sum(1 for name in node.output if name)):
            kernel, attributes = None, {}
        return cls(node, kernel, attributes)


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values (strings decoded)."""
    values = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        values[attr.name] = value.decode() if isinstance(value, bytes) else value
    return values


class _Executor:
    """Runs a model's main graph in float64, node by node, dropping each tensor after its last use."""

    def __init__(self, model: onnx.ModelProto, budget: Float64Budget, base_dir: Path | None = None) -> None:
        self.plan = schedule(model.graph)
        self.budget = budget
        self.base_dir = "" if base_dir is None else str(base_dir)  # "": onnx's default, the working directory
        self.steps = [_Step.of(node) for node in self.plan.order]
        self.evaluators = _NodeEvaluators(model)
        self.values: dict[str, Any] = {}
        self.live = 0
        self.flops = 0.0

    def run(self, feeds: Mapping[str, Any]) -> list[Any]:
        """The graph outputs for these (widened) feeds."""
        self.values, self.live, self.flops = {}, 0, 0.0
        for name, value in feeds.items():
            if name in self.plan.used:
                self._keep(name, value)
        for step, drops in zip(self.steps, self.plan.drops):
            node = step.node
            inputs = [self._read(name, node) if name else None for name in node.input]
            outputs: Sequence[Any]
            if step.kernel is not None and _all_float64(inputs):
                outputs = self._run_kernel(step, step.kernel, inputs)
            else:
                outputs = self.evaluators.run(step, [_widen(value) for value in inputs])
            for name, value in zip(node.output, outputs):
                if name:
                    self._keep(name, value)
            if self.live > self.budget.max_bytes:
                self._over_memory(node, 0)
            for name in drops:
                self.live -= _nbytes(self.values.pop(name, None))
        results = [self._read(name, None) for name in self.plan.outputs]
        self.values = {}
        return results

    def _keep(self, name: str, value: Any) -> None:
        self.live += _nbytes(value)
        self.values[name] = value

    def _read(self, name: str, node: onnx.NodeProto | None) -> Any:
        """A tensor's value; an initializer is read (and widened, unless a kernel widens it block by block:
        plan.narrow) on its first read and held until its last."""
        value = self.values.get(name)
        if value is not None or name in self.values:
            return value
        if name in self.plan.initializers:
            value = numpy_helper.to_array(self.plan.initializers[name], base_dir=self.base_dir)
            if name not in self.plan.narrow:
                value = _widen(value)
            if node is not None:
                self._keep(name, value)
            return value
        reader = f"node '{node.name or node.op_type}'" if node is not None else "the graph's outputs"
        raise Float64Unavailable(
            f"{reader} reads '{name}', which no input, initializer or node gives", code="missing-input"
        )

    def _run_kernel(self, step: _Step, kernel: Kernel, inputs: list[Any]) -> tuple[np.ndarray, ...]:
        """The node on normfold's kernel (step.kernel), after checking its outputs and flops against the budget."""
        node, count = step.node, len(step.node.output)
        shapes: list[Shape | None] = [None if value is None else value.shape for value in inputs]
        produced = kernel.output_shapes(shapes, step.attributes, count)
        needed = ITEM * sum(math.prod(shape) for shape in produced)
        if self.live + needed > self.budget.max_bytes:
            self._over_memory(node, needed)
        if node.op_type in CONTRACTIONS:
            self.flops += kernel_flops(node.op_type, [required(shape) for shape in shapes[:2]], produced)
            if self.flops > self.budget.max_flops:
                raise Float64Unavailable(
                    f"stopped at node '{node.name or node.op_type}' ({node.op_type}): {self.flops:.3g} "
                    f"floating-point operations so far, over the budget of {self.budget.max_flops:.3g} "
                    f"({FLOPS_OPTION})",
                    code="runtime-flops",
                )
        return kernel.run(inputs, step.attributes, count, self.budget.chunk_bytes)

    def _over_memory(self, node: onnx.NodeProto, needed: int) -> None:
        """Float64Unavailable: the node's outputs (`needed` bytes yet to come) bring the live tensors over budget."""
        total = self.live + needed
        raise Float64Unavailable(
            f"stopped at node '{node.name or node.op_type}' ({node.op_type}): its outputs bring the float64 "
            f"tensors alive to {format_bytes(total)}, over the {format_bytes(self.budget.max_bytes)} budget "
            f"({BUDGET_OPTION})",
            code="runtime-memory",
        )


def _all_float64(inputs: list[Any]) -> bool:
    first = inputs[0] if inputs else None
    return isinstance(first, np.ndarray) and first.dtype == np.float64


def _nbytes(value: Any) -> int:
    """Bytes a value holds: arrays, sequences of arrays (others count 0)."""
    if isinstance(value, list):
        return sum(_nbytes(item) for item in value)
    return int(getattr(value, "nbytes", 0))


class _NodeEvaluators:
    """onnx's reference evaluator for single nodes: one per distinct canonical node (op, attributes widened,
    inputs and outputs renamed i0.., o0..) and input types, built from a one-node model that carries the
    model's opsets and IR version."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.opsets = list(model.opset_import)
        self.ir_version = model.ir_version
        self.cache: dict[tuple[bytes, tuple[Any, ...]], Any] = {}

    def run(self, step: _Step, inputs: list[Any]) -> list[Any]:
        """The node's outputs, aligned with node.output (None where it names none)."""
        if step.key is None:
            step.key = _canonical(step.node).SerializeToString()
        types = tuple(_type_key(value) for value in inputs)
        evaluator = self.cache.get((step.key, types))
        if evaluator is None:
            evaluator = self.cache[step.key, types] = self._build(step.node, inputs)
        feeds = {f"i{k}": value for k, (name, value) in enumerate(zip(step.node.input, inputs)) if name}
        try:
            results = iter(evaluator.run(None, feeds))
        except Exception as error:  # an op or dtype onnx's evaluator cannot run: the reference is unusable
            raise Float64Unavailable(
                f"onnx's reference evaluator failed on {_op_name(step.node)} node "
                f"'{step.node.name}': {describe(error, 300)}",
                code="evaluator-failed",
            ) from error
        return [next(results) if name else None for name in step.node.output]

    def _build(self, node: onnx.NodeProto, inputs: list[Any]) -> Any:
        from onnx.reference import ReferenceEvaluator

        canonical = _canonical(node)
        graph_inputs = [_value_info(f"i{k}", value) for k, (name, value) in enumerate(zip(node.input, inputs)) if name]
        graph_outputs = [onnx.ValueInfoProto(name=name) for name in canonical.output if name]
        graph = helper.make_graph([canonical], node.op_type, graph_inputs, graph_outputs)
        model = helper.make_model(graph, opset_imports=self.opsets, ir_version=self.ir_version)
        try:
            return ReferenceEvaluator(model)
        except Exception as error:  # no implementation for this op (custom domain, unknown op, bad attributes)
            raise Float64Unavailable(
                f"onnx's reference evaluator has no kernel for {_op_name(node)} ({describe(error, 200)})",
                code="no-kernel",
            ) from error


def _canonical(node: onnx.NodeProto) -> onnx.NodeProto:
    """The node with inputs i0.., outputs o0.. (empty names kept empty) and float attributes widened."""
    canonical = onnx.NodeProto(op_type=node.op_type, domain=node.domain, name=node.op_type)
    canonical.input.extend(f"i{k}" if name else "" for k, name in enumerate(node.input))
    canonical.output.extend(f"o{k}" if name else "" for k, name in enumerate(node.output))
    canonical.attribute.extend(node.attribute)
    _node_to_float64(canonical)
    return canonical


def _type_key(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.dtype
    if isinstance(value, list):
        return "sequence", value[0].dtype if value and isinstance(value[0], np.ndarray) else None
    return type(value)


def _value_info(name: str, value: Any) -> onnx.ValueInfoProto:
    """A graph input typed like the value (no shape); untyped when onnx has no element type for it."""
    array = value[0] if isinstance(value, list) and value else value
    if not isinstance(array, np.ndarray):
        return onnx.ValueInfoProto(name=name)
    try:
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
    except (KeyError, TypeError, ValueError):
        return onnx.ValueInfoProto(name=name)
    if isinstance(value, list):
        return helper.make_tensor_sequence_value_info(name, elem, None)
    return helper.make_tensor_value_info(name, elem, None)


def _op_name(node: onnx.NodeProto) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain not in STANDARD_DOMAINS else node.op_type


class _KernelBug(Exception):
    """Carries an exception of normfold's own kernel out of onnx's evaluator, to be re-raised as it was."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


def _run_whole_model(model: onnx.ModelProto, feeds: Mapping[str, Any], budget: Float64Budget) -> list[Any]:
    """The whole float64 copy on onnx's evaluator with normfold's Conv, ConvTranspose and BatchNormalization
    (float-only ops, so always float64 here): for subgraphs and model-local functions. Nothing is freed early."""
    from onnx.reference import ReferenceEvaluator

    ops = [_kernel_op(op, budget.chunk_bytes) for op in ("Conv", "ConvTranspose", "BatchNormalization")]
    try:
        evaluator = ReferenceEvaluator(to_float64(model), new_ops=ops)
    except Exception as error:  # an op onnx's evaluator has no implementation for
        raise Float64Unavailable(
            f"onnx's reference evaluator cannot load the model: {describe(error, 300)}", code="no-kernel"
        ) from error
    try:
        outputs = evaluator.run(None, dict(feeds))
    except _KernelBug as bug:
        raise bug.error from None
    except Exception as error:  # an op or dtype onnx's evaluator cannot run
        raise Float64Unavailable(
            f"onnx's reference evaluator failed: {describe(error, 300)}", code="evaluator-failed"
        ) from error
    assert isinstance(outputs, list)  # no intermediate results were asked for: the outputs in a list
    return outputs


def _kernel_op(op_type: str, chunk_bytes: int) -> type:
    """An onnx reference-evaluator op class running normfold's kernel for `op_type`."""
    from onnx.reference.op_run import OpRun

    kernel = KERNELS[op_type]

    def _run(self: OpRun, *inputs: Any, **attributes: Any) -> tuple[np.ndarray, ...]:
        try:
            return tuple(kernel.run(list(inputs), attributes, len(self.onnx_node.output), chunk_bytes))
        except Exception as error:
            raise _KernelBug(error) from error

    return type(op_type, (OpRun,), {"op_domain": "", "_run": _run})

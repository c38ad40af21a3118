"""Numeric checks for tests: ONNX Runtime at ORT_DISABLE_ALL, and a float64 truth independent of normfold.

The truth is onnx's own ReferenceEvaluator run on a float64 copy of the model made here (every float
initializer, Constant, Cast target and value type widened); nothing of normfold's float64 engine is used,
so a bug shared by normfold's fold and its validator cannot hide. Where onnx's evaluator itself is wrong
or absent for a model, callers pass an equivalent `truth_model` it evaluates correctly, or the op is
replaced here: BatchNormalization-9 (opsets 9-13: onnx's blends batch statistics into inference because
the schema's default momentum is always set) runs on the spec's formula (`BatchNormalization` below, which
also covers versions 6 and 7 that onnx's evaluator cannot run), and a grouped ConvTranspose (onnx's
reshapes the weight wrongly and raises) runs on onnx's own ConvTranspose one group at a time.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_conv_transpose import ConvTranspose as OnnxConvTranspose

FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
)


def as_proto(model: onnx.ModelProto | ir.Model) -> onnx.ModelProto:
    """ModelProto of either kind of model."""
    return model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)


def run_ort(model: onnx.ModelProto | ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs on ONNX Runtime CPU with every graph optimization disabled (so ORT fuses nothing itself)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        onnx.save(as_proto(model), path)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run(None, feeds)


def float64_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model computing in float64: float initializers, Constant and ConstantOfShape values,
    Cast targets and every float value type (inputs, outputs, value_info, subgraphs, functions) widened."""
    wide = copy.deepcopy(model)
    _widen_graph(wide.graph)
    for function in wide.functions:
        for node in function.node:
            _widen_node(node)
    return wide


def _widen_graph(graph: onnx.GraphProto) -> None:
    """Widen a graph in place: its initializers, value types and nodes."""
    for tensor in graph.initializer:
        _widen_tensor(tensor)
    for info in [*graph.input, *graph.output, *graph.value_info]:
        _widen_type(info.type)
    for node in graph.node:
        _widen_node(node)


def _widen_type(value_type: onnx.TypeProto) -> None:
    """Widen a value type in place, through sequences and optionals."""
    kind = value_type.WhichOneof("value")
    if kind == "tensor_type" and value_type.tensor_type.elem_type in FLOAT_TYPES:
        value_type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    elif kind == "sequence_type":
        _widen_type(value_type.sequence_type.elem_type)
    elif kind == "optional_type":
        _widen_type(value_type.optional_type.elem_type)


def _widen_node(node: onnx.NodeProto) -> None:
    """Widen a node in place: tensor attributes, float Constant attributes, Cast targets, subgraphs."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            _widen_tensor(attr.t)
        elif attr.type == onnx.AttributeProto.GRAPH:
            _widen_graph(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for graph in attr.graphs:
                _widen_graph(graph)
        elif node.op_type == "Cast" and attr.name == "to" and attr.i in FLOAT_TYPES:
            attr.i = onnx.TensorProto.DOUBLE
    if node.op_type == "Constant" and node.attribute and node.attribute[0].name in ("value_float", "value_floats"):
        value = np.array(helper.get_attribute_value(node.attribute[0]), dtype=np.float64)
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value)))


def _widen_tensor(tensor: onnx.TensorProto) -> None:
    """Widen a float tensor in place to float64 (exactly: every narrower float is a float64 value)."""
    if tensor.data_type in FLOAT_TYPES and tensor.data_type != onnx.TensorProto.DOUBLE:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))


def _widen_feed(value: np.ndarray) -> np.ndarray:
    """A float input as float64; any other input unchanged."""
    return value.astype(np.float64) if value.dtype.kind == "f" or value.dtype.name == "bfloat16" else value


class BatchNormalization(OpRun):
    """ONNX BatchNormalization, every version, by the specification's formulas (for onnx's evaluator).

    Inference (one output, no training_mode): y = scale * (x - mean) / sqrt(var + epsilon) + bias, the
    statistics per channel, or per activation (shape [C, D...], spatial=0 of versions 6-7). Training
    (training_mode=1, or more than one output before version 14): the same with the batch's mean and biased
    variance, then running = running * momentum + batch * (1 - momentum), and the batch statistics.
    """

    op_domain = ""

    def _run(
        self,
        x: np.ndarray,
        scale: np.ndarray,
        bias: np.ndarray,
        mean: np.ndarray,
        var: np.ndarray,
        epsilon: float | None = None,
        momentum: float | None = None,
        training_mode: int | None = None,
        is_test: int | None = None,
        spatial: int | None = None,
        consumed_inputs: list[int] | None = None,
    ) -> tuple[np.ndarray, ...]:
        eps = float(np.float32(1e-5)) if epsilon is None else epsilon
        keep = 0.9 if momentum is None else momentum
        outputs = len(self.onnx_node.output)
        shape = (1, -1, *[1] * (x.ndim - 2)) if scale.ndim == 1 else (1, *scale.shape)
        if not training_mode and outputs == 1:
            return (
                scale.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
                + bias.reshape(shape),
            )
        axes = (0, *range(2, x.ndim)) if scale.ndim == 1 else (0,)
        batch_mean = x.mean(axis=axes)
        batch_var = ((x - batch_mean.reshape(shape)) ** 2).mean(axis=axes)
        y = scale.reshape(shape) * (x - batch_mean.reshape(shape)) / np.sqrt(batch_var.reshape(shape) + eps)
        results = (
            y + bias.reshape(shape),
            mean * keep + batch_mean * (1 - keep),
            var * keep + batch_var * (1 - keep),
            batch_mean,
            batch_var,
        )
        return results[:outputs]


class ConvTranspose(OnnxConvTranspose):
    """onnx's reference ConvTranspose run one group at a time (weight [C_in, C_out/group, k...]), the groups'
    outputs concatenated along the channels; ungrouped, exactly onnx's."""

    op_domain = ""

    def _run(
        self,
        x: np.ndarray,
        w: np.ndarray,
        b: np.ndarray | None = None,
        auto_pad: str | None = None,
        dilations: list[int] | None = None,
        group: int | None = None,
        kernel_shape: list[int] | None = None,
        output_padding: list[int] | None = None,
        output_shape: list[int] | None = None,
        pads: list[int] | None = None,
        strides: list[int] | None = None,
    ) -> tuple[np.ndarray]:
        attributes = dict(
            auto_pad=auto_pad,
            dilations=dilations,
            kernel_shape=kernel_shape,
            output_padding=output_padding,
            output_shape=output_shape,
            pads=pads,
            strides=strides,
        )
        groups = group or 1
        c_in, c_out = x.shape[1] // groups, w.shape[1]
        parts = [
            OnnxConvTranspose._run(
                self,
                x[:, k * c_in : (k + 1) * c_in],
                w[k * c_in : (k + 1) * c_in],
                None if b is None else b[k * c_out : (k + 1) * c_out],
                group=1,
                **attributes,
            )[0]
            for k in range(groups)
        ]
        return (np.concatenate(parts, axis=1),)


def run_float64(model: onnx.ModelProto | ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of the model evaluated in float64 by onnx's reference evaluator (no normfold code involved)."""
    evaluator = ReferenceEvaluator(float64_copy(as_proto(model)), new_ops=[BatchNormalization, ConvTranspose])
    with np.errstate(all="ignore"):
        return [np.asarray(value) for value in evaluator.run(None, {k: _widen_feed(v) for k, v in feeds.items()})]


def assert_fold_exact(
    original: onnx.ModelProto | ir.Model,
    folded: onnx.ModelProto | ir.Model,
    feeds: dict[str, np.ndarray],
    run=run_ort,
    truth_model: onnx.ModelProto | None = None,
) -> None:
    """The folded model is as close to the float64 truth as the original is, up to rounding.

    Both models run on `run` (ORT CPU, no optimizations, by default); the truth is the original
    evaluated in float64 (or `truth_model`, an equivalent form the reference evaluator supports).
    A wrong fold gives errors of the order of the activations and fails.
    """
    truth = run_float64(original if truth_model is None else truth_model, feeds)
    before, after = run(original, feeds), run(folded, feeds)
    assert len(before) == len(after) == len(truth)
    for index, (exact, a, b) in enumerate(zip(truth, before, after)):
        assert a.shape == b.shape == exact.shape, f"output {index}: shapes {a.shape} {b.shape} {exact.shape}"
        assert a.dtype == b.dtype, f"output {index}: dtypes {a.dtype} {b.dtype}"
        eps = float(np.finfo(a.dtype).eps) if a.dtype.kind == "f" else 0.0
        scale = float(np.abs(exact).max()) if exact.size else 0.0
        error_before = float(np.abs(a.astype(np.float64) - exact).max()) if exact.size else 0.0
        error_after = float(np.abs(b.astype(np.float64) - exact).max()) if exact.size else 0.0
        bound = 2 * error_before + 8 * eps * scale
        assert error_after <= bound, (
            f"output {index}: folded error {error_after:.3g} vs float64 exceeds {bound:.3g} "
            f"(original's own error {error_before:.3g}, scale {scale:.3g})"
        )


def random_feeds(model: onnx.ModelProto | ir.Model, seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs for every graph input (symbolic dims become `batch`)."""
    rng = np.random.default_rng(seed)
    proto = as_proto(model)
    initializers = {t.name for t in proto.graph.initializer}
    feeds = {}
    for info in proto.graph.input:
        if info.name in initializers:
            continue
        tensor_type = info.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        feeds[info.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def scale_outputs(weight: np.ndarray, scale: np.ndarray, layout: str, group: int = 1) -> np.ndarray:
    """W' with every output channel c multiplied by scale[c], in float64: a backward fold's weight before its one
    rounding, written here apart from normfold's bn_math. Layouts as in bn_math.out_channels: "conv"
    [C_out, C_in/g, k...], "convt" [C_in, C_out/g, k...], "kn" [K, N], "nk" [N, K]."""
    exact = np.asarray(weight).astype(np.float64)
    factor = np.asarray(scale, dtype=np.float64)
    if layout in ("conv", "nk"):
        return exact * factor.reshape((-1,) + (1,) * (exact.ndim - 1))
    if layout == "kn":
        return exact * factor
    if layout == "convt":
        c_in, c_out_per_group = exact.shape[:2]
        channel = (np.arange(c_in) // (c_in // group))[:, None] * c_out_per_group + np.arange(c_out_per_group)
        return exact * factor[channel].reshape(channel.shape + (1,) * (exact.ndim - 2))
    raise ValueError(f"unknown layout {layout!r}")

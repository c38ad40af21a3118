"""The float64 truth: the model with every float tensor, type and Cast made double, run by onnx's
reference evaluator. It tells whether a difference between two float32 models is rounding."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


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
            info.type.tensor_type.elem_type = TensorProto.DOUBLE
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
            attr.i = TensorProto.DOUBLE


def _tensor_to_float64(tensor: onnx.TensorProto) -> None:
    if tensor.data_type in FLOAT_TYPES:
        array = numpy_helper.to_array(tensor).astype(np.float64)
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def run_float64(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of the model evaluated in float64 by onnx's reference evaluator (float inputs widened).

    BatchNormalization is evaluated by normfold's own kernel: onnx's BatchNormalization-9 (opsets 9-13)
    blends batch statistics into inference, and its versions 6/7 fail to run. Grouped ConvTranspose
    runs group by group: onnx's kernel reshapes a grouped weight wrongly.
    """
    from onnx.reference import ReferenceEvaluator

    wide = {k: v.astype(np.float64) if v.dtype.kind == "f" or v.dtype.name == "bfloat16" else v for k, v in feeds.items()}
    return ReferenceEvaluator(to_float64(model), new_ops=[_batchnorm_kernel(), _grouped_conv_transpose_kernel()]).run(
        None, wide)


def _batchnorm_kernel() -> type:
    """A reference-evaluator kernel for every BatchNormalization version, inference and training."""
    from onnx.reference.op_run import OpRun

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None, spatial=None,  # noqa: PLR0913
                 training_mode=None, is_test=None, consumed_inputs=None):
            eps = 1e-5 if epsilon is None else epsilon
            shape = (1, -1) + (1,) * (x.ndim - 2) if scale.ndim == 1 else (1, *scale.shape)
            outputs = len(self.onnx_node.output)
            if not training_mode and outputs == 1:
                y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)
                return (y.astype(x.dtype),)
            axes = (0, *range(2, x.ndim))
            batch_mean, batch_var = x.mean(axis=axes), x.var(axis=axes)
            y = (x - batch_mean.reshape(shape)) / np.sqrt(batch_var.reshape(shape) + eps) * scale.reshape(shape)
            y = y + bias.reshape(shape)
            m = 0.9 if momentum is None else momentum
            result = (y.astype(x.dtype), mean * m + batch_mean * (1 - m), var * m + batch_var * (1 - m),
                      batch_mean, batch_var)
            return result[:outputs]

    return BatchNormalization


def _grouped_conv_transpose_kernel() -> type:
    """onnx's ConvTranspose, applied one group at a time when group > 1."""
    from onnx.reference.ops.op_conv_transpose import ConvTranspose as Reference

    class ConvTranspose(Reference):
        op_domain = ""

        def _run(self, X, W, B=None, **attributes):  # noqa: N803 - ONNX's input names
            group = attributes.get("group") or 1
            if group == 1:
                return super()._run(X, W, B, **attributes)
            attributes = {**attributes, "group": 1}
            c_in, c_out = X.shape[1] // group, W.shape[1]
            parts = [
                super(ConvTranspose, self)._run(
                    X[:, i * c_in:(i + 1) * c_in], W[i * c_in:(i + 1) * c_in],
                    None if B is None else B[i * c_out:(i + 1) * c_out], **attributes)[0]
                for i in range(group)
            ]
            return (np.concatenate(parts, axis=1),)

    return ConvTranspose

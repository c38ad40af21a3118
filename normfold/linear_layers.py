"""Conv, ConvTranspose, Gemm and MatMul nodes read as 'constant weight (+ bias) on channels'."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from normfold.bn_math import in_channels, out_channels
from normfold.graph_edit import constant_array, why_not_constant
from normfold.graph_walk import is_op, node_label
from normfold.ranks import RankOracle
from normfold.reason_codes import NO_LAYER, UNSUPPORTED, Refusal

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass(frozen=True)
class LinearLayer:
    """A linear layer with a constant weight, described by how its weight maps channels."""

    node: ir.Node
    weight: np.ndarray
    bias: np.ndarray | None
    layout: str
    group: int
    out_rank: int | None

    @property
    def op(self) -> str:
        """Operator type, e.g. 'Conv'."""
        return self.node.op_type

    @property
    def label(self) -> str:
        """The node's name for reports."""
        return f"{self.op} '{node_label(self.node)}'"

    @property
    def out_channels(self) -> int:
        """Channels on the output's channel axis (axis 1)."""
        return out_channels(self.weight.shape, self.layout, self.group)

    @property
    def in_channels(self) -> int:
        """Channels the layer reads from its activation input."""
        return in_channels(self.weight.shape, self.layout, self.group)

    def attr_float(self, name: str, default: float) -> float:
        """A float attribute of the node (Gemm alpha/beta)."""
        return float(self.node.attributes.get_float(name, default))


def read_linear_layer(node: ir.Node, ranks: RankOracle) -> LinearLayer | Refusal:
    """The node as a LinearLayer, or the reason it cannot be one."""
    label = f"{node.op_type} '{node_label(node)}'"
    if not is_op(node, *LINEAR_OPS):
        return Refusal(f"{label} is not a Conv, ConvTranspose, Gemm or MatMul", NO_LAYER)
    if len(node.inputs) < 2 or node.inputs[0] is None:
        return Refusal(f"{label} has no activation input", NO_LAYER)
    if constant_array(node.inputs[0]) is not None:
        return Refusal(f"{label} has a constant activation input and a run-time weight", NO_LAYER)
    weight = constant_array(node.inputs[1])
    if weight is None:
        return why_not_constant(node.inputs[1], "its weight").prefixed(f"{label}: ")
    if weight.dtype.kind != "f" and weight.dtype.name != "bfloat16":
        return Refusal(f"{label} has a {weight.dtype.name} weight; only floating-point layers are folded", UNSUPPORTED)
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    bias = None
    if bias_value is not None:
        bias = constant_array(bias_value)
        if bias is None:
            return why_not_constant(bias_value, "its bias").prefixed(f"{label}: ")
    group = int(node.attributes.get_int("group", 1))
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        if weight.ndim < 3:
            return Refusal(f"{label} has a weight of rank {weight.ndim}; Conv weights have rank 3 or more", UNSUPPORTED)
        layout = "conv" if op == "Conv" else "convt"
        return LinearLayer(node, weight, bias, layout, group, weight.ndim)
    if weight.ndim != 2:
        return Refusal(f"{label} has a weight of rank {weight.ndim}, not a 2-D matrix", UNSUPPORTED)
    if op == "Gemm":
        layout = "nk" if node.attributes.get_int("transB", 0) else "kn"
        return LinearLayer(node, weight, bias, layout, 1, 2)
    return LinearLayer(node, weight, None, "kn", 1, ranks.rank(node.outputs[0]) or _matmul_rank(node, ranks))


def _matmul_rank(node: ir.Node, ranks: RankOracle) -> int | None:
    """MatMul with a 2-D weight keeps its activation's rank."""
    activation = node.inputs[0]
    return None if activation is None else ranks.rank(activation)

"""Forward folds through Flatten or Reshape into the next Gemm or MatMul: BN channel c of an (N, C, H, W) tensor
is the contiguous block of features [c * H * W, (c + 1) * H * W) of the flattened rows.

One negative test per guard: a Flatten from another axis, a Reshape that does not keep one row per batch element,
a feature count that is not a whole block per channel, a Flatten read by two nodes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from graphs import bn_node, bn_params, make_model, op_types, rng
from numerics import assert_fold_exact, random_feeds
from onnx import helper, numpy_helper

from normfold import fold

C, H, W, F = 4, 3, 2, 5


def _model(flatten: list[onnx.NodeProto], layer: str = "Gemm", inits: dict | None = None,
           site: onnx.NodeProto | None = None) -> onnx.ModelProto:
    """x -> Relu -> BN (or `site`) -> `flatten` nodes (reading 'z', writing 'flat') -> Gemm/MatMul."""
    g = rng(31)
    params = {"w": g.normal(0, 0.4, (C * H * W, F)).astype(np.float32), **bn_params("bn", C, g), **(inits or {})}
    head = [helper.make_node("Relu", ["x"], ["r"], name="relu"), site or bn_node("r", "z", "bn")]
    tail = [helper.make_node(layer, ["flat", "w"], ["out"], name="fc")]
    return make_model(head + flatten + tail, {"x": ["N", C, H, W]}, ["out"], params)


def _shape(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"{name}_node",
                            value=numpy_helper.from_array(np.array(values, np.int64)))


def _fold_exact(model: onnx.ModelProto) -> tuple[list[str], list]:
    result = fold(model)
    proto = ir.to_proto(result.model)
    onnx.checker.check_model(proto, full_check=True)
    assert_fold_exact(model, result.model, random_feeds(model))
    return op_types(proto), result.records


def test_bn_before_flatten_folds_into_the_gemm_rows() -> None:
    """Conv-less classifier head: Relu -> BN -> Flatten -> Gemm; BN goes into the Gemm's weight rows and bias."""
    ops, records = _fold_exact(_model([helper.make_node("Flatten", ["z"], ["flat"], name="flatten")]))
    assert ops == ["Relu", "Flatten", "Gemm"]
    assert records[0].detail == "into Gemm 'fc' through Flatten 'flatten' (forward)"
    assert records[0].tensors == {"w_folded": ["w", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
                                  "fc_bias_folded": ["w", "bn_scale", "bn_bias", "bn_mean", "bn_var"]}


@pytest.mark.parametrize("target", [[0, -1], [0, C * H * W], [-1, C * H * W]], ids=["0,-1", "0,F", "-1,F"])
def test_bn_before_reshape_to_rows_folds_into_a_matmul(target: list[int]) -> None:
    """Reshape to (N, C*H*W) then a 2-D MatMul: folded, the MatMul becomes a Gemm to take the shift."""
    flatten = [_shape("target", target), helper.make_node("Reshape", ["z", "target"], ["flat"], name="reshape")]
    ops, records = _fold_exact(_model(flatten, "MatMul"))
    assert ops == ["Relu", "Constant", "Reshape", "Gemm"]
    assert records[0].detail == "into MatMul 'fc' through Reshape 'reshape' (forward) (MatMul rewritten as Gemm)"


def test_a_per_channel_mul_before_flatten_folds_into_the_gemm() -> None:
    """An elementwise scale on the channels takes the same path."""
    scale = rng(32).uniform(0.5, 2, (C, 1, 1)).astype(np.float32)
    site = helper.make_node("Mul", ["r", "s"], ["z"], name="mul")
    ops, records = _fold_exact(_model([helper.make_node("Flatten", ["z"], ["flat"], name="flatten")],
                                      inits={"s": scale}, site=site))
    assert ops == ["Relu", "Flatten", "Gemm"]
    assert [(r.node, r.action) for r in records] == [("mul", "folded")]


def _left(model: onnx.ModelProto) -> str:
    result = fold(model)
    assert "BatchNormalization" in op_types(ir.to_proto(result.model))
    [record] = result.records
    assert record.action == "skipped"
    return record.detail.split("; into its consumer: ")[1]


def test_flatten_from_another_axis_is_left_with_the_reason() -> None:
    """Flatten(axis=2) makes rows of (N*C) spatial blocks: BN's channels are no longer feature blocks."""
    g = rng(33)
    model = _model([helper.make_node("Flatten", ["z"], ["flat"], name="flatten", axis=2)],
                   inits={"w": g.normal(0, 0.4, (H * W, F)).astype(np.float32)})
    assert _left(model) == "Flatten 'flatten' does not flatten from axis 1"


def test_a_reshape_that_mixes_rows_is_left_with_the_reason() -> None:
    """Reshape to (-1, H*W) makes one row per channel, not per batch element."""
    g = rng(34)
    flatten = [_shape("target", [-1, H * W]), helper.make_node("Reshape", ["z", "target"], ["flat"], name="reshape")]
    model = _model(flatten, inits={"w": g.normal(0, 0.4, (H * W, F)).astype(np.float32)})
    assert _left(model) == f"Reshape 'reshape' reshapes to [-1, {H * W}], which may not keep one row per batch element"


def test_a_flatten_read_twice_is_left_with_the_reason() -> None:
    """The flattened tensor also goes to a graph output: changing it is not allowed."""
    model = _model([helper.make_node("Flatten", ["z"], ["flat"], name="flatten"),
                    helper.make_node("Identity", ["flat"], ["seen"], name="seen")])
    model.graph.output.append(helper.make_value_info("seen", onnx.TypeProto()))
    model.graph.output[-1].type.CopyFrom(helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, None))
    assert _left(model) == "Flatten 'flatten' does not feed one Gemm or MatMul"

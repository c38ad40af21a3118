"""Forward folds through Flatten or Reshape into the next Gemm or MatMul: BN channel c of an (N, C, H, W) tensor
is the contiguous block of features [c * H * W, (c + 1) * H * W) of the flattened rows.

One negative test per guard: a Flatten from another axis, a Reshape that does not keep one row per batch element,
a feature count that is not a whole block per channel, a Flatten read by two nodes.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from fold_helpers import fold_exactly, skipped_bn_reasons
from graphs import bn_node, bn_params, int64_constant, make_model, rng
from onnx import helper

C, H, W, F = 4, 3, 2, 5


def _model(
    flatten: list[onnx.NodeProto], layer: str = "Gemm", inits: dict | None = None, site: onnx.NodeProto | None = None
) -> onnx.ModelProto:
    """x -> Relu -> BN (or `site`) -> `flatten` nodes (reading 'z', writing 'flat') -> Gemm/MatMul."""
    g = rng(31)
    params = {"w": g.normal(0, 0.4, (C * H * W, F)).astype(np.float32), **bn_params("bn", C, g), **(inits or {})}
    head = [helper.make_node("Relu", ["x"], ["r"], name="relu"), site or bn_node("r", "z", "bn")]
    tail = [helper.make_node(layer, ["flat", "w"], ["out"], name="fc")]
    return make_model(head + flatten + tail, {"x": ["N", C, H, W]}, ["out"], params)


def test_bn_before_flatten_folds_into_the_gemm_rows() -> None:
    """Conv-less classifier head: Relu -> BN -> Flatten -> Gemm; BN goes into the Gemm's weight rows and bias."""
    ops, records = fold_exactly(_model([helper.make_node("Flatten", ["z"], ["flat"], name="flatten")]))
    assert ops == ["Relu", "Flatten", "Gemm"]
    assert records[0].detail == "into Gemm 'fc' through Flatten 'flatten' (forward)"
    assert records[0].tensors == {
        "w_folded": ["w", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
        "fc_bias_folded": ["w", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
    }


@pytest.mark.parametrize("target", [[0, -1], [0, C * H * W], [-1, C * H * W]], ids=["0,-1", "0,F", "-1,F"])
def test_bn_before_reshape_to_rows_folds_into_a_matmul(target: list[int]) -> None:
    """Reshape to (N, C*H*W) then a 2-D MatMul: folded, the MatMul becomes a Gemm to take the shift."""
    flatten = [int64_constant("target", target), helper.make_node("Reshape", ["z", "target"], ["flat"], name="reshape")]
    ops, records = fold_exactly(_model(flatten, "MatMul"))
    assert ops == ["Relu", "Constant", "Reshape", "Gemm"]
    assert records[0].detail == "into MatMul 'fc' through Reshape 'reshape' (forward) (MatMul rewritten as Gemm)"


def test_a_per_channel_mul_before_flatten_folds_into_the_gemm() -> None:
    """An elementwise scale on the channels takes the same path."""
    scale = rng(32).uniform(0.5, 2, (C, 1, 1)).astype(np.float32)
    site = helper.make_node("Mul", ["r", "s"], ["z"], name="mul")
    ops, records = fold_exactly(
        _model([helper.make_node("Flatten", ["z"], ["flat"], name="flatten")], inits={"s": scale}, site=site)
    )
    assert ops == ["Relu", "Flatten", "Gemm"]
    assert [(r.node, r.action) for r in records] == [("mul", "folded")]


def test_flatten_from_another_axis_is_left_with_the_reason() -> None:
    """Flatten(axis=2) makes rows of (N*C) spatial blocks: BN's channels are no longer feature blocks."""
    g = rng(33)
    model = _model(
        [helper.make_node("Flatten", ["z"], ["flat"], name="flatten", axis=2)],
        inits={"w": g.normal(0, 0.4, (H * W, F)).astype(np.float32)},
    )
    assert skipped_bn_reasons(model)[1] == "Flatten 'flatten' does not flatten from axis 1"


def test_a_reshape_that_mixes_rows_is_left_with_the_reason() -> None:
    """Reshape to (-1, H*W) makes one row per channel, not per batch element."""
    g = rng(34)
    flatten = [
        int64_constant("target", [-1, H * W]),
        helper.make_node("Reshape", ["z", "target"], ["flat"], name="reshape"),
    ]
    model = _model(flatten, inits={"w": g.normal(0, 0.4, (H * W, F)).astype(np.float32)})
    assert (
        skipped_bn_reasons(model)[1]
        == f"Reshape 'reshape' reshapes to [-1, {H * W}], which may not keep one row per batch element"
    )


def test_a_flatten_read_twice_is_left_with_the_reason() -> None:
    """The flattened tensor also goes to a graph output: changing it is not allowed."""
    model = _model(
        [
            helper.make_node("Flatten", ["z"], ["flat"], name="flatten"),
            helper.make_node("Identity", ["flat"], ["seen"], name="seen"),
        ]
    )
    model.graph.output.append(helper.make_value_info("seen", onnx.TypeProto()))
    model.graph.output[-1].type.CopyFrom(helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, None))
    assert skipped_bn_reasons(model)[1] == "Flatten 'flatten' does not feed one Gemm or MatMul"

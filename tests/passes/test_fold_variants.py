"""Folding across opset forms, dtypes and model details: opset 6 is_test, spatial, bfloat16, subnormals,
value_info, and --simplify."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
from graphs import bn_node, bn_params, make_model, op_types, rng
from numerics import assert_fold_exact, random_feeds, scale_outputs
from onnx import helper, numpy_helper

from normfold import fold
from normfold.bn_math import bn_affine


def _conv_bn_nodes(**bn_attrs: object) -> list[onnx.NodeProto]:
    return [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), bn_node("y", "z", "bn", **bn_attrs)]


def _inits(seed: int, dtype: type = np.float32) -> dict[str, np.ndarray]:
    g = rng(seed)
    return {"w": g.normal(0, 0.5, (4, 3, 3, 3)).astype(dtype), **bn_params("bn", 4, g, dtype)}


def _initializers(model: ir.Model) -> dict[str, np.ndarray]:
    return {name: value.const_value.numpy() for name, value in model.graph.initializers.items()}


def test_opset6_is_test_1_folds_like_opset15_and_is_test_0_is_training() -> None:
    inits = _inits(1)
    modern = fold(make_model(_conv_bn_nodes(), {"x": [2, 3, 6, 6]}, ["z"], inits, opset=15))
    graph = helper.make_graph(
        _conv_bn_nodes(is_test=1),
        "t",
        [helper.make_tensor_value_info("x", 1, [2, 3, 6, 6])],
        [helper.make_tensor_value_info("z", 1, [2, 4, 4, 4])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    old = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    old.ir_version = 3
    result = fold(old)
    assert op_types(ir.to_proto(result.model)) == ["Conv"]
    for name, array in _initializers(modern.model).items():
        np.testing.assert_array_equal(_initializers(result.model)[name], array)
    old.graph.node[1].attribute[0].i = 0
    training = fold(old)
    assert training.records[0].detail.startswith("is_test=0 (opset 6 training mode)")


def test_spatial_0_with_per_channel_params_on_2d_input_folds() -> None:
    g = rng(2)
    inits = {"w": g.normal(0, 0.5, (3, 5)).astype(np.float32), **bn_params("bn", 5, g)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), bn_node("y", "z", "bn", spatial=0)]
    model = make_model(nodes, {"x": [2, 3]}, ["z"], inits, opset=7)
    result = fold(model)
    assert op_types(ir.to_proto(result.model)) == ["Gemm"]
    plain = make_model([nodes[0], bn_node("y", "z", "bn")], {"x": [2, 3]}, ["z"], inits, opset=15)
    assert_fold_exact(model, result.model, random_feeds(model), truth_model=plain)


def test_spatial_0_with_per_position_params_is_left() -> None:
    g = rng(3)
    params = {
        k: np.abs(g.normal(1, 0.2, (4, 2, 2))).astype(np.float32) for k in ("bn_scale", "bn_bias", "bn_mean", "bn_var")
    }
    inits = {"w": g.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32), **params}
    model = make_model(_conv_bn_nodes(spatial=0), {"x": [1, 3, 2, 2]}, ["z"], inits, opset=7)
    result = fold(model)
    assert op_types(ir.to_proto(result.model)) == ["Conv", "BatchNormalization"]
    assert result.records[0].detail == "its parameters have shape [4, 2, 2], not one value per channel (spatial=0)"


def test_bfloat16_weights_are_rounded_once_from_float64() -> None:
    inits = _inits(4, ml_dtypes.bfloat16)
    model = ir.from_proto(
        make_model(_conv_bn_nodes(), {"x": ["N", 3, 5, 5]}, ["z"], inits, opset=22, dtype=onnx.TensorProto.BFLOAT16)
    )
    result = fold(model)
    assert [n.op_type for n in result.model.graph] == ["Conv"]
    affine = bn_affine(*(inits[f"bn_{p}"] for p in ("scale", "bias", "mean", "var")), 1e-5)
    expected_w = scale_outputs(inits["w"], affine.scale, "conv").astype(ml_dtypes.bfloat16)
    expected_b = affine.shift.astype(ml_dtypes.bfloat16)
    conv = next(iter(result.model.graph))
    np.testing.assert_array_equal(conv.inputs[1].const_value.numpy(), expected_w)
    np.testing.assert_array_equal(conv.inputs[2].const_value.numpy(), expected_b)
    assert conv.inputs[1].const_value.dtype == ir.DataType.BFLOAT16


def test_float16_fold_that_would_create_subnormal_weights_is_skipped() -> None:
    inits = _inits(5, np.float16)
    inits["bn_scale"] = np.full(4, 1e-3, np.float16)
    inits["w"] = np.full((4, 3, 3, 3), 1e-3, np.float16)
    model = make_model(_conv_bn_nodes(), {"x": ["N", 3, 5, 5]}, ["z"], inits, dtype=onnx.TensorProto.FLOAT16)
    result = fold(model)
    assert op_types(ir.to_proto(result.model)) == ["Conv", "BatchNormalization"]
    assert "folding pushes 108 weights below float16's smallest normal" in result.records[0].detail


def test_value_info_of_removed_values_is_dropped() -> None:
    inits = _inits(6)
    nodes = [*_conv_bn_nodes(), helper.make_node("Relu", ["z"], ["out"], name="relu")]
    model = onnx.shape_inference.infer_shapes(make_model(nodes, {"x": [1, 3, 5, 5]}, ["out"], inits))
    assert {v.name for v in model.graph.value_info} == {"y", "z"}
    folded = ir.to_proto(fold(model).model)
    defined = {o for n in folded.graph.node for o in n.output} | {t.name for t in folded.graph.initializer}
    described = {v.name for v in folded.graph.value_info}
    assert "z" not in described and described <= defined
    onnx.checker.check_model(folded, full_check=True)


def test_simplify_folds_computed_parameters_and_removes_dead_code() -> None:
    inits = _inits(7)
    inits["var_offset"] = np.full(4, 0.25, np.float32)
    nodes = [
        helper.make_node("Add", ["bn_var", "var_offset"], ["computed_var"], name="var_add"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node(
            "BatchNormalization", ["y", "bn_scale", "bn_bias", "bn_mean", "computed_var"], ["z"], name="bn"
        ),
        helper.make_node("Identity", ["z"], ["out"], name="identity"),
    ]
    model = make_model(nodes, {"x": ["N", 3, 5, 5]}, ["out"], inits)
    simplified = fold(model, simplify=True)
    ops = op_types(ir.to_proto(simplified.model))
    assert "BatchNormalization" not in ops and "Add" not in ops
    assert simplified.records[0].action == "folded"
    assert_fold_exact(model, simplified.model, random_feeds(model))


def test_dead_channels_with_a_subnormal_scale_fold_and_a_normal_scale_that_underflows_does_not() -> None:
    """A channel whose BN scale is itself subnormal (3.4e-39) was already computed at subnormal precision: its
    weights may become subnormal. A normal scale that pushes normal weights into subnormals still refuses."""
    inits = _inits(7)
    inits["bn_scale"] = np.array([1.0, 3.4e-39, 0.8, 3.4e-39], np.float32)
    inits["bn_var"] = np.ones(4, np.float32)
    model = make_model(_conv_bn_nodes(), {"x": ["N", 3, 5, 5]}, ["z"], inits)
    result = fold(model)
    assert op_types(ir.to_proto(result.model)) == ["Conv"]
    assert_fold_exact(model, result.model, random_feeds(model))
    inits["bn_scale"] = np.array([1.0, 1e-30, 0.8, 1e-30], np.float32)
    inits["w"] = np.full_like(inits["w"], 1e-9)
    refused = fold(make_model(_conv_bn_nodes(), {"x": ["N", 3, 5, 5]}, ["z"], inits))
    assert op_types(ir.to_proto(refused.model)) == ["Conv", "BatchNormalization"]
    assert "folding pushes 54 weights below float32's smallest normal" in refused.records[0].detail

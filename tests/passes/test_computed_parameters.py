"""Parameters computed from constants alone are constants: the fold evaluates their (small) cone and removes it.

Real exports: the dynamo exporter (optimize=False) gives a bias-less Conv a zero bias `Constant -> CastLike ->
Expand`; paddle2onnx adds a ConvTranspose's bias as `Add(Reshape(Constant, Constant))`. One negative test per
guard: a cone reaching a graph input, a random node, a cone over the node bound.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from graphs import bn_node, bn_params, make_model, op_types, rng
from numerics import assert_fold_exact, random_feeds
from onnx import helper, numpy_helper

from normfold import fold
from normfold.constant_cone import MAX_NODES


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"{name}_node", value=numpy_helper.from_array(array))


def _dynamo_conv_bn() -> onnx.ModelProto:
    g = rng(21)
    inits = {"w": g.normal(0, 0.4, (6, 3, 3, 3)).astype(np.float32), **bn_params("bn", 6, g)}
    nodes = [
        _const("zero", np.array(0.0, np.float32)),
        _const("shape", np.array([6], np.int64)),
        helper.make_node("CastLike", ["zero", "w"], ["zero_like"], name="castlike"),
        helper.make_node("Expand", ["zero_like", "shape"], ["bias"], name="expand"),
        helper.make_node("Conv", ["x", "w", "bias"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("y", "z", "bn"),
    ]
    return make_model(nodes, {"x": ["N", 3, 6, 6]}, ["z"], inits, opset=18)


def test_a_zero_bias_computed_from_constants_folds_and_its_cone_goes() -> None:
    model = _dynamo_conv_bn()
    result = fold(model)
    assert [r.action for r in result.records] == ["folded"]
    folded = ir.to_proto(result.model)
    assert op_types(folded) == ["Conv"]
    onnx.checker.check_model(folded, full_check=True)
    assert_fold_exact(model, result.model, random_feeds(model))


def test_a_bias_added_as_a_reshaped_constant_folds() -> None:
    g = rng(22)
    inits = {"w": g.normal(0, 0.4, (3, 4, 2, 2)).astype(np.float32), **bn_params("bn", 4, g)}
    nodes = [
        _const("bias_flat", g.normal(0, 0.3, 4).astype(np.float32)),
        _const("bias_shape", np.array([1, 4, 1, 1], np.int64)),
        helper.make_node("Reshape", ["bias_flat", "bias_shape"], ["bias"], name="reshape"),
        helper.make_node("ConvTranspose", ["x", "w"], ["t"], name="deconv", strides=[2, 2]),
        helper.make_node("Add", ["t", "bias"], ["y"], name="add"),
        bn_node("y", "z", "bn"),
    ]
    model = make_model(nodes, {"x": ["N", 3, 5, 5]}, ["z"], inits, opset=13)
    result = fold(model)
    assert [(r.op_type, r.action) for r in result.records] == [("Add", "folded"), ("BatchNormalization", "folded")]
    assert "Reshape" not in op_types(ir.to_proto(result.model))
    assert "BatchNormalization" not in op_types(ir.to_proto(result.model))
    assert_fold_exact(model, result.model, random_feeds(model))


def test_a_parameter_computed_from_a_graph_input_stays_refused() -> None:
    g = rng(23)
    inits = {"w": g.normal(0, 0.4, (4, 3, 1, 1)).astype(np.float32), **bn_params("bn", 4, g)}
    nodes = [
        helper.make_node("Add", ["bn_var", "offset"], ["var"], name="var_add"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("BatchNormalization", ["y", "bn_scale", "bn_bias", "bn_mean", "var"], ["z"], name="bn"),
    ]
    model = make_model(nodes, {"x": ["N", 3, 4, 4], "offset": [4]}, ["z"], inits)
    result = fold(model)
    assert result.records[0].action == "skipped"
    assert result.records[0].detail.startswith("var 'var' is computed at run time")


def test_a_random_node_in_the_cone_is_not_evaluated() -> None:
    g = rng(24)
    inits = {"w": g.normal(0, 0.4, (4, 3, 1, 1)).astype(np.float32), **bn_params("bn", 4, g)}
    nodes = [
        helper.make_node("RandomUniform", [], ["noise"], name="noise", shape=[4], dtype=onnx.TensorProto.FLOAT),
        helper.make_node("Add", ["bn_var", "noise"], ["var"], name="var_add"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("BatchNormalization", ["y", "bn_scale", "bn_bias", "bn_mean", "var"], ["z"], name="bn"),
    ]
    result = fold(make_model(nodes, {"x": ["N", 3, 4, 4]}, ["z"], inits))
    assert result.records[0].detail.startswith("var 'var' is computed at run time")


def test_a_cone_over_the_node_bound_is_not_evaluated() -> None:
    g = rng(25)
    inits = {
        "w": g.normal(0, 0.4, (4, 3, 1, 1)).astype(np.float32),
        **bn_params("bn", 4, g),
        "one": np.ones(4, np.float32),
    }
    nodes, previous = [], "bn_var"
    for index in range(MAX_NODES + 1):
        nodes.append(helper.make_node("Mul", [previous, "one"], [f"v{index}"], name=f"mul{index}"))
        previous = f"v{index}"
    nodes += [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("BatchNormalization", ["y", "bn_scale", "bn_bias", "bn_mean", previous], ["z"], name="bn"),
    ]
    result = fold(make_model(nodes, {"x": ["N", 3, 4, 4]}, ["z"], inits))
    assert result.records[0].detail.startswith(f"var '{previous}' is computed at run time")
    nodes_within = nodes[1:]  # one Mul fewer: exactly MAX_NODES
    nodes_within[0] = helper.make_node("Mul", ["bn_var", "one"], ["v1"], name="mul1")
    assert fold(make_model(nodes_within, {"x": ["N", 3, 4, 4]}, ["z"], inits)).records[0].action == "folded"


def test_the_dynamo_zero_bias_read_from_the_input_type_and_the_weight_shape_folds() -> None:
    """As torch.onnx.export(dynamo=True, optimize=False) writes it: CastLike takes only the type of the graph
    input (of symbolic batch), the size comes from Shape(weight); neither is a constant, both are known."""
    g = rng(26)
    inits = {"w": g.normal(0, 0.4, (6, 3, 3, 3)).astype(np.float32), **bn_params("bn", 6, g)}
    nodes = [
        _const("zero", np.array(0.0, np.float32)),
        helper.make_node("CastLike", ["zero", "x"], ["zero_like"], name="castlike"),
        helper.make_node("Shape", ["w"], ["out_channels"], name="shape", start=0, end=1),
        _const("one", np.array([1], np.int64)),
        helper.make_node("Expand", ["out_channels", "one"], ["bias_shape"], name="expand_shape"),
        helper.make_node("Expand", ["zero_like", "bias_shape"], ["bias"], name="expand"),
        helper.make_node("Conv", ["x", "w", "bias"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("y", "z", "bn"),
    ]
    model = make_model(nodes, {"x": ["N", 3, 6, 6]}, ["z"], inits, opset=20)
    result = fold(model)
    assert [r.action for r in result.records] == ["folded"]
    assert op_types(ir.to_proto(result.model)) == ["Conv"]
    assert_fold_exact(model, result.model, random_feeds(model))

"""BN and Dropout inside If branches and model-local functions are rewritten too."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from graphs import bn_params, rng
from numerics import assert_fold_exact
from onnx import helper, numpy_helper

from normfold import fold


def _branch(name: str, seed: int) -> onnx.GraphProto:
    g = rng(seed)
    constants = {"w": g.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32), **bn_params("bn", 4, g)}
    nodes = [
        helper.make_node("Constant", [], [f"{name}_{k}"], value=numpy_helper.from_array(v))
        for k, v in constants.items()
    ]
    nodes += [
        helper.make_node("Conv", ["x", f"{name}_w"], [f"{name}_y"], name=f"{name}_conv"),
        helper.make_node(
            "BatchNormalization",
            [f"{name}_y"] + [f"{name}_bn_{p}" for p in ("scale", "bias", "mean", "var")],
            [f"{name}_z"],
            name=f"{name}_bn",
        ),
        helper.make_node("Dropout", [f"{name}_z"], [f"{name}_out"], name=f"{name}_drop"),
    ]
    return helper.make_graph(
        nodes, name, [], [helper.make_tensor_value_info(f"{name}_out", onnx.TensorProto.FLOAT, None)]
    )


def test_if_branches_are_folded() -> None:
    node = helper.make_node(
        "If", ["cond"], ["y"], name="if", then_branch=_branch("then", 1), else_branch=_branch("else", 2)
    )
    graph = helper.make_graph(
        [node],
        "t",
        [
            helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 2, 2]),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    result = fold(model)
    assert sorted((r.op_type, r.action) for r in result.records) == [
        ("BatchNormalization", "folded"),
        ("BatchNormalization", "folded"),
        ("Dropout", "stripped"),
        ("Dropout", "stripped"),
    ]
    assert {r.graph for r in result.records} == {"main/if.then_branch", "main/if.else_branch"}
    folded = ir.to_proto(result.model)
    onnx.checker.check_model(folded, full_check=True)
    for branch in ("then_branch", "else_branch"):
        body = next(a.g for a in folded.graph.node[0].attribute if a.name == branch)
        assert [n.op_type for n in body.node if n.op_type != "Constant"] == ["Conv"]
    x = rng(3).standard_normal((1, 3, 2, 2)).astype(np.float32)
    for cond in (True, False):
        assert_fold_exact(model, folded, {"cond": np.array(cond), "x": x})


def test_function_body_is_folded_with_constant_nodes() -> None:
    g = rng(4)
    constants = {"w": g.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32), **bn_params("bn", 4, g)}
    body = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v)) for k, v in constants.items()]
    body += [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["y"], name="bn"),
    ]
    function = helper.make_function("local", "ConvBn", ["x"], ["y"], body, [helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("ConvBn", ["x"], ["y"], domain="local", name="call")],
        "t",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 2, 2])],
    )
    model = helper.make_model(
        graph, functions=[function], opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    )
    model.ir_version = 8
    result = fold(model)
    assert [(r.graph, r.action) for r in result.records] == [("function local::ConvBn", "folded")]
    folded = ir.to_proto(result.model)
    onnx.checker.check_model(folded, full_check=True)
    assert [n.op_type for n in folded.functions[0].node if n.op_type != "Constant"] == ["Conv"]
    assert_fold_exact(model, folded, {"x": rng(5).standard_normal((1, 3, 2, 2)).astype(np.float32)})

"""StripDropoutPass: every opset form of inference Dropout is removed; training-mode ones stay, with reasons."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from graphs import make_model, op_types
from numerics import assert_fold_exact, random_feeds, run_ort
from onnx import helper

from normfold import fold
from normfold.passes import StripDropoutPass

RATIO = {"ratio": np.array(0.4, np.float32)}
FALSE = {"training_mode": np.array(False)}

FORMS = {
    "opset7": (7, [], {}),
    "opset10": (10, [], {}),
    "opset12-ratio": (12, ["ratio"], RATIO),
    "opset13-ratio-false": (13, ["ratio", "training_mode"], {**RATIO, **FALSE}),
    "opset13-no-inputs": (13, [], {}),
    "opset22-ratio-false": (22, ["ratio", "training_mode"], {**RATIO, **FALSE}),
}


def _dropout_model(opset: int, extra: list[str], inits: dict, mask: str | None = None, mask_output: bool = False):
    outputs = ["h"] + ([mask] if mask else [])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Dropout", ["r", *extra], outputs, name="drop"),
        helper.make_node("Neg", ["h"], ["y"], name="neg"),
    ]
    graph_outputs = ["y"]
    if mask and mask_output:
        graph_outputs.append(mask)
    elif mask:
        nodes.append(helper.make_node("Not" if opset >= 10 else "Neg", [mask], ["mask_use"], name="use"))
        graph_outputs.append("mask_use")
    return make_model(nodes, {"x": ["N", 3]}, graph_outputs, inits, opset=opset)


@pytest.mark.parametrize("form", FORMS, ids=list(FORMS))
def test_inference_dropout_is_removed(form: str) -> None:
    opset, extra, inits = FORMS[form]
    model = _dropout_model(opset, extra, inits)
    result = fold(model)
    folded = ir.to_proto(result.model)
    assert op_types(folded) == ["Relu", "Neg"]
    assert not folded.graph.initializer, "ratio/training_mode constants are dropped with the node"
    assert [r.action for r in result.records] == ["stripped"]
    onnx.checker.check_model(folded, full_check=True)
    assert_fold_exact(model, folded, random_feeds(model))


@pytest.mark.parametrize("as_graph_output", [False, True])
def test_used_mask_before_opset_12_keeps_the_dropout(as_graph_output: bool) -> None:
    """Before opset 12 the inference mask is unspecified, and ONNX Runtime returns all false: keep it."""
    model = _dropout_model(10, [], {}, mask="mask", mask_output=as_graph_output)
    result = fold(model)
    assert "Dropout" in op_types(ir.to_proto(result.model))
    assert result.records[0].detail == (
        "its mask is used, and at opset 10 the inference mask is not specified "
        "(ONNX Runtime returns all false; opset 12 made it all true)"
    )


@pytest.mark.parametrize("as_graph_output", [False, True])
@pytest.mark.parametrize("opset", [12, 13, 22])
def test_used_mask_becomes_all_true(opset: int, as_graph_output: bool) -> None:
    model = _dropout_model(opset, [], {}, mask="mask", mask_output=as_graph_output)
    result = fold(model)
    folded = ir.to_proto(result.model)
    assert "Dropout" not in op_types(folded)
    assert [o.name for o in folded.graph.output] == [o.name for o in model.graph.output]
    onnx.checker.check_model(folded, full_check=True)
    assert "mask replaced by an all-true tensor" in result.records[0].detail
    assert_fold_exact(model, folded, random_feeds(model))
    feeds = random_feeds(model)
    for want, got in zip(run_ort(model, feeds), run_ort(folded, feeds)):
        np.testing.assert_array_equal(got, want)


def test_unused_mask_output_is_dropped_with_the_node() -> None:
    model = _dropout_model(13, [], {})
    model.graph.node[1].output.append("unused_mask")
    result = fold(model)
    assert op_types(ir.to_proto(result.model)) == ["Relu", "Neg"]


def test_constant_true_training_mode_stays() -> None:
    model = _dropout_model(13, ["ratio", "training_mode"], {**RATIO, "training_mode": np.array(True)})
    result = fold(model)
    assert "Dropout" in op_types(ir.to_proto(result.model))
    assert result.records[0].action == "skipped"
    assert result.records[0].detail.startswith("training_mode is constant true")


def test_runtime_training_mode_stays() -> None:
    nodes = [helper.make_node("Dropout", ["x", "", "train"], ["y"], name="drop")]
    graph = helper.make_graph(
        nodes,
        "t",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("train", onnx.TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    result = fold(model)
    assert result.records[0].action == "skipped"
    assert result.records[0].detail == "its training_mode input 'train' is set at run time"


def test_output_name_kept_when_dropout_feeds_graph_output() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Dropout", ["r"], ["y"], name="drop"),
    ]
    model = make_model(nodes, {"x": ["N", 3]}, ["y"], {}, opset=13)
    folded = ir.to_proto(fold(model).model)
    assert op_types(folded) == ["Relu"]
    assert folded.graph.node[0].output[0] == "y" and folded.graph.output[0].name == "y"
    assert_fold_exact(model, folded, random_feeds(model))


def test_graph_input_straight_to_graph_output_keeps_an_identity() -> None:
    model = make_model([helper.make_node("Dropout", ["x"], ["y"], name="drop")], {"x": ["N", 3]}, ["y"], {}, opset=13)
    result = fold(model)
    folded = ir.to_proto(result.model)
    assert op_types(folded) == ["Identity"]
    assert [i.name for i in folded.graph.input] == ["x"] and [o.name for o in folded.graph.output] == ["y"]
    assert result.records[0].detail.startswith("replaced by Identity")


def test_pass_leaves_its_input_unchanged() -> None:
    model = ir.from_proto(_dropout_model(13, [], {}))
    result = StripDropoutPass()(model)
    assert [n.op_type for n in model.graph] == ["Relu", "Dropout", "Neg"]
    assert [n.op_type for n in result.model.graph] == ["Relu", "Neg"]


def test_opset6_dropout_follows_is_test() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Dropout", ["r"], ["y"], name="drop", is_test=1)],
        "t",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    model.ir_version = 3
    assert op_types(ir.to_proto(fold(model).model)) == ["Relu"]
    model.graph.node[1].attribute[0].i = 0
    result = fold(model)
    assert op_types(ir.to_proto(result.model)) == ["Relu", "Dropout"]
    assert result.records[0].detail.startswith("is_test=0 (opset 6 training mode); convert it to inference mode first")


def test_generated_node_names_do_not_collide() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="drop_mask"),
        helper.make_node("Dropout", ["r"], ["h", "mask"], name="drop"),
        helper.make_node("Not", ["mask"], ["m2"], name="drop_mask_shape"),
    ]
    model = make_model(nodes, {"x": ["N", 3]}, ["h", "m2"], {}, opset=13)
    folded = ir.to_proto(fold(model).model)
    names = [n.name for n in folded.graph.node]
    assert len(names) == len(set(names)), names
    feeds = random_feeds(model)
    for want, got in zip(run_ort(model, feeds), run_ort(folded, feeds)):
        np.testing.assert_array_equal(got, want)

"""SetInferenceModePass / `normfold mode --eval` / `fold --eval`: training-form graphs to inference form."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from examples import MODELS
from graphs import bn_params, op_types, rng
from numerics import run_ort
from onnx import helper, numpy_helper

from normfold import fold
from normfold.cli import main
from normfold.passes import SetInferenceModePass


def _model(training: bool, stats: str = "tracked", flag_input: bool = False) -> onnx.ModelProto:
    """Conv -> BN -> Relu -> Dropout -> Gemm, in training form (BN training_mode=1 + Dropout training) or not."""
    g = rng(21)
    params = bn_params("bn", 4, g)
    if stats == "initial":
        params["bn_mean"], params["bn_var"] = np.zeros(4, np.float32), np.ones(4, np.float32)
    inits = {
        "w": g.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32),
        "fc": g.normal(0, 0.5, (2, 4)).astype(np.float32),
        "ratio": np.array(0.3, np.float32),
        **params,
    }
    bn_outputs = ["z", "running_mean", "running_var"] if training else ["z"]
    attrs = {"training_mode": 1} if training else {}
    dropout_inputs = ["p", "ratio"]
    if training:
        dropout_inputs.append("training" if flag_input else "train_flag")
        if not flag_input:
            inits["train_flag"] = np.array(True)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node(
            "BatchNormalization", ["y", "bn_scale", "bn_bias", "bn_mean", "bn_var"], bn_outputs, name="bn", **attrs
        ),
        helper.make_node("Relu", ["z"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["gp"], name="pool"),
        helper.make_node("Flatten", ["gp"], ["p"], name="flatten"),
        helper.make_node("Dropout", dropout_inputs, ["d"], name="drop"),
        helper.make_node("Gemm", ["d", "fc"], ["logits"], name="head", transB=1),
    ]
    f = onnx.TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("x", f, [4, 3, 6, 6])]
    if flag_input:
        inputs.append(helper.make_tensor_value_info("training", onnx.TensorProto.BOOL, []))
    outputs = [helper.make_tensor_value_info("logits", f, [4, 2])]
    if training:
        outputs += [
            helper.make_tensor_value_info("running_mean", f, [4]),
            helper.make_tensor_value_info("running_var", f, [4]),
        ]
    graph = helper.make_graph(nodes, "t", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


X = np.random.default_rng(3).standard_normal((4, 3, 6, 6)).astype(np.float32)


def test_training_form_becomes_the_inference_model_exactly() -> None:
    result = SetInferenceModePass()(ir.from_proto(_model(training=True)))
    converted = ir.to_proto(result.model)
    onnx.checker.check_model(converted, full_check=True)
    assert [o.name for o in converted.graph.output] == ["logits"]
    assert [(r.node, r.action) for r in result.records] == [("bn", "converted"), ("drop", "converted")]
    assert result.records[0].detail == "training_mode=1 -> inference mode (running statistics)"
    bn = next(n for n in converted.graph.node if n.op_type == "BatchNormalization")
    assert list(bn.output) == ["z"] and not bn.attribute
    (expected,) = run_ort(_model(training=False), {"x": X})
    (actual,) = run_ort(converted, {"x": X})
    np.testing.assert_array_equal(actual, expected)


def test_runtime_training_flag_input_is_removed() -> None:
    result = SetInferenceModePass()(ir.from_proto(_model(training=True, flag_input=True)))
    converted = ir.to_proto(result.model)
    assert [i.name for i in converted.graph.input] == ["x"]
    np.testing.assert_array_equal(run_ort(converted, {"x": X})[0], run_ort(_model(training=False), {"x": X})[0])


def test_never_tracked_statistics_are_not_switched_silently() -> None:
    result = SetInferenceModePass()(ir.from_proto(_model(training=True, stats="initial")))
    bn_record = result.records[0]
    assert (bn_record.action, bn_record.reason) == ("skipped", "unusable-statistics")
    assert bn_record.detail == (
        "training_mode=1, and its running statistics are the initial mean 0 / variance 1 (never tracked): switching "
        "to them would change the outputs; --batch-stats keeps batch statistics with standard inference operators"
    )
    assert "BatchNormalization" in op_types(ir.to_proto(result.model))


@pytest.mark.parametrize("opset", [15, 18])
def test_batch_stats_rewrite_reproduces_the_training_graph(opset: int) -> None:
    original = _model(training=True, stats="initial")
    original.opset_import[0].version = opset
    result = SetInferenceModePass(batch_stats=True)(ir.from_proto(original))
    rewritten = ir.to_proto(result.model)
    onnx.checker.check_model(rewritten, full_check=True)
    ops = op_types(rewritten)
    assert "BatchNormalization" not in ops and ops.count("ReduceMean") == 2
    assert result.records[0].action == "rewritten"
    # Dropout is random in the original: the reference is the same pass without --batch-stats, which
    # switches the Dropout off and leaves the never-tracked BN in training mode.
    reference = ir.to_proto(SetInferenceModePass()(ir.from_proto(original)).model)
    assert next(n for n in reference.graph.node if n.op_type == "BatchNormalization").output[1] == "running_mean"
    np.testing.assert_allclose(run_ort(rewritten, {"x": X})[0], run_ort(reference, {"x": X})[0], rtol=1e-5, atol=1e-6)


def test_fold_eval_on_pytorch_training_export_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "train.onnx"
    shutil.copy(MODELS / "torchvision_mobilenetv3_train.onnx", source)
    result = CliRunner().invoke(main, ["fold", str(source), "--eval", "--provider", "cpu"])
    assert result.exit_code == 0, result.output
    assert "validate: PASSED: equivalent" in result.stdout
    folded = onnx.load(tmp_path / "train.folded.onnx")
    assert not {"BatchNormalization", "Dropout"} & set(op_types(folded))
    assert (
        "35 node(s) switched to inference mode, BatchNormalization folded 34/34, Dropout stripped 1/1" in result.stdout
    )


def test_mode_eval_cli_writes_the_inference_graph(tmp_path: Path) -> None:
    source = tmp_path / "t.onnx"
    onnx.save(_model(training=True), source)
    result = CliRunner().invoke(main, ["mode", str(source), "--eval"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-2:] == [
        "switched 2 node(s) to inference mode, left 0",
        f"wrote {tmp_path / 't.eval.onnx'}",
    ]
    converted = onnx.load(tmp_path / "t.eval.onnx")
    np.testing.assert_array_equal(run_ort(converted, {"x": X})[0], run_ort(_model(training=False), {"x": X})[0])


def test_fold_of_eval_is_the_fold_of_the_inference_model() -> None:
    via_eval = ir.to_proto(fold(_model(training=True), eval_mode=True).model)
    direct = ir.to_proto(fold(_model(training=False)).model)
    assert op_types(via_eval) == op_types(direct) == ["Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]
    np.testing.assert_array_equal(run_ort(via_eval, {"x": X})[0], run_ort(direct, {"x": X})[0])


def test_pytorch_training_export_without_tracked_statistics_keeps_its_outputs_with_batch_stats() -> None:
    """torchvision ResNet exported in training mode, its running statistics reset as track_running_stats=False leaves them."""
    model = onnx.load(MODELS / "torchvision_resnet_train.onnx")
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    reset = {n.input[3] for n in bns} | {n.input[4] for n in bns}
    for tensor in model.graph.initializer:
        if tensor.name in reset:
            array = numpy_helper.to_array(tensor)
            fill = np.zeros_like(array) if any(tensor.name == n.input[3] for n in bns) else np.ones_like(array)
            tensor.CopyFrom(numpy_helper.from_array(fill, tensor.name))
    refused = SetInferenceModePass()(ir.from_proto(model))
    assert [r.action for r in refused.records] == ["skipped"] * 12
    rewritten = ir.to_proto(SetInferenceModePass(batch_stats=True)(ir.from_proto(model)).model)
    onnx.checker.check_model(rewritten, full_check=True)
    assert "BatchNormalization" not in op_types(rewritten)
    x = np.random.default_rng(4).standard_normal((4, 3, 64, 64)).astype(np.float32)
    name = model.graph.input[0].name
    want, got = run_ort(model, {name: x})[0], run_ort(rewritten, {name: x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_fold_eval_counts_each_node_once() -> None:
    result = fold(_model(training=True, stats="initial"), eval_mode=True)
    assert result.summary() == (
        "1 node(s) switched to inference mode, BatchNormalization folded 0/1, Dropout stripped 1/1, nodes 7 -> 6"
    )
    assert [(r.node, r.action) for r in result.records] == [
        ("bn", "skipped"),
        ("drop", "converted"),
        ("drop", "stripped"),
    ]

"""FoldBatchNormPass: one parametrized positive test per folding case, one negative test per guard."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from graphs import bn_node, bn_params, make_model, op_types, rng
from numerics import assert_fold_exact, random_feeds
from onnx import helper

from normfold import NormfoldError, fold
from normfold.passes import FoldBatchNormPass


def _conv_case(dims: int, group: int, bias: bool, stride: int, dilation: int, pad: int, c_in: int = 4, c_out: int = 6):
    g = rng(dims * 100 + group * 10 + bias)
    k = 3
    weight = g.normal(0, 0.5, (c_out, c_in // group) + (k,) * dims).astype(np.float32)
    inits = {"w": weight, **bn_params("bn", c_out, g)}
    inputs = ["x", "w"]
    if bias:
        inits["b"] = g.normal(0, 0.3, c_out).astype(np.float32)
        inputs.append("b")
    conv = helper.make_node(
        "Conv",
        inputs,
        ["y"],
        name="conv",
        group=group,
        kernel_shape=[k] * dims,
        strides=[stride] * dims,
        dilations=[dilation] * dims,
        pads=[pad] * (2 * dims),
    )
    spatial = [9] * dims
    return make_model([conv, bn_node("y", "z", "bn")], {"x": ["N", c_in, *spatial]}, ["z"], inits)


CONV_CASES = {
    "conv1d": dict(dims=1, group=1, bias=False, stride=1, dilation=1, pad=1),
    "conv2d-bias": dict(dims=2, group=1, bias=True, stride=1, dilation=1, pad=1),
    "conv2d-stride-dilation": dict(dims=2, group=1, bias=False, stride=2, dilation=2, pad=0),
    "conv2d-grouped": dict(dims=2, group=2, bias=True, stride=1, dilation=1, pad=1),
    "conv2d-depthwise": dict(dims=2, group=4, bias=False, stride=1, dilation=1, pad=1, c_in=4, c_out=8),
    "conv3d": dict(dims=3, group=1, bias=True, stride=1, dilation=1, pad=0),
}


@pytest.mark.parametrize("case", CONV_CASES, ids=list(CONV_CASES))
def test_conv_then_bn_folds(case: str) -> None:
    model = _conv_case(**CONV_CASES[case])
    result = fold(model)
    folded = ir.to_proto(result.model)
    assert op_types(folded) == ["Conv"]
    assert [r.action for r in result.records] == ["folded"]
    assert result.records[0].detail == "into Conv 'conv' (backward)"
    assert folded.graph.output[0].name == "z"
    onnx.checker.check_model(folded, full_check=True)
    assert_fold_exact(model, folded, random_feeds(model))


def _convtranspose_case(group: int, bias: bool) -> onnx.ModelProto:
    g = rng(group + 7 * bias)
    c_in, c_out_g = 4, 3
    inits = {"w": g.normal(0, 0.5, (c_in, c_out_g, 3, 3)).astype(np.float32), **bn_params("bn", c_out_g * group, g)}
    inputs = ["x", "w"]
    if bias:
        inits["b"] = g.normal(0, 0.3, c_out_g * group).astype(np.float32)
        inputs.append("b")
    node = helper.make_node(
        "ConvTranspose", inputs, ["y"], name="deconv", group=group, strides=[2, 2], pads=[1, 1, 1, 1]
    )
    return make_model([node, bn_node("y", "z", "bn")], {"x": ["N", c_in, 5, 5]}, ["z"], inits)


@pytest.mark.parametrize("group,bias", [(1, False), (1, True), (2, False), (4, True)])
def test_convtranspose_then_bn_folds(group: int, bias: bool) -> None:
    model = _convtranspose_case(group, bias)
    result = fold(model)
    assert op_types(ir.to_proto(result.model)) == ["ConvTranspose"]
    assert_fold_exact(model, result.model, random_feeds(model), truth_model=_ungrouped(model, group))


def _ungrouped(model: onnx.ModelProto, group: int) -> onnx.ModelProto:
    """The same ConvTranspose with a block-diagonal dense weight: onnx's reference evaluator lacks groups."""
    dense = onnx.ModelProto()
    dense.CopyFrom(model)
    weight = next(t for t in dense.graph.initializer if t.name == "w")
    w = onnx.numpy_helper.to_array(weight)
    c_in, c_out_g = w.shape[0], w.shape[1]
    full = np.zeros((c_in, c_out_g * group) + w.shape[2:], w.dtype)
    for i in range(group):
        rows = slice(i * c_in // group, (i + 1) * c_in // group)
        full[rows, i * c_out_g : (i + 1) * c_out_g] = w[rows]
    weight.CopyFrom(onnx.numpy_helper.from_array(full, "w"))
    for attr in dense.graph.node[0].attribute:
        if attr.name == "group":
            attr.i = 1
    return dense


GEMM_C_SHAPES = {"none": None, "vector": (5,), "row": (1, 5), "scalar": (), "column": (2, 1), "full": (2, 5)}


@pytest.mark.parametrize("c_shape", GEMM_C_SHAPES, ids=list(GEMM_C_SHAPES))
@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_then_bn_folds(c_shape: str, trans_a: int, trans_b: int) -> None:
    g = rng(3)
    k, n = 4, 5
    weight = g.normal(0, 0.5, (n, k) if trans_b else (k, n)).astype(np.float32)
    inits = {"w": weight, **bn_params("bn", n, g)}
    inputs = ["x", "w"]
    if GEMM_C_SHAPES[c_shape] is not None:
        inits["c"] = np.asarray(g.normal(0, 0.3, GEMM_C_SHAPES[c_shape])).astype(np.float32)
        inputs.append("c")
    gemm = helper.make_node("Gemm", inputs, ["y"], name="fc", transA=trans_a, transB=trans_b, alpha=0.7, beta=1.3)
    x_shape = [k, 2] if trans_a else [2, k]
    model = make_model([gemm, bn_node("y", "z", "bn")], {"x": x_shape}, ["z"], inits)
    result = fold(model)
    assert op_types(ir.to_proto(result.model)) == ["Gemm"]
    assert_fold_exact(model, result.model, random_feeds(model))


def test_matmul_2d_then_bn_becomes_gemm() -> None:
    g = rng(4)
    inits = {"w": g.normal(0, 0.5, (4, 5)).astype(np.float32), **bn_params("bn", 5, g)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), bn_node("y", "z", "bn")]
    model = make_model(nodes, {"x": ["N", 4]}, ["z"], inits)
    result = fold(model)
    assert op_types(ir.to_proto(result.model)) == ["Gemm"]
    assert result.records[0].detail == "into MatMul 'mm' (backward) (MatMul rewritten as Gemm)"
    assert_fold_exact(model, result.model, random_feeds(model))


def test_matmul_3d_is_left_with_reason() -> None:
    g = rng(5)
    inits = {"w": g.normal(0, 0.5, (4, 4)).astype(np.float32), **bn_params("bn", 4, g)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), bn_node("y", "z", "bn")]
    model = make_model(nodes, {"x": ["N", 4, 4]}, ["z"], inits)
    result = fold(model)
    assert op_types(ir.to_proto(result.model)) == ["MatMul", "BatchNormalization"]
    assert result.records[0].action == "skipped"
    assert "MatMul 'mm' outputs rank 3; BN's channel axis 1 is not its feature axis" in result.records[0].detail


ADD_BIAS_SHAPES = {
    "conv-c11": ("Conv", (6, 1, 1)),
    "conv-1c11": ("Conv", (1, 6, 1, 1)),
    "conv-scalar": ("Conv", ()),
    "gemm-n": ("Gemm", (6,)),
    "matmul-n": ("MatMul", (6,)),
    "matmul-1n": ("MatMul", (1, 6)),
}


@pytest.mark.parametrize("case", ADD_BIAS_SHAPES, ids=list(ADD_BIAS_SHAPES))
def test_layer_add_bias_then_bn_folds(case: str) -> None:
    op, bias_shape = ADD_BIAS_SHAPES[case]
    g = rng(6)
    if op == "Conv":
        inits = {"w": g.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32)}
        layer = helper.make_node("Conv", ["x", "w"], ["y"], name="layer", pads=[1, 1, 1, 1])
        inputs = {"x": ["N", 3, 6, 6]}
    else:
        inits = {"w": g.normal(0, 0.5, (4, 6)).astype(np.float32)}
        layer = helper.make_node(op, ["x", "w"], ["y"], name="layer")
        inputs = {"x": ["N", 4]}
    inits["add_b"] = np.asarray(g.normal(0, 0.3, bias_shape)).astype(np.float32)
    inits.update(bn_params("bn", 6, g))
    nodes = [layer, helper.make_node("Add", ["add_b", "y"], ["y2"], name="add"), bn_node("y2", "z", "bn")]
    model = make_model(nodes, inputs, ["z"], inits)
    result = fold(model)
    expected = ["MatMul", "Add"] if op == "MatMul" else [op]
    assert op_types(ir.to_proto(result.model)) == expected
    if op == "MatMul":  # the Add stays the MatMul's bias; BN folds through it
        assert [r.op_type for r in result.records] == ["BatchNormalization"]
        assert "through Add 'add'" in result.records[0].detail
    else:  # the Add folds into the layer's bias on its own, then BN folds into the layer
        assert [(r.op_type, r.detail) for r in result.records] == [
            ("Add", f"into {op} 'layer' (backward)"),
            ("BatchNormalization", f"into {op} 'layer' (backward)"),
        ]
    assert_fold_exact(model, result.model, random_feeds(model))


def test_chain_conv_bn_bn_folds_completely() -> None:
    g = rng(7)
    inits = {"w": g.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), **bn_params("bn1", 4, g), **bn_params("bn2", 4, g)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        bn_node("y", "y1", "bn1"),
        bn_node("y1", "z", "bn2"),
    ]
    model = make_model(nodes, {"x": ["N", 3, 6, 6]}, ["z"], inits)
    result = fold(model)
    assert op_types(ir.to_proto(result.model)) == ["Conv"]
    assert [r.action for r in result.records] == ["folded", "folded"]
    assert_fold_exact(model, result.model, random_feeds(model))


@pytest.mark.parametrize("consumer", ["Gemm", "Gemm-transB", "MatMul", "Conv", "Conv-grouped"])
def test_bn_after_relu_folds_forward(consumer: str) -> None:
    g = rng(8)
    if consumer.startswith("Conv"):
        group = 2 if consumer == "Conv-grouped" else 1
        inits = {
            "w": g.normal(0, 0.5, (6, 4 // group, 3, 3)).astype(np.float32),
            "b": g.normal(0, 0.3, 6).astype(np.float32),
        }
        layer = helper.make_node("Conv", ["h", "w", "b"], ["z"], name="next", group=group)
        inputs = {"x": ["N", 4, 7, 7]}
    else:
        trans_b = consumer == "Gemm-transB"
        inits = {"w": g.normal(0, 0.5, (6, 4) if trans_b else (4, 6)).astype(np.float32)}
        args = ["h", "w"] + (["c"] if consumer.startswith("Gemm") else [])
        if consumer.startswith("Gemm"):
            inits["c"] = g.normal(0, 0.3, 6).astype(np.float32)
        attrs = {"transB": int(trans_b), "alpha": 0.5, "beta": 2.0} if consumer.startswith("Gemm") else {}
        layer = helper.make_node(consumer.split("-")[0], args, ["z"], name="next", **attrs)
        inputs = {"x": ["N", 4]}
    inits.update(bn_params("bn", 4, g))
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), bn_node("r", "h", "bn"), layer]
    model = make_model(nodes, inputs, ["z"], inits)
    result = fold(model)
    ops = op_types(ir.to_proto(result.model))
    assert "BatchNormalization" not in ops
    assert (
        result.records[0].detail.endswith("(forward)")
        or "(forward) (MatMul rewritten as Gemm)" in result.records[0].detail
    )
    assert_fold_exact(model, result.model, random_feeds(model))


def test_forward_into_padded_conv_is_left_with_reason() -> None:
    g = rng(9)
    inits = {"w": g.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32), **bn_params("bn", 4, g)}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        bn_node("r", "h", "bn"),
        helper.make_node("Conv", ["h", "w"], ["z"], name="next", pads=[1, 1, 1, 1]),
    ]
    model = make_model(nodes, {"x": ["N", 4, 6, 6]}, ["z"], inits)
    result = fold(model)
    assert "BatchNormalization" in op_types(ir.to_proto(result.model))
    assert result.records[0].detail == (
        "into its producer: Relu 'Relu->r' is not a Conv, ConvTranspose, Gemm or "
        "MatMul; into its consumer: Conv 'next' pads its input, and padding zeros "
        "are not shifted by BN"
    )


def test_parameters_from_constant_nodes_fold() -> None:
    g = rng(10)
    params = bn_params("bn", 4, g)
    weight = g.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32)
    constants = [
        helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(array, name))
        for name, array in {"w": weight, **params}.items()
    ]
    nodes = constants + [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), bn_node("y", "z", "bn")]
    model = make_model(nodes, {"x": ["N", 3, 4, 4]}, ["z"], {})
    result = fold(model)
    folded = ir.to_proto(result.model)
    assert op_types(folded) == ["Conv"]
    assert_fold_exact(model, folded, random_feeds(model))


def test_fold_leaves_the_callers_model_untouched() -> None:
    g = rng(15)
    constants = {"w": g.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32), **bn_params("bn", 4, g)}
    nodes = [helper.make_node("Constant", [], [k], value=onnx.numpy_helper.from_array(v)) for k, v in constants.items()]
    nodes += [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), bn_node("y", "z", "bn")]
    model = make_model(nodes, {"x": ["N", 3, 4, 4]}, ["z"], {})
    before = model.SerializeToString()
    as_ir = ir.from_proto(model)
    fold(model)
    fold(as_ir)
    assert model.SerializeToString() == before
    assert ir.to_proto(as_ir).SerializeToString() == ir.to_proto(ir.from_proto(model)).SerializeToString()


def test_shared_weight_is_not_changed_in_place() -> None:
    g = rng(11)
    weight = g.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32)
    inits = {"w": weight, **bn_params("bn", 4, g)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        bn_node("y", "z", "bn"),
        helper.make_node("Conv", ["x", "w"], ["other"], name="other_conv"),
    ]
    model = make_model(nodes, {"x": ["N", 3, 4, 4]}, ["z", "other"], inits)
    result = fold(model)
    folded = ir.to_proto(result.model)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in folded.graph.initializer}
    np.testing.assert_array_equal(weights["w"], weight)
    convs = {n.name: n.input[1] for n in folded.graph.node}
    assert convs["other_conv"] == "w" and convs["conv"] != "w"
    assert_fold_exact(model, folded, random_feeds(model))


@pytest.mark.parametrize("opset", [7, 9, 14, 15])
def test_batchnorm_opsets_fold(opset: int) -> None:
    g = rng(opset)
    inits = {"w": g.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), **bn_params("bn", 4, g)}
    attrs = {"spatial": 1} if opset == 7 else {}
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), bn_node("y", "z", "bn", **attrs)]
    model = make_model(nodes, {"x": [2, 3, 6, 6]}, ["z"], inits, opset=opset)
    result = fold(model)
    assert op_types(ir.to_proto(result.model)) == ["Conv"]
    # onnx's reference BatchNormalization-6/7 is broken; inference BN means the same at opset 15.
    plain = [nodes[0], bn_node("y", "z", "bn")]
    truth = make_model(plain, {"x": [2, 3, 6, 6]}, ["z"], inits, opset=15)
    assert_fold_exact(model, result.model, random_feeds(model), truth_model=truth)


# Negative tests: one per guard, each asserting the reason the user reads.


def _conv_bn(extra_nodes=(), outputs=("z",), inputs_override=None, opset=17) -> onnx.ModelProto:
    g = rng(12)
    inits = {"w": g.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), **bn_params("bn", 4, g)}
    inputs = {"x": ["N", 3, 6, 6]}
    if inputs_override:
        for name in inputs_override:
            inputs[name] = [4]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), bn_node("y", "z", "bn"), *extra_nodes]
    return make_model(nodes, inputs, list(outputs), inits, opset=opset)


def _only_record(model: onnx.ModelProto):
    result = fold(model)
    assert op_types(ir.to_proto(result.model)) == op_types(model)
    (record,) = [r for r in result.records if r.op_type == "BatchNormalization"]
    assert record.action == "skipped"
    return record


def test_training_mode_bn_is_not_folded() -> None:
    model = _conv_bn(opset=15)
    bn = model.graph.node[1]
    bn.output.extend(["running_mean", "running_var"])
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    onnx.checker.check_model(model, full_check=True)
    record = _only_record(model)
    assert record.detail.startswith("training_mode=1: it normalizes with batch statistics")


def test_runtime_mean_is_not_folded() -> None:
    model = _conv_bn(inputs_override=["bn_mean"])
    record = _only_record(model)
    assert "mean 'bn_mean' is a graph input, so callers can override it at run time" in record.detail


def test_producer_output_with_other_consumer_is_not_folded() -> None:
    record = _only_record(_conv_bn([helper.make_node("Relu", ["y"], ["side"])], outputs=("z", "side")))
    assert "its input 'y' has other consumers or is a graph output" in record.detail


def test_producer_output_that_is_graph_output_is_not_folded() -> None:
    record = _only_record(_conv_bn(outputs=("z", "y")))
    assert "its input 'y' has other consumers or is a graph output" in record.detail


def test_negative_variance_is_not_folded() -> None:
    model = _conv_bn()
    for tensor in model.graph.initializer:
        if tensor.name == "bn_var":
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.full(4, -1.0, np.float32), "bn_var"))
    record = _only_record(model)
    assert record.detail == "variance + epsilon is not positive in 4 channel(s), so it has no finite inference form"


def test_inconsistent_parameter_shapes_are_an_error() -> None:
    model = _conv_bn()
    for tensor in model.graph.initializer:
        if tensor.name == "bn_mean":
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "bn_mean"))
    with pytest.raises(
        NormfoldError,
        match=r"^BatchNormalization 'bn' has inconsistent parameter shapes: "
        r"scale \[4\], B \[4\], mean \[3\], var \[4\]$",
    ):
        fold(model)


def test_float16_overflow_is_skipped_not_written_as_inf() -> None:
    g = rng(13)
    params = bn_params("bn", 4, g, np.float16)
    params["bn_var"] = np.full(4, 1e-7, np.float16)
    params["bn_scale"] = np.full(4, 8.0, np.float16)
    inits = {"w": np.full((4, 3, 1, 1), 60000, np.float16), **params}
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), bn_node("y", "z", "bn", epsilon=1e-7)]
    model = make_model(nodes, {"x": ["N", 3, 2, 2]}, ["z"], inits, dtype=onnx.TensorProto.FLOAT16)
    record = _only_record(model)
    assert "Conv 'conv': folded values overflow float16" in record.detail


def test_float16_model_folds_in_float64() -> None:
    g = rng(14)
    inits = {"w": g.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float16), **bn_params("bn", 4, g, np.float16)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), bn_node("y", "z", "bn")]
    model = make_model(nodes, {"x": ["N", 3, 5, 5]}, ["z"], inits, dtype=onnx.TensorProto.FLOAT16)
    result = fold(model)
    folded = ir.to_proto(result.model)
    assert op_types(folded) == ["Conv"]
    weight = [t for t in folded.graph.initializer if t.name.startswith("w")][0]
    assert weight.data_type == onnx.TensorProto.FLOAT16
    assert_fold_exact(model, folded, random_feeds(model))


def test_pass_is_functional_and_reports_each_bn() -> None:
    model = ir.from_proto(_conv_bn())
    before = [n.op_type for n in model.graph]
    result = FoldBatchNormPass()(model)
    assert [n.op_type for n in model.graph] == before
    assert result.modified and [n.op_type for n in result.model.graph] == ["Conv"]
    assert result.records[0].to_line() == "FOLDED   BatchNormalization 'bn': into Conv 'conv' (backward)"


def test_a_float64_bn_without_epsilon_folds_with_onnx_float32_default() -> None:
    """ONNX's default epsilon is the float32 1e-5 (9.99999974737875e-06): a float64 model shows the difference
    from the double 1e-5 where the variance is zero (1.3e-8 relative), far above float64 rounding."""
    import onnxruntime as ort

    g = rng(11)
    params = bn_params("bn", 4, g, dtype=np.float64)
    params["bn_var"][:2] = 0.0
    inits = {"w": g.normal(0, 0.5, (4, 3)), **params}  # Gemm: ONNX Runtime's CPU build has no float64 Conv
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm", transB=1), bn_node("y", "z", "bn")]
    model = make_model(nodes, {"x": [5, 3]}, ["z"], inits, dtype=onnx.TensorProto.DOUBLE)
    folded = ir.serde.serialize_model(fold(model).model)
    assert op_types(folded) == ["Gemm"]
    x = g.normal(0, 1, (5, 3))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    run = [
        ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for m in (model, folded)
    ]
    np.testing.assert_allclose(run[1], run[0], rtol=1e-12, atol=0)


def test_training_mode_skips_carry_their_reason_code() -> None:
    from examples import MODELS

    from normfold.reason_codes import TRAINING_MODE

    result = fold(MODELS / "training_export.onnx")
    assert [(r.op_type, r.action, r.reason) for r in result.records] == [
        ("BatchNormalization", "skipped", TRAINING_MODE),
        ("Dropout", "skipped", TRAINING_MODE),
    ]
    assert result.to_dict()["nodes"][0]["reason"] == "training-mode"

"""Per-channel Mul/Div/Add/Sub by a constant folded into the adjacent Conv, ConvTranspose, Gemm or MatMul.

Structure after the fold, numeric equivalence on ONNX Runtime (ORT_DISABLE_ALL) against the float64 truth,
provenance, and one negative test per guard: a non-constant operand, a consumer elsewhere, a constant that is
not per channel, a padded Conv for a forward shift, an Add that is a MatMul's bias.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from graphs import bn_node, bn_params, make_model, op_types, rng
from numerics import assert_fold_exact, random_feeds
from onnx import helper

from normfold import fold
from normfold.reason_codes import NON_FINITE, NOT_PER_CHANNEL, SHARED_VALUE


def _model(
    nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], x_shape: list, out: str = "out", opset: int = 17
) -> onnx.ModelProto:
    return make_model(nodes, {"x": x_shape}, [out], inits, opset=opset)


def _folded(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list]:
    result = fold(model)
    proto = ir.to_proto(result.model)
    onnx.checker.check_model(proto, full_check=True)
    assert_fold_exact(model, result.model, random_feeds(model))
    return proto, result.records


def test_frozen_batchnorm_as_mul_then_add_after_conv_folds_into_the_conv() -> None:
    """torchvision's FrozenBatchNorm2d exports as Conv -> Mul(scale) -> Add(shift): one Conv remains."""
    g = rng(1)
    inits = {
        "w": g.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32),
        "b": g.normal(0, 0.1, 8).astype(np.float32),
        "s": g.uniform(0.5, 2, (1, 8, 1, 1)).astype(np.float32),
        "t": g.normal(0, 0.3, (8, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["y", "s"], ["z"], name="mul"),
        helper.make_node("Add", ["t", "z"], ["out"], name="add"),
    ]
    proto, records = _folded(_model(nodes, inits, ["N", 4, 7, 7]))
    assert op_types(proto) == ["Conv"]
    assert [(r.node, r.action, r.detail) for r in records] == [
        ("mul", "folded", "into Conv 'conv' (backward)"),
        ("add", "folded", "into Conv 'conv' (backward)"),
    ]
    assert records[0].tensors == {"w_folded": ["w", "s"], "b_folded": ["b", "s"]}
    assert records[1].tensors == {"b_folded_1": ["b_folded", "t"]}


def test_add_then_mul_after_conv_transpose_folds() -> None:
    """Add first, then Mul (the other order), after a grouped ConvTranspose without a bias."""
    g = rng(2)
    inits = {
        "w": g.normal(0, 0.3, (4, 3, 2, 2)).astype(np.float32),
        "t": g.normal(0, 0.3, (1, 6, 1, 1)).astype(np.float32),
        "s": g.uniform(-2, 2, (6, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="deconv", group=2, strides=[2, 2]),
        helper.make_node("Add", ["y", "t"], ["z"], name="add"),
        helper.make_node("Mul", ["z", "s"], ["out"], name="mul"),
    ]
    proto, records = _folded(_model(nodes, inits, ["N", 4, 5, 5]))
    assert op_types(proto) == ["ConvTranspose"]
    assert [r.action for r in records] == ["folded", "folded"]


@pytest.mark.parametrize("op,operands", [("Div", ["y", "c"]), ("Sub", ["y", "c"]), ("Sub", ["c", "y"])])
def test_div_and_sub_by_a_constant_after_gemm_fold(op: str, operands: list[str]) -> None:
    """x / c, x - c and c - x are affine maps too; Gemm keeps alpha and takes the result in its C."""
    g = rng(3)
    inits = {
        "w": g.normal(0, 0.3, (6, 5)).astype(np.float32),
        "bias": g.normal(0, 0.1, 6).astype(np.float32),
        "c": g.uniform(0.5, 2, 6).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w", "bias"], ["y"], name="gemm", transB=1, alpha=0.7, beta=1.3),
        helper.make_node(op, operands, ["out"], name="op"),
    ]
    proto, records = _folded(_model(nodes, inits, ["N", 5]))
    assert op_types(proto) == ["Gemm"]
    assert [r.action for r in records] == ["folded"]


def test_keras_dense_batchnorm_as_mul_after_matmul_keeps_the_bias_add() -> None:
    """N-D MatMul -> Add(bias) -> Mul(per-feature) -> Add(shift): the Mul goes into the weight columns and the bias,
    the shift into the bias; the bias Add stays and the MatMul stays a MatMul (no Gemm for rank 3)."""
    g = rng(4)
    inits = {
        "w": g.normal(0, 0.3, (5, 6)).astype(np.float32),
        "bias": g.normal(0, 0.1, 6).astype(np.float32),
        "s": g.uniform(0.5, 2, 6).astype(np.float32),
        "t": g.normal(0, 0.2, 6).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul"),
        helper.make_node("Add", ["y", "bias"], ["yb"], name="bias_add"),
        helper.make_node("Mul", ["yb", "s"], ["z"], name="mul"),
        helper.make_node("Add", ["z", "t"], ["out"], name="shift"),
    ]
    proto, records = _folded(_model(nodes, inits, ["N", 3, 5]))
    assert op_types(proto) == ["MatMul", "Add"]
    assert [(r.node, r.action, r.detail) for r in records] == [
        ("mul", "folded", "into MatMul 'matmul' through Add 'bias_add' (backward)"),
        ("shift", "folded", "into MatMul 'matmul' through Add 'bias_add' (backward)"),
    ]


def test_input_normalization_before_a_padded_first_conv_folds_its_scale_only() -> None:
    """(x - mean) / std before a padded Conv: the Div folds forward (zeros scale to zeros), the Sub cannot
    (padding zeros are not shifted) and stays, with that reason."""
    g = rng(5)
    inits = {
        "w": g.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32),
        "mean": np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1),
        "std": np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1),
    }
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["c"], name="sub"),
        helper.make_node("Div", ["c", "std"], ["n"], name="div"),
        helper.make_node("Conv", ["n", "w"], ["out"], name="conv", pads=[1, 1, 1, 1]),
    ]
    proto, records = _folded(_model(nodes, inits, ["N", 3, 8, 8]))
    assert op_types(proto) == ["Sub", "Conv"]
    by_node = {r.node: r for r in records}
    assert by_node["div"].action == "folded" and by_node["div"].detail == "into Conv 'conv' (forward)"
    assert by_node["sub"].action == "skipped"
    assert by_node["sub"].detail.endswith("Conv 'conv' pads its input, and padding zeros are not shifted by Sub")


def test_forward_shift_into_an_unpadded_conv_folds_into_its_bias() -> None:
    """Without padding, x + t before a Conv becomes the bias W t."""
    g = rng(6)
    inits = {
        "w": g.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32),
        "t": g.normal(0, 1, (1, 3, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Add", ["x", "t"], ["n"], name="add"),
        helper.make_node("Conv", ["n", "w"], ["out"], name="conv"),
    ]
    proto, records = _folded(_model(nodes, inits, ["N", 3, 8, 8]))
    assert op_types(proto) == ["Conv"]
    assert records[0].tensors == {"conv_bias_folded": ["w", "t"]}


def test_conv_then_batchnorm_then_mul_folds_everything() -> None:
    """A fold can make another possible: once BN is in the Conv, the Mul is next to it."""
    g = rng(7)
    inits = {"w": g.normal(0, 0.3, (4, 3, 1, 1)).astype(np.float32), **bn_params("bn", 4, g), "s": np.float32(1.5)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        bn_node("y", "z", "bn"),
        helper.make_node("Mul", ["z", "s"], ["out"], name="mul"),
    ]
    proto, records = _folded(_model(nodes, inits, ["N", 3, 4, 4]))
    assert op_types(proto) == ["Conv"]
    assert sorted((r.op_type, r.action) for r in records) == [("BatchNormalization", "folded"), ("Mul", "folded")]


def test_a_run_time_operand_is_not_a_candidate() -> None:
    """Mul of two activations (attention, gating) is left alone and not reported."""
    g = rng(8)
    inits = {"w": g.normal(0, 0.3, (3, 3, 1, 1)).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("Mul", ["y", "x"], ["out"], name="gate"),
    ]
    result = fold(_model(nodes, inits, ["N", 3, 4, 4]))
    assert op_types(ir.to_proto(result.model)) == ["Conv", "Mul"]
    assert result.records == []


def test_a_layer_output_read_elsewhere_is_left_with_the_reason() -> None:
    """The Conv's output also feeds a residual Add, so scaling the Conv would change that consumer."""
    g = rng(9)
    inits = {"w": g.normal(0, 0.3, (3, 3, 1, 1)).astype(np.float32), "s": g.uniform(1, 2, (3, 1, 1)).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("Mul", ["y", "s"], ["z"], name="mul"),
        helper.make_node("Add", ["z", "y"], ["out"], name="residual"),
    ]
    result = fold(_model(nodes, inits, ["N", 3, 4, 4]))
    assert op_types(ir.to_proto(result.model)) == ["Conv", "Mul", "Add"]
    [record] = result.records
    assert record.action == "skipped"
    assert record.detail == (
        "into its producer: its input 'y' has other consumers or is a graph output; "
        "into its consumer: its output feeds Add 'residual', not Gemm, MatMul or Conv"
    )


def test_a_constant_varying_along_a_spatial_axis_is_left_with_the_reason() -> None:
    """A (1, 1, 4, 1) constant scales rows, not channels: no weight can carry it."""
    g = rng(10)
    inits = {
        "w": g.normal(0, 0.3, (3, 3, 1, 1)).astype(np.float32),
        "s": g.uniform(1, 2, (1, 1, 4, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("Mul", ["y", "s"], ["out"], name="mul"),
    ]
    result = fold(_model(nodes, inits, ["N", 3, 4, 4]))
    assert op_types(ir.to_proto(result.model)) == ["Conv", "Mul"]
    [record] = result.records
    assert record.reason == NOT_PER_CHANNEL
    assert record.detail.startswith(
        "into its producer: its constant has shape [1, 1, 4, 1], not one value per channel (axis 1 of rank 4)"
    )


def test_a_constant_that_would_broadcast_the_output_larger_is_left() -> None:
    """A rank-5 constant on a rank-4 output changes the output's shape: not an affine map of the output."""
    g = rng(11)
    inits = {
        "w": g.normal(0, 0.3, (3, 3, 1, 1)).astype(np.float32),
        "s": g.uniform(1, 2, (1, 1, 3, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("Mul", ["y", "s"], ["out"], name="mul"),
    ]
    result = fold(_model(nodes, inits, ["N", 3, 4, 4]))
    assert op_types(ir.to_proto(result.model)) == ["Conv", "Mul"]
    assert result.records[0].reason == NOT_PER_CHANNEL


def test_an_add_after_a_matmul_is_its_bias_and_not_a_candidate() -> None:
    """MatMul -> Add(bias) is how exporters write a Linear layer: left as it is, without a record."""
    g = rng(12)
    inits = {"w": g.normal(0, 0.3, (5, 6)).astype(np.float32), "bias": g.normal(0, 0.1, 6).astype(np.float32)}
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul"),
        helper.make_node("Add", ["y", "bias"], ["out"], name="bias_add"),
    ]
    result = fold(_model(nodes, inits, ["N", 5]))
    assert op_types(ir.to_proto(result.model)) == ["MatMul", "Add"]
    assert result.records == []


def test_division_by_a_zero_constant_is_left_with_the_reason() -> None:
    """x / 0 has no finite scale to fold."""
    g = rng(13)
    inits = {
        "w": g.normal(0, 0.3, (2, 3, 1, 1)).astype(np.float32),
        "c": np.array([1.0, 0.0], np.float32).reshape(2, 1, 1),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("Div", ["y", "c"], ["out"], name="div"),
    ]
    result = fold(_model(nodes, inits, ["N", 3, 4, 4]))
    assert op_types(ir.to_proto(result.model)) == ["Conv", "Div"]
    assert result.records[0].detail.startswith("into its producer: it divides by zero;")


def test_summary_and_json_count_the_elementwise_folds() -> None:
    """The summary line says how many Mul/Add candidates folded; the JSON summary has both counts."""
    g = rng(14)
    inits = {
        "w": g.normal(0, 0.3, (3, 3, 1, 1)).astype(np.float32),
        "s": g.uniform(1, 2, (1, 1, 3, 1, 1)).astype(np.float32),
        "t": np.float32(0.5),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("Add", ["y", "t"], ["z"], name="add"),
        helper.make_node("Mul", ["z", "s"], ["out"], name="mul"),
    ]
    result = fold(_model(nodes, inits, ["N", 3, 4, 4]))
    assert result.summary() == ("BatchNormalization folded 0/0, Dropout stripped 0/0, Mul/Add folded 1/2, nodes 3 -> 2")
    summary = result.to_dict()["summary"]
    assert (summary["affine_total"], summary["affine_folded"]) == (2, 1)


@pytest.mark.parametrize("case,code", [("spatial", NOT_PER_CHANNEL), ("residual", SHARED_VALUE), ("zero", NON_FINITE)])
def test_every_skip_has_a_reason_code(case: str, code: str) -> None:
    """Each refusal carries its machine-readable code beside the message."""
    g = rng(15)
    inits = {
        "w": g.normal(0, 0.3, (3, 3, 1, 1)).astype(np.float32),
        "c": {
            "spatial": g.uniform(1, 2, (1, 1, 4, 1)),
            "residual": g.uniform(1, 2, (3, 1, 1)),
            "zero": np.zeros((3, 1, 1)),
        }[case].astype(np.float32),
    }
    tail = [helper.make_node("Add", ["z", "y"], ["out"], name="residual")] if case == "residual" else []
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("Div", ["y", "c"], ["z" if tail else "out"], name="div"),
        *tail,
    ]
    result = fold(_model(nodes, inits, ["N", 3, 4, 4]))
    [record] = result.records
    assert (record.action, record.reason) == ("skipped", code)

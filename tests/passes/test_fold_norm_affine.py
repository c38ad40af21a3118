"""`--fold-norm-affine`: LayerNormalization / RMSNormalization (and decomposed) scale and shift folded into every
MatMul/Gemm that reads them, leaving unit scale and no shift. Structure, numeric equivalence at ORT_DISABLE_ALL
against the float64 truth, and one negative test per guard: a consumer that is not linear, a normalization over
several axes, a non-constant scale; and nothing happens without the option.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from graphs import LN_SHAPE, layernorm_qkv_model, make_model, op_types, rng
from numerics import assert_fold_exact, random_feeds
from onnx import helper

from normfold import fold

L, C, F = LN_SHAPE


def _folded(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list]:
    result = fold(model, fold_norm_affine=True)
    proto = ir.to_proto(result.model)
    onnx.checker.check_model(proto, full_check=True)
    assert_fold_exact(model, result.model, random_feeds(model))
    return proto, result.records


def test_layernorm_affine_folds_into_q_k_v_and_leaves_unit_scale() -> None:
    """Q and K's bias Adds take W t; V, which has none, gets one; LN keeps a unit scale and no bias."""
    proto, records = _folded(layernorm_qkv_model())
    assert op_types(proto) == ["LayerNormalization", "MatMul", "Add", "MatMul", "Add", "MatMul", "Add"]
    ln = proto.graph.node[0]
    assert len(ln.input) == 2
    unit = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}[ln.input[1]]
    np.testing.assert_array_equal(unit, np.ones(C, np.float32))
    [record] = records
    assert (record.node, record.action) == ("ln", "folded")
    assert record.detail == "its scale and shift into MatMul 'q', MatMul 'k', MatMul 'v' (forward)"
    assert record.tensors["wq_normfolded"] == ["wq", "gamma", "beta"]
    assert [o for o in proto.graph.output] == [o for o in layernorm_qkv_model().graph.output]


def test_rmsnormalization_scale_folds_into_a_gemm() -> None:
    """RMSNormalization (opset 23) has a scale only: Gemm's weight takes it, C is unchanged."""
    g = rng(52)
    nodes = [
        helper.make_node("RMSNormalization", ["x", "gamma"], ["n"], name="rms"),
        helper.make_node("Gemm", ["n", "w", "b"], ["out"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "rms",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", C])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", F])],
        [
            onnx.numpy_helper.from_array(g.uniform(0.5, 1.5, C).astype(np.float32), "gamma"),
            onnx.numpy_helper.from_array(g.normal(0, 0.3, (F, C)).astype(np.float32), "w"),
            onnx.numpy_helper.from_array(g.normal(0, 0.1, F).astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=11)
    onnx.checker.check_model(model, full_check=True)
    proto, records = _folded(model)
    assert op_types(proto) == ["RMSNormalization", "Gemm"]
    assert proto.graph.node[1].input[2] == "b"
    assert records[0].detail == "its scale and shift into Gemm 'fc' (forward)"


def test_decomposed_layernorm_mul_and_add_are_removed() -> None:
    """ReduceMean-based LN ending in Mul(gamma) -> Add(beta), read by two MatMuls: the Mul and Add go."""
    g = rng(53)
    inits = {
        "gamma": g.uniform(0.5, 1.5, C).astype(np.float32),
        "beta": g.normal(0, 0.3, C).astype(np.float32),
        "eps": np.float32(1e-5),
        "w1": g.normal(0, 0.3, (C, F)).astype(np.float32),
        "w2": g.normal(0, 0.3, (C, F)).astype(np.float32),
    }
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["n"]),
        helper.make_node("Mul", ["n", "gamma"], ["s"], name="scale"),
        helper.make_node("Add", ["s", "beta"], ["y"], name="shift"),
        helper.make_node("MatMul", ["y", "w1"], ["o1"], name="m1"),
        helper.make_node("MatMul", ["y", "w2"], ["o2"], name="m2"),
    ]
    model = make_model(nodes, {"x": ["N", L, C]}, ["o1", "o2"], inits, opset=17)
    proto, records = _folded(model)
    assert "Mul" in op_types(proto)  # d * d stays
    assert [n.name for n in proto.graph.node if n.name in ("scale", "shift")] == []
    assert [(r.node, r.action) for r in records if r.op_type == "Mul"] == [("scale", "folded")]


def _skipped(model: onnx.ModelProto) -> str:
    result = fold(model, fold_norm_affine=True)
    assert op_types(ir.to_proto(result.model)) == op_types(model)
    [record] = [r for r in result.records if r.op_type == "LayerNormalization"]
    assert record.action == "skipped"
    return record.detail


def test_a_residual_consumer_leaves_the_layernorm_with_the_reason() -> None:
    """The normalized tensor also goes to a residual Add, which would see the changed scale."""
    assert _skipped(layernorm_qkv_model(extra_consumer=True)) == (
        "its output also feeds Add 'residual', not only MatMul or Gemm layers"
    )


def test_a_layernorm_over_several_axes_is_left_with_the_reason() -> None:
    """axis=1 normalizes over (L, C): its scale is not one value per feature of the next layer."""
    model = layernorm_qkv_model(axis=1)
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.ones((L, C), np.float32), "gamma"))
    model.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(np.zeros((L, C), np.float32), "beta"))
    assert _skipped(model) == "it normalizes from axis 1 of a rank-3 input, not over the last axis alone"


def test_a_run_time_scale_is_left_with_the_reason() -> None:
    """A scale fed at run time cannot be moved into weights."""
    model = layernorm_qkv_model()
    model.graph.input.append(helper.make_tensor_value_info("gamma", onnx.TensorProto.FLOAT, [C]))
    del model.graph.initializer[0]
    assert _skipped(model) == "its scale or bias is not a constant"


def test_without_the_option_normalizations_are_untouched() -> None:
    """The default fold neither changes nor reports a LayerNormalization."""
    model = layernorm_qkv_model()
    result = fold(model)
    assert op_types(ir.to_proto(result.model)) == op_types(model)
    assert result.records == []

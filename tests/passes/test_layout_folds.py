"""BN folded backward through layout nodes (Reshape, Transpose) that keep its channels on the layer's feature axis.

BatchNorm1d over flattened tokens (LeViT: MatMul -> Reshape (N*L, C) -> BN -> Reshape), BatchNorm1d over a
transposed (N, L, C) tensor (MatMul -> Transpose -> BN -> Transpose), and NHWC exports' cancelling Transpose
pairs. The layout nodes stay; an N-D MatMul stays a MatMul (a bias Add takes the shift). One negative test
per guard: a Reshape that splits the channel axis, a layout node read twice, an axis that is not the feature axis.
"""

from __future__ import annotations

import numpy as np
import onnx
from fold_helpers import fold_exactly, skipped_bn_reasons
from graphs import bn_node, bn_params, int64_constant, make_model, rng
from onnx import helper

L, C_IN, C = 5, 6, 4


def _inits(seed: int) -> dict[str, np.ndarray]:
    g = rng(seed)
    return {
        "w": g.normal(0, 0.4, (C_IN, C)).astype(np.float32),
        "b": g.normal(0, 0.2, C).astype(np.float32),
        **bn_params("bn", C, g),
    }


def _levit(with_bias: bool) -> onnx.ModelProto:
    head = [helper.make_node("MatMul", ["x", "w"], ["y0" if with_bias else "y"], name="mm")]
    if with_bias:
        head.append(helper.make_node("Add", ["y0", "b"], ["y"], name="bias_add"))
    nodes = [
        *head,
        int64_constant("flat_shape", [-1, C]),
        helper.make_node("Reshape", ["y", "flat_shape"], ["t"], name="flat"),
        bn_node("t", "u", "bn"),
        int64_constant("back_shape", [-1, L, C]),
        helper.make_node("Reshape", ["u", "back_shape"], ["out"], name="back"),
    ]
    inits = _inits(41)
    if not with_bias:
        del inits["b"]
    return make_model(nodes, {"x": ["N", L, C_IN]}, ["out"], inits)


def test_levit_batchnorm1d_over_flattened_tokens_folds_into_the_matmul_columns() -> None:
    """MatMul (N, L, C) -> Reshape (N*L, C) -> BN: the weight's columns are scaled, a bias Add takes the shift."""
    ops, records = fold_exactly(_levit(with_bias=False))
    assert ops == ["MatMul", "Add", "Constant", "Reshape", "Constant", "Reshape"]
    assert records[0].detail == "into MatMul 'mm' through Reshape 'flat' and a new bias Add (backward)"
    assert records[0].tensors == {
        "w_folded": ["w", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
        "mm_bias_folded": ["bn_scale", "bn_bias", "bn_mean", "bn_var"],
    }


def test_levit_with_a_bias_add_folds_into_that_add() -> None:
    """A Linear with bias (MatMul -> Add) keeps its Add, now holding the folded bias; no node is added."""
    ops, records = fold_exactly(_levit(with_bias=True))
    assert ops == ["MatMul", "Add", "Constant", "Reshape", "Constant", "Reshape"]
    assert records[0].detail == "into MatMul 'mm' through Add 'bias_add' through Reshape 'flat' (backward)"


def test_batchnorm1d_over_a_transposed_sequence_folds() -> None:
    """MatMul (N, L, C) -> Transpose (N, C, L) -> BN -> Transpose back."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        helper.make_node("Add", ["y", "b"], ["yb"], name="bias_add"),
        helper.make_node("Transpose", ["yb"], ["t"], name="to_ncl", perm=[0, 2, 1]),
        bn_node("t", "u", "bn"),
        helper.make_node("Transpose", ["u"], ["out"], name="to_nlc", perm=[0, 2, 1]),
    ]
    ops, records = fold_exactly(make_model(nodes, {"x": ["N", L, C_IN]}, ["out"], _inits(42)))
    assert ops == ["MatMul", "Add", "Transpose", "Transpose"]
    assert records[0].detail == "into MatMul 'mm' through Add 'bias_add' through Transpose 'to_ncl' (backward)"


def test_nhwc_transpose_pair_between_conv_and_bn_folds_into_the_conv() -> None:
    """Conv -> Transpose (NHWC) -> Transpose (NCHW) -> BN: the pair cancels, BN goes into the Conv."""
    g = rng(43)
    inits = {"w": g.normal(0, 0.4, (C, 3, 3, 3)).astype(np.float32), **bn_params("bn", C, g)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["y"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["nhwc"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        bn_node("nchw", "out", "bn"),
    ]
    ops, records = fold_exactly(make_model(nodes, {"x": ["N", 3, 6, 6]}, ["out"], inits))
    assert ops == ["Conv", "Transpose", "Transpose"]
    assert records[0].detail == "into Conv 'conv' through Transpose 'to_nhwc', Transpose 'to_nchw' (backward)"


def test_a_reshape_that_splits_the_channel_axis_is_left() -> None:
    """(N, L, 4) -> (N, 2L, 2): BN's two channels are halves of the MatMul's features, not whole features."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        int64_constant("split", [0, 2 * L, 2]),
        helper.make_node("Reshape", ["y", "split"], ["t"], name="split_reshape"),
        helper.make_node("Transpose", ["t"], ["tt"], name="tr", perm=[0, 2, 1]),
        bn_node("tt", "out", "bn"),
    ]
    g = rng(44)
    inits = {"w": g.normal(0, 0.4, (C_IN, C)).astype(np.float32), **bn_params("bn", 2, g)}
    model = make_model(nodes, {"x": ["N", L, C_IN]}, ["out"], inits)
    assert (
        skipped_bn_reasons(model)[0] == "into its producer: Transpose 'tr' is not a Conv, ConvTranspose, Gemm or MatMul"
    )


def test_a_layout_node_read_twice_is_left() -> None:
    """The transposed tensor also feeds a graph output: the layer's output cannot change."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        helper.make_node("Transpose", ["y"], ["t"], name="to_ncl", perm=[0, 2, 1]),
        helper.make_node("Transpose", ["t"], ["seen"], name="seen", perm=[0, 2, 1]),
        bn_node("t", "out", "bn"),
    ]
    inits = _inits(45)
    del inits["b"]
    model = make_model(nodes, {"x": ["N", L, C_IN]}, ["out", "seen"], inits)
    assert skipped_bn_reasons(model)[0] == "into its producer: its input 't' has other consumers or is a graph output"


def test_a_transpose_that_leaves_bn_on_the_token_axis_is_left() -> None:
    """Transpose (0, 1, 2) keeps the tokens on axis 1: BN's channel axis is not the MatMul's feature axis."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        helper.make_node("Transpose", ["y"], ["t"], name="keep", perm=[0, 1, 2]),
        bn_node("t", "out", "bn"),
    ]
    g = rng(46)
    inits = {"w": g.normal(0, 0.4, (C_IN, C)).astype(np.float32), **bn_params("bn", L, g)}
    model = make_model(nodes, {"x": ["N", L, C_IN]}, ["out"], inits)
    assert (
        skipped_bn_reasons(model)[0]
        == "into its producer: MatMul 'mm' outputs rank 3; BN's channel axis 1 is not its feature axis"
    )

"""normfold's float64 kernels pinned to formulas that share no code with them, and the tests' own float64 truth.

Conv is checked against an im2col of the explicitly padded input (numpy's sliding windows), ConvTranspose
against the Conv of the stride-dilated input with the flipped kernel, Gemm and MatMul against einsum,
BatchNormalization against the seed's formulas (tests/training/seed_reference.py), MaxPool against sliding
windows over a -inf padded input. `numerics.run_float64` (onnx's ReferenceEvaluator on a float64 copy
made in tests/numerics.py) is checked to compute in float64, to agree with normfold's engine on the
shipped models, and to make `assert_fold_exact` fail on a wrong fold.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from examples import MODELS
from graphs import bn_node, bn_params, make_model, rng
from numerics import assert_fold_exact, float64_copy, random_feeds, run_float64
from onnx import helper, numpy_helper

from normfold.validate.float64 import run_float64 as normfold_run_float64
from normfold.validate.float64_kernels import batch_normalization, conv, conv_transpose, gemm, matmul, max_pool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
from seed_reference import batchnorm_inference, batchnorm_train  # noqa: E402

G = np.random.default_rng(20240611)
CHUNKS = [pytest.param(8, id="chunk8"), pytest.param(1 << 25, id="chunk32M")]
TIGHT = dict(rtol=1e-12, atol=1e-12)
ONNX_EPSILON = float(np.float32(1e-5))


def conv_formula(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    group: int,
) -> np.ndarray:
    """Conv as im2col: pad explicitly, take every dilated window with numpy's sliding windows, one tensordot a group."""
    rank = x.ndim - 2
    padded = np.pad(x, [(0, 0), (0, 0), *[(pads[j], pads[j + rank]) for j in range(rank)]])
    extents = [(k - 1) * d + 1 for k, d in zip(w.shape[2:], dilations)]
    windows = np.lib.stride_tricks.sliding_window_view(padded, extents, axis=tuple(range(2, 2 + rank)))
    windows = windows[
        (slice(None), slice(None), *[slice(None, None, s) for s in strides], *[slice(None, None, d) for d in dilations])
    ]  # [n, c, out..., taps...]
    cin, cout = x.shape[1] // group, w.shape[0] // group
    taps = list(range(2 + rank, 2 + 2 * rank))
    parts = [
        np.moveaxis(
            np.tensordot(
                windows[:, g * cin : (g + 1) * cin],
                w[g * cout : (g + 1) * cout],
                axes=([1, *taps], [1, *range(2, 2 + rank)]),
            ),
            -1,
            1,
        )
        for g in range(group)
    ]
    y = np.concatenate(parts, axis=1)
    return y if b is None else y + b.reshape(1, -1, *[1] * rank)


def conv_transpose_formula(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    group: int,
    output_padding: Sequence[int],
) -> np.ndarray:
    """ConvTranspose as the Conv (stride 1) of the input spread out by the strides, padded by the kernel's
    extent, with the kernel flipped and its channel axes swapped per group; then cropped by the pads."""
    rank = x.ndim - 2
    spread = np.zeros((*x.shape[:2], *[s * (i - 1) + 1 for s, i in zip(strides, x.shape[2:])]))
    spread[(slice(None), slice(None), *[slice(None, None, s) for s in strides])] = x
    edge = [(k - 1) * d for k, d in zip(w.shape[2:], dilations)]
    cin = x.shape[1] // group
    flipped = w[(slice(None), slice(None), *[slice(None, None, -1)] * rank)]
    kernel = np.concatenate([flipped[g * cin : (g + 1) * cin].swapaxes(0, 1) for g in range(group)], axis=0)
    full = conv_formula(
        spread, kernel, None, [1] * rank, dilations, [*edge, *[e + a for e, a in zip(edge, output_padding)]], group
    )
    y = full[(slice(None), slice(None), *[slice(pads[j], full.shape[2 + j] - pads[j + rank]) for j in range(rank)])]
    return y if b is None else y + b.reshape(1, -1, *[1] * rank)


def max_pool_formula(
    x: np.ndarray, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int], pads: Sequence[int]
) -> np.ndarray:
    """MaxPool (floor mode) as the maximum over every dilated sliding window of the -inf padded input."""
    rank = x.ndim - 2
    padded = np.pad(x, [(0, 0), (0, 0), *[(pads[j], pads[j + rank]) for j in range(rank)]], constant_values=-np.inf)
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    windows = np.lib.stride_tricks.sliding_window_view(padded, extents, axis=tuple(range(2, 2 + rank)))
    windows = windows[
        (slice(None), slice(None), *[slice(None, None, s) for s in strides], *[slice(None, None, d) for d in dilations])
    ]
    return windows.max(axis=tuple(range(2 + rank, 2 + 2 * rank)))


CONV_TABLE = [
    pytest.param((2, 3, 7, 6), (4, 3, 3, 3), [1, 1], [1, 1], [0, 0, 0, 0], 1, id="plain-valid"),
    pytest.param((1, 3, 9, 8), (5, 3, 3, 2), [2, 3], [1, 1], [1, 0, 2, 1], 1, id="stride-asymmetric-pads"),
    pytest.param((2, 2, 11, 10), (3, 2, 3, 3), [1, 2], [3, 2], [3, 1, 2, 3], 1, id="dilation-stride-pads"),
    pytest.param((1, 6, 7, 7), (4, 3, 3, 3), [1, 1], [1, 1], [1, 1, 1, 1], 2, id="groups2"),
    pytest.param((2, 4, 8, 9), (8, 1, 3, 3), [2, 1], [2, 2], [2, 2, 1, 1], 4, id="depthwise-multiplier2"),
    pytest.param((1, 6, 9, 8), (9, 2, 2, 3), [2, 2], [2, 1], [0, 1, 1, 0], 3, id="groups3-dilated-strided"),
    pytest.param((2, 4, 13), (6, 2, 4), [3], [2], [3, 2], 2, id="1d-grouped"),
    pytest.param((1, 2, 5, 6, 4), (3, 2, 2, 3, 2), [2, 1, 1], [1, 2, 1], [1, 2, 0, 0, 1, 1], 1, id="3d"),
]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("bias", [pytest.param(True, id="bias"), pytest.param(False, id="nobias")])
@pytest.mark.parametrize("x_shape, w_shape, strides, dilations, pads, group", CONV_TABLE)
def test_conv_matches_im2col(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    strides: list[int],
    dilations: list[int],
    pads: list[int],
    group: int,
    bias: bool,
    chunk: int,
) -> None:
    """normfold's Conv equals the im2col formula for groups, dilations, strides and pads."""
    x, w = G.standard_normal(x_shape), G.standard_normal(w_shape)
    b = G.standard_normal(w_shape[0]) if bias else None
    expected = conv_formula(x, w, b, strides, dilations, pads, group)
    got = conv(x, w, b, strides=strides, dilations=dilations, pads=pads, group=group, chunk_bytes=chunk)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **TIGHT)


CONV_TRANSPOSE_TABLE = [
    pytest.param((2, 3, 4, 5), (3, 2, 3, 3), [1, 1], [1, 1], [0, 0, 0, 0], 1, [0, 0], id="plain"),
    pytest.param((1, 2, 4, 3), (2, 3, 3, 2), [2, 3], [1, 1], [1, 0, 0, 1], 1, [0, 0], id="stride-pads"),
    pytest.param((1, 2, 3, 4), (2, 2, 3, 2), [3, 2], [1, 2], [1, 1, 0, 0], 1, [2, 1], id="output-padding-dilated"),
    pytest.param((2, 4, 3, 3), (4, 3, 2, 2), [2, 2], [2, 1], [0, 0, 0, 0], 2, [1, 1], id="groups2-output-padding"),
    pytest.param((1, 3, 4, 3), (3, 2, 3, 3), [1, 2], [1, 1], [1, 1, 1, 1], 3, [0, 0], id="depthwise-multiplier2"),
    pytest.param((1, 4, 6), (4, 1, 3), [2], [3], [2, 1], 2, [1], id="1d-grouped-dilated"),
]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("bias", [pytest.param(True, id="bias"), pytest.param(False, id="nobias")])
@pytest.mark.parametrize("x_shape, w_shape, strides, dilations, pads, group, output_padding", CONV_TRANSPOSE_TABLE)
def test_conv_transpose_matches_conv_of_spread_input(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    strides: list[int],
    dilations: list[int],
    pads: list[int],
    group: int,
    output_padding: list[int],
    bias: bool,
    chunk: int,
) -> None:
    """normfold's ConvTranspose equals the Conv of the stride-spread input with the flipped, swapped kernel."""
    x, w = G.standard_normal(x_shape), G.standard_normal(w_shape)
    b = G.standard_normal(w_shape[1] * group) if bias else None
    expected = conv_transpose_formula(x, w, b, strides, dilations, pads, group, output_padding)
    got = conv_transpose(
        x,
        w,
        b,
        strides=strides,
        dilations=dilations,
        pads=pads,
        group=group,
        output_padding=output_padding,
        chunk_bytes=chunk,
    )
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **TIGHT)


GEMM_TABLE = [
    pytest.param((5, 3), (3, 4), None, 1.0, 1.0, 0, 0, id="defaults-no-c"),
    pytest.param((5, 3), (3, 4), (4,), 1.0, 1.0, 0, 0, id="row-c"),
    pytest.param((3, 5), (3, 4), (5, 1), 0.5, 2.0, 1, 0, id="transA-column-c"),
    pytest.param((5, 3), (4, 3), (5, 4), -1.5, 0.25, 0, 1, id="transB-full-c"),
    pytest.param((3, 5), (4, 3), (), 2.0, -1.0, 1, 1, id="both-trans-scalar-c"),
    pytest.param((5, 3), (3, 4), (1, 4), 0.7, 0.0, 0, 0, id="beta-zero"),
]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("a_shape, b_shape, c_shape, alpha, beta, trans_a, trans_b", GEMM_TABLE)
def test_gemm_matches_einsum(
    a_shape: tuple[int, ...],
    b_shape: tuple[int, ...],
    c_shape: tuple[int, ...] | None,
    alpha: float,
    beta: float,
    trans_a: int,
    trans_b: int,
    chunk: int,
) -> None:
    """normfold's Gemm equals alpha * einsum(A', B') + beta * C for each transA/transB and C shape."""
    a, b = G.standard_normal(a_shape), G.standard_normal(b_shape)
    c = None if c_shape is None else G.standard_normal(c_shape)
    product = np.einsum("ki,kj->ij" if trans_a else "ik,kj->ij", a, b.T if trans_b else b)
    expected = alpha * product + (0.0 if c is None else beta * c)
    got = gemm(a, b, c, alpha=alpha, beta=beta, transA=trans_a, transB=trans_b, chunk_bytes=chunk)
    np.testing.assert_allclose(got, expected, **TIGHT)


MATMUL_TABLE = [
    pytest.param((3,), (3,), "i,i->", id="vector-vector"),
    pytest.param((2, 3), (3,), "ij,j->i", id="matrix-vector"),
    pytest.param((3,), (3, 4), "i,ij->j", id="vector-matrix"),
    pytest.param((2, 3), (3, 4), "ij,jk->ik", id="matrix-matrix"),
    pytest.param((4, 2, 3), (3, 5), "bij,jk->bik", id="batch-times-matrix"),
    pytest.param((2, 1, 2, 3), (5, 3, 4), "...ij,...jk->...ik", id="broadcast-batch"),
]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("a_shape, b_shape, subscripts", MATMUL_TABLE)
def test_matmul_matches_einsum(a_shape: tuple[int, ...], b_shape: tuple[int, ...], subscripts: str, chunk: int) -> None:
    """normfold's MatMul equals the einsum of numpy's matmul rules, 1-D operands and broadcast batches."""
    a, b = G.standard_normal(a_shape), G.standard_normal(b_shape)
    expected = np.einsum(subscripts, a, b)
    got = matmul(a, b, chunk_bytes=chunk)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **TIGHT)


BN_INFERENCE_TABLE = [
    pytest.param((2, 3, 4, 5), None, id="nchw-default-epsilon"),
    pytest.param((2, 3, 4, 5), 1e-3, id="nchw-epsilon-1e-3"),
    pytest.param((5, 4), 0.1, id="nc"),
    pytest.param((2, 2, 7), 1e-5, id="ncl"),
]


@pytest.mark.parametrize("x_shape, epsilon", BN_INFERENCE_TABLE)
def test_batch_normalization_inference_matches_seed(x_shape: tuple[int, ...], epsilon: float | None) -> None:
    """Inference BN equals the seed's gamma * (x - mu_E) / sqrt(var_E + eps) + beta (ONNX default eps in float32)."""
    x = G.standard_normal(x_shape)
    c = x_shape[1]
    gamma, beta, mean, var = G.uniform(0.5, 1.5, c), G.normal(0, 0.3, c), G.normal(0, 0.5, c), G.uniform(0.5, 2, c)
    eps = ONNX_EPSILON if epsilon is None else epsilon
    (got,) = batch_normalization(x, gamma, beta, mean, var, epsilon=epsilon)
    np.testing.assert_allclose(got, batchnorm_inference(x, gamma, beta, mean, var, eps), rtol=1e-13, atol=1e-13)


BN_TRAINING_TABLE = [
    pytest.param((4, 3, 2, 3), 0.9, 1e-5, 3, id="momentum-0.9-three-outputs"),
    pytest.param((6, 2, 5), 0.25, 1e-3, 3, id="momentum-0.25-ncl"),
    pytest.param((8, 3), 0.5, 1e-2, 2, id="two-outputs-nc"),
]


@pytest.mark.parametrize("x_shape, momentum, epsilon, outputs", BN_TRAINING_TABLE)
def test_batch_normalization_training_matches_seed(
    x_shape: tuple[int, ...], momentum: float, epsilon: float, outputs: int
) -> None:
    """Training-mode BN equals the seed's batchnorm_train with alpha = 1 - ONNX momentum (biased variance)."""
    x = G.standard_normal(x_shape)
    c = x_shape[1]
    gamma, beta, mean, var = G.uniform(0.5, 1.5, c), G.normal(0, 0.3, c), G.normal(0, 0.5, c), G.uniform(0.5, 2, c)
    expected = batchnorm_train(x, gamma, beta, mean, var, alpha=1 - momentum, eps=epsilon)
    got = batch_normalization(
        x, gamma, beta, mean, var, epsilon=epsilon, momentum=momentum, training_mode=1, outputs=outputs, chunk_bytes=8
    )
    assert len(got) == outputs
    for value, reference in zip(got, expected):
        np.testing.assert_allclose(value, reference, rtol=1e-12, atol=1e-12)


MAX_POOL_TABLE = [
    pytest.param((2, 3, 6, 7), [2, 2], [2, 2], [1, 1], [0, 0, 0, 0], id="2x2-stride2"),
    pytest.param((1, 2, 7, 7), [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], id="3x3-stride2-pad1"),
    pytest.param((1, 2, 9, 8), [2, 3], [1, 2], [2, 2], [1, 0, 0, 2], id="dilated-asymmetric-pads"),
    pytest.param((2, 1, 10), [3], [3], [1], [2, 1], id="1d"),
    pytest.param((1, 1, 4, 5, 6), [2, 2, 3], [1, 2, 2], [1, 1, 1], [0, 1, 1, 1, 0, 0], id="3d"),
]


@pytest.mark.parametrize("x_shape, kernel, strides, dilations, pads", MAX_POOL_TABLE)
def test_max_pool_matches_sliding_windows(
    x_shape: tuple[int, ...], kernel: list[int], strides: list[int], dilations: list[int], pads: list[int]
) -> None:
    """normfold's MaxPool equals the maximum over sliding windows of the -inf padded input, exactly."""
    x = G.standard_normal(x_shape)
    expected = max_pool_formula(x, kernel, strides, dilations, pads)
    got = max_pool(x, kernel_shape=kernel, strides=strides, dilations=dilations, pads=pads)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def _one_node_model(op: str, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, **attrs: object) -> onnx.ModelProto:
    """A float64 model of one `op` node reading x, and the weight w and bias b as initializers."""
    initializers = {"w": w, **({} if b is None else {"b": b})}
    node = helper.make_node(op, ["x", *initializers], ["y"], **attrs)
    return make_model([node], {"x": list(x.shape)}, ["y"], initializers, dtype=onnx.TensorProto.DOUBLE)


@pytest.mark.parametrize("x_shape, w_shape, strides, dilations, pads, group", CONV_TABLE)
def test_conv_formula_matches_onnx_reference(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    strides: list[int],
    dilations: list[int],
    pads: list[int],
    group: int,
) -> None:
    """The im2col formula itself agrees with onnx's reference Conv (so the pin above pins the spec)."""
    x, w, b = G.standard_normal(x_shape), G.standard_normal(w_shape), G.standard_normal(w_shape[0])
    model = _one_node_model("Conv", x, w, b, strides=strides, dilations=dilations, pads=pads, group=group)
    (y,) = run_float64(model, {"x": x})
    np.testing.assert_allclose(conv_formula(x, w, b, strides, dilations, pads, group), y, **TIGHT)


@pytest.mark.parametrize("x_shape, w_shape, strides, dilations, pads, group, output_padding", CONV_TRANSPOSE_TABLE)
def test_conv_transpose_formula_matches_onnx_reference(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    strides: list[int],
    dilations: list[int],
    pads: list[int],
    group: int,
    output_padding: list[int],
) -> None:
    """The spread-input formula agrees with onnx's reference ConvTranspose (grouped: one group at a time)."""
    x, w, b = G.standard_normal(x_shape), G.standard_normal(w_shape), G.standard_normal(w_shape[1] * group)
    model = _one_node_model(
        "ConvTranspose",
        x,
        w,
        b,
        strides=strides,
        dilations=dilations,
        pads=pads,
        output_padding=output_padding,
        group=group,
    )
    (y,) = run_float64(model, {"x": x})
    np.testing.assert_allclose(
        conv_transpose_formula(x, w, b, strides, dilations, pads, group, output_padding), y, **TIGHT
    )


@pytest.mark.parametrize("opset", [pytest.param(v, id=f"opset{v}") for v in (7, 9, 13, 14, 15)])
def test_truth_of_inference_batchnorm_every_opset(opset: int) -> None:
    """The tests' truth of a one-output BN is the seed's inference formula at every opset (onnx's own BN-9,
    opsets 9-13, blends batch statistics in; tests/numerics.py replaces it)."""
    generator = rng(4)
    params = {k: v.astype(np.float64) for k, v in bn_params("bn", 3, generator).items()}
    model = make_model(
        [bn_node("x", "y", "bn", epsilon=1e-3)],
        {"x": [2, 3, 4, 4]},
        ["y"],
        params,
        opset=opset,
        dtype=onnx.TensorProto.DOUBLE,
    )
    x = generator.standard_normal((2, 3, 4, 4))
    (y,) = run_float64(model, {"x": x})
    expected = batchnorm_inference(
        x, params["bn_scale"], params["bn_bias"], params["bn_mean"], params["bn_var"], float(np.float32(1e-3))
    )
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-13)


def test_tests_float64_truth_imports_nothing_of_normfold() -> None:
    """tests/numerics.py imports no normfold module: the truth is independent of the code under test."""
    tree = ast.parse((Path(__file__).resolve().parent.parent / "numerics.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert sorted(name for name in imported if name.split(".")[0] == "normfold") == []


def _widening_model() -> onnx.ModelProto:
    """x (float16) -> Cast(float) * Constant(value_float) + float16 initializer (cast up) -> Cast(float16)."""
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Constant", [], ["k"], value_float=0.1),
        helper.make_node("Mul", ["xf", "k"], ["m"]),
        helper.make_node("Cast", ["h"], ["hf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Add", ["m", "hf"], ["s"]),
        helper.make_node("Cast", ["s"], ["y"], to=onnx.TensorProto.FLOAT16),
    ]
    return make_model(
        nodes, {"x": [2, 3]}, ["y"], {"h": np.array([0.1, 0.2, 0.3], np.float16)}, dtype=onnx.TensorProto.FLOAT16
    )


def test_float64_copy_widens_inputs_constants_casts_and_initializers() -> None:
    """The float64 copy types every float value, initializer, Constant and Cast target as double."""
    wide = float64_copy(_widening_model())
    assert {i.type.tensor_type.elem_type for i in [*wide.graph.input, *wide.graph.output]} == {onnx.TensorProto.DOUBLE}
    assert [t.data_type for t in wide.graph.initializer] == [onnx.TensorProto.DOUBLE]
    casts = [a.i for n in wide.graph.node if n.op_type == "Cast" for a in n.attribute]
    assert casts == [onnx.TensorProto.DOUBLE] * 3
    (constant,) = [n for n in wide.graph.node if n.op_type == "Constant"]
    assert numpy_helper.to_array(constant.attribute[0].t).dtype == np.float64


def test_run_float64_computes_in_float64() -> None:
    """The truth of the float16 model is float64 arithmetic on the float16 values and float32 constant, unrounded."""
    x = np.array([[1.0, -2.0, 3.5], [0.25, 8.0, -1.0]], np.float16)
    (y,) = run_float64(_widening_model(), {"x": x})
    assert y.dtype == np.float64
    h = np.array([0.1, 0.2, 0.3], np.float16).astype(np.float64)
    np.testing.assert_array_equal(y, x.astype(np.float64) * np.float64(np.float32(0.1)) + h)


@pytest.mark.parametrize(
    "name", ["mlp.onnx", "resnet_block.onnx", "torchvision_mobilenetv3_eval.onnx", "torchvision_resnet_eval.onnx"]
)
def test_independent_truth_agrees_with_normfold_engine(name: str) -> None:
    """onnx's evaluator on the tests' float64 copy and normfold's float64 engine agree on the shipped models."""
    model = onnx.load(str(MODELS / name))
    feeds = random_feeds(model)
    truth, engine = run_float64(model, feeds), normfold_run_float64(model, feeds)
    assert len(truth) == len(engine)
    for expected, got in zip(truth, engine):
        assert got.dtype == expected.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-11 * float(np.abs(expected).max()))


def test_assert_fold_exact_rejects_a_wrong_fold() -> None:
    """A 'fold' whose weights are off by one part in 10^4 fails assert_fold_exact against the float64 truth."""
    generator = rng(3)
    weight = generator.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), bn_node("c", "y", "bn")]
    model = make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], {"w": weight, **bn_params("bn", 4, generator)})
    wrong = onnx.ModelProto()
    wrong.CopyFrom(model)
    wrong.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight * np.float32(1 + 1e-4), "w"))
    assert_fold_exact(model, model, random_feeds(model))
    with pytest.raises(AssertionError, match="folded error"):
        assert_fold_exact(model, wrong, random_feeds(model))

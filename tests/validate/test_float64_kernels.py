"""normfold's float64 kernels against naive formulas written here (explicit loops and sums, tiny shapes),
and the chunking: a tiny chunk bound forces many blocks and gives the same numbers with small temporaries."""

from __future__ import annotations

import itertools
import math
import tracemalloc

import numpy as np
import pytest

from normfold.validate.float64_kernels import (
    KERNELS,
    batch_normalization,
    block_lengths,
    conv,
    conv_transpose,
    gemm,
    matmul,
    max_pool,
)

G = np.random.default_rng(7)

ONNX_EPSILON = float(np.float32(1e-5))  # BatchNormalization's default: the float32 attribute value


def _same_pads(size: int, stride: int, extent: int, mode: str) -> tuple[int, int, int]:
    """SAME_* as the ONNX Conv specification: output ceil(size / stride), the odd pad at the end for UPPER."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + extent - size)
    begin = total // 2 if mode == "SAME_UPPER" else total - total // 2
    return begin, total - begin, out


def naive_conv(x, w, b, strides, dilations, pads, group, auto_pad="NOTSET"):
    """Conv by its definition: every output element a sum over its group's channels and the kernel taps."""
    rank = x.ndim - 2
    begins, outs = [], []
    for j in range(rank):
        extent = (w.shape[2 + j] - 1) * dilations[j] + 1
        if auto_pad.startswith("SAME"):
            begin, _, out = _same_pads(x.shape[2 + j], strides[j], extent, auto_pad)
        else:
            begin, end = (0, 0) if auto_pad == "VALID" else (pads[j], pads[j + rank])
            out = (x.shape[2 + j] + begin + end - extent) // strides[j] + 1
        begins.append(begin)
        outs.append(out)
    n, c = x.shape[:2]
    co, cg = w.shape[0], w.shape[1]
    y = np.zeros((n, co, *outs))
    for batch, oc, *o in itertools.product(range(n), range(co), *[range(s) for s in outs]):
        total = 0.0 if b is None else b[oc]
        first = oc // (co // group) * cg
        for ic, *t in itertools.product(range(cg), *[range(k) for k in w.shape[2:]]):
            i = [o[j] * strides[j] + t[j] * dilations[j] - begins[j] for j in range(rank)]
            if all(0 <= i[j] < x.shape[2 + j] for j in range(rank)):
                total += w[(oc, ic, *t)] * x[(batch, first + ic, *i)]
        y[(batch, oc, *o)] = total
    return y


def naive_conv_transpose(
    x, w, b, strides, dilations, group, pads=None, output_padding=None, output_shape=None, auto_pad="NOTSET"
):
    """ConvTranspose by its definition: input (i) meets output (o) at tap t when o = i*s + t*d - pad_begin."""
    rank = x.ndim - 2
    adjust = output_padding or [0] * rank
    begins, outs = [], []
    for j in range(rank):
        full = strides[j] * (x.shape[2 + j] - 1) + adjust[j] + (w.shape[2 + j] - 1) * dilations[j] + 1
        if output_shape or auto_pad.startswith("SAME"):
            out = output_shape[j] if output_shape else x.shape[2 + j] * strides[j]
            total = full - out
            begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        else:
            padding = pads or [0] * (2 * rank)
            begins.append(padding[j])
            out = full - padding[j] - padding[j + rank]
        outs.append(out)
    n, c = x.shape[:2]
    cig, cog = c // group, w.shape[1]
    y = np.zeros((n, cog * group, *outs))
    for batch, ic, *i in itertools.product(range(n), range(c), *[range(s) for s in x.shape[2:]]):
        g = ic // cig
        for oc, *t in itertools.product(range(cog), *[range(k) for k in w.shape[2:]]):
            o = [i[j] * strides[j] + t[j] * dilations[j] - begins[j] for j in range(rank)]
            if all(0 <= o[j] < outs[j] for j in range(rank)):
                y[(batch, g * cog + oc, *o)] += x[(batch, ic, *i)] * w[(ic, oc, *t)]
    if b is not None:
        y += b.reshape(1, -1, *[1] * rank)
    return y


CONV_CASES = {
    "2d-dilation2-pad-stride2": dict(
        x=(2, 3, 9, 8), w=(4, 3, 3, 3), strides=[2, 2], dilations=[2, 2], pads=[2, 1, 1, 2], group=1
    ),
    "2d-dilation3-asymmetric": dict(
        x=(1, 2, 10, 11), w=(3, 2, 3, 2), strides=[1, 2], dilations=[3, 2], pads=[3, 0, 1, 4], group=1
    ),
    "groups2": dict(x=(1, 4, 7, 7), w=(6, 2, 3, 3), strides=[1, 1], dilations=[1, 1], pads=[1, 1, 1, 1], group=2),
    "depthwise": dict(x=(2, 3, 6, 7), w=(6, 1, 3, 3), strides=[2, 1], dilations=[2, 1], pads=[2, 1, 2, 1], group=3),
    "1d": dict(x=(2, 3, 13), w=(2, 3, 4), strides=[3], dilations=[2], pads=[3, 2], group=1),
    "3d": dict(
        x=(1, 2, 5, 6, 4), w=(2, 2, 2, 3, 2), strides=[2, 1, 1], dilations=[1, 2, 1], pads=[1, 2, 0, 0, 1, 1], group=1
    ),
    "no-padding-big-kernel": dict(
        x=(1, 1, 5, 5), w=(1, 1, 5, 5), strides=[1, 1], dilations=[1, 1], pads=[0, 0, 0, 0], group=1
    ),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_the_definition(case: str, bias: bool) -> None:
    spec = CONV_CASES[case]
    x, w = G.standard_normal(spec["x"]), G.standard_normal(spec["w"])
    b = G.standard_normal(spec["w"][0]) if bias else None
    attrs = {k: spec[k] for k in ("strides", "dilations", "pads", "group")}
    expected = naive_conv(x, w, b, **attrs)
    np.testing.assert_allclose(conv(x, w, b, **attrs), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv(x, w, b, **attrs, chunk_bytes=8), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("size,stride,dilation", [(7, 2, 1), (8, 3, 2), (6, 1, 3)])
def test_conv_auto_pad(auto_pad: str, size: int, stride: int, dilation: int) -> None:
    x, w = G.standard_normal((1, 2, size, size + 1)), G.standard_normal((3, 2, 2, 3))
    attrs = dict(strides=[stride, stride], dilations=[dilation, 1], group=1)
    expected = naive_conv(x, w, None, pads=None, auto_pad=auto_pad, **attrs)
    np.testing.assert_allclose(conv(x, w, auto_pad=auto_pad, **attrs), expected, rtol=1e-12, atol=1e-12)


def test_conv_defaults_are_stride_1_no_padding() -> None:
    x, w = G.standard_normal((1, 2, 5, 5)), G.standard_normal((1, 2, 3, 3))
    expected = naive_conv(x, w, None, [1, 1], [1, 1], [0, 0, 0, 0], 1)
    np.testing.assert_allclose(conv(x, w), expected, rtol=1e-12, atol=1e-12)


CONV_TRANSPOSE_CASES = {
    "stride2-pads": dict(x=(2, 3, 4, 5), w=(3, 2, 3, 3), strides=[2, 2], dilations=[1, 1], group=1, pads=[1, 0, 0, 1]),
    "output-padding": dict(
        x=(1, 2, 3, 4),
        w=(2, 3, 3, 2),
        strides=[3, 2],
        dilations=[1, 2],
        group=1,
        pads=[1, 1, 0, 0],
        output_padding=[2, 1],
    ),
    "groups2-output-padding": dict(
        x=(1, 4, 3, 3), w=(4, 3, 2, 2), strides=[2, 2], dilations=[2, 1], group=2, output_padding=[1, 1]
    ),
    "depthwise": dict(x=(2, 3, 4, 3), w=(3, 1, 3, 3), strides=[1, 2], dilations=[1, 1], group=3, pads=[1, 1, 1, 1]),
    "1d-dilation3": dict(x=(1, 2, 5), w=(2, 2, 3), strides=[2], dilations=[3], group=1, pads=[2, 1]),
    "3d": dict(x=(1, 2, 2, 3, 2), w=(2, 1, 2, 2, 3), strides=[2, 1, 2], dilations=[1, 1, 1], group=1),
    "output-shape": dict(
        x=(1, 2, 3, 4), w=(2, 2, 3, 3), strides=[2, 3], dilations=[1, 1], group=1, output_shape=[6, 10]
    ),
    "output-shape-odd-total": dict(
        x=(1, 2, 3, 3),
        w=(2, 2, 3, 3),
        strides=[2, 2],
        dilations=[1, 1],
        group=1,
        output_shape=[5, 6],
        output_padding=[1, 0],
    ),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES)
def test_conv_transpose_matches_the_definition(case: str, bias: bool) -> None:
    spec = dict(CONV_TRANSPOSE_CASES[case])
    x, w = G.standard_normal(spec.pop("x")), G.standard_normal(spec.pop("w"))
    b = G.standard_normal(w.shape[1] * spec["group"]) if bias else None
    expected = naive_conv_transpose(x, w, b, **spec)
    np.testing.assert_allclose(conv_transpose(x, w, b, **spec), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv_transpose(x, w, b, **spec, chunk_bytes=8), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_transpose_auto_pad(auto_pad: str) -> None:
    x, w = G.standard_normal((1, 2, 3, 4)), G.standard_normal((2, 2, 4, 3))
    attrs = dict(strides=[2, 3], dilations=[1, 1], group=1)
    expected = naive_conv_transpose(x, w, None, auto_pad=auto_pad, **attrs)
    np.testing.assert_allclose(conv_transpose(x, w, auto_pad=auto_pad, **attrs), expected, rtol=1e-12, atol=1e-12)


def naive_gemm(a, b, c, alpha, beta, trans_a, trans_b):
    a, b = (a.T if trans_a else a), (b.T if trans_b else b)
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    spread = None if c is None else np.broadcast_to(c, (m, n))
    y = np.zeros((m, n))
    for i, j in itertools.product(range(m), range(n)):
        y[i, j] = alpha * sum(a[i, p] * b[p, j] for p in range(k)) + (0.0 if c is None else beta * spread[i, j])
    return y


@pytest.mark.parametrize("c_shape", [None, (), (4,), (5, 1), (1, 4), (5, 4)])
@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm(c_shape: tuple[int, ...] | None, trans_a: int, trans_b: int) -> None:
    a = G.standard_normal((3, 5) if trans_a else (5, 3))
    b = G.standard_normal((4, 3) if trans_b else (3, 4))
    c = None if c_shape is None else G.standard_normal(c_shape)
    expected = naive_gemm(a, b, c, 0.7, -1.3, trans_a, trans_b)
    for chunk in (8, 1 << 20):
        got = gemm(a, b, c, alpha=0.7, beta=-1.3, transA=trans_a, transB=trans_b, chunk_bytes=chunk)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_gemm_defaults_alpha_beta_one() -> None:
    a, b, c = G.standard_normal((2, 3)), G.standard_normal((3, 2)), G.standard_normal(2)
    np.testing.assert_allclose(gemm(a, b, c), naive_gemm(a, b, c, 1.0, 1.0, 0, 0), rtol=1e-12, atol=1e-12)


def naive_matmul(a, b):
    """Explicit sums over numpy's matmul rules: 1-D operands promoted, batch dims broadcast."""
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    wa, wb = np.broadcast_to(a2, (*batch, *a2.shape[-2:])), np.broadcast_to(b2, (*batch, *b2.shape[-2:]))
    m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    y = np.zeros((*batch, m, n))
    for index in itertools.product(*[range(s) for s in batch]):
        for i, j in itertools.product(range(m), range(n)):
            y[(*index, i, j)] = sum(wa[(*index, i, p)] * wb[(*index, p, j)] for p in range(k))
    if a.ndim == 1:
        y = y[..., 0, :]
    return y[..., 0] if b.ndim == 1 else y


@pytest.mark.parametrize(
    "shapes",
    [
        ((3,), (3,)),
        ((2, 3), (3,)),
        ((3,), (3, 4)),
        ((2, 3), (3, 4)),
        ((2, 1, 2, 3), (5, 3, 4)),
        ((4, 2, 3), (3, 2)),
        ((7, 1, 3), (1, 3, 2)),
        ((2, 3), (4, 3, 1)),
        ((3, 1, 2, 2), (1, 2, 2, 3)),
    ],
)
def test_matmul_broadcasting(shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    a, b = G.standard_normal(shapes[0]), G.standard_normal(shapes[1])
    expected = naive_matmul(a, b)
    for chunk in (8, 64, 1 << 20):
        got = matmul(a, b, chunk_bytes=chunk)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def _bn_params(c, shape=None):
    shape = shape or (c,)
    return (G.uniform(0.5, 1.5, shape), G.normal(0, 0.3, shape), G.normal(0, 0.5, shape), G.uniform(0.5, 2, shape))


def test_batch_normalization_inference() -> None:
    x = G.standard_normal((2, 3, 4, 5))
    scale, bias, mean, var = _bn_params(3)
    expected = np.empty_like(x)
    for n, c, h, w in itertools.product(*[range(s) for s in x.shape]):
        expected[n, c, h, w] = (x[n, c, h, w] - mean[c]) / math.sqrt(var[c] + 1e-3) * scale[c] + bias[c]
    (y,) = batch_normalization(x, scale, bias, mean, var, epsilon=1e-3)
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-13)
    (default_eps,) = batch_normalization(x, scale, bias, mean, var, is_test=1, spatial=1, consumed_inputs=[0, 0])
    np.testing.assert_allclose(
        default_eps,
        (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + ONNX_EPSILON) * scale[:, None, None]
        + bias[:, None, None],
        rtol=1e-13,
    )


def _batch_stats(x):
    """Per-channel mean and biased variance by explicit sums."""
    positions = list(itertools.product(range(x.shape[0]), *[range(s) for s in x.shape[2:]]))
    values = [[x[(n, ch, *rest)] for n, *rest in positions] for ch in range(x.shape[1])]
    means = np.array([sum(v) / len(v) for v in values])
    variances = np.array([sum((e - m) ** 2 for e in v) / len(v) for v, m in zip(values, means)])
    return means, variances


@pytest.mark.parametrize("chunk", [8, 1 << 20])
def test_batch_normalization_training_mode(chunk: int) -> None:
    x = G.standard_normal((4, 3, 2, 3))
    scale, bias, mean, var = _bn_params(3)
    batch_mean, batch_var = _batch_stats(x)
    y, running_mean, running_var = batch_normalization(
        x, scale, bias, mean, var, momentum=0.8, training_mode=1, outputs=3, chunk_bytes=chunk
    )
    expected = (x - batch_mean[:, None, None]) / np.sqrt(batch_var[:, None, None] + ONNX_EPSILON) * scale[:, None, None]
    np.testing.assert_allclose(y, expected + bias[:, None, None], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(running_mean, 0.8 * mean + 0.2 * batch_mean, rtol=1e-12)  # momentum weighs the OLD value
    np.testing.assert_allclose(running_var, 0.8 * var + 0.2 * batch_var, rtol=1e-12)


def test_batch_normalization_opset7_five_outputs_default_momentum() -> None:
    x = G.standard_normal((5, 2))
    scale, bias, mean, var = _bn_params(2)
    batch_mean, batch_var = _batch_stats(x)
    outputs = batch_normalization(x, scale, bias, mean, var, spatial=1, outputs=5)
    assert len(outputs) == 5
    np.testing.assert_allclose(outputs[1], 0.9 * mean + 0.1 * batch_mean, rtol=1e-12)
    np.testing.assert_allclose(outputs[2], 0.9 * var + 0.1 * batch_var, rtol=1e-12)
    np.testing.assert_allclose(outputs[3], batch_mean, rtol=1e-12)
    np.testing.assert_allclose(outputs[4], batch_var, rtol=1e-12)


def test_batch_normalization_per_activation_statistics() -> None:
    """spatial=0 (opsets < 9): scale and statistics of shape (C, H, W), batch statistics over the batch alone."""
    x = G.standard_normal((4, 2, 3, 3))
    scale, bias, mean, var = _bn_params(2, (2, 3, 3))
    (y,) = batch_normalization(x, scale, bias, mean, var, spatial=0)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + ONNX_EPSILON) * scale + bias, rtol=1e-13)
    y, _, _, saved_mean, saved_var = batch_normalization(x, scale, bias, mean, var, spatial=0, outputs=5)
    np.testing.assert_allclose(saved_mean, x.sum(axis=0) / 4, rtol=1e-12)
    np.testing.assert_allclose(saved_var, ((x - x.sum(axis=0) / 4) ** 2).sum(axis=0) / 4, rtol=1e-12)


def test_block_lengths_shrink_outer_dims_first() -> None:
    assert block_lengths([10, 2, 3], 8, 10_000) == [10, 2, 3]
    assert block_lengths([10, 2, 3], 8, 100) == [2, 2, 3]
    assert block_lengths([10, 2, 3], 8, 30) == [1, 1, 3]
    assert block_lengths([10, 2, 3], 8, 1) == [1, 1, 1]


def _peak_bytes(function, *args, **kwargs) -> int:
    tracemalloc.start()
    try:
        function(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_tiny_chunk_bound_keeps_temporaries_small() -> None:
    x, w = G.standard_normal((2, 16, 32, 32)), G.standard_normal((16, 16, 3, 3))
    output = 2 * 16 * 32 * 32 * 8
    assert _peak_bytes(conv, x, w, pads=[1, 1, 1, 1], chunk_bytes=4096) < output + 64 * 1024
    np.testing.assert_allclose(
        conv(x, w, pads=[1, 1, 1, 1], chunk_bytes=4096), conv(x, w, pads=[1, 1, 1, 1]), rtol=1e-12, atol=1e-12
    )
    xt = G.standard_normal((2, 16, 16, 16))
    output_t = 2 * 16 * 32 * 32 * 8
    assert (
        _peak_bytes(conv_transpose, xt, w, strides=[2, 2], output_padding=[1, 1], pads=[1, 1, 1, 1], chunk_bytes=4096)
        < output_t + 64 * 1024
    )


def test_dilated_conv_is_small() -> None:
    """The case that exploded onnx's reference Conv: dilation 12 over a 24x24 image, 64 channels."""
    x, w = G.standard_normal((1, 64, 24, 24)), G.standard_normal((64, 64, 3, 3))
    attrs = dict(dilations=[12, 12], pads=[12, 12, 12, 12])
    assert _peak_bytes(conv, x, w, **attrs) < 4 * x.nbytes
    y = conv(x, w, **attrs)
    for i, j in [(0, 0), (11, 12), (23, 5)]:  # spot checks by the definition
        expected = sum(
            w[:, :, ki, kj] @ x[0, :, i + 12 * ki - 12, j + 12 * kj - 12]
            for ki in range(3)
            for kj in range(3)
            if 0 <= i + 12 * ki - 12 < 24 and 0 <= j + 12 * kj - 12 < 24
        )
        np.testing.assert_allclose(y[0, :, i, j], expected, rtol=1e-12, atol=1e-12)


def _ort_max_pool(x: np.ndarray, attributes: dict[str, object]) -> np.ndarray:
    import onnx
    import onnxruntime as ort
    from onnx import helper

    node = helper.make_node("MaxPool", ["x"], ["y"], **attributes)
    graph = helper.make_graph(
        [node],
        "pool",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("seed", range(6))
def test_max_pool_matches_onnx_runtime(seed: int) -> None:
    """Exactly ONNX Runtime's MaxPool (a maximum rounds nothing) over random ranks, kernels, strides,
    dilations, explicit pads and auto_pad."""
    rng = np.random.default_rng(seed)
    for _ in range(20):
        rank = int(rng.integers(1, 4))
        kernel = [int(rng.integers(1, 4)) for _ in range(rank)]
        auto_pad = str(rng.choice(["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]))
        dilations = [int(rng.integers(1, 3)) if auto_pad in ("NOTSET", "VALID") else 1 for _ in range(rank)]
        same = auto_pad.startswith("SAME")  # ONNX Runtime refuses SAME with a stride over the kernel
        strides = [int(rng.integers(1, (min(k, 2) if same else 2) + 1)) for k in kernel]
        attributes: dict[str, object] = {
            "kernel_shape": kernel,
            "strides": strides,
            "dilations": dilations,
            "auto_pad": auto_pad,
        }
        if auto_pad == "NOTSET":
            attributes["pads"] = [int(rng.integers(0, k)) for k in kernel * 2]
        shape = [2, 3, *(int(rng.integers((k - 1) * d + 1, 9)) for k, d in zip(kernel, dilations))]
        x = rng.standard_normal(shape).astype(np.float32)
        expected = _ort_max_pool(x, attributes)
        np.testing.assert_array_equal(max_pool(x.astype(np.float64), **attributes), expected.astype(np.float64))


@pytest.mark.parametrize(
    "attributes, outputs",
    [
        ({"kernel_shape": [2, 2], "ceil_mode": 1}, 1),
        ({"kernel_shape": [2, 2]}, 2),
        ({"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER", "dilations": [2, 2]}, 1),
    ],
)
def test_max_pool_leaves_indices_ceil_mode_and_dilated_same_to_onnx(
    attributes: dict[str, object], outputs: int
) -> None:
    assert not KERNELS["MaxPool"].handles(attributes, outputs)
    assert KERNELS["MaxPool"].handles({"kernel_shape": [2, 2]}, 1)

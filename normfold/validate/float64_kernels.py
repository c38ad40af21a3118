"""float64 kernels for the ops whose onnx reference kernels are slow, memory-hungry or wrong, in bounded chunks.

onnx's reference Conv builds a dilated kernel and a whole im2col matrix (a 1x960x10x10 Conv at dilation 12:
seconds and gigabytes), its grouped ConvTranspose reshapes the weight wrongly, and its BatchNormalization-9
blends batch statistics into inference. Here a convolution loops over kernel taps: for each tap, the input
positions it reads form a strided slice, and its contribution is one matmul over the channels of each group,
added into the output. The work is cut into blocks of output rows, batch, groups and channels so that no
temporary exceeds `chunk_bytes` (down to one row of one channel of one sample). Every kernel takes and
returns float64 arrays.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from types import EllipsisType
from typing import Any

import numpy as np

CHUNK_BYTES = 32 << 20
ITEM = 8  # bytes of a float64
SAME = ("SAME_UPPER", "SAME_LOWER")

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where a convolution's taps land, per spatial dim: output position o and input position i meet at
    tap t when i = o*stride + t*dilation - begin (Conv), o = i*stride + t*dilation - begin (ConvTranspose)."""

    kernel: Shape
    strides: Shape
    dilations: Shape
    begins: Shape
    out: Shape


def block_lengths(sizes: Sequence[int], unit: int, bound: int) -> list[int]:
    """Block lengths for nested dims (first shrunk first) so a block's bytes, unit * prod(blocks), stay <= bound.

    Later dims stay whole as long as they fit; a dim that does not fit even alone is cut to 1 and the next is cut.
    """
    blocks: list[int] = []
    for index, size in enumerate(sizes):
        rest = unit * math.prod(sizes[index + 1 :])
        if rest <= bound:
            return [*blocks, max(1, min(size, bound // max(rest, 1))), *sizes[index + 1 :]]
        blocks.append(1)
    return blocks


def block_slices(sizes: Sequence[int], blocks: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    """Every block of a grid of `sizes` cut into `blocks`, as a tuple of slices."""
    spans = [
        [slice(start, min(size, start + block)) for start in range(0, size, block)]
        for size, block in zip(sizes, blocks)
    ]
    return itertools.product(*spans)


def conv_geometry(
    x_shape: Shape,
    w_shape: Shape,
    auto_pad: str | bytes | None = None,
    dilations: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> Geometry:
    """Taps and output size of ONNX Conv (the same rules as pooling: ceil(in / stride) for SAME_*)."""
    rank = len(x_shape) - 2
    sizes, strides, dilations = x_shape[2:], _per_dim(strides, rank), _per_dim(dilations, rank)
    extents = [(k - 1) * d + 1 for k, d in zip(w_shape[2:], dilations)]
    mode = _text(auto_pad)
    if mode in SAME:
        out = [-(-i // s) for i, s in zip(sizes, strides)]
        totals = [max(0, (o - 1) * s + e - i) for o, s, e, i in zip(out, strides, extents, sizes)]
        begins = [t // 2 if mode == "SAME_UPPER" else t - t // 2 for t in totals]
    else:
        padding = [0] * (2 * rank) if mode == "VALID" or not pads else list(pads)
        begins = padding[:rank]
        out = [
            max(0, (i + padding[j] + padding[j + rank] - e) // s + 1)
            for j, (i, s, e) in enumerate(zip(sizes, strides, extents))
        ]
    return Geometry(tuple(w_shape[2:]), strides, dilations, tuple(begins), tuple(out))


def conv_transpose_geometry(
    x_shape: Shape,
    w_shape: Shape,
    auto_pad: str | bytes | None = None,
    dilations: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    output_padding: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
) -> Geometry:
    """Taps and output size of ONNX ConvTranspose, as its specification and onnx's reference compute them.

    With output_shape (or SAME_*, output = input * stride) the pads come from the total padding
    stride*(in-1) + output_padding + (k-1)*dilation + 1 - out, the odd one at the end for SAME_UPPER and at the
    start otherwise; explicit pads are then ignored, as the specification says.
    """
    rank = len(x_shape) - 2
    sizes, strides, dilations = x_shape[2:], _per_dim(strides, rank), _per_dim(dilations, rank)
    adjust = _per_dim(output_padding, rank, 0)
    full = [s * (i - 1) + a + (k - 1) * d + 1 for i, s, a, k, d in zip(sizes, strides, adjust, w_shape[2:], dilations)]
    mode = _text(auto_pad)
    if output_shape or mode in SAME:
        out = list(output_shape)[-rank:] if output_shape else [i * s for i, s in zip(sizes, strides)]
        totals = [f - o for f, o in zip(full, out)]
        begins = [t // 2 if mode == "SAME_UPPER" else t - t // 2 for t in totals]
    else:
        padding = [0] * (2 * rank) if mode == "VALID" or not pads else list(pads)
        begins = padding[:rank]
        out = [max(0, f - padding[j] - padding[j + rank]) for j, f in enumerate(full)]
    return Geometry(tuple(w_shape[2:]), strides, dilations, tuple(begins), tuple(int(o) for o in out))


def conv(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    auto_pad: str | bytes | None = None,
    dilations: Sequence[int] | None = None,
    group: int | None = None,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> np.ndarray:
    """ONNX Conv (1-D to N-D, any stride, dilation, pads, auto_pad, group), tap by tap; kernel_shape is w's."""
    geo = conv_geometry(x.shape, w.shape, auto_pad, dilations, pads, strides)
    groups = group or 1
    n, c, co = x.shape[0], x.shape[1], w.shape[0]
    y = np.zeros((n, groups, co // groups, *geo.out))
    xg = x.reshape(n, groups, c // groups, *x.shape[2:])
    _convolve(xg, w.reshape(groups, co // groups, c // groups, -1), y, geo, chunk_bytes, transposed=False)
    return _with_bias(y.reshape(n, co, *geo.out), b)


def conv_transpose(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    auto_pad: str | bytes | None = None,
    dilations: Sequence[int] | None = None,
    group: int | None = None,
    kernel_shape: Sequence[int] | None = None,
    output_padding: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> np.ndarray:
    """ONNX ConvTranspose (weight [C_in, C_out/group, k...]), tap by tap, every group at once."""
    geo = conv_transpose_geometry(x.shape, w.shape, auto_pad, dilations, pads, strides, output_padding, output_shape)
    groups = group or 1
    n, c, cog = x.shape[0], x.shape[1], w.shape[1]
    y = np.zeros((n, groups, cog, *geo.out))
    xg = x.reshape(n, groups, c // groups, *x.shape[2:])
    wg = w.reshape(groups, c // groups, cog, -1).transpose(0, 2, 1, 3)
    _convolve(xg, wg, y, geo, chunk_bytes, transposed=True)
    return _with_bias(y.reshape(n, cog * groups, *geo.out), b)


def _convolve(xg: np.ndarray, wg: np.ndarray, y: np.ndarray, geo: Geometry, chunk_bytes: int, transposed: bool) -> None:
    """Adds every tap of every block into y [n, groups, out/g, ...] from xg [n, groups, in/g, ...] and
    wg [groups, out/g, in/g, taps]. Blocks cut the positions iterated (output positions of a Conv, input
    positions of a ConvTranspose) along their first dim, then the batch, the groups and the channels."""
    n, groups, c_in = xg.shape[:3]
    c_out = wg.shape[1]
    positions = xg.shape[3:] if transposed else y.shape[3:]
    grid = [positions[0], n, groups, max(c_in, c_out)]
    blocks = block_lengths(grid, ITEM * math.prod(positions[1:]), chunk_bytes)
    for rows, batch, group_block, channels in block_slices(grid, blocks):
        if channels.start >= c_out:
            continue
        out_channels = slice(channels.start, min(channels.stop, c_out))
        for reads, writes, tap in _tap_slices(geo, rows, xg.shape[3:], transposed):
            for start in range(0, c_in, blocks[3]):
                in_channels = slice(start, min(c_in, start + blocks[3]))
                read = (batch, group_block, in_channels, *reads)
                written = (batch, group_block, out_channels, *writes)
                weights = wg[group_block, out_channels, in_channels, tap]
                y[written] += _contract(weights, xg[read])


def _tap_slices(geo: Geometry, rows: slice, sizes: Shape, transposed: bool) -> Iterator[tuple[list, list, int]]:
    """For each tap that lands anywhere: the input slices it reads, the output slices it writes, its index.

    The iterated positions q (rows `rows` of dim 0) meet positions q*stride + shift on the other side.
    """
    for tap, offsets in enumerate(np.ndindex(*geo.kernel)):
        reads, writes = [], []
        for dim, k in enumerate(offsets):
            span, limit = (sizes[dim], geo.out[dim]) if transposed else (geo.out[dim], sizes[dim])
            lo, hi = (rows.start, rows.stop) if dim == 0 else (0, span)
            shift, stride = k * geo.dilations[dim] - geo.begins[dim], geo.strides[dim]
            first, stop = _landing(lo, hi, shift, stride, limit)
            if stop == first:
                break
            iterated = slice(first, stop)
            landed = slice(first * stride + shift, (stop - 1) * stride + shift + 1, stride)
            reads.append(iterated if transposed else landed)
            writes.append(landed if transposed else iterated)
        else:
            yield reads, writes, tap


def _landing(lo: int, hi: int, shift: int, stride: int, limit: int) -> tuple[int, int]:
    """The positions q in [lo, hi) with 0 <= q*stride + shift < limit, as [first, stop)."""
    first = max(lo, -(shift // stride))
    stop = min(hi, (limit - 1 - shift) // stride + 1)
    return first, max(first, stop)


def _contract(weights: np.ndarray, source: np.ndarray) -> np.ndarray:
    """sum over c of weights[g, o, c] * source[n, g, c, ...] -> [n, g, o, ...], one matmul per (n, g)."""
    n, groups, channels, *positions = source.shape
    if channels == 1:
        return weights.reshape(1, groups, -1, *[1] * len(positions)) * source
    flat = np.matmul(weights, source.reshape(n, groups, channels, -1))
    return flat.reshape(n, groups, weights.shape[1], *positions)


def _with_bias(y: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    if b is not None:
        y += b.reshape(1, -1, *[1] * (y.ndim - 2))
    return y


def gemm(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray | None = None,
    *,
    alpha: float | None = None,
    beta: float | None = None,
    transA: int | None = None,
    transB: int | None = None,  # noqa: N803 - ONNX's names
    broadcast: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> np.ndarray:
    """ONNX Gemm: alpha * A' B' + beta * C (C broadcast to [M, N]), row block by row block."""
    a, b = (a.T if transA else a), (b.T if transB else b)
    alpha, beta = 1.0 if alpha is None else alpha, 1.0 if beta is None else beta
    (m, k), n = a.shape, b.shape[1]
    y = np.empty((m, n))
    spread = None if c is None or beta == 0 else np.broadcast_to(c, (m, n))
    (rows,) = block_lengths([m], ITEM * (k + n), chunk_bytes)
    for start in range(0, m, rows):
        part = y[start : start + rows]
        np.matmul(a[start : start + rows], b, out=part)
        part *= alpha
        if spread is not None:
            part += spread[start : start + rows] * beta
    return y


def matmul(a: np.ndarray, b: np.ndarray, *, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """ONNX MatMul (numpy's matmul semantics, N-D with broadcasting), block by block of leading batch dims."""
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    (m, k), n = a2.shape[-2:], b2.shape[-1]
    wide_a, wide_b = np.broadcast_to(a2, (*batch, m, k)), np.broadcast_to(b2, (*batch, k, n))
    y = np.empty((*batch, m, n))
    grid = [*batch, m]
    for block in block_slices(grid, block_lengths(grid, ITEM * (k + n), chunk_bytes)):
        lead, rows = block[:-1], block[-1]
        written = (*lead, rows)
        np.matmul(wide_a[written], wide_b[lead], out=y[written])
    if a.ndim == 1:
        y = y[..., 0, :]
    return y[..., 0] if b.ndim == 1 else y


def batch_normalization(
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    *,
    epsilon: float | None = None,
    momentum: float | None = None,
    training_mode: int | None = None,
    outputs: int = 1,
    spatial: int | None = None,
    is_test: int | None = None,
    consumed_inputs: Sequence[int] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> tuple[np.ndarray, ...]:
    """ONNX BatchNormalization, every version: inference, or batch statistics with training_mode=1 or more outputs.

    Training outputs are (Y, running mean, running var, batch mean, batch var)[:outputs], the running statistics
    updated as running * momentum + batch * (1 - momentum) (ONNX's momentum weighs the old value; default 0.9).
    A per-activation scale (spatial=0 of old opsets) normalizes over the batch axis alone. is_test,
    spatial and consumed_inputs are accepted and read from the shapes.
    """
    eps = float(np.float32(1e-5)) if epsilon is None else epsilon  # ONNX's default is the float32 1e-5
    shape = (1, -1, *[1] * (x.ndim - 2)) if scale.ndim == 1 else (1, *scale.shape)
    if not training_mode and outputs == 1:
        return (_normalize(x, scale, bias, mean, var, eps, shape),)
    axes = (0, *range(2, x.ndim)) if scale.ndim == 1 else (0,)
    batch_mean = x.mean(axis=axes)
    batch_var = _variance(x, batch_mean.reshape(shape), axes, chunk_bytes).reshape(batch_mean.shape)
    y = _normalize(x, scale, bias, batch_mean, batch_var, eps, shape)
    keep = 0.9 if momentum is None else momentum
    result = (y, mean * keep + batch_mean * (1 - keep), var * keep + batch_var * (1 - keep), batch_mean, batch_var)
    return result[:outputs]


def _normalize(
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
    shape: tuple[int, ...],
) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * scale + bias, in place on the output: no temporary of x's size."""
    y = np.subtract(x, mean.reshape(shape))
    y /= np.sqrt(var.reshape(shape) + eps)
    y *= scale.reshape(shape)
    y += bias.reshape(shape)
    return y


def _variance(x: np.ndarray, mean: np.ndarray, axes: tuple[int, ...], chunk_bytes: int) -> np.ndarray:
    """The biased variance over `axes`, with temporaries of at most chunk_bytes (blocks of the batch)."""
    (batch,) = block_lengths([x.shape[0]], ITEM * math.prod(x.shape[1:]), chunk_bytes)
    total = np.zeros(mean.shape)
    for start in range(0, x.shape[0], batch):
        deviation = x[start : start + batch] - mean
        deviation *= deviation
        total += deviation.sum(axis=axes, keepdims=True)
    return total / (x.size // mean.size)


def max_pool(
    x: np.ndarray,
    *,
    kernel_shape: Sequence[int],
    auto_pad: str | bytes | None = None,
    dilations: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    **_: Any,
) -> np.ndarray:
    """ONNX MaxPool (floor mode, one output): the maximum over kernel taps, one strided slice per tap.

    onnx's reference MaxPool loops in Python over output positions (2 s for ResNet-18's one pool); padding
    is -inf, so a padded position never wins.
    """
    geo = conv_geometry(x.shape, (1, 1, *kernel_shape), auto_pad, dilations, pads, strides)
    spans = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(geo.out, geo.strides, geo.kernel, geo.dilations)]
    padded = np.full((*x.shape[:2], *(max(span, b + i) for span, b, i in zip(spans, geo.begins, x.shape[2:]))), -np.inf)
    inside: tuple[EllipsisType | slice, ...] = (..., *(slice(b, b + i) for b, i in zip(geo.begins, x.shape[2:])))
    padded[inside] = x
    y = np.full((*x.shape[:2], *geo.out), -np.inf)
    for taps in itertools.product(*(range(k) for k in geo.kernel)):
        window: tuple[EllipsisType | slice, ...] = (
            ...,
            *(
                slice(t * d, t * d + (o - 1) * s + 1, s)
                for t, d, o, s in zip(taps, geo.dilations, geo.out, geo.strides)
            ),
        )
        np.maximum(y, padded[window], out=y)
    return y


def _max_pool_shapes(shapes: list[Shape | None], attributes: dict[str, Any], outputs: int) -> list[Shape]:
    x, kernel = required(shapes[0]), tuple(attributes["kernel_shape"])
    geo = conv_geometry(x, (1, 1, *kernel), *(attributes.get(k) for k in ("auto_pad", "dilations", "pads", "strides")))
    return [(*x[:2], *geo.out)]


def required(shape: Shape | None) -> Shape:
    """The shape of an input the op requires: only optional inputs are absent (None) in a valid node."""
    assert shape is not None, "a required input is absent"
    return shape


def _per_dim(values: Sequence[int] | None, rank: int, default: int = 1) -> tuple[int, ...]:
    return tuple(values) if values else (default,) * rank


def _text(value: str | bytes | None) -> str:
    if value is None:
        return "NOTSET"
    return value.decode() if isinstance(value, bytes) else value


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A kernel as the executor calls it, and the shapes it will produce (to check them against a budget first).

    run(inputs, attributes, output count, chunk_bytes) -> outputs; output_shapes(input shapes, attributes,
    output count) -> output shapes. Absent optional inputs are None.
    """

    run: Callable[[list[Any], dict[str, Any], int, int], tuple[np.ndarray, ...]]
    output_shapes: Callable[[list[Shape | None], dict[str, Any], int], list[Shape]]
    handles: Callable[[dict[str, Any], int], bool] = lambda attributes, outputs: True  # else onnx's evaluator
    # Inputs the kernel reads a block at a time and widens there (exactly: numpy promotes float32 and float16 to
    # float64 in the product): a weight given in its own dtype is never widened whole.
    blockwise_inputs: frozenset[int] = frozenset()


def matmul_shape(a: Shape, b: Shape) -> Shape:
    """The shape of numpy's / ONNX's matmul of arrays of these shapes."""
    a2, b2 = ((1, *a) if len(a) == 1 else a), ((*b, 1) if len(b) == 1 else b)
    shape = (*np.broadcast_shapes(a2[:-2], b2[:-2]), a2[-2], b2[-1])
    shape = shape[:-2] + shape[-1:] if len(a) == 1 else shape
    return shape[:-1] if len(b) == 1 else shape


def _conv_shapes(shapes: list[Shape | None], attributes: dict[str, Any], outputs: int) -> list[Shape]:
    x, w = required(shapes[0]), required(shapes[1])
    geo = conv_geometry(x, w, *(attributes.get(k) for k in ("auto_pad", "dilations", "pads", "strides")))
    return [(x[0], w[0], *geo.out)]


def _conv_transpose_shapes(shapes: list[Shape | None], attributes: dict[str, Any], outputs: int) -> list[Shape]:
    x, w = required(shapes[0]), required(shapes[1])
    names = ("auto_pad", "dilations", "pads", "strides", "output_padding", "output_shape")
    geo = conv_transpose_geometry(x, w, *(attributes.get(k) for k in names))
    return [(x[0], w[1] * (attributes.get("group") or 1), *geo.out)]


def _gemm_shapes(shapes: list[Shape | None], attributes: dict[str, Any], outputs: int) -> list[Shape]:
    a, b = required(shapes[0]), required(shapes[1])
    return [(a[1] if attributes.get("transA") else a[0], b[0] if attributes.get("transB") else b[1])]


def _batch_normalization_shapes(shapes: list[Shape | None], attributes: dict[str, Any], outputs: int) -> list[Shape]:
    return [required(shapes[0]), *(required(shapes[1]) for _ in range(outputs - 1))]


KERNELS: dict[str, Kernel] = {
    "Conv": Kernel(
        lambda i, a, o, chunk: (conv(*i, **a, chunk_bytes=chunk),), _conv_shapes, blockwise_inputs=frozenset({1})
    ),
    "ConvTranspose": Kernel(
        lambda i, a, o, chunk: (conv_transpose(*i, **a, chunk_bytes=chunk),),
        _conv_transpose_shapes,
        blockwise_inputs=frozenset({1}),
    ),
    "Gemm": Kernel(lambda i, a, o, chunk: (gemm(*i, **a, chunk_bytes=chunk),), _gemm_shapes),
    "MatMul": Kernel(
        lambda i, a, o, chunk: (matmul(*i, **a, chunk_bytes=chunk),),
        lambda s, a, o: [matmul_shape(required(s[0]), required(s[1]))],
    ),
    "MaxPool": Kernel(
        lambda i, a, o, chunk: (max_pool(*i, **a),),
        _max_pool_shapes,
        # Indices, ceil mode and SAME padding with dilation (where ONNX Runtime departs from the
        # spec) stay with onnx's evaluator
        lambda a, o: (
            o == 1
            and not a.get("ceil_mode")
            and (_text(a.get("auto_pad")) not in SAME or set(a.get("dilations") or [1]) == {1})
        ),
    ),
    "BatchNormalization": Kernel(
        lambda i, a, o, chunk: batch_normalization(*i, **a, outputs=o, chunk_bytes=chunk), _batch_normalization_shapes
    ),
}

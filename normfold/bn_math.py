"""The arithmetic of folding an inference BatchNormalization into a linear layer, in float64.

Inference BN is a per-channel affine map  z = s * y + t  with
    s = gamma / sqrt(var + eps),   t = beta - s * mean.
Backward (BN after the layer, y = W x + b):   W' = s (.) W on output channels,   b' = s * b + t.
Forward (BN before the layer, x = s * u + t):  W' = W (.) s on input channels,     b' = b + W t.
Every folded tensor is computed here in float64 and rounded once to the weight's dtype.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np

from normfold.mapped_pages import release_pages


@dataclasses.dataclass(frozen=True)
class Affine:
    """Per-channel z = scale * y + shift, in float64."""

    scale: np.ndarray
    shift: np.ndarray


def bn_affine(gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float) -> Affine:
    """The inference BatchNormalization as an affine map (variance must be > -eps)."""
    scale = _f64(gamma) / np.sqrt(_f64(var) + np.float64(eps))
    return Affine(scale, _f64(beta) - scale * _f64(mean))


def out_channels(weight_shape: tuple[int, ...], layout: str, group: int) -> int:
    """Number of output channels the weight produces.

    The layout says how a weight's axes map to channels:
      "conv":      Conv weight      [C_out, C_in/g, k...]
      "convt":     ConvTranspose    [C_in, C_out/g, k...]
      "kn":        MatMul B / Gemm B with transB=0, [K, N]
      "nk":        Gemm B with transB=1, [N, K]
    """
    return {"conv": weight_shape[0], "convt": weight_shape[1] * group, "kn": weight_shape[-1], "nk": weight_shape[0]}[
        layout
    ]


def in_channels(weight_shape: tuple[int, ...], layout: str, group: int) -> int:
    """Number of input channels the weight consumes."""
    return {"conv": weight_shape[1] * group, "convt": weight_shape[0], "kn": weight_shape[0], "nk": weight_shape[-1]}[
        layout
    ]


Factor = Callable[[slice], np.ndarray]


def output_factor(shape: tuple[int, ...], scale: np.ndarray, layout: str, group: int = 1) -> Factor:
    """Rows -> broadcastable factor multiplying each weight element by scale[its output channel]."""
    spatial = (1,) * (len(shape) - 2)
    if layout == "conv":
        column: np.ndarray = scale.reshape((-1, 1) + spatial)
        return lambda rows: column[rows]
    if layout == "convt":
        c_in, c_out_g = shape[0], shape[1]

        def grouped(rows: slice) -> np.ndarray:
            group_of_in = np.arange(c_in)[rows] // (c_in // group)
            return scale[group_of_in[:, None] * c_out_g + np.arange(c_out_g)[None, :]].reshape((-1, c_out_g) + spatial)

        return grouped
    if layout == "kn":
        row = scale.reshape(1, -1)
        return lambda rows: row
    column = scale.reshape(-1, 1)
    return lambda rows: column[rows]


def input_factor(shape: tuple[int, ...], scale: np.ndarray, layout: str, group: int = 1) -> Factor:
    """Rows -> broadcastable factor multiplying each weight element by scale[its input channel]."""
    if layout == "conv":
        c_out, c_in_g = shape[0], shape[1]
        spatial = (1,) * (len(shape) - 2)

        def grouped(rows: slice) -> np.ndarray:
            group_of_out = np.arange(c_out)[rows] // (c_out // group)
            return scale[group_of_out[:, None] * c_in_g + np.arange(c_in_g)[None, :]].reshape((-1, c_in_g) + spatial)

        return grouped
    if layout == "kn":
        column = scale.reshape(-1, 1)
        return lambda rows: column[rows]
    if layout == "nk":
        row = scale.reshape(1, -1)
        return lambda rows: row
    raise ValueError(f"forward folding is not defined for layout {layout!r}")


def input_shift_response(weight: np.ndarray, shift: np.ndarray, layout: str, group: int = 1) -> np.ndarray:
    """The layer's per-output-channel response to a constant per-input-channel shift (float64).

    Computed over row blocks of the weight so that no float64 copy of a large weight is held.
    """
    factor = input_factor(weight.shape, shift, layout, group)
    if layout == "kn":
        total = np.zeros(weight.shape[1])
        for rows in _row_blocks(weight):
            total += (_read(weight, rows) * factor(rows)).sum(axis=0)
        return total
    parts = [
        (_read(weight, rows) * factor(rows)).reshape(rows.stop - rows.start, -1).sum(axis=1)
        for rows in _row_blocks(weight)
    ]
    return np.concatenate(parts)


def scale_and_round(weight: np.ndarray, factor: Factor, dtype: np.dtype) -> tuple[np.ndarray | None, str]:
    """weight * factor computed in float64 over row blocks and rounded once to `dtype`.

    Returns (array, "") or (None, reason) when rounding would lose accuracy (see `check_scale`).
    Large weights use a thread per core (numpy releases the GIL).
    """
    out = np.empty(weight.shape, dtype=dtype)
    reason = _scale_blocks(weight, factor, dtype, out)
    return (None, reason) if reason else (out, "")


def check_scale(weight: np.ndarray, factor: Factor, dtype: np.dtype) -> str:
    """Why weight * factor cannot be rounded to `dtype` ('' if it can), without keeping the result.

    Rounding loses accuracy when a finite value overflows the dtype, or when a normal factor pushes a
    weight from the normal range into subnormals, where it keeps less than the dtype's precision. A
    factor that is itself subnormal in the dtype (a dead channel: BN scale 3.4e-39 in float32) does not
    count: the original model multiplies by that same subnormal value, so it has no more precision there.
    """
    return _scale_blocks(weight, factor, dtype, None)


def rounded_parts(parts: Sequence[tuple[np.ndarray, Factor]], dtype: np.dtype) -> Iterator[np.ndarray]:
    """Each (rows of a weight, their factor) part's product in float64, rounded once to `dtype`, in order, the rows'
    mapped pages released: scale_and_round's arithmetic without its range checks, for a product check_scale has
    passed. Several parts use a thread per core, a few parts in memory at a time; one part, no thread pool."""

    def rounded(part: tuple[np.ndarray, Factor]) -> np.ndarray:
        weight, factor = part
        out = np.empty(weight.shape, dtype)
        # one pass: numpy widens each buffer of the weight to float64, multiplies and rounds as it stores
        # (float32 to float64 is exact, the product is float64's, the store rounds once: the bytes of the
        # two-step product), ten times faster than a float64 copy of the rows multiplied, then rounded
        with np.errstate(over="ignore"):
            np.multiply(weight, factor(slice(0, weight.shape[0] if weight.ndim else 1)), out=out, dtype=np.float64)
        release_pages(weight)
        return out

    workers = _workers(len(parts))
    if workers == 1:
        yield from map(rounded, parts)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for first in range(0, len(parts), workers):
            yield from pool.map(rounded, parts[first : first + workers])


def _workers(blocks: int) -> int:
    return max(1, min(os.cpu_count() or 1, 8, blocks))


def _scale_blocks(weight: np.ndarray, factor: Factor, dtype: np.dtype, out: np.ndarray | None) -> str:
    """Scale every row block (into `out` when given); the reason rounding to `dtype` fails, or ''."""
    limits = _limits(np.dtype(dtype))
    blocks = _row_blocks(weight)
    if len(blocks) == 1:  # most weights, and every bias: no pool, no sums
        overflow, biggest, pushed = _scale_block(weight, factor, out, blocks[0], *limits)
    else:
        if blocks:
            with ThreadPoolExecutor(max_workers=_workers(len(blocks))) as pool:
                counts = list(pool.map(lambda rows: _scale_block(weight, factor, out, rows, *limits), blocks))
        else:
            counts = []
        overflow, pushed = sum(c[0] for c in counts), sum(c[2] for c in counts)
        biggest = max((c[1] for c in counts), default=0.0)
    if not overflow and not pushed:
        return ""
    name = np.dtype(dtype).name
    if overflow:
        return f"folded values overflow {name} ({overflow} values, largest |{biggest:.4g}| > max {limits[0]:.4g})"
    if pushed:
        return (
            f"folding pushes {pushed} weights below {name}'s smallest normal {limits[1]:.3g}, "
            "losing precision beyond the dtype's rounding"
        )
    return ""


def _scale_block(
    weight: np.ndarray, factor: Factor, out: np.ndarray | None, rows: slice, largest_allowed: float, tiny: float
) -> tuple[int, float, int]:
    """Fill out[rows] (if out is given); return (overflowing values, largest of them, weights pushed into subnormals)."""
    if out is None and _within_range(weight[rows], factor(rows), largest_allowed, tiny):
        release_pages(weight[rows])
        return 0, 0.0, 0
    exact = _f64(weight[rows])
    exact *= factor(rows)
    if out is not None:
        with np.errstate(over="ignore"):
            out[rows] = exact
    if not exact.size:
        return 0, 0.0, 0
    magnitude = np.abs(exact, out=exact)
    overflow, biggest = 0, 0.0
    if float(magnitude.max()) > largest_allowed:
        bad = np.isfinite(magnitude) & (magnitude > largest_allowed)  # an Inf weight stays Inf: not an overflow
        if bad.any():
            overflow, biggest = int(bad.sum()), float(magnitude[bad].max())
    pushed = 0
    if float(magnitude.min()) >= tiny:  # no value in (0, tiny): nothing pushed into subnormals
        release_pages(weight[rows])
        return overflow, biggest, pushed
    small = (magnitude < tiny) & (magnitude > 0)
    if small.any():
        normal_factor = np.broadcast_to(np.abs(factor(rows)) >= tiny, small.shape)
        pushed = int((small & (np.abs(_f64(weight[rows])) >= tiny) & normal_factor).sum())
    release_pages(weight[rows])
    return overflow, biggest, pushed


def _within_range(block: np.ndarray, factor: np.ndarray, largest_allowed: float, tiny: float) -> bool:
    """Whether every |block * factor| (in float64) lies in [tiny, largest_allowed], found without the product.

    Rounding is monotonic, so among the elements one factor value multiplies, the largest (smallest) |product|
    is that of the largest (smallest) |weight|: the extremes of |block| over the axes the factor broadcasts
    along, times |factor|, are exactly the extremes `_scale_block` would find, at a third of its memory traffic
    (|block| in its own dtype, no float64 copy). False (so the exact count runs) for a zero, NaN or Inf anywhere.
    """
    if not block.size or block.dtype.kind != "f" or factor.ndim > block.ndim:
        return False
    shape = (1,) * (block.ndim - factor.ndim) + factor.shape
    if any(f != 1 and f != b for f, b in zip(shape, block.shape)):
        return False
    axes = tuple(i for i, (f, b) in enumerate(zip(shape, block.shape)) if f == 1 and b != 1)
    magnitude = np.abs(block)
    scale = np.abs(factor.reshape(shape))
    largest = float((magnitude.max(axis=axes, keepdims=True).astype(np.float64) * scale).max())
    if not largest <= largest_allowed:  # also NaN
        return False
    return float((magnitude.min(axis=axes, keepdims=True).astype(np.float64) * scale).min()) >= tiny


def round_once(exact: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray | None, str]:
    """Round small float64 values (biases) to `dtype`; (None, reason) if a finite value overflows."""
    return scale_and_round(np.atleast_1d(exact), lambda rows: np.ones(1), dtype)


# Elements per block of rows when a weight is scaled or its rounding checked: a block's float64 working copy,
# masks and mapped pages (about 40 MB for 1M float32 elements, per thread) are what a large weight costs.
ROW_BLOCK_ELEMENTS = 1 << 20


def _row_blocks(array: np.ndarray) -> list[slice]:
    """Slices of axis 0 holding about ROW_BLOCK_ELEMENTS elements each."""
    rows = array.shape[0] if array.ndim else 1
    if array.size <= ROW_BLOCK_ELEMENTS and rows <= ROW_BLOCK_ELEMENTS:  # one block (what the loop below gives)
        return [slice(0, rows)] if rows else []
    per_row = max(1, array.size // max(rows, 1))
    step = max(1, ROW_BLOCK_ELEMENTS // per_row)
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


@functools.cache
def _limits(dtype: np.dtype) -> tuple[float, float]:
    """(largest finite value, smallest normal) of a float dtype, bfloat16 included."""
    info = ml_dtypes.finfo(dtype) if dtype == ml_dtypes.bfloat16 else np.finfo(dtype)
    return float(info.max), float(info.smallest_normal)


def _read(weight: np.ndarray, rows: slice) -> np.ndarray:
    """Rows of a weight in float64, their mapped pages released."""
    exact = _f64(weight[rows])
    release_pages(weight[rows])
    return exact


def _f64(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).astype(np.float64)

"""The arithmetic of folding an inference BatchNormalization into a linear layer, in float64.

Inference BN is a per-channel affine map  z = s * y + t  with
    s = gamma / sqrt(var + eps),   t = beta - s * mean.
Backward (BN after the layer, y = W x + b):   W' = s (.) W on output channels,   b' = s * b + t.
Forward (BN before the layer, x = s * u + t):  W' = W (.) s on input channels,     b' = b + W t.
Every folded tensor is computed here in float64 and rounded once to the weight's dtype.
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np

# How a weight's axes map to channels.
#   "conv":      Conv weight      [C_out, C_in/g, k...]
#   "convt":     ConvTranspose    [C_in, C_out/g, k...]
#   "kn":        MatMul B / Gemm B with transB=0, [K, N]
#   "nk":        Gemm B with transB=1, [N, K]
LAYOUTS = ("conv", "convt", "kn", "nk")


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
    """Number of output channels the weight produces."""
    return {"conv": weight_shape[0], "convt": weight_shape[1] * group, "kn": weight_shape[-1], "nk": weight_shape[0]}[layout]


def in_channels(weight_shape: tuple[int, ...], layout: str, group: int) -> int:
    """Number of input channels the weight consumes."""
    return {"conv": weight_shape[1] * group, "convt": weight_shape[0], "kn": weight_shape[0], "nk": weight_shape[-1]}[layout]


def scale_outputs(weight: np.ndarray, scale: np.ndarray, layout: str, group: int = 1) -> np.ndarray:
    """W' with every output channel c multiplied by scale[c] (float64)."""
    w = _f64(weight)
    if layout == "conv":
        return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    if layout == "convt":
        c_in, c_out_g = w.shape[0], w.shape[1]
        grouped = w.reshape((group, c_in // group, c_out_g) + w.shape[2:])
        factor = scale.reshape((group, 1, c_out_g) + (1,) * (w.ndim - 2))
        return (grouped * factor).reshape(w.shape)
    if layout == "kn":
        return w * scale.reshape(1, -1)
    return w * scale.reshape(-1, 1)


def scale_inputs(weight: np.ndarray, scale: np.ndarray, layout: str, group: int = 1) -> np.ndarray:
    """W' with every input channel c multiplied by scale[c] (float64)."""
    w = _f64(weight)
    if layout == "conv":
        return w * _conv_input_factor(scale, w.shape, group)
    if layout == "kn":
        return w * scale.reshape(-1, 1)
    if layout == "nk":
        return w * scale.reshape(1, -1)
    raise ValueError(f"forward folding is not defined for layout {layout!r}")


def input_shift_response(weight: np.ndarray, shift: np.ndarray, layout: str, group: int = 1) -> np.ndarray:
    """The layer's per-output-channel response to a constant per-input-channel shift (float64)."""
    w = _f64(weight)
    if layout == "conv":
        spatial = tuple(range(1, w.ndim))
        return (w * _conv_input_factor(shift, w.shape, group)).sum(axis=spatial)
    if layout == "kn":
        return shift @ w
    if layout == "nk":
        return w @ shift
    raise ValueError(f"forward folding is not defined for layout {layout!r}")


def _conv_input_factor(per_input: np.ndarray, shape: tuple[int, ...], group: int) -> np.ndarray:
    """Broadcastable [C_out, C_in/g, 1...] array holding per_input[input channel of (co, j)]."""
    c_out, c_in_g = shape[0], shape[1]
    group_of_out = np.arange(c_out) // (c_out // group)
    index = group_of_out[:, None] * c_in_g + np.arange(c_in_g)[None, :]
    return per_input[index].reshape((c_out, c_in_g) + (1,) * (len(shape) - 2))


def round_once(exact: np.ndarray, dtype: np.dtype, source: np.ndarray | None = None) -> tuple[np.ndarray | None, str]:
    """Round float64 values to `dtype`; return (array, "") or (None, reason) when that loses accuracy.

    Refused: a finite value that overflows the dtype, and (when `source` is the unfolded weight)
    a weight pushed from the normal range into subnormals, where it keeps less than the dtype's precision.
    """
    info = ml_dtypes.finfo(dtype) if dtype == ml_dtypes.bfloat16 else np.finfo(dtype)
    with np.errstate(over="ignore"):
        rounded = exact.astype(dtype)
    overflow = np.isfinite(exact) & ~np.isfinite(rounded.astype(np.float64))
    if overflow.any():
        biggest = float(np.abs(exact[overflow]).max())
        return None, (
            f"folded values overflow {np.dtype(dtype).name} ({int(overflow.sum())} values, largest "
            f"|{biggest:.4g}| > max {float(info.max):.4g})"
        )
    if source is not None:
        tiny = float(info.smallest_normal)
        src = np.abs(_f64(source))
        pushed = (np.abs(exact) < tiny) & (exact != 0) & (src >= tiny)
        if pushed.any():
            return None, (
                f"folding pushes {int(pushed.sum())} weights below {np.dtype(dtype).name}'s smallest normal "
                f"{tiny:.3g}, losing precision beyond the dtype's rounding"
            )
    return rounded, ""


def _f64(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).astype(np.float64)

"""`normfold.bn_math`, case by case: the BN affine map, channel counts and factors per weight layout, rounding
once (with its overflow and subnormal refusals), and the response to an input shift; expected values by hand
or from plain numpy."""

from __future__ import annotations

from collections.abc import Callable

import ml_dtypes
import numpy as np
import pytest

from normfold.bn_math import (
    bn_affine,
    in_channels,
    input_factor,
    input_shift_response,
    out_channels,
    output_factor,
    round_once,
    scale_and_round,
)

Factor = Callable[[slice], np.ndarray]
OVERFLOW32 = "folded values overflow float32 ({} values, largest |{}| > max 3.403e+38)"
PUSHED = "folding pushes {} weights below {}'s smallest normal {}, losing precision beyond the dtype's rounding"


def f64(*values: float) -> np.ndarray:
    """A float64 array of the values."""
    return np.array(values, np.float64)


AFFINE_CASES = [
    pytest.param(f64(2, 3), f64(1, -1), f64(0.5, 2), f64(3, 8), 1.0, f64(1, 1), f64(0.5, -3), id="unit-scale"),
    pytest.param(
        f64(1, -2),
        f64(0, 0.5),
        f64(1, -1),
        f64(0.25, 0),
        0.0,
        f64(2, -np.inf),
        f64(-2, -np.inf),
        id="zero-variance-no-epsilon",
    ),
    pytest.param(f64(1), f64(0), f64(3), f64(0), 0.25, f64(2), f64(-6), id="epsilon-alone"),
    pytest.param(f64(-4), f64(1), f64(-0.5), f64(15), 1.0, f64(-1), f64(0.5), id="negative-gamma"),
    pytest.param(
        np.array([0.1], np.float16),
        np.array([0.5], np.float16),
        np.array([0.0], np.float16),
        np.array([0.0], np.float16),
        1.0,
        f64(float(np.float16(0.1))),
        f64(0.5),
        id="float16-widened-exactly",
    ),
]


@pytest.mark.parametrize("gamma, beta, mean, var, eps, scale, shift", AFFINE_CASES)
def test_bn_affine(
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
    scale: np.ndarray,
    shift: np.ndarray,
) -> None:
    """scale = gamma / sqrt(var + eps) and shift = beta - scale * mean, in float64."""
    with np.errstate(divide="ignore", invalid="ignore"):
        affine = bn_affine(gamma, beta, mean, var, eps)
    assert affine.scale.dtype == affine.shift.dtype == np.float64
    np.testing.assert_array_equal(affine.scale, scale)
    np.testing.assert_array_equal(affine.shift, shift)


CHANNEL_CASES = [
    pytest.param((8, 3, 3, 3), "conv", 1, 8, 3, id="conv"),
    pytest.param((8, 2, 3, 3), "conv", 4, 8, 8, id="conv-group4"),
    pytest.param((6, 1, 3, 3), "conv", 6, 6, 6, id="conv-depthwise"),
    pytest.param((4, 3, 2, 2), "convt", 1, 3, 4, id="convt"),
    pytest.param((4, 3, 2, 2), "convt", 2, 6, 4, id="convt-group2"),
    pytest.param((5, 7), "kn", 1, 7, 5, id="kn"),
    pytest.param((7, 5), "nk", 1, 7, 5, id="nk"),
]


@pytest.mark.parametrize("shape, layout, group, outputs, inputs", CHANNEL_CASES)
def test_channel_counts(shape: tuple[int, ...], layout: str, group: int, outputs: int, inputs: int) -> None:
    """out_channels and in_channels read the layout's axes, times the group where the axis is per group."""
    assert (out_channels(shape, layout, group), in_channels(shape, layout, group)) == (outputs, inputs)


@pytest.mark.parametrize("count", [pytest.param(out_channels, id="out"), pytest.param(in_channels, id="in")])
def test_channel_counts_of_an_unknown_layout_raise(count: Callable[[tuple[int, ...], str, int], int]) -> None:
    """A layout other than conv, convt, kn and nk is a KeyError naming it."""
    with pytest.raises(KeyError, match="'ck'"):
        count((2, 2), "ck", 1)


SCALE4 = f64(10, 20, 30, 40)
OUTPUT_FACTOR_CASES = [
    pytest.param((4, 3, 1, 1), SCALE4, "conv", 1, slice(0, 4), f64(10, 20, 30, 40).reshape(4, 1, 1, 1), id="conv"),
    pytest.param((4, 3, 1, 1), SCALE4, "conv", 1, slice(1, 3), f64(20, 30).reshape(2, 1, 1, 1), id="conv-rows"),
    pytest.param((4, 1, 3), SCALE4, "conv", 4, slice(0, 4), f64(10, 20, 30, 40).reshape(4, 1, 1), id="conv1d-dw"),
    pytest.param(
        (2, 4, 1, 1),
        SCALE4,
        "convt",
        1,
        slice(0, 2),
        np.array([[10, 20, 30, 40]] * 2, float)[..., None, None],
        id="convt",
    ),
    pytest.param(
        (4, 2, 1, 1),
        SCALE4,
        "convt",
        2,
        slice(0, 4),
        np.array([[10, 20], [10, 20], [30, 40], [30, 40]], float)[..., None, None],
        id="convt-group2",
    ),
    pytest.param(
        (4, 2, 1, 1),
        SCALE4,
        "convt",
        2,
        slice(1, 3),
        np.array([[10, 20], [30, 40]], float)[..., None, None],
        id="convt-group2-rows",
    ),
    pytest.param(
        (4, 1, 2), SCALE4, "convt", 4, slice(0, 4), f64(10, 20, 30, 40).reshape(4, 1, 1), id="convt1d-depthwise"
    ),
    pytest.param((3, 4), SCALE4, "kn", 1, slice(0, 2), np.array([[10, 20, 30, 40]], float), id="kn-any-rows"),
    pytest.param((4, 3), SCALE4, "nk", 1, slice(2, 4), f64(30, 40).reshape(2, 1), id="nk-rows"),
]


@pytest.mark.parametrize("shape, scale, layout, group, rows, expected", OUTPUT_FACTOR_CASES)
def test_output_factor(
    shape: tuple[int, ...], scale: np.ndarray, layout: str, group: int, rows: slice, expected: np.ndarray
) -> None:
    """The factor of weight rows `rows`: scale[output channel of each element], broadcastable to the rows."""
    np.testing.assert_array_equal(output_factor(shape, scale, layout, group)(rows), expected)


INPUT_FACTOR_CASES = [
    pytest.param(
        (2, 4, 1, 1),
        SCALE4,
        "conv",
        1,
        slice(0, 2),
        np.array([[10, 20, 30, 40]] * 2, float)[..., None, None],
        id="conv",
    ),
    pytest.param(
        (6, 2, 1, 1),
        SCALE4,
        "conv",
        2,
        slice(0, 6),
        np.array([[10, 20]] * 3 + [[30, 40]] * 3, float)[..., None, None],
        id="conv-group2",
    ),
    pytest.param(
        (6, 2, 1, 1),
        SCALE4,
        "conv",
        2,
        slice(2, 4),
        np.array([[10, 20], [30, 40]], float)[..., None, None],
        id="conv-group2-rows",
    ),
    pytest.param(
        (4, 1, 3, 3), SCALE4, "conv", 4, slice(0, 4), f64(10, 20, 30, 40).reshape(4, 1, 1, 1), id="conv-depthwise"
    ),
    pytest.param((4, 3), SCALE4, "kn", 1, slice(1, 3), f64(20, 30).reshape(2, 1), id="kn-rows"),
    pytest.param((3, 4), SCALE4, "nk", 1, slice(0, 1), np.array([[10, 20, 30, 40]], float), id="nk-any-rows"),
]


@pytest.mark.parametrize("shape, scale, layout, group, rows, expected", INPUT_FACTOR_CASES)
def test_input_factor(
    shape: tuple[int, ...], scale: np.ndarray, layout: str, group: int, rows: slice, expected: np.ndarray
) -> None:
    """The factor of weight rows `rows`: scale[input channel of each element], broadcastable to the rows."""
    np.testing.assert_array_equal(input_factor(shape, scale, layout, group)(rows), expected)


def test_input_factor_of_convt_is_refused() -> None:
    """Forward folding into a ConvTranspose is not defined: ValueError with the layout's name."""
    with pytest.raises(ValueError, match="^forward folding is not defined for layout 'convt'$"):
        input_factor((4, 2, 1, 1), SCALE4, "convt")


def _times(values: np.ndarray) -> Factor:
    """A factor giving `values` (broadcast over whatever rows are asked)."""
    return lambda rows: values


W32 = np.array([[0.1, -2.5], [3.0, 7.0]], np.float32)
THIRD = np.array([[1 / 3], [1 / 7]])
ROUND_CASES = [
    pytest.param(
        W32,
        _times(THIRD),
        np.float32,
        (W32.astype(np.float64) * THIRD).astype(np.float32),
        "",
        id="float32-rounded-once",
    ),
    pytest.param(
        W32,
        _times(THIRD),
        np.float16,
        (W32.astype(np.float64) * THIRD).astype(np.float16),
        "",
        id="float32-weight-to-float16",
    ),
    pytest.param(
        np.array([1e38, 2e38, 1.0], np.float32),
        _times(f64(4.0)),
        np.float32,
        None,
        OVERFLOW32.format(2, "8e+38"),
        id="float32-overflow",
    ),
    pytest.param(
        np.array([np.inf, 1.0], np.float32),
        _times(f64(2.0)),
        np.float32,
        np.array([np.inf, 2.0], np.float32),
        "",
        id="infinite-weight-is-not-an-overflow",
    ),
    pytest.param(
        np.array([1e-30, 1.0], np.float32),
        _times(f64(1e-10)),
        np.float32,
        None,
        PUSHED.format(1, "float32", "1.18e-38"),
        id="float32-pushed-into-subnormals",
    ),
    pytest.param(
        np.array([1e-40, 1.0], np.float32),
        _times(f64(0.5)),
        np.float32,
        np.array([np.float32(1e-40) / 2, 0.5], np.float32),
        "",
        id="already-subnormal-is-kept",
    ),
    pytest.param(
        np.array([1e-30, -1.0], np.float32),
        _times(f64(0.0)),
        np.float32,
        np.zeros(2, np.float32),
        "",
        id="exact-zero-is-not-subnormal",
    ),
    pytest.param(
        np.array([1e38, 1e-30], np.float32),
        _times(f64(10.0, 1e-10)),
        np.float32,
        None,
        OVERFLOW32.format(1, "1e+39"),
        id="overflow-reported-before-subnormal",
    ),
    pytest.param(
        np.array([1000, 2], np.float16),
        _times(f64(100.0)),
        np.float16,
        None,
        "folded values overflow float16 (1 values, largest |1e+05| > max 6.55e+04)",
        id="float16-overflow",
    ),
    pytest.param(
        np.array([0.001, 1], np.float16),
        _times(f64(0.01)),
        np.float16,
        None,
        PUSHED.format(1, "float16", "6.1e-05"),
        id="float16-pushed-into-subnormals",
    ),
    pytest.param(
        np.array([3e38, 1], ml_dtypes.bfloat16),
        _times(f64(2.0)),
        ml_dtypes.bfloat16,
        None,
        "folded values overflow bfloat16 (1 values, largest |6.008e+38| > max 3.39e+38)",
        id="bfloat16-overflow",
    ),
]


def _assert_rounded(result: np.ndarray | None, why: str, expected: np.ndarray | None, reason: str, dtype: type) -> None:
    """Exactly this reason, and the expected array in the dtype (or no array)."""
    assert why == reason
    if expected is None:
        assert result is None
    else:
        assert result is not None and result.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("weight, factor, dtype, expected, reason", ROUND_CASES)
def test_scale_and_round(
    weight: np.ndarray, factor: Factor, dtype: type, expected: np.ndarray | None, reason: str
) -> None:
    """weight * factor in float64, rounded once to dtype; or no array and exactly this reason."""
    result, why = scale_and_round(weight, factor, np.dtype(dtype))
    _assert_rounded(result, why, expected, reason, dtype)


ROUND_ONCE_CASES = [
    pytest.param(f64(0.1, -3.25), np.float32, np.array([0.1, -3.25], np.float32), "", id="vector"),
    pytest.param(np.float64(1 / 3), np.float16, np.array([1 / 3], np.float16), "", id="scalar-becomes-1d"),
    pytest.param(f64(0.1, 1e40, -1e39), np.float32, None, OVERFLOW32.format(2, "1e+40"), id="overflow"),
    pytest.param(f64(1e-40), np.float32, np.array([1e-40], np.float32), "", id="subnormal-value-kept"),
    pytest.param(
        f64(70000.0),
        np.float16,
        None,
        "folded values overflow float16 (1 values, largest |7e+04| > max 6.55e+04)",
        id="float16-overflow",
    ),
]


@pytest.mark.parametrize("exact, dtype, expected, reason", ROUND_ONCE_CASES)
def test_round_once(exact: np.ndarray, dtype: type, expected: np.ndarray | None, reason: str) -> None:
    """Small float64 values (biases) rounded to dtype as 1-D, or no array and exactly this reason."""
    result, why = round_once(exact, np.dtype(dtype))
    _assert_rounded(result, why, expected, reason, dtype)


G = np.random.default_rng(11)
W_CONV, W_GROUPED, W_KN, W_NK = (G.standard_normal(s) for s in [(3, 4, 2, 2), (6, 2, 3, 1), (4, 5), (5, 4)])
SHIFT4 = f64(1.0, -2.0, 0.5, 3.0)
SHIFT_CASES = [
    pytest.param(np.array([[[[1.0, 2.0]], [[3.0, 4.0]]]]), f64(10, 100), "conv", 1, f64(30 + 700), id="conv-by-hand"),
    pytest.param(np.array([[1.0, 2.0], [3.0, 4.0]]), f64(10, 100), "kn", 1, f64(310, 420), id="kn-by-hand"),
    pytest.param(np.array([[1.0, 2.0], [3.0, 4.0]]), f64(10, 100), "nk", 1, f64(210, 430), id="nk-by-hand"),
    pytest.param(W_CONV, SHIFT4, "conv", 1, np.einsum("oikl,i->o", W_CONV, SHIFT4), id="conv"),
    pytest.param(
        W_GROUPED,
        SHIFT4,
        "conv",
        2,
        np.concatenate(
            [np.einsum("oikl,i->o", W_GROUPED[:3], SHIFT4[:2]), np.einsum("oikl,i->o", W_GROUPED[3:], SHIFT4[2:])]
        ),
        id="conv-group2",
    ),
    pytest.param(W_KN, SHIFT4, "kn", 1, SHIFT4 @ W_KN, id="kn"),
    pytest.param(W_NK, SHIFT4, "nk", 1, W_NK @ SHIFT4, id="nk"),
    pytest.param(
        W_KN.astype(np.float32),
        SHIFT4,
        "kn",
        1,
        SHIFT4 @ W_KN.astype(np.float32).astype(np.float64),
        id="kn-float32-weight-widened",
    ),
]


@pytest.mark.parametrize("weight, shift, layout, group, expected", SHIFT_CASES)
def test_input_shift_response(
    weight: np.ndarray, shift: np.ndarray, layout: str, group: int, expected: np.ndarray
) -> None:
    """The per-output-channel response to a constant per-input-channel shift: sum of W times the shift."""
    response = input_shift_response(weight, shift, layout, group)
    assert response.dtype == np.float64
    np.testing.assert_allclose(response, expected, rtol=1e-14, atol=1e-14)

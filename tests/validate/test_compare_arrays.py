"""`normfold.validate.compare.compare_arrays`, case by case: each figure of the metrics written out by hand."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest

from normfold.validate.compare import EXACT, Metrics, Tolerance, compare_arrays

NAN, INF = float("nan"), float("inf")
EPS32 = 2.0**-23
EPS64 = 2.0**-52
FIGURES = (
    "max_abs",
    "max_rel",
    "scale",
    "mean_abs",
    "median_abs",
    "eps_units",
    "violations",
    "nan_mismatch",
    "inf_mismatch",
)
ZERO = dict(
    max_abs=0.0, max_rel=0.0, mean_abs=0.0, median_abs=0.0, eps_units=0.0, violations=0, nan_mismatch=0, inf_mismatch=0
)
F32_DEFAULT = Tolerance(None, 1e-4)
THOUSANDTH = float(np.float32(1e-3))


def f32(*values: float) -> np.ndarray:
    """A float32 array of the values."""
    return np.array(values, np.float32)


def figures(metrics: Metrics) -> dict[str, Any]:
    """The metrics' figures by name (the error histogram aside)."""
    return {name: getattr(metrics, name) for name in FIGURES}


CASES = [
    pytest.param(f32(1, -2, 4), f32(1, -2, 4), F32_DEFAULT, None, dict(ZERO, scale=4.0), id="float-identical"),
    pytest.param(
        f32(1, -2, 4),
        f32(1, -2, 4.5),
        F32_DEFAULT,
        None,
        dict(
            max_abs=0.5,
            max_rel=0.125,
            scale=4.0,
            mean_abs=0.5 / 3,
            median_abs=0.0,
            eps_units=0.5 / (EPS32 * 4),
            violations=1,
            nan_mismatch=0,
            inf_mismatch=0,
        ),
        id="float-one-element-off",
    ),
    pytest.param(
        f32(1, -2, 4),
        f32(1, -2, 4 + 2.0**-12),
        Tolerance(None, 1e-4),
        None,
        dict(
            max_abs=2.0**-12,
            max_rel=2.0**-14,
            scale=4.0,
            mean_abs=2.0**-12 / 3,
            median_abs=0.0,
            eps_units=2.0**-12 / (EPS32 * 4),
            violations=0,
            nan_mismatch=0,
            inf_mismatch=0,
        ),
        id="float-within-tolerance",
    ),
    pytest.param(
        f32(NAN, 1, 2),
        f32(NAN, 1, 2.25),
        Tolerance(0.1, 0.0),
        None,
        dict(
            max_abs=0.25,
            max_rel=0.125,
            scale=2.0,
            mean_abs=0.125,
            median_abs=0.125,
            eps_units=0.25 / (EPS32 * 2),
            violations=1,
            nan_mismatch=0,
            inf_mismatch=0,
        ),
        id="nan-same-position-skipped",
    ),
    pytest.param(
        f32(NAN, 1, 2),
        f32(0, 1, NAN),
        F32_DEFAULT,
        None,
        dict(ZERO, scale=1.0, nan_mismatch=2),
        id="nan-different-positions",
    ),
    pytest.param(
        f32(INF, -INF, 3), f32(INF, -INF, 3), F32_DEFAULT, None, dict(ZERO, scale=3.0), id="inf-same-position-and-sign"
    ),
    pytest.param(
        f32(INF, 1, 2),
        f32(-INF, 1, INF),
        F32_DEFAULT,
        None,
        dict(ZERO, scale=1.0, inf_mismatch=2),
        id="inf-sign-flip-and-finite-vs-inf",
    ),
    pytest.param(
        f32(INF),
        f32(NAN),
        F32_DEFAULT,
        None,
        dict(ZERO, scale=0.0, nan_mismatch=1, inf_mismatch=1),
        id="inf-vs-nan-counts-both",
    ),
    pytest.param(
        f32(0, 0),
        f32(0, 1e-3),
        F32_DEFAULT,
        None,
        dict(
            max_abs=THOUSANDTH,
            max_rel=0.0,
            scale=0.0,
            mean_abs=THOUSANDTH / 2,
            median_abs=THOUSANDTH / 2,
            eps_units=0.0,
            violations=1,
            nan_mismatch=0,
            inf_mismatch=0,
        ),
        id="zero-scale-relative-tolerance-is-zero",
    ),
    pytest.param(
        f32(0, 0),
        f32(0, 1e-3),
        Tolerance(1e-2, 0.0),
        None,
        dict(
            max_abs=THOUSANDTH,
            max_rel=0.0,
            scale=0.0,
            mean_abs=THOUSANDTH / 2,
            median_abs=THOUSANDTH / 2,
            eps_units=0.0,
            violations=0,
            nan_mismatch=0,
            inf_mismatch=0,
        ),
        id="zero-scale-absolute-tolerance",
    ),
    pytest.param(
        np.zeros((0, 3), np.float32),
        np.zeros((0, 3), np.float32),
        F32_DEFAULT,
        None,
        dict(ZERO, scale=0.0),
        id="float-empty",
    ),
    pytest.param(
        np.array([2.0]),
        np.array([2.0 + 2.0**-20]),
        Tolerance(None, 1e-9),
        np.dtype(np.float32),
        dict(
            max_abs=2.0**-20,
            max_rel=2.0**-21,
            scale=2.0,
            mean_abs=2.0**-20,
            median_abs=2.0**-20,
            eps_units=4.0,
            violations=1,
            nan_mismatch=0,
            inf_mismatch=0,
        ),
        id="float64-outputs-float32-precision",
    ),
    pytest.param(
        np.array([2.0, 2.0**-30]),
        np.array([2.0, 2.0**-30 + 2.0**-60]),
        Tolerance(None, 1e-9),
        None,
        dict(
            max_abs=2.0**-60,
            max_rel=0.0,
            scale=2.0,
            mean_abs=2.0**-61,
            median_abs=2.0**-61,
            eps_units=2.0**-60 / (EPS64 * 2),
            violations=0,
            nan_mismatch=0,
            inf_mismatch=0,
        ),
        id="float64-tiny-reference-left-out-of-max-rel",
    ),
    pytest.param(
        np.array([1, 2], ml_dtypes.bfloat16),
        np.array([1, 2 + 2**-6], ml_dtypes.bfloat16),
        Tolerance(None, 5e-2),
        None,
        dict(
            max_abs=2.0**-6,
            max_rel=2.0**-7,
            scale=2.0,
            mean_abs=2.0**-7,
            median_abs=2.0**-7,
            eps_units=1.0,
            violations=0,
            nan_mismatch=0,
            inf_mismatch=0,
        ),
        id="bfloat16-one-ulp",
    ),
    pytest.param(
        np.array([1, -3, 5], np.int32),
        np.array([1, -3, 5], np.int32),
        EXACT,
        None,
        dict(ZERO, scale=5.0),
        id="int-identical",
    ),
    pytest.param(
        np.array([1, -3, 5], np.int32),
        np.array([1, 0, 5], np.int32),
        EXACT,
        None,
        dict(ZERO, max_abs=3.0, scale=5.0, mean_abs=1.0, violations=1),
        id="int-one-off",
    ),
    pytest.param(
        np.array([10, 20], np.int64),
        np.array([12, 23], np.int64),
        Tolerance(2.0, 0.0),
        None,
        dict(ZERO, max_abs=3.0, scale=20.0, mean_abs=2.5, median_abs=2.5, violations=1),
        id="int-atol-2-boundary-passes",
    ),
    pytest.param(
        np.array([0, 255], np.uint8),
        np.array([255, 0], np.uint8),
        EXACT,
        None,
        dict(ZERO, max_abs=255.0, scale=255.0, mean_abs=255.0, median_abs=255.0, violations=2),
        id="uint8-no-wraparound",
    ),
    pytest.param(
        np.array([7], np.int32),
        np.array([9], np.int32),
        Tolerance(None, 1e-4),
        None,
        dict(ZERO, max_abs=2.0, scale=7.0, mean_abs=2.0, median_abs=2.0, violations=1),
        id="int-relative-tolerance-ignored",
    ),
    pytest.param(
        np.array([True, False, True]),
        np.array([True, True, False]),
        EXACT,
        None,
        dict(ZERO, max_abs=1.0, scale=1.0, mean_abs=2 / 3, median_abs=1.0, violations=2),
        id="bool-two-off",
    ),
    pytest.param(
        np.array([False, False]),
        np.array([False, False]),
        EXACT,
        None,
        dict(ZERO, scale=0.0),
        id="bool-identical-all-false",
    ),
    pytest.param(np.zeros(0, np.int64), np.zeros(0, np.int64), EXACT, None, dict(ZERO, scale=0.0), id="int-empty"),
]


@pytest.mark.parametrize("reference, candidate, tolerance, precision, expected", CASES)
def test_compare_arrays_figures(
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: Tolerance,
    precision: np.dtype | None,
    expected: dict[str, Any],
) -> None:
    """Comparable arrays give exactly these figures and no structural problem."""
    metrics, problem = compare_arrays(reference, candidate, tolerance, precision)
    assert problem == ""
    assert metrics is not None
    assert figures(metrics) == expected


REFUSALS = [
    pytest.param(
        np.zeros((2, 3), np.float32),
        np.zeros((3, 2), np.float32),
        "shape [3, 2] != reference [2, 3]",
        id="transposed-shape",
    ),
    pytest.param(np.zeros(0, np.float32), np.zeros(1, np.float32), "shape [1] != reference [0]", id="empty-vs-one"),
    pytest.param(np.zeros((), np.float32), np.zeros(1, np.float32), "shape [1] != reference []", id="scalar-vs-vector"),
    pytest.param(
        np.zeros(2, np.float32), np.zeros(2, np.float64), "dtype float64 != reference float32", id="float32-vs-float64"
    ),
    pytest.param(np.zeros(2, np.int64), np.zeros(2, np.int32), "dtype int32 != reference int64", id="int64-vs-int32"),
    pytest.param(np.zeros(2, bool), np.zeros(2, np.uint8), "dtype uint8 != reference bool", id="bool-vs-uint8"),
    pytest.param(
        np.zeros(2, np.float32), np.zeros(3, np.float64), "shape [3] != reference [2]", id="shape-reported-before-dtype"
    ),
]


@pytest.mark.parametrize("reference, candidate, message", REFUSALS)
def test_compare_arrays_refuses_incomparable(reference: np.ndarray, candidate: np.ndarray, message: str) -> None:
    """Arrays of different shapes or dtypes give no metrics and exactly this problem."""
    assert compare_arrays(reference, candidate, EXACT) == (None, message)

"""Comparing one output of two models: error figures, NaN/Inf agreement, and per-dtype tolerances.

An output passes when shapes and dtypes agree, NaN and ±Inf sit at the same positions, and every
finite element satisfies |candidate - reference| <= atol + rtol * |reference|. Which atol and rtol are in
force is the tolerance policy's decision (policy.py); a Tolerance without atol means rtol times the
output's largest magnitude.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import ml_dtypes
import numpy as np

# Elements per block of the float64 figures: their temporaries stay a few MiB whatever the output's size.
BLOCK = 1 << 18
# Decades an error histogram can hold: float64's smallest subnormal (~5e-324) to its largest finite value.
_LOWEST_DECADE, _HIGHEST_DECADE = -324, 308


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Elementwise bound: |c - r| <= atol + rtol * |r|; atol None means rtol * max|r|.

    `explicit` marks a tolerance the user chose; only defaults add the float64 rounding check.
    """

    atol: float | None
    rtol: float
    explicit: bool = dataclasses.field(default=False, compare=False)

    def absolute(self, scale: float) -> float:
        """The atol in force for an output whose largest magnitude is `scale`."""
        return self.rtol * scale if self.atol is None else self.atol


# Defaults by dtype: a fold is rounding-level, so these are several hundred ulps of the output's scale.
DEFAULT_TOLERANCES = {
    "float64": Tolerance(None, 1e-9),
    "float32": Tolerance(None, 1e-4),
    "float16": Tolerance(None, 1e-2),
    "bfloat16": Tolerance(None, 5e-2),
}
EXACT = Tolerance(0.0, 0.0)


def default_tolerance(dtype: np.dtype) -> Tolerance:
    """The documented default for a dtype; integers and bools must match exactly."""
    return DEFAULT_TOLERANCES.get(np.dtype(dtype).name, EXACT)


@dataclasses.dataclass(frozen=True)
class ErrorHistogram:
    """Elements per decade of absolute error: counts[i] in [10**(start + i), 10**(start + i + 1)), `zero` exact.

    Only the decades from the first to the last non-empty one are kept: a handful for a rounding-level
    difference, at most 633 (float64's whole range) whatever the output's size.
    """

    start: int
    counts: tuple[int, ...]
    zero: int

    @property
    def total(self) -> int:
        """Elements counted (finite errors only)."""
        return self.zero + sum(self.counts)


class _DecadeCounter:
    """Accumulates an ErrorHistogram block by block, so no array of errors is kept."""

    def __init__(self) -> None:
        self._counts = np.zeros(_HIGHEST_DECADE - _LOWEST_DECADE + 1, np.int64)
        self._zero = 0

    def add(self, errors: np.ndarray) -> None:
        """Count non-negative errors (an overflowed Inf lands in the highest decade)."""
        positive = errors[errors > 0]
        self._zero += int(errors.size - positive.size)
        if positive.size:
            decades = np.clip(np.floor(np.log10(positive)), _LOWEST_DECADE, _HIGHEST_DECADE).astype(np.int64)
            self._counts += np.bincount(decades - _LOWEST_DECADE, minlength=self._counts.size)

    def histogram(self) -> ErrorHistogram:
        """The non-empty span of decades (start 0 with no counts when every error is zero)."""
        used = np.flatnonzero(self._counts)
        if not used.size:
            return ErrorHistogram(0, (), self._zero)
        first, last = int(used[0]), int(used[-1])
        return ErrorHistogram(first + _LOWEST_DECADE, tuple(int(c) for c in self._counts[first : last + 1]), self._zero)


@dataclasses.dataclass(frozen=True)
class Metrics:
    """How far a candidate output is from the reference output; `histogram` bins |candidate - reference|."""

    max_abs: float
    max_rel: float
    scale: float
    mean_abs: float
    median_abs: float
    eps_units: float
    violations: int
    nan_mismatch: int
    inf_mismatch: int
    histogram: ErrorHistogram | None = None


def is_float(dtype: np.dtype) -> bool:
    """Floating dtypes, bfloat16 included."""
    return np.dtype(dtype).kind == "f" or np.dtype(dtype) == ml_dtypes.bfloat16


def eps_of(dtype: np.dtype) -> float:
    """Machine epsilon of a float dtype (bfloat16 included); 0 for integers and bools."""
    if np.dtype(dtype) == ml_dtypes.bfloat16:
        return float(ml_dtypes.finfo(ml_dtypes.bfloat16).eps)
    return float(np.finfo(dtype).eps) if np.dtype(dtype).kind == "f" else 0.0


def structural_problem(reference: np.ndarray, candidate: np.ndarray) -> str:
    """What makes two arrays incomparable (shape or dtype), or ''."""
    if reference.shape != candidate.shape:
        return f"shape {list(candidate.shape)} != reference {list(reference.shape)}"
    if reference.dtype != candidate.dtype:
        return f"dtype {candidate.dtype} != reference {reference.dtype}"
    return ""


def compare_arrays(
    reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance, precision: np.dtype | None = None
) -> tuple[Metrics | None, str]:
    """(metrics, "") when comparable, else (None, what is structurally wrong: shape or dtype).

    `precision` is the dtype the models computed in (eps units), when it differs from the outputs'.
    """
    problem = structural_problem(reference, candidate)
    if problem:
        return None, problem
    if not is_float(reference.dtype):
        diff = (
            np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
            if reference.dtype != bool
            else (reference != candidate).astype(np.float64)
        )
        violations = int((diff > (tolerance.atol or 0.0)).sum())
        scale = _max(np.abs(reference.astype(np.float64)))
        counter = _DecadeCounter()
        counter.add(diff.reshape(-1))
        return Metrics(
            _max(diff), 0.0, scale, _mean(diff), _median(diff), 0.0, violations, 0, 0, counter.histogram()
        ), ""
    return _float_metrics(reference, candidate, tolerance, precision), ""


def _blocks(*arrays: np.ndarray) -> Iterator[list[np.ndarray]]:
    """The arrays' elements in BLOCK-sized flat slices, as float64."""
    flat = [a.reshape(-1) for a in arrays]
    for start in range(0, flat[0].size, BLOCK):
        yield [f[start : start + BLOCK].astype(np.float64) for f in flat]


def _float_metrics(
    reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance, precision: np.dtype | None
) -> Metrics:
    """The figures of two float outputs, computed block by block (one float64 array of differences is kept,
    for the median)."""
    nan_mismatch = inf_mismatch = 0
    scale = 0.0
    for r, c in _blocks(reference, candidate):
        nan_mismatch += int((np.isnan(r) != np.isnan(c)).sum())
        inf_mismatch += int(((np.isinf(r) | np.isinf(c)) & (r != c)).sum())
        scale = max(scale, _max(np.abs(r[np.isfinite(r) & np.isfinite(c)])))
    atol = tolerance.absolute(scale)
    floor = max(atol, eps_of(reference.dtype) * scale)
    diffs = np.empty(reference.size, np.float64)
    count = violations = 0
    max_rel = 0.0
    counter = _DecadeCounter()
    for r, c in _blocks(reference, candidate):
        finite = np.isfinite(r) & np.isfinite(c)
        diff, magnitude = np.abs(c[finite] - r[finite]), np.abs(r[finite])
        diffs[count : count + diff.size] = diff
        count += diff.size
        counter.add(diff)
        meaningful = magnitude > floor
        max_rel = max(max_rel, _max(diff[meaningful] / magnitude[meaningful]))
        violations += int((diff > atol + tolerance.rtol * magnitude).sum())
    diffs = diffs[:count]
    largest, mean = _max(diffs), _mean(diffs)
    median = float(np.median(diffs, overwrite_input=True)) if count else 0.0  # diffs is ours: sorted in place
    eps = eps_of(precision if precision is not None else reference.dtype)
    eps_units = largest / (eps * scale) if scale > 0 else 0.0
    return Metrics(
        largest, max_rel, scale, mean, median, eps_units, violations, nan_mismatch, inf_mismatch, counter.histogram()
    )


def largest_magnitude(array: np.ndarray) -> float:
    """Largest finite |element| (0 for none)."""
    largest = 0.0
    for (a,) in _blocks(array):
        largest = max(largest, _max(np.abs(a[np.isfinite(a)])))
    return largest


def max_abs_error(values: np.ndarray, exact: np.ndarray) -> float:
    """Largest finite |values - exact| (for the float64 columns)."""
    largest = 0.0
    for v, e in _blocks(values, exact):
        finite = np.isfinite(v) & np.isfinite(e)
        largest = max(largest, _max(np.abs(v[finite] - e[finite])))
    return largest


def error_figures(values: np.ndarray, exact: np.ndarray) -> tuple[float, ErrorHistogram]:
    """max_abs_error and the histogram of every finite |values - exact|, in one blockwise pass."""
    largest, counter = 0.0, _DecadeCounter()
    for v, e in _blocks(values, exact):
        finite = np.isfinite(v) & np.isfinite(e)
        errors = np.abs(v[finite] - e[finite])
        largest = max(largest, _max(errors))
        counter.add(errors)
    return largest, counter.histogram()


def _max(array: np.ndarray) -> float:
    return float(array.max()) if array.size else 0.0


def _mean(array: np.ndarray) -> float:
    return float(array.mean()) if array.size else 0.0


def _median(array: np.ndarray) -> float:
    return float(np.median(array)) if array.size else 0.0

"""Refuse NaN, infinite and out-of-range numbers at the boundary, since comparisons with NaN are always false."""

from __future__ import annotations

import math
import numbers

from normfold.errors import EXIT_USAGE, NormfoldError


def require_finite(
    name: str, value: float, *, low: float | None = None, high: float | None = None, typed: str | None = None
) -> float:
    """`value` as a float if it is a finite real number within [low, high]; else a usage error naming `name`.

    `name` is what the user wrote (an option for the CLI, a keyword for the API); `typed`, when given, is
    shown instead of `value`, so that "1e400" is not reported as "inf".
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and (low is None or number >= low) and (high is None or number <= high):
            return number + 0.0  # -0.0 becomes 0.0, so that reports never show "-0"
        shown = repr(number)
    else:
        shown = repr(value)
    raise NormfoldError(
        f"{name} must be {_expected(low, high)}, got {shown if typed is None else typed}", exit_code=EXIT_USAGE
    )


def _expected(low: float | None, high: float | None) -> str:
    """The accepted values in words: "a finite number in [0, 1]", "a finite number >= 0", ..."""
    if low is not None and high is not None:
        return f"a finite number in [{_bound(low)}, {_bound(high)}]"
    if low is not None:
        return f"a finite number >= {_bound(low)}"
    if high is not None:
        return f"a finite number <= {_bound(high)}"
    return "a finite number"


def _bound(limit: float) -> str:
    """A bound as people write it: 0 and 1 rather than 0.0 and 1.0."""
    return str(int(limit)) if float(limit).is_integer() else repr(float(limit))

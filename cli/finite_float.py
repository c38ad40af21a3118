"""A click option type for finite floats: FloatRange lets `nan` through, since comparisons with NaN are false."""

from __future__ import annotations

import math
from typing import Any

import click

from normfold.finite import require_finite


class FiniteFloat(click.FloatRange):
    """A finite float within [min, max]; anything else is a one-line usage error (exit 2) naming the option.

    It is a FloatRange so that `--help` shows the range as click shows every range ("[0<=x<=1]"); the
    NormfoldError it raises becomes `normfold: error: ...` in the command group, like every usage error.
    """

    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None) -> None:
        super().__init__(min=min, max=max)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        option = max(param.opts, key=len) if param is not None and param.opts else "the value"
        if not isinstance(value, str):
            return require_finite(option, value, low=self.min, high=self.max)
        try:
            number, typed = float(value), value.strip()
        except ValueError:
            number, typed = math.nan, repr(value)
        return require_finite(option, number, low=self.min, high=self.max, typed=typed)

"""The tolerance policy: a difference passes when rounding explains it, on every output scale.

A fold is exact in real arithmetic, so reference and candidate differ only by where each rounds. How much
rounding can move an output is measured, not guessed: the reference's own error against the float64
truth, `e_ref = max|ref - truth|`, is the rounding noise of that output on these inputs, whatever the
output's scale and however much was cancelled or saturated on the way (a sigmoid at 1e-5 keeps the
logits' absolute noise). The candidate passes when

    e_cand = max|cand - truth| <= ROUNDING_FACTOR * e_ref + ROUNDING_FLOOR_EPS * eps * max|truth|

(the floor covers outputs the reference happens to get exactly right) and every element satisfies
|cand - ref| <= atol + rtol |ref| with atol = max(rtol * max|ref|, e_ref + that allowance): by the
triangle inequality an exact fold can differ from the reference by its own error plus the reference's.
A weight scaled by 1 + 1e-4 moves float32 outputs by about 1e-4 relative, hundreds of times the
rounding noise, so it fails; an output near zero, saturated, or scaled by 1e-6 or 1e6 is judged in its own
units.

Without a float64 truth (over budget, or an operator onnx's evaluator lacks), the allowance falls back
to the dtype's rtol times the output's largest magnitude, and the report says so. A tolerance the user
gives (--atol/--rtol/--tol) is applied as given, elementwise, and nothing is added to it.
"""

from __future__ import annotations

import numpy as np

from normfold.validate.compare import (
    Metrics,
    Tolerance,
    compare_arrays,
    eps_of,
    error_figures,
    is_float,
    largest_magnitude,
    structural_problem,
)
from normfold.validate.report import OutputComparison

ROUNDING_FACTOR = 4.0
ROUNDING_FLOOR_EPS = 16.0
BASIS_GIVEN, BASIS_ROUNDING, BASIS_SCALE = "given", "rounding", "output scale"


def rounding_allowance(reference_error: float, truth_scale: float, precision: np.dtype) -> float:
    """The largest candidate error against float64 that rounding explains (see the module's docstring)."""
    return ROUNDING_FACTOR * reference_error + ROUNDING_FLOOR_EPS * eps_of(precision) * truth_scale


def judge_output(
    name: str,
    section: str,
    refs: np.ndarray,
    cands: np.ndarray,
    truth: np.ndarray | None,
    tolerance: Tolerance,
    precision: np.dtype,
) -> OutputComparison:
    """One output's verdict over all samples (arrays concatenated), with its figures and the tolerance in force."""
    structural = structural_problem(refs, cands)
    if structural:
        return OutputComparison(name, section, False, tolerance, None, structural)
    ref_f64 = cand_f64 = ref_hist = cand_hist = None
    in_force, basis, allowance = tolerance, BASIS_GIVEN if tolerance.explicit else BASIS_SCALE, None
    if truth is not None and is_float(refs.dtype):
        (ref_f64, ref_hist), (cand_f64, cand_hist) = error_figures(refs, truth), error_figures(cands, truth)
        if not tolerance.explicit:
            allowance = rounding_allowance(ref_f64, largest_magnitude(truth), precision)
            atol = max(tolerance.absolute(largest_magnitude(refs)), ref_f64 + allowance)
            in_force, basis = Tolerance(atol, tolerance.rtol), BASIS_ROUNDING
    metrics, _ = compare_arrays(refs, cands, in_force, precision)
    assert metrics is not None
    passed = _elementwise_pass(metrics)
    problem = ""
    if allowance is not None and cand_f64 is not None and cand_f64 > allowance:
        passed = False
        problem = (
            f"candidate is {cand_f64 / max(ref_f64 or 0.0, 1e-300):.3g}x further from float64 than the "
            f"reference (rounding allows {allowance:.3g})"
        )
    atol = in_force.absolute(metrics.scale)
    return OutputComparison(
        name, section, passed, tolerance, metrics, problem, ref_f64, cand_f64, atol, basis, ref_hist, cand_hist
    )


def _elementwise_pass(metrics: Metrics) -> bool:
    return metrics.violations == 0 and metrics.nan_mismatch == 0 and metrics.inf_mismatch == 0

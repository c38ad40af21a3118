"""The validation verdict: one line per compared output, a JSON document, and an exit code."""

from __future__ import annotations

import dataclasses
from typing import Any

from normfold.errors import EXIT_MISMATCH, EXIT_OK
from normfold.validate.compare import ErrorHistogram, Metrics, Tolerance

REPORT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class OutputComparison:
    """One output of the candidate against the reference (or the stored expected outputs).

    The float64 histograms bin each side's |output - float64 truth| where the truth ran (None otherwise).
    """

    output: str
    section: str
    passed: bool
    tolerance: Tolerance
    metrics: Metrics | None
    problem: str = ""
    reference_vs_float64: float | None = None
    candidate_vs_float64: float | None = None
    atol_in_force: float | None = None
    basis: str = "given"
    reference_vs_float64_histogram: ErrorHistogram | None = None
    candidate_vs_float64_histogram: ErrorHistogram | None = None

    def to_line(self) -> str:
        """PASSED | output 'y' | cpu | max abs 3.1e-07 | ... (Polygraphy-style)."""
        status = "PASSED" if self.passed else "FAILED"
        parts = [status, f"output '{self.output}'", self.section]
        if self.metrics is None:
            parts.append(self.problem)
            return " | ".join(parts)
        m = self.metrics
        parts += [f"max abs {m.max_abs:.3g}", f"max rel {m.max_rel:.3g}", f"mean abs {m.mean_abs:.3g}",
                  f"median abs {m.median_abs:.3g}", f"{m.eps_units:.3g} eps"]
        if m.nan_mismatch or m.inf_mismatch:
            parts.append(f"NaN mismatches {m.nan_mismatch}, Inf mismatches {m.inf_mismatch}")
        if m.violations:
            parts.append(f"{m.violations} elements beyond tolerance")
        if self.candidate_vs_float64 is not None and self.reference_vs_float64 is not None:
            parts.append(f"vs float64: reference {self.reference_vs_float64:.3g}, candidate {self.candidate_vs_float64:.3g}")
        if self.problem:
            parts.append(self.problem)
        parts.append(self.describe_tolerance())
        return " | ".join(parts)

    def describe_tolerance(self) -> str:
        """'atol 3e-07 (rounding) rtol 0.0001': the bound applied and what it rests on."""
        scale = self.metrics.scale if self.metrics is not None else 0.0
        atol = self.tolerance.absolute(scale) if self.atol_in_force is None else self.atol_in_force
        basis = {"rounding": " (rounding)", "output scale": " (rtol x max|ref|)"}.get(self.basis, "")
        return f"atol {atol:.3g}{basis} rtol {self.tolerance.rtol:g}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the JSON report."""
        data = dataclasses.asdict(self)
        data["status"] = "passed" if self.passed else "failed"
        return data


@dataclasses.dataclass
class ValidationReport:
    """All comparisons of one validation run, and what they ran on."""

    reference: str
    candidate: str
    providers: list[str]
    notes: list[str]
    samples: int
    inputs: str
    comparisons: list[OutputComparison]
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every compared output passed."""
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    @property
    def return_code(self) -> int:
        """0 equivalent, 1 not equivalent."""
        return EXIT_OK if self.passed else EXIT_MISMATCH

    @property
    def failures(self) -> list[OutputComparison]:
        """The outputs that did not pass."""
        return [c for c in self.comparisons if not c.passed]

    def lines(self) -> list[str]:
        """The human report: providers, one line per output, a verdict."""
        head = [f"validate {self.candidate} against {self.reference}: {self.samples} sample(s) from {self.inputs}, "
                f"provider(s) {', '.join(self.providers)}"]
        body = [c.to_line() for c in self.comparisons]
        failed = len(self.failures)
        verdict = "PASSED: equivalent" if self.passed else f"FAILED: {failed} of {len(self.comparisons)} output comparison(s) differ"
        return head + self.notes + body + [verdict]

    def to_dict(self) -> dict[str, Any]:
        """The versioned JSON document."""
        return {
            "normfold_report": "validate",
            "version": REPORT_VERSION,
            "reference": self.reference,
            "candidate": self.candidate,
            "providers": self.providers,
            "notes": self.notes,
            "samples": self.samples,
            "inputs": self.inputs,
            "passed": self.passed,
            "return_code": self.return_code,
            "outputs": [c.to_dict() for c in self.comparisons],
            "config": self.config,
        }

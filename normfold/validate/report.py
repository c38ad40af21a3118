"""The validation verdict: one line per compared output, a JSON document, and an exit code."""

from __future__ import annotations

import dataclasses
from typing import Any

from normfold.columns import WIDTH, Cuttable, Squeezable, cut, fit
from normfold.errors import EXIT_MISMATCH, EXIT_OK
from normfold.report_version import REPORT_VERSION
from normfold.validate.compare import ErrorHistogram, Metrics, Tolerance


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
        parts += [
            f"max abs {m.max_abs:.3g}",
            f"max rel {m.max_rel:.3g}",
            f"mean abs {m.mean_abs:.3g}",
            f"median abs {m.median_abs:.3g}",
            f"{m.eps_units:.3g} eps",
        ]
        if m.nan_mismatch or m.inf_mismatch:
            parts.append(f"NaN mismatches {m.nan_mismatch}, Inf mismatches {m.inf_mismatch}")
        if m.violations:
            parts.append(f"{m.violations} elements beyond tolerance")
        if self.candidate_vs_float64 is not None and self.reference_vs_float64 is not None:
            parts.append(
                f"vs float64: reference {self.reference_vs_float64:.3g}, candidate {self.candidate_vs_float64:.3g}"
            )
        if self.problem:
            parts.append(self.problem)
        parts.append(self.describe_tolerance())
        return " | ".join(parts)

    def to_short_line(self, width: int = WIDTH) -> str:
        """PASSED 'y' on cpu | max abs 3.1e-07 | atol 0.000189 rtol 0.0001 | float64 ok, in `width` columns.

        The essentials of to_line: verdict, output, provider, max abs error, the tolerance it was judged against,
        NaN/Inf mismatches, and the float64 check in a few words.
        """
        head = [
            f"{'PASSED' if self.passed else 'FAILED'} '",
            Squeezable(self.output),
            "' on ",
            Squeezable(self.section),
        ]
        if self.metrics is None:
            return fit([*head, " | ", Cuttable(self.problem)], width)
        m = self.metrics
        parts = [f" | max abs {m.max_abs:.3g}", f" | atol {self._atol():.3g} rtol {self.tolerance.rtol:g}"]
        if m.nan_mismatch or m.inf_mismatch:
            parts.append(f" | {m.nan_mismatch + m.inf_mismatch} NaN/Inf mismatch(es)")
        if self.float64_words():
            parts.append(f" | {self.float64_words()}")
        return fit([*head, *parts], width)

    def float64_words(self) -> str:
        """The float64 check in a few words: 'float64 ok', 'float64: 3e+04x further' (from float64 than the
        reference), or '' where the tolerance does not rest on it."""
        if self.basis != "rounding" or self.candidate_vs_float64 is None or self.reference_vs_float64 is None:
            return ""
        if not self.problem:  # with figures, the only problem the policy reports is the float64 check's
            return "float64 ok"
        return f"float64: {self.candidate_vs_float64 / max(self.reference_vs_float64, 1e-300):.2g}x further"

    def describe_tolerance(self) -> str:
        """'atol 3e-07 (rounding) rtol 0.0001': the bound applied and what it rests on."""
        basis = {"rounding": " (rounding)", "output scale": " (rtol x max|ref|)"}.get(self.basis, "")
        return f"atol {self._atol():.3g}{basis} rtol {self.tolerance.rtol:g}"

    def _atol(self) -> float:
        """The absolute tolerance in force."""
        scale = self.metrics.scale if self.metrics is not None else 0.0
        return self.tolerance.absolute(scale) if self.atol_in_force is None else self.atol_in_force

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

    def lines(self, width: int | None = None) -> list[str]:
        """The human report: providers, one line per output, a verdict.

        With `width`, each line in that many columns: the paths lose their middle, the notes their end, and each
        output has its essentials (OutputComparison.to_short_line) instead of every figure.
        """
        failed = len(self.failures)
        verdict = (
            "PASSED: equivalent"
            if self.passed
            else f"FAILED: {failed} of {len(self.comparisons)} output comparison(s) differ"
        )
        if width is not None:
            head = fit(
                [
                    "validate ",
                    Squeezable(self.candidate),
                    " against ",
                    Squeezable(self.reference),
                    f": {self.samples} sample(s) from ",
                    Cuttable(self.inputs),
                ],
                width,
            )
            return [
                head,
                *(cut(note, width) for note in self.notes),
                *(c.to_short_line(width) for c in self.comparisons),
                verdict,
            ]
        first = (
            f"validate {self.candidate} against {self.reference}: {self.samples} sample(s) from {self.inputs}, "
            f"provider(s) {', '.join(self.providers)}"
        )
        return [first, *self.notes, *(c.to_line() for c in self.comparisons), verdict]

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

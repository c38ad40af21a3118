"""Numeric equivalence of two models on ONNX Runtime execution providers, with a float64 reference."""

from __future__ import annotations

from normfold.validate.compare import Tolerance, default_tolerance
from normfold.validate.report import OutputComparison, ValidationReport
from normfold.validate.runner import validate

__all__ = ["OutputComparison", "Tolerance", "ValidationReport", "default_tolerance", "validate"]

"""Numeric equivalence of two models on ONNX Runtime execution providers, with a float64 reference.

The names below are imported on first use, so that `normfold.validate.config` (which every command's
options read) does not load the validation engine.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LoadedModel": "normfold.model_reading",
    "OutputComparison": "normfold.validate.report",
    "Tolerance": "normfold.validate.compare",
    "ValidationConfig": "normfold.validate.config",
    "ValidationReport": "normfold.validate.report",
    "default_tolerance": "normfold.validate.compare",
    "validate": "normfold.validate.engine",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'normfold.validate' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

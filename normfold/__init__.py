"""normfold: fold BatchNormalization and strip Dropout in ONNX models, exactly.

The names below are imported on first use, so that the `normfold` command can install its signal handlers
before onnx and onnx_ir load.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FoldResult": "normfold.folding",
    "NodeRecord": "normfold.records",
    "NormfoldError": "normfold.errors",
    "fold": "normfold.folding",
    "load_model": "normfold.model_reading",
    "save_model": "normfold.atomic_write",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'normfold' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

"""normfold: fold BatchNormalization and strip Dropout in ONNX models, exactly."""

from __future__ import annotations

from normfold.errors import NormfoldError
from normfold.fold import FoldResult, fold
from normfold.io import load_model, save_model
from normfold.records import NodeRecord

__all__ = ["FoldResult", "NodeRecord", "NormfoldError", "fold", "load_model", "save_model"]
__version__ = "0.1.0"

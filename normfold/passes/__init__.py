"""One rewrite per module; each returns the new model and a record per node it looked at.

The names below are imported on first use, so that importing one pass (`normfold check` needs the fold passes)
does not load the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from normfold.passes.fold_affine import FoldAffinePass
    from normfold.passes.fold_batchnorm import FoldBatchNormPass
    from normfold.passes.fold_norm_affine import FoldNormAffinePass
    from normfold.passes.set_inference_mode import SetInferenceModePass
    from normfold.passes.set_training_mode import SetTrainingModePass
    from normfold.passes.simplify import SimplifyPass
    from normfold.passes.strip_dropout import StripDropoutPass

_EXPORTS = {
    "FoldAffinePass": "normfold.passes.fold_affine",
    "FoldBatchNormPass": "normfold.passes.fold_batchnorm",
    "FoldNormAffinePass": "normfold.passes.fold_norm_affine",
    "SetInferenceModePass": "normfold.passes.set_inference_mode",
    "SetTrainingModePass": "normfold.passes.set_training_mode",
    "SimplifyPass": "normfold.passes.simplify",
    "StripDropoutPass": "normfold.passes.strip_dropout",
}
__all__ = [
    "FoldAffinePass",
    "FoldBatchNormPass",
    "FoldNormAffinePass",
    "SetInferenceModePass",
    "SetTrainingModePass",
    "SimplifyPass",
    "StripDropoutPass",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'normfold.passes' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

"""One rewrite per module; each returns the new model and a record per node it looked at."""

from __future__ import annotations

from normfold.passes.fold_affine import FoldAffinePass
from normfold.passes.fold_batchnorm import FoldBatchNormPass
from normfold.passes.fold_norm_affine import FoldNormAffinePass
from normfold.passes.set_inference_mode import SetInferenceModePass
from normfold.passes.set_training_mode import SetTrainingModePass
from normfold.passes.simplify import SimplifyPass
from normfold.passes.strip_dropout import StripDropoutPass

__all__ = [
    "FoldAffinePass",
    "FoldBatchNormPass",
    "FoldNormAffinePass",
    "SetInferenceModePass",
    "SetTrainingModePass",
    "SimplifyPass",
    "StripDropoutPass",
]

"""Option values that `--help` shows, copied from library modules that import onnx_ir and numpy (seconds of
start-up) so that a command's help imports neither; tests/test_lazy_imports.py checks each equals its source."""

from __future__ import annotations

# normfold.passes.set_training_mode.DEFAULT_FLAG: the boolean input `mode --train` adds.
DEFAULT_FLAG = "training"
# normfold.passes.set_training_mode.RUNNING_VARIANCES: the batch variances the running variance is built from.
RUNNING_VARIANCES = ("biased", "unbiased")
# normfold.calibrate.METHODS: how calibrate combines the batches' statistics.
CALIBRATION_METHODS = ("cumulative", "running")

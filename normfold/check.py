"""`normfold check`: is a model deployment-ready? Each finding names the node, the rule and the fix.

Rules: what `fold` would still change (foldable-bn, inference-dropout), training-mode nodes
(training-bn, training-dropout), broken BN parameters (bn-nonfinite, bn-negative-variance,
non-positive-epsilon, bn-fp16-overflow), and the seed's training-side lints (dropout-before-bn,
high-drop-ratio, bn-batch-below-2).

onnx, onnx_ir and the passes are imported inside the functions that read models, so that the CLI's
help and the report formats (which need only RULES and the dataclasses) start without them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx_ir as ir

RULES = {
    "foldable-bn": "a BatchNormalization that normfold fold can fold into its neighbour",
    "inference-dropout": "an inference-time Dropout that normfold fold removes",
    "training-bn": "a BatchNormalization in training mode (TensorRT refuses it)",
    "training-dropout": "a Dropout in training mode (samples masks at run time)",
    "bn-nonfinite": "BatchNormalization parameters with NaN or Inf",
    "bn-negative-variance": "a BatchNormalization with a negative running variance",
    "non-positive-epsilon": "a BatchNormalization with epsilon <= 0",
    "bn-fp16-overflow": "a float16/bfloat16 BatchNormalization whose fold would overflow the dtype",
    "dropout-before-bn": "a Dropout feeding a BatchNormalization directly (seed 1.9)",
    "high-drop-ratio": "a Dropout ratio above 0.7 (seed 2.9)",
    "bn-batch-below-2": "a training-mode BatchNormalization over a static batch below 2 (seed 1.9)",
}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One reason a model is not deployment-ready."""

    rule: str
    node: str
    message: str
    fix: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ModelCheck:
    """The findings for one model file (or the one-line error that made it unusable)."""

    path: str
    findings: list[Finding]
    error: str = ""

    @property
    def ready(self) -> bool:
        """Deployment-ready: readable and without findings."""
        return not self.error and not self.findings


def check_model(path: str | os.PathLike[str], disabled: Iterable[str] = ()) -> ModelCheck:
    """All findings for the model at `path`, minus disabled rules; an unusable file gives `error`."""
    from normfold.errors import NormfoldError
    from normfold.io import load_model

    try:
        model = load_model(path)
        findings = _findings(model, str(path))
    except NormfoldError as error:
        return ModelCheck(str(path), [], str(error))
    off = set(disabled)
    findings = [f for f in findings if f.rule not in off]
    return ModelCheck(str(path), findings)


def _findings(model: ir.Model, path: str) -> list[Finding]:
    from normfold.graph_walk import is_op, iter_scopes, node_label
    from normfold.lints import training_lints
    from normfold.modes import bn_training_form, dropout_training_form
    from normfold.passes.fold_batchnorm import FoldBatchNormPass
    from normfold.passes.strip_dropout import StripDropoutPass

    fold_fix = f"normfold fold {path}"
    eval_fix = f"normfold mode --eval {path} (or normfold fold --eval {path})"
    found = _parameter_findings(model)
    for record in StripDropoutPass()(model).records:
        if record.action == "stripped":
            found.append(Finding("inference-dropout", record.node, "an inference Dropout is the identity; remove it", fold_fix))
    for record in FoldBatchNormPass()(StripDropoutPass()(model).model).records:
        if record.action == "folded":
            found.append(Finding("foldable-bn", record.node, f"can be folded {record.detail}", fold_fix))
        elif "overflow" in record.detail:
            found.append(Finding("bn-fp16-overflow", record.node, record.detail,
                                 "keep it unfolded, or fold in float32 and convert to float16 afterwards"))
    training = set()
    for scope in iter_scopes(model):
        for node in scope.body:
            if is_op(node, "BatchNormalization") and (form := bn_training_form(scope.opset, node)):
                training.add(node_label(node))
                found.append(Finding("training-bn", node_label(node),
                                     f"{form}: normalizes with batch statistics; TensorRT refuses training-mode "
                                     "BatchNormalization", eval_fix))
            elif is_op(node, "Dropout") and (form := dropout_training_form(scope.opset, node)):
                found.append(Finding("training-dropout", node_label(node), form, eval_fix))
    for lint in training_lints(model):
        # epsilon is judged above; batch statistics (and so a batch below 2) exist only in training mode
        if lint.rule == "non-positive-epsilon" or (lint.rule == "bn-batch-below-2" and lint.node not in training):
            continue
        found.append(Finding(lint.rule, lint.node, lint.message, "change the architecture and re-export"))
    return found


def _parameter_findings(model: ir.Model) -> list[Finding]:
    import numpy as np

    from normfold.graph_edit import constant_array
    from normfold.graph_walk import is_op, iter_scopes, node_label
    from normfold.modes import bn_epsilon

    found = []
    for scope in iter_scopes(model):
        for bn in scope.body:
            if not is_op(bn, "BatchNormalization"):
                continue
            label = node_label(bn)
            arrays = [constant_array(v) for v in bn.inputs[1:5]]
            if any(a is not None and not np.isfinite(a.astype(np.float64)).all() for a in arrays):
                found.append(Finding("bn-nonfinite", label, "scale, bias, mean or variance holds NaN or Inf",
                                     "re-export the model, or re-estimate statistics with normfold calibrate"))
            var = arrays[3] if len(arrays) > 3 else None
            if var is not None and (var.astype(np.float64) < 0).any():
                found.append(Finding("bn-negative-variance", label,
                                     f"{int((var.astype(np.float64) < 0).sum())} channel(s) have a negative variance",
                                     "re-estimate statistics with normfold calibrate"))
            epsilon = bn_epsilon(bn)
            if epsilon <= 0:
                found.append(Finding("non-positive-epsilon", label,
                                     f"epsilon={epsilon:g}: a zero variance divides by zero", "set epsilon > 0"))
    return found


def model_files(paths: Iterable[Path]) -> list[Path]:
    """The given files, and every *.onnx below the given folders, sorted."""
    from normfold.io import is_folder

    files: list[Path] = []
    for path in paths:
        files += sorted(path.rglob("*.onnx")) if is_folder(path) else [path]
    return files

"""`normfold check`: is a model deployment-ready? Each finding names the node, the rule and the fix.

Rules: what `fold` would still change (foldable-bn, inference-dropout), training-mode nodes
(training-bn, training-dropout), broken BN parameters (bn-nonfinite, bn-negative-variance,
non-positive-epsilon, bn-fp16-overflow), set-ups known to train badly (dropout-before-bn,
high-drop-ratio, bn-batch-below-2), and a model the installed ONNX Runtime cannot load (runtime-cannot-load).

onnx, onnx_ir and the passes are imported inside the functions that read models, so that the CLI's
help and the report formats (which need only RULES and the dataclasses) start without them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx_ir as ir

RULES = {
    "runtime-cannot-load": "a model whose IR version or opset is newer than the installed ONNX Runtime loads",
    "foldable-bn": "a BatchNormalization that normfold fold can fold into its neighbour",
    "inference-dropout": "an inference-time Dropout that normfold fold removes",
    "training-bn": "a BatchNormalization in training mode (TensorRT refuses it)",
    "training-dropout": "a Dropout in training mode (samples masks at run time)",
    "bn-nonfinite": "BatchNormalization parameters with NaN or Inf",
    "bn-negative-variance": "a BatchNormalization with a negative running variance",
    "non-positive-epsilon": "a BatchNormalization with epsilon <= 0",
    "bn-fp16-overflow": "a float16/bfloat16 BatchNormalization whose fold would overflow the dtype",
    "dropout-before-bn": "a Dropout feeding a BatchNormalization directly (it corrupts the batch statistics in training)",
    "high-drop-ratio": "a Dropout ratio above 0.7 (tends to underfit)",
    "bn-batch-below-2": "a training-mode BatchNormalization over a static batch below 2 (degenerate batch statistics)",
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
    from normfold.model_reading import load_model

    off = set(disabled)
    try:
        model = load_model(path)
        findings = ([] if "runtime-cannot-load" in off else _runtime_findings(model)) + _findings(model, str(path))
    except NormfoldError as error:
        return ModelCheck(str(path), [], str(error))
    findings = [f for f in findings if f.rule not in off]
    return ModelCheck(str(path), findings)


# Every onnxruntime normfold installs (>= 1.20, see pyproject.toml) loads ONNX 1.16's IR version 10 and opset 21:
# only a model stamped newer than that is probed.
LOADED_BY_EVERY_RUNTIME = (10, 21)
# Loads a serialized model from stdin with the installed ONNX Runtime; prints its version and error (null: loaded).
RUNTIME_PROBE = """
import json, sys
import onnxruntime
try:
    onnxruntime.InferenceSession(sys.stdin.buffer.read(), providers=["CPUExecutionProvider"])
    error = None
except Exception as failure:
    error = str(failure)
print(json.dumps({"version": onnxruntime.__version__, "error": error}))
"""


def _runtime_findings(model: ir.Model) -> list[Finding]:
    """runtime-cannot-load: the model's IR version or default-domain opset is newer than the installed ONNX
    Runtime loads (it would refuse the model before reading a node)."""
    ir_version = model.ir_version or 0
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    if ir_version <= LOADED_BY_EVERY_RUNTIME[0] and opset <= LOADED_BY_EVERY_RUNTIME[1]:
        return []
    refusal = runtime_refusal(ir_version, opset)
    if refusal is None:
        return []
    version, error = refusal
    if found := re.search(r"Unsupported model IR version: \d+, max supported IR version: (\d+)", error):
        newest = found.group(1)
        return [Finding("runtime-cannot-load", "(model)",
                        f"IR version {ir_version} is newer than onnxruntime {version} loads (at most {newest})",
                        f"upgrade onnxruntime, or save the model with ir_version = {newest}")]
    if found := re.search(r"support for domain ai\.onnx is till opset (\d+)", error):
        newest = found.group(1)
        return [Finding("runtime-cannot-load", "(model)",
                        f"opset {opset} is newer than onnxruntime {version} loads (at most {newest})",
                        f"upgrade onnxruntime, or convert the model to opset {newest} (onnx.version_converter)")]
    cause = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (\S+:\d+ .*?\) )?", "", error)
    return [Finding("runtime-cannot-load", "(model)",
                    f"onnxruntime {version} cannot load a model of IR version {ir_version}, opset {opset}: {cause}",
                    "upgrade onnxruntime, or re-export the model with an older onnx")]


@functools.cache
def runtime_refusal(ir_version: int, opset: int) -> tuple[str, str] | None:
    """(onnxruntime version, its error) when the installed ONNX Runtime refuses a model stamped with this IR
    version and default-domain opset; None when it loads one, or cannot be asked.

    A one-Identity probe model with those stamps is loaded once per pair, in a child process: `check` itself
    never imports ONNX Runtime, and never opens a session on the (maybe large) model.
    """
    import json
    import subprocess
    import sys

    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    probe.ir_version = ir_version
    try:
        done = subprocess.run([sys.executable, "-c", RUNTIME_PROBE], input=probe.SerializeToString(),
                              capture_output=True, timeout=300, check=True)
        answer = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None  # no onnxruntime, or it crashed: nothing to say about the model
    return None if answer["error"] is None else (answer["version"], answer["error"])


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
    from normfold.output_paths import is_folder

    files: list[Path] = []
    for path in paths:
        files += sorted(path.rglob("*.onnx")) if is_folder(path) else [path]
    return files

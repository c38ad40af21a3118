"""`normfold check`: is a model deployment-ready? Each finding names the node, the rule and the fix.

Rules (the RULES registry): what `fold` would still change (foldable-bn, foldable-affine, inference-dropout, read
from the reason codes of one run of its passes), training-mode nodes
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

@dataclasses.dataclass(frozen=True)
class Rule:
    """A check rule: its name, what it flags (SARIF's short description) and the usual fix (`{path}` is the
    model's path; a finding may carry a more specific one)."""

    name: str
    description: str
    fix: str


_EVAL_FIX = "normfold mode --eval {path} (or normfold fold --eval {path})"
_CALIBRATE_FIX = "re-estimate statistics with normfold calibrate"
RULES = {rule.name: rule for rule in (
    Rule("runtime-cannot-load", "a model whose IR version or opset is newer than the installed ONNX Runtime loads",
         "upgrade onnxruntime, or convert the model to an older IR version or opset"),
    Rule("foldable-bn", "a BatchNormalization that normfold fold can fold into its neighbour", "normfold fold {path}"),
    Rule("foldable-affine", "a per-channel Mul/Div/Add/Sub by a constant that normfold fold can fold into its layer",
         "normfold fold {path}"),
    Rule("inference-dropout", "an inference-time Dropout that normfold fold removes", "normfold fold {path}"),
    Rule("training-bn", "a BatchNormalization in training mode (TensorRT refuses it)", _EVAL_FIX),
    Rule("training-dropout", "a Dropout in training mode (samples masks at run time)", _EVAL_FIX),
    Rule("bn-nonfinite", "BatchNormalization parameters with NaN or Inf",
         "re-export the model, or " + _CALIBRATE_FIX),
    Rule("bn-negative-variance", "a BatchNormalization with a negative running variance", _CALIBRATE_FIX),
    Rule("non-positive-epsilon", "a BatchNormalization with epsilon <= 0", "set epsilon > 0"),
    Rule("bn-fp16-overflow", "a BatchNormalization whose fold would overflow its dtype or lose precision in subnormals",
         "keep it unfolded, or fold in float32 and convert to float16 afterwards"),
    Rule("dropout-before-bn", "a Dropout feeding a BatchNormalization directly (it corrupts the batch statistics in "
         "training)", "change the architecture and re-export"),
    Rule("high-drop-ratio", "a Dropout ratio above 0.7 (tends to underfit)", "change the architecture and re-export"),
    Rule("bn-batch-below-2", "a training-mode BatchNormalization over a static batch below 2 (degenerate batch "
         "statistics)", "change the architecture and re-export"),
)}


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
    from normfold.folding import fold
    from normfold.graph_walk import is_op, iter_scopes, node_label
    from normfold.lints import training_lints
    from normfold.modes import bn_training_form, dropout_training_form
    from normfold.passes.fold_affine import AFFINE_OPS
    from normfold.records import ROUNDING

    found = _parameter_findings(model, path)
    for record in fold(model).records:  # what fold would change, from one run of its passes and their codes
        if record.action == "stripped":
            found.append(_finding("inference-dropout", record.node, "an inference Dropout is the identity; remove it",
                                  path))
        elif record.action == "folded" and record.op_type == "BatchNormalization":
            found.append(_finding("foldable-bn", record.node, f"can be folded {record.detail}", path))
        elif record.action == "folded" and record.op_type in AFFINE_OPS:
            found.append(_finding("foldable-affine", record.node, f"{record.op_type} can be folded {record.detail}",
                                  path))
        elif record.reason == ROUNDING and record.op_type == "BatchNormalization":
            found.append(_finding("bn-fp16-overflow", record.node, record.detail, path))
    training = set()
    for scope in iter_scopes(model):
        for node in scope.body:
            if is_op(node, "BatchNormalization") and (form := bn_training_form(scope.opset, node)):
                training.add(node_label(node))
                found.append(_finding("training-bn", node_label(node), f"{form}: normalizes with batch statistics; "
                                      "TensorRT refuses training-mode BatchNormalization", path))
            elif is_op(node, "Dropout") and (form := dropout_training_form(scope.opset, node)):
                found.append(_finding("training-dropout", node_label(node), form, path))
    for lint in training_lints(model):
        # epsilon is judged above; batch statistics (and so a batch below 2) exist only in training mode
        if lint.rule == "non-positive-epsilon" or (lint.rule == "bn-batch-below-2" and lint.node not in training):
            continue
        found.append(_finding(lint.rule, lint.node, lint.message, path))
    return found


def _finding(rule: str, node: str, message: str, path: str) -> Finding:
    """A finding of a registered rule, with the rule's fix for this model."""
    return Finding(rule, node, message, RULES[rule].fix.format(path=path))


def _parameter_findings(model: ir.Model, path: str) -> list[Finding]:
    from normfold.graph_edit import constant_array
    from normfold.graph_walk import is_op, iter_scopes, node_label
    from normfold.modes import bn_epsilon, bn_parameter_faults

    found = []
    for scope in iter_scopes(model):
        for bn in scope.body:
            if not is_op(bn, "BatchNormalization"):
                continue
            label = node_label(bn)
            epsilon = bn_epsilon(bn)
            faults = bn_parameter_faults([constant_array(v) for v in bn.inputs[1:5]], epsilon)
            if faults.nonfinite:
                found.append(_finding("bn-nonfinite", label, "scale, bias, mean or variance holds NaN or Inf", path))
            if faults.negative_variance:
                found.append(_finding("bn-negative-variance", label,
                                      f"{faults.negative_variance} channel(s) have a negative variance", path))
            if epsilon <= 0:
                found.append(_finding("non-positive-epsilon", label,
                                      f"epsilon={epsilon:g}: a zero variance divides by zero", path))
    return found


def model_files(paths: Iterable[Path]) -> list[Path]:
    """The given files, and every *.onnx below the given folders, sorted."""
    from normfold.model_folders import onnx_files
    from normfold.output_paths import is_folder

    files: list[Path] = []
    for path in paths:
        files += onnx_files(path) if is_folder(path) else [path]
    return files

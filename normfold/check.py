"""`normfold check`: is a model deployment-ready? Each finding names the node, the rule and the fix.

Rules (the RULES registry: name, description, fix and the predicate that finds it): what `fold` would still
change (foldable-bn, foldable-affine, inference-dropout, bn-fp16-overflow: read from the records and reason codes
of one run of its passes), training-mode nodes
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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normfold.reason_codes import ROUNDING

if TYPE_CHECKING:
    import onnx_ir as ir

    from normfold.records import NodeRecord


@dataclasses.dataclass(frozen=True)
class CheckContext:
    """What the rules read: the model, its path (for fixes), and the records of one run of fold's passes."""

    model: ir.Model
    path: str
    records: list[NodeRecord]


@dataclasses.dataclass(frozen=True)
class Rule:
    """A check rule: its name, what it flags (SARIF's short description), the usual fix (`{path}` is the model's
    path; a finding may carry a more specific one) and the predicate that finds it."""

    name: str
    description: str
    fix: str
    find: Callable[[CheckContext], list[Finding]]

    def finding(self, context: CheckContext, node: str, message: str, fix: str | None = None) -> Finding:
        """A finding of this rule, with its fix for this model."""
        return Finding(self.name, node, message, fix or self.fix.format(path=context.path))


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
    """All findings of the enabled rules for the model at `path`; an unusable file gives `error`."""
    from normfold.errors import NormfoldError
    from normfold.folding import fold
    from normfold.model_reading import load_model

    off = set(disabled)
    try:
        model = load_model(path)
        context = CheckContext(model, str(path), fold(model).records)
        findings = [found for rule in RULES.values() if rule.name not in off for found in rule.find(context)]
    except NormfoldError as error:
        return ModelCheck(str(path), [], str(error))
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


def _runtime_cannot_load(context: CheckContext) -> list[Finding]:
    """The model's IR version or default-domain opset is newer than the installed ONNX Runtime loads (it would
    refuse the model before reading a node)."""
    model, rule = context.model, RULES["runtime-cannot-load"]
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
        return [
            rule.finding(
                context,
                "(model)",
                f"IR version {ir_version} is newer than onnxruntime {version} loads (at most {newest})",
                f"upgrade onnxruntime, or save the model with ir_version = {newest}",
            )
        ]
    if found := re.search(r"support for domain ai\.onnx is till opset (\d+)", error):
        newest = found.group(1)
        return [
            rule.finding(
                context,
                "(model)",
                f"opset {opset} is newer than onnxruntime {version} loads (at most {newest})",
                f"upgrade onnxruntime, or convert the model to opset {newest} (onnx.version_converter)",
            )
        ]
    cause = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (\S+:\d+ .*?\) )?", "", error)
    return [
        rule.finding(
            context,
            "(model)",
            f"onnxruntime {version} cannot load a model of IR version {ir_version}, opset {opset}: {cause}",
            "upgrade onnxruntime, or re-export the model with an older onnx",
        )
    ]


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

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    probe.ir_version = ir_version
    try:
        done = subprocess.run(
            [sys.executable, "-c", RUNTIME_PROBE],
            input=probe.SerializeToString(),
            capture_output=True,
            timeout=300,
            check=True,
        )
        answer = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None  # no onnxruntime, or it crashed: nothing to say about the model
    return None if answer["error"] is None else (answer["version"], answer["error"])


def _from_records(
    rule: str, action: str, op_types: tuple[str, ...], message: str
) -> Callable[[CheckContext], list[Finding]]:
    """A predicate over fold's records: each record of these op types with this action (or, for 'rounding',
    a skip with that reason code) is a finding; `message` is formatted with the record's op_type and detail."""

    def find(context: CheckContext) -> list[Finding]:
        return [
            RULES[rule].finding(context, r.node, message.format(op_type=r.op_type, detail=r.detail))
            for r in context.records
            if r.op_type in op_types and (r.action == action or (action == ROUNDING and r.reason == ROUNDING))
        ]

    return find


def _training_nodes(op_type: str) -> Callable[[CheckContext], list[Finding]]:
    """A predicate: each BatchNormalization or Dropout that runs in training mode, in its opset's terms."""

    def find(context: CheckContext) -> list[Finding]:
        from normfold.graph_walk import is_op, iter_scopes, node_label
        from normfold.modes import bn_training_form, dropout_training_form

        rule = RULES["training-bn" if op_type == "BatchNormalization" else "training-dropout"]
        found = []
        for scope in iter_scopes(context.model):
            for node in scope.body:
                if not is_op(node, op_type):
                    continue
                if op_type == "Dropout":
                    if form := dropout_training_form(scope.opset, node):
                        found.append(rule.finding(context, node_label(node), form))
                elif form := bn_training_form(scope.opset, node):
                    message = (
                        f"{form}: normalizes with batch statistics; TensorRT refuses training-mode BatchNormalization"
                    )
                    found.append(rule.finding(context, node_label(node), message))
        return found

    return find


def _bn_parameters(fault: str) -> Callable[[CheckContext], list[Finding]]:
    """A predicate over every BN's constant parameters (modes.bn_parameter_faults) and epsilon."""

    def find(context: CheckContext) -> list[Finding]:
        from normfold.graph_edit import constant_array
        from normfold.graph_walk import is_op, iter_scopes, node_label
        from normfold.modes import bn_epsilon, bn_parameter_faults

        rule = RULES[fault]
        found = []
        for scope in iter_scopes(context.model):
            for bn in scope.body:
                if not is_op(bn, "BatchNormalization"):
                    continue
                epsilon = bn_epsilon(bn)
                faults = bn_parameter_faults([constant_array(v) for v in bn.inputs[1:5]], epsilon)
                message = {
                    "bn-nonfinite": "scale, bias, mean or variance holds NaN or Inf" if faults.nonfinite else "",
                    "bn-negative-variance": f"{faults.negative_variance} channel(s) have a negative variance"
                    if faults.negative_variance
                    else "",
                    "non-positive-epsilon": f"epsilon={epsilon:g}: a zero variance divides by zero"
                    if epsilon <= 0
                    else "",
                }[fault]
                if message:
                    found.append(rule.finding(context, node_label(bn), message))
        return found

    return find


def _lint(name: str) -> Callable[[CheckContext], list[Finding]]:
    """A predicate from normfold.lints' training-side lints; batch statistics (and so a batch below 2) exist
    only in training mode."""

    def find(context: CheckContext) -> list[Finding]:
        from normfold.lints import training_lints

        training = {f.node for f in _training_nodes("BatchNormalization")(context)}
        return [
            RULES[name].finding(context, lint.node, lint.message)
            for lint in training_lints(context.model)
            if lint.rule == name and (name != "bn-batch-below-2" or lint.node in training)
        ]

    return find


_EVAL_FIX = "normfold mode --eval {path} (or normfold fold --eval {path})"
_CALIBRATE_FIX = "re-estimate statistics with normfold calibrate"
_REEXPORT_FIX = "change the architecture and re-export"
_FOLD_FIX = "normfold fold {path}"
RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            "runtime-cannot-load",
            "a model whose IR version or opset is newer than the installed ONNX Runtime loads",
            "upgrade onnxruntime, or convert the model to an older IR version or opset",
            _runtime_cannot_load,
        ),
        Rule(
            "foldable-bn",
            "a BatchNormalization that normfold fold can fold into its neighbour",
            _FOLD_FIX,
            _from_records("foldable-bn", "folded", ("BatchNormalization",), "can be folded {detail}"),
        ),
        Rule(
            "foldable-affine",
            "a per-channel Mul/Div/Add/Sub by a constant that normfold fold can fold into its layer",
            _FOLD_FIX,
            _from_records(
                "foldable-affine", "folded", ("Mul", "Div", "Add", "Sub"), "{op_type} can be folded {detail}"
            ),
        ),
        Rule(
            "inference-dropout",
            "an inference-time Dropout that normfold fold removes",
            _FOLD_FIX,
            _from_records(
                "inference-dropout", "stripped", ("Dropout",), "an inference Dropout is the identity; remove it"
            ),
        ),
        Rule(
            "training-bn",
            "a BatchNormalization in training mode (TensorRT refuses it)",
            _EVAL_FIX,
            _training_nodes("BatchNormalization"),
        ),
        Rule(
            "training-dropout",
            "a Dropout in training mode (samples masks at run time)",
            _EVAL_FIX,
            _training_nodes("Dropout"),
        ),
        Rule(
            "bn-nonfinite",
            "BatchNormalization parameters with NaN or Inf",
            "re-export the model, or " + _CALIBRATE_FIX,
            _bn_parameters("bn-nonfinite"),
        ),
        Rule(
            "bn-negative-variance",
            "a BatchNormalization with a negative running variance",
            _CALIBRATE_FIX,
            _bn_parameters("bn-negative-variance"),
        ),
        Rule(
            "non-positive-epsilon",
            "a BatchNormalization with epsilon <= 0",
            "set epsilon > 0",
            _bn_parameters("non-positive-epsilon"),
        ),
        Rule(
            "bn-fp16-overflow",
            "a BatchNormalization whose fold would overflow its dtype or lose precision in subnormals",
            "keep it unfolded, or fold in float32 and convert to float16 afterwards",
            _from_records("bn-fp16-overflow", ROUNDING, ("BatchNormalization",), "{detail}"),
        ),
        Rule(
            "dropout-before-bn",
            "a Dropout feeding a BatchNormalization directly (it corrupts the batch statistics in training)",
            _REEXPORT_FIX,
            _lint("dropout-before-bn"),
        ),
        Rule(
            "high-drop-ratio",
            "a Dropout ratio above 0.7 (tends to underfit)",
            _REEXPORT_FIX,
            _lint("high-drop-ratio"),
        ),
        Rule(
            "bn-batch-below-2",
            "a training-mode BatchNormalization over a static batch below 2 (degenerate batch statistics)",
            _REEXPORT_FIX,
            _lint("bn-batch-below-2"),
        ),
    )
}


def model_files(paths: Iterable[Path]) -> list[Path]:
    """The given files, and every *.onnx below the given folders, sorted."""
    from normfold.model_folders import onnx_files
    from normfold.output_paths import is_folder

    files: list[Path] = []
    for path in paths:
        files += onnx_files(path) if is_folder(path) else [path]
    return files

"""`normfold mode`: switch a model's BatchNormalization and Dropout nodes between training and inference.

Its options are declared in mode_declaration.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from normfold.atomic_write import save_model
from normfold.errors import EXIT_USAGE, NormfoldError
from normfold.external_data import has_external_data
from normfold.lints import training_lints
from normfold.model_reading import load_model
from normfold.output_paths import check_output_path
from normfold.passes.set_inference_mode import SetInferenceModePass
from normfold.passes.set_training_mode import DEFAULT_FLAG, SetTrainingModePass
from normfold.records import RewriteResult
from normfold.report_version import REPORT_VERSION

from .deprecated_options import momentum_advice, replace_deprecated


def run_mode(
    model: Path,
    to_train: bool,
    to_eval: bool,
    batch_stats: bool,
    flag: str,
    momentum: float | None,
    alpha: float | None,
    running_var: str | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """`normfold mode`, with the options that mode_declaration declares (and documents)."""
    if to_train == to_eval:
        raise NormfoldError("give exactly one of --train and --eval", exit_code=EXIT_USAGE)
    if momentum is not None and alpha is not None:
        raise NormfoldError(
            "--momentum (ONNX: weight of the old value) and --alpha (weight of the new value) "
            "say the same thing two ways; give one",
            exit_code=EXIT_USAGE,
        )
    if to_eval and (momentum is not None or alpha is not None or flag != DEFAULT_FLAG or running_var is not None):
        raise NormfoldError("--momentum, --alpha, --flag and --running-var apply with --train", exit_code=EXIT_USAGE)
    if alpha is not None:
        replace_deprecated("--alpha", "--momentum", "mode", momentum_advice(alpha))
        momentum = 1.0 - alpha
    if to_train and batch_stats:
        raise NormfoldError("--batch-stats applies with --eval", exit_code=EXIT_USAGE)
    suffix = "train" if to_train else "eval"
    target = output or model.with_name(f"{model.stem}.{suffix}{model.suffix or '.onnx'}")
    loaded = load_model(model)
    input_files = check_output_path(target, model, loaded)
    lints = []
    result: RewriteResult
    if to_train:
        result = SetTrainingModePass(flag, momentum, running_var or "biased")(loaded)
        lints = training_lints(loaded)
    else:
        result = SetInferenceModePass(batch_stats)(loaded)
    save_model(result.model, target, external_data=has_external_data(loaded), protected=input_files)
    if as_json:
        document = {
            "normfold_report": "mode",
            "version": REPORT_VERSION,
            "mode": suffix,
            "input": str(model),
            "output": str(target),
            "nodes": [r.to_dict() for r in result.records],
            "lints": [dataclasses.asdict(lint) for lint in lints],
        }
        click.echo(json.dumps(document, indent=2))
        return
    for record in result.records:
        click.echo(record.to_line())
    for lint in lints:
        click.echo(lint.to_line())
    changed = sum(r.action != "skipped" for r in result.records)
    mode = "training-switchable" if to_train else "inference mode"
    click.echo(f"switched {changed} node(s) to {mode}, left {len(result.records) - changed}")
    click.echo(f"wrote {target}")

"""`normfold mode`: switch a model's BatchNormalization and Dropout nodes between training and inference."""

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
from normfold.passes import SetInferenceModePass, SetTrainingModePass
from normfold.passes.set_training_mode import DEFAULT_FLAG, RUNNING_VARIANCES
from normfold.records import RewriteResult
from normfold.report_version import REPORT_VERSION

from .deprecated_options import deprecated_option, momentum_advice, replace_deprecated
from .finite_float import FiniteFloat


@click.command("mode")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--train",
    "to_train",
    is_flag=True,
    help="Build the training-side graph: a boolean input switches every BN and Dropout together.",
)
@click.option(
    "--eval",
    "to_eval",
    is_flag=True,
    help="Switch every training-mode BN and Dropout (and --train switches) to inference mode.",
)
@click.option(
    "--batch-stats",
    is_flag=True,
    help="With --eval: where running statistics are unusable, compute batch statistics instead.",
)
@click.option("--flag", default=DEFAULT_FLAG, show_default=True, help="With --train: name of the boolean input.")
@click.option(
    "--momentum",
    type=FiniteFloat(0, 1),
    help="With --train: BN momentum as ONNX defines it, the weight of the OLD running statistic "
    "(running = m*running + (1-m)*batch; PyTorch's momentum=0.1 is 0.9 here) [default: each BN's own].",
)
@deprecated_option("--alpha", "--momentum", type=FiniteFloat(0, 1))
@click.option(
    "--running-var",
    type=click.Choice(RUNNING_VARIANCES),
    help="With --train: the batch variance that updates the running variance: biased (ONNX's convention) or "
    "unbiased (PyTorch's: times n/(n-1), n = values per channel in the batch) [default: biased].",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write (default: MODEL.train.onnx or MODEL.eval.onnx beside MODEL).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as a JSON document instead of text.")
def mode_command(
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
    """Switch BatchNormalization and Dropout between training and inference mode.

    --eval: BN normalizes with its running statistics, Dropout is the identity. A BN whose running
    statistics are unusable (never tracked: mean 0 / variance 1) is left as it is with the reason,
    unless --batch-stats rewrites it to compute batch statistics without training_mode.
    --train: one boolean input (default false) switches every BN to batch statistics, with its updated
    running statistics as extra outputs (--running-var: from the biased or the unbiased batch variance),
    and every Dropout to sampling masks.
    """
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

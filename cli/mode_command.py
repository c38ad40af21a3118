"""`normfold mode`: switch a model's BatchNormalization and Dropout nodes between modes."""

from __future__ import annotations

import json
from pathlib import Path

import click

from normfold.errors import EXIT_USAGE, NormfoldError
from normfold.io import has_external_data, load_model, save_model
from normfold.passes import SetInferenceModePass


@click.command("mode")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--eval", "to_eval", is_flag=True, required=True,
              help="Switch every training-mode BatchNormalization and Dropout to inference mode.")
@click.option("--batch-stats", is_flag=True,
              help="Where running statistics are unusable, compute batch statistics with inference operators.")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write (default: MODEL.eval.onnx beside MODEL).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as a JSON document instead of text.")
def mode_command(model: Path, to_eval: bool, batch_stats: bool, output: Path | None, as_json: bool) -> None:
    """Switch MODEL's BatchNormalization and Dropout nodes to inference mode.

    In inference mode BN normalizes with its running statistics and Dropout is the identity.
    A BN whose running statistics are unusable (never tracked: mean 0 / variance 1) is left as it is
    with the reason, unless --batch-stats rewrites it to compute batch statistics without training_mode.
    """
    target = output or model.with_name(f"{model.stem}.eval{model.suffix or '.onnx'}")
    if target.resolve() == model.resolve():
        raise NormfoldError(f"{target}: refusing to overwrite the input", exit_code=EXIT_USAGE)
    loaded = load_model(model)
    result = SetInferenceModePass(batch_stats)(loaded)
    save_model(result.model, target, external_data=has_external_data(loaded))
    if as_json:
        document = {"normfold_report": "mode", "version": 1, "input": str(model), "output": str(target),
                    "nodes": [r.to_dict() for r in result.records]}
        click.echo(json.dumps(document, indent=2))
        return
    for record in result.records:
        click.echo(record.to_line())
    changed = sum(r.action != "skipped" for r in result.records)
    click.echo(f"switched {changed} node(s) to inference mode, left {len(result.records) - changed}")
    click.echo(f"wrote {target}")

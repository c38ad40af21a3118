"""`normfold fold`: parse options, call normfold.fold, print the report."""

from __future__ import annotations

import json
from pathlib import Path

import click

from normfold.errors import EXIT_USAGE, NormfoldError
from normfold.fold import fold
from normfold.io import has_external_data, load_model, save_model


def default_output(model_path: Path) -> Path:
    """`model.onnx` -> `model.folded.onnx` beside it."""
    return model_path.with_name(f"{model_path.stem}.folded{model_path.suffix or '.onnx'}")


@click.command("fold")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=True))
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Where to write (default: MODEL.folded.onnx beside MODEL).")
@click.option("--in-place", is_flag=True, help="Replace MODEL itself (the only way to overwrite the input).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as a JSON document instead of text.")
@click.option("--simplify", is_flag=True, help="Also fold constants and remove dead code (onnxscript), around the fold.")
def fold_command(model: Path, output: Path | None, in_place: bool, as_json: bool, simplify: bool) -> None:
    """Fold every BatchNormalization and strip every inference Dropout in MODEL.

    Each BN is folded into the weights of the adjacent Conv, ConvTranspose, Gemm or MatMul, computed
    in float64 and rounded once. What cannot be folded is left unchanged, with the reason printed.
    """
    if in_place and output is not None:
        raise NormfoldError("--in-place and --output exclude each other", exit_code=EXIT_USAGE)
    target = model if in_place else (output or default_output(model))
    if not in_place and target.resolve() == model.resolve():
        raise NormfoldError(f"{target}: refusing to overwrite the input; use --in-place", exit_code=EXIT_USAGE)
    loaded = load_model(model)
    result = fold(loaded, simplify=simplify)
    save_model(result.model, target, external_data=has_external_data(loaded))
    if as_json:
        report = result.to_dict() | {"input": str(model), "output": str(target)}
        click.echo(json.dumps(report, indent=2))
        return
    for record in result.records:
        click.echo(record.to_line())
    click.echo(result.summary())
    click.echo(f"wrote {target}")

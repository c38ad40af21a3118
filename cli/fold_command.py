"""`normfold fold`: parse options, call normfold.fold (and validate), print the report."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import click

from normfold.cli.validation_options import validation_kwargs, validation_options
from normfold.errors import EXIT_MISMATCH, EXIT_USAGE, NormfoldError
from normfold.fold import fold
from normfold.io import check_output_path, has_external_data, load_model, model_files, save_model
from normfold.validate import ValidationReport, validate
from normfold.validate.stochastic import NotComparableError


def default_output(model_path: Path) -> Path:
    """`model.onnx` -> `model.folded.onnx` beside it."""
    return model_path.with_name(f"{model_path.stem}.folded{model_path.suffix or '.onnx'}")


@click.command("fold")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=True))
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Where to write (default: MODEL.folded.onnx beside MODEL).")
@click.option("--in-place", is_flag=True, help="Replace MODEL itself (the only way to overwrite the input).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as a JSON document instead of text.")
@click.option("--simplify", is_flag=True, help="Also fold constants and remove dead code (onnxscript), around the fold.")
@click.option("--eval", "eval_mode", is_flag=True,
              help="First switch training-mode BN and Dropout to inference mode (as `normfold mode --eval`).")
@click.option("--batch-stats", is_flag=True,
              help="With --eval: where running statistics are unusable, compute batch statistics instead.")
@click.option("--validate/--no-validate", "check", default=True, show_default=True,
              help="Validate the folded model against MODEL before writing it; a mismatch writes nothing (exit 1).")
@validation_options
def fold_command(model: Path, output: Path | None, in_place: bool, as_json: bool, simplify: bool, eval_mode: bool,
                 batch_stats: bool, check: bool, **options: Any) -> None:
    """Fold every BatchNormalization and strip every inference Dropout in MODEL.

    Each BN is folded into the weights of the adjacent Conv, ConvTranspose, Gemm or MatMul, computed
    in float64 and rounded once. What cannot be folded is left unchanged, with the reason printed.
    The result is validated on ONNX Runtime before it is written.
    """
    if in_place and output is not None:
        raise NormfoldError("--in-place and --output exclude each other", exit_code=EXIT_USAGE)
    target = model if in_place else (output or default_output(model))
    kwargs = validation_kwargs(options)
    loaded = load_model(model)
    check_output_path(target, model, loaded, in_place=in_place)
    old_files = model_files(model, loaded) - {model.resolve()} if in_place else set()
    if batch_stats and not eval_mode:
        raise NormfoldError("--batch-stats applies with --eval", exit_code=EXIT_USAGE)
    result = fold(loaded, simplify=simplify, eval_mode=eval_mode, batch_stats=batch_stats)
    reports: list[ValidationReport] = []

    def verify(staged: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="normfold-eval-") as folder:
            reference = model
            if result.inference_model is not None:
                reference = Path(folder) / f"{model.stem}.eval.onnx"
                save_model(result.inference_model, reference, external_data=has_external_data(loaded))
            try:
                report = validate(reference, staged, **kwargs)
            except NotComparableError as error:
                _print(result, reports, model, target, as_json, written=False)
                raise NormfoldError(f"cannot validate the folded model, so nothing was written ({error}); "
                                    "--no-validate writes it without validation") from None
        if result.inference_model is not None:
            report.notes.insert(0, f"reference: {model} switched to inference mode (--eval)")
            report.reference = f"{model} (inference mode)"
        reports.append(report)
        if not report.passed:
            _print(result, reports, model, target, as_json, written=False)
            worst = report.failures[0]
            raise NormfoldError(f"the folded model differs from {model}; nothing written ({worst.to_line()})",
                                exit_code=EXIT_MISMATCH)

    save_model(result.model, target, external_data=has_external_data(loaded), verify=verify if check else None,
               replaced_files=old_files)
    _print(result, reports, model, target, as_json, written=True)


def _print(result, reports: list[ValidationReport], model: Path, target: Path, as_json: bool, written: bool) -> None:
    if as_json:
        document = result.to_dict() | {"input": str(model), "output": str(target) if written else None}
        document["validation"] = reports[0].to_dict() if reports else None
        click.echo(json.dumps(document, indent=2))
        return
    for record in result.records:
        click.echo(record.to_line())
    click.echo(result.summary())
    for report in reports:
        for line in report.lines()[1:]:
            click.echo(f"validate: {line}")
    if written:
        click.echo(f"wrote {target}")

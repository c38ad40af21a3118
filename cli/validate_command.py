"""`normfold validate`: parse options, call normfold.validate, print the verdict, exit with its code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from normfold.cli.batch import run_batch
from normfold.cli.validation_options import validation_kwargs, validation_options
from normfold.errors import EXIT_OK, EXIT_USAGE, NormfoldError
from normfold.validate import validate


@click.command("validate")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path), required=False)
@click.option("--expected", type=click.Path(path_type=Path),
              help="A test_data_set folder whose output_*.pb REFERENCE must reproduce (instead of a CANDIDATE).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as a versioned JSON document.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="With two folders: validate this many pairs in parallel processes.")
@validation_options
@click.pass_context
def validate_command(ctx: click.Context, reference: Path, candidate: Path | None, expected: Path | None,
                     as_json: bool, jobs: int, **options: Any) -> None:
    """Check that CANDIDATE computes what REFERENCE computes, output by output.

    Two folders compare every *.onnx under REFERENCE with the file at the same relative path under
    CANDIDATE, one line per pair. Exit codes: 0 equivalent, 1 not equivalent, 2 usage error,
    3 unusable input or provider.
    """
    kwargs = validation_kwargs(options)
    if reference.is_dir():
        if candidate is None or not candidate.is_dir() or expected is not None:
            raise NormfoldError("a REFERENCE folder needs a CANDIDATE folder (and no --expected)", exit_code=EXIT_USAGE)
        ctx.exit(_validate_folders(reference, candidate, kwargs, jobs, as_json))
    report = validate(reference, candidate, expected=expected, **kwargs)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for line in report.lines():
            click.echo(line)
    ctx.exit(report.return_code)


def _validate_folders(reference: Path, candidate: Path, kwargs: dict[str, Any], jobs: int, as_json: bool) -> int:
    pairs = [(path, candidate / path.relative_to(reference)) for path in sorted(reference.rglob("*.onnx"))]
    if not pairs:
        raise NormfoldError(f"{reference}: no .onnx files", exit_code=EXIT_USAGE)
    rows, worst = [], EXIT_OK
    for (ref, cand), (status, detail, code) in run_batch(_validate_pair, pairs, kwargs, jobs, "validating", not as_json):
        worst = max(worst, code)
        rows.append({"status": status, "reference": str(ref), "candidate": str(cand), "detail": detail})
        if not as_json:
            click.echo(f"{status:9} {ref} -> {cand}: {detail}")
    if as_json:
        click.echo(json.dumps({"normfold_report": "validate-batch", "version": 1, "exit_code": worst, "pairs": rows},
                              indent=2))
    else:
        click.echo(f"{sum(r['status'] == 'PASSED' for r in rows)} of {len(rows)} pair(s) equivalent")
    return worst


def _validate_pair(pair: tuple[Path, Path], kwargs: dict[str, Any]) -> tuple[str, str, int]:
    """One pair of a folder comparison; a user error becomes the row, never an exception."""
    reference, candidate = pair
    try:
        report = validate(reference, candidate, **kwargs)
    except NormfoldError as error:
        return "UNUSABLE", str(error), error.exit_code
    if report.passed:
        return "PASSED", f"{len(report.comparisons)} output comparison(s) on {', '.join(report.providers)}", EXIT_OK
    return "FAILED", report.failures[0].to_line(), report.return_code

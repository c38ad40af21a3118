"""`normfold validate`: parse options, call normfold.validate, print the verdict, exit with its code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from normfold.cli.validation_options import validation_kwargs, validation_options
from normfold.validate import validate


@click.command("validate")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path), required=False)
@click.option("--expected", type=click.Path(path_type=Path),
              help="A test_data_set folder whose output_*.pb REFERENCE must reproduce (instead of a CANDIDATE).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as a versioned JSON document.")
@validation_options
@click.pass_context
def validate_command(ctx: click.Context, reference: Path, candidate: Path | None, expected: Path | None,
                     as_json: bool, **options: Any) -> None:
    """Check that CANDIDATE computes what REFERENCE computes, output by output.

    Exit codes: 0 equivalent, 1 not equivalent, 2 usage error, 3 unusable input or provider.
    """
    report = validate(reference, candidate, expected=expected, **validation_kwargs(options))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for line in report.lines():
            click.echo(line)
    ctx.exit(report.return_code)

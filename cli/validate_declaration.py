"""`normfold validate`: its arguments, options and help; the command runs validate_command.run_validate.

This module imports click and light modules only, so that `normfold validate --help` loads neither onnx,
onnx_ir nor numpy (seconds of start-up); validate_command imports them when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .batch_options import jobs_option, report_option
from .validation_options import validation_options
from .verbosity import verbosity_options


@click.command("validate")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path), required=False)
@click.option(
    "--expected",
    type=click.Path(path_type=Path),
    help="A test_data_set folder whose output_*.pb REFERENCE must reproduce (instead of a CANDIDATE).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as a versioned JSON document.")
@jobs_option("With two folders: validate this many pairs in parallel processes.")
@report_option(
    "Also write a self-contained HTML page (verdict, operator counts, error histograms per output), "
    "also when validation fails; one pair only.",
)
@verbosity_options
@validation_options
@click.pass_context
def validate_command(ctx: click.Context, **arguments: Any) -> None:
    """Check that CANDIDATE computes what REFERENCE computes, output by output.

    Two folders compare every *.onnx under REFERENCE with the file at the same relative path under
    CANDIDATE, one line per pair. Exit codes: 0 equivalent, 1 not equivalent, 2 usage error,
    3 unusable input or provider. Lines fit 100 columns; -v prints every figure, -q only the verdict.
    """
    from .validate_command import run_validate

    run_validate(ctx, **arguments)

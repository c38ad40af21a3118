"""`normfold validate`: call normfold.validate, print the verdict, exit with its code.

Its options are declared in validate_declaration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from normfold.columns import WIDTH, Cuttable, Squeezable, fit
from normfold.errors import EXIT_USAGE, NormfoldError
from normfold.html_report import check_page_path, file_op_counts, validation_page, write_page
from normfold.model_folders import onnx_files
from normfold.output_paths import is_folder
from normfold.validate import ValidationConfig, ValidationReport, validate

from .batch import (
    BatchReport,
    error_reason,
    failure_reason,
    figure,
    max_abs,
    run_and_report,
    worst_comparison,
)
from .batch_table import shorten
from .validation_options import validation_config
from .verbosity import PhaseProgress, Style, output_style


def run_validate(
    ctx: click.Context,
    reference: Path,
    candidate: Path | None,
    expected: Path | None,
    as_json: bool,
    jobs: int,
    page_path: Path | None,
    **options: Any,
) -> None:
    """`normfold validate`, with the options that validate_declaration declares (and documents)."""
    style = output_style(as_json, options.pop("verbose"), options.pop("quiet"))
    config = validation_config(options)
    if is_folder(reference):
        if candidate is None or not is_folder(candidate) or expected is not None:
            raise NormfoldError("a REFERENCE folder needs a CANDIDATE folder (and no --expected)", exit_code=EXIT_USAGE)
        if page_path is not None:
            raise NormfoldError(
                "--report writes the page of one comparison; give a REFERENCE and a CANDIDATE model, not folders",
                exit_code=EXIT_USAGE,
            )
        ctx.exit(_validate_folders(reference, candidate, config, jobs, style))
    if page_path is not None:
        check_page_path(page_path, [path for path in (reference, candidate) if path is not None])
    with PhaseProgress.on_terminal(style) as progress:
        progress.phase("validate")
        report = validate(reference, candidate, expected=expected, config=config)
    if style == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for line in report.lines(None if style == "verbose" else WIDTH)[-1 if style == "quiet" else 0 :]:
            click.echo(line)
    if page_path is not None:
        candidate_ops = file_op_counts(candidate) if candidate is not None else None
        write_page(
            page_path, validation_page(report, reference_ops=file_op_counts(reference), candidate_ops=candidate_ops)
        )
        if style in ("default", "verbose"):
            click.echo(
                f"wrote report {page_path}"
                if style == "verbose"
                else fit(["wrote report ", Squeezable(str(page_path))])
            )
    ctx.exit(report.return_code)


VALIDATE_HEADER = ("REFERENCE", "CANDIDATE", "STATUS", "MAX ABS", "WORST OUTPUT", "PROVIDERS", "EXIT", "REASON")
SHORT_VALIDATE_HEADER = ("MODEL", "STATUS", "MAX ABS", "WORST OUTPUT", "EXIT", "REASON")


def _validate_folders(reference: Path, candidate: Path, config: ValidationConfig, jobs: int, style: Style) -> int:
    """One line per pair as it finishes (a progress bar on a terminal), a table, a count; the worst exit code.

    The default table names each pair by its path below the two folders (which the pair's line spells out).
    """
    pairs = [(path, candidate / path.relative_to(reference)) for path in onnx_files(reference)]
    if not pairs:
        raise NormfoldError(f"{reference}: no .onnx files", exit_code=EXIT_USAGE)

    def short_cells(row: dict[str, Any]) -> list[str]:
        cells = _validate_cells(row)
        return [str(Path(row["reference"]).relative_to(reference)), *cells[2:5], *cells[6:]]

    how = BatchReport(
        "validating",
        lambda row: f"{row['status']:9} {row['reference']} -> {row['candidate']}: {row['detail']}",
        "validate-batch",
        "pairs",
        VALIDATE_HEADER,
        lambda row: [*_validate_cells(row)[:-1], shorten(row["reason"] or "")],
        "{done} of {total} pair(s) equivalent",
        _short_validate_line,
        SHORT_VALIDATE_HEADER,
        short_cells,
        squeeze=(0,),
        droppable=(2, 3, 4),
    )
    return run_and_report(_validate_pair, pairs, config, jobs, style, how)


def _short_validate_line(row: dict[str, Any]) -> str:
    """The default per-pair line: the two paths and what was compared, or why the pair failed, in 100 columns."""
    return fit(
        [
            f"{row['status']:9} ",
            Squeezable(row["reference"]),
            " -> ",
            Squeezable(row["candidate"]),
            ": ",
            Cuttable(row["reason"] or row["detail"]),
        ]
    )


def _validate_cells(row: dict[str, Any]) -> list[str]:
    """One table row: the worst output's max abs error and name, '-' where nothing was compared, the reason whole."""
    output = "-" if row["worst_output"] is None else f"{row['worst_output']} [{row['worst_section']}]"
    providers = ",".join(row["providers"]) if row["providers"] else "-"
    return [
        row["reference"],
        row["candidate"],
        row["status"],
        figure(row["max_abs"]),
        output,
        providers,
        str(row["exit_code"]),
        row["reason"] or "",
    ]


def _validate_pair(pair: tuple[Path, Path], config: ValidationConfig) -> dict[str, Any]:
    """One pair of a folder comparison as a plain (picklable) row; a user error becomes the row, never an exception."""
    reference, candidate = pair
    row = {"reference": str(reference), "candidate": str(candidate)}
    try:
        report = validate(reference, candidate, config=config)
    except NormfoldError as error:
        return row | {
            "status": "UNUSABLE",
            "detail": str(error),
            "exit_code": error.exit_code,
            "providers": None,
            "outputs_compared": None,
            "worst_output": None,
            "worst_section": None,
            "max_abs": None,
            "reason": error_reason(error, reference, candidate),
        }
    return row | _report_facts(report)


def _report_facts(report: ValidationReport) -> dict[str, Any]:
    """A validation report's row fields: verdict, exit code, providers, the worst output and its max abs error."""
    worst = worst_comparison(report)
    if report.passed:
        detail = f"{len(report.comparisons)} output comparison(s) on {', '.join(report.providers)}"
    else:
        detail = report.failures[0].to_line() if report.failures else "no output compared"
    return {
        "status": "PASSED" if report.passed else "FAILED",
        "detail": detail,
        "exit_code": report.return_code,
        "providers": list(report.providers),
        "outputs_compared": len(report.comparisons),
        "worst_output": worst.output if worst else None,
        "worst_section": worst.section if worst else None,
        "max_abs": max_abs(worst),
        "reason": None if report.passed or worst is None else failure_reason(worst),
    }

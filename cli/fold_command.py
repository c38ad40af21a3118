"""`normfold fold`: fold (and validate) one model or many, print the reports.

Its options are declared in fold_declaration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from normfold.columns import WIDTH, Cuttable, Squeezable, cut, fit
from normfold.errors import EXIT_OK, EXIT_USAGE, NormfoldError
from normfold.fold_file import FoldFileResult, NotWrittenError, Phase, fold_file
from normfold.html_report import check_page_path, file_op_counts, fold_page, write_page
from normfold.model_folders import onnx_files
from normfold.output_paths import is_folder

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

if TYPE_CHECKING:
    from normfold.validate import OutputComparison


def default_output(model_path: Path) -> Path:
    """`model.onnx` -> `model.folded.onnx` beside it."""
    return model_path.with_name(f"{model_path.stem}.folded{model_path.suffix or '.onnx'}")


def run_fold(
    ctx: click.Context,
    models: tuple[Path, ...],
    output: Path | None,
    in_place: bool,
    as_json: bool,
    simplify: bool,
    fold_norm_affine: bool,
    eval_mode: bool,
    batch_stats: bool,
    check: bool,
    jobs: int,
    page_path: Path | None,
    **options: Any,
) -> None:
    """`normfold fold`, with the options that fold_declaration declares (and documents)."""
    style = output_style(as_json, options.pop("verbose"), options.pop("quiet"))
    if in_place and output is not None:
        raise NormfoldError("--in-place and --output exclude each other", exit_code=EXIT_USAGE)
    if batch_stats and not eval_mode:
        raise NormfoldError("--batch-stats applies with --eval", exit_code=EXIT_USAGE)
    settings = {
        "in_place": in_place,
        "simplify": simplify,
        "eval_mode": eval_mode,
        "batch_stats": batch_stats,
        "fold_norm_affine": fold_norm_affine,
        "validation": validation_config(options) if check else None,
    }
    files = _expand(models)
    if len(files) == 1 and not is_folder(models[0]):
        _fold_one(files[0], output, settings, style, page_path)
        return
    if output is not None:
        raise NormfoldError(
            "-o names one output; with several models each is written beside its input", exit_code=EXIT_USAGE
        )
    if page_path is not None:
        raise NormfoldError(
            "--report writes the page of one model; give one MODEL, not several or a folder", exit_code=EXIT_USAGE
        )
    ctx.exit(_fold_many(files, settings, jobs, style))


def _expand(paths: tuple[Path, ...]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if is_folder(path):
            files += [p for p in onnx_files(path) if ".folded." not in p.name]
        else:
            files.append(path)
    if not files:
        raise NormfoldError("no .onnx files in the given folders", exit_code=EXIT_USAGE)
    return files


def _fold_one(model: Path, output: Path | None, settings: dict[str, Any], style: Style, page_path: Path | None) -> None:
    target = model if settings["in_place"] else (output or default_output(model))
    input_ops = None
    if page_path is not None:  # checked before the fold; the input's operators counted before --in-place replaces it
        check_page_path(page_path, (model, target))
        input_ops = file_op_counts(model)
    with PhaseProgress.on_terminal(style) as progress:
        printer = _FoldPrinter(style, progress)
        try:
            outcome = fold_file(model, target, **settings, progress=printer.phase)
        except NotWrittenError as error:
            printer.finish(error.partial)
            printer.page(page_path, error.partial, error, input_ops)
            raise
        printer.finish(outcome)
        printer.page(page_path, outcome, None, input_ops)


VALIDATE_PREFIX = "validate: "


class _FoldPrinter:
    """One fold's report, printed as it happens: the node records and the summary as validation starts, then the
    validation and where it wrote; or, at the end, the JSON document or (-q) the last line alone."""

    def __init__(self, style: Style, progress: PhaseProgress) -> None:
        self.style, self.progress = style, progress
        self.width = None if style == "verbose" else WIDTH
        self.records_shown = False

    def phase(self, phase: Phase, outcome: FoldFileResult | None) -> None:
        """fold_file's progress: the phase on the terminal, the records as validation starts (an error in writing
        the output, before it, stays the only line)."""
        if phase == "validate" and outcome is not None:
            self._records(outcome)
        self.progress.phase(phase)

    def finish(self, outcome: FoldFileResult) -> None:
        """Everything not printed yet."""
        result, report = outcome.fold, outcome.validation
        if self.style == "json":
            document = result.to_dict() | {
                "input": str(outcome.source),
                "output": str(outcome.target) if outcome.written else None,
            }
            document["validation"] = report.to_dict() if report else None
            click.echo(json.dumps(document, indent=2))
            return
        if self.style != "quiet":
            self._records(outcome)
            if report is not None:
                width = None if self.width is None else self.width - len(VALIDATE_PREFIX)
                self.progress.echo("\n".join(VALIDATE_PREFIX + line for line in report.lines(width)[1:]))
        if outcome.written:
            self._echo("wrote ", outcome.target)

    def page(
        self,
        page_path: Path | None,
        outcome: FoldFileResult,
        error: NormfoldError | None,
        input_ops: dict[str, int] | None,
    ) -> None:
        """The --report page, written or not, validated or not; its path is printed with the text report."""
        if page_path is None:
            return
        write_page(page_path, fold_page(outcome, error=error, input_ops=input_ops))
        if self.style in ("default", "verbose"):
            self._echo("wrote report ", page_path)

    def _records(self, outcome: FoldFileResult) -> None:
        """The node records and the summary (a clause a line, by default), once."""
        if self.records_shown or self.style not in ("default", "verbose"):
            return
        self.records_shown = True
        summary = outcome.fold.summary()
        lines = [record.to_line(self.width) for record in outcome.fold.records]
        lines += [summary] if self.width is None else [cut(clause, self.width) for clause in summary.split("; ")]
        self.progress.echo("\n".join(lines))

    def _echo(self, what: str, path: Path) -> None:
        self.progress.echo(f"{what}{path}" if self.width is None else fit([what, Squeezable(str(path))], self.width))


FOLD_HEADER = ("MODEL", "STATUS", "BN FOLDED", "DROPOUT STRIPPED", "NODES", "VALIDATION", "MAX ABS", "EXIT", "REASON")
SHORT_FOLD_HEADER = ("MODEL", "STATUS", "BN", "DROPOUT", "NODES", "VALIDATION", "MAX ABS", "EXIT", "REASON")


def _fold_many(files: list[Path], settings: dict[str, Any], jobs: int, style: Style) -> int:
    """One line per model as it finishes (a progress bar on a terminal), a table, a count; the worst exit code."""
    how = BatchReport(
        "folding",
        lambda row: f"{row['status']:9} {row['path']}: {row['detail']}",
        "fold-batch",
        "models",
        FOLD_HEADER,
        lambda row: [*_fold_cells(row)[:-1], shorten(row["reason"] or "")],
        "{done} of {total} model(s) folded and written",
        _short_fold_line,
        SHORT_FOLD_HEADER,
        _fold_cells,
        squeeze=(0,),
        droppable=(6, 4, 7),
    )
    return run_and_report(_fold_quietly, files, settings, jobs, style, how)


def _short_fold_line(row: dict[str, Any]) -> str:
    """The default per-model line: what was validated and written, or why it failed, in 100 columns."""
    head = [f"{row['status']:9} ", Squeezable(row["path"]), ": "]
    if row["reason"] is not None:
        return fit([*head, Cuttable(row["reason"])])
    checked = "validated" if row["validation"] == "passed" else row["validation"]
    return fit([*head, f"{checked}, wrote ", Squeezable(row["output"])])


def _fold_cells(row: dict[str, Any]) -> list[str]:
    """One table row: counts as x/y, '-' where there is nothing to show, the reason whole."""
    s = row["summary"]
    counts = (
        ["-", "-", "-"]
        if s is None
        else [
            f"{s['batchnorm_folded']}/{s['batchnorm_total']}",
            f"{s['dropout_stripped']}/{s['dropout_total']}",
            f"{s['nodes_before']} -> {s['nodes_after']}",
        ]
    )
    return [
        row["path"],
        row["status"],
        *counts,
        row["validation"] or "-",
        figure(row["max_abs"]),
        str(row["exit_code"]),
        row["reason"] or "",
    ]


def _fold_quietly(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Fold one model of a batch into a plain (picklable) row; a user error becomes the row, never an exception."""
    target = path if settings["in_place"] else default_output(path)
    try:
        return _fold_row(path, fold_file(path, target, **settings), None)
    except NotWrittenError as error:
        return _fold_row(path, error.partial, error)
    except NormfoldError as error:
        return _fold_row(path, None, error)


def _fold_row(path: Path, outcome: FoldFileResult | None, error: NormfoldError | None) -> dict[str, Any]:
    """The row's facts: status, counts, validation verdict and worst error, exit code, reason, where it wrote."""
    report = outcome.validation if outcome is not None else None
    worst = worst_comparison(report) if report is not None else None
    return {
        "status": "FAILED" if error else "FOLDED",
        "path": str(path),
        "detail": _fold_detail(outcome, error),
        "exit_code": error.exit_code if error else EXIT_OK,
        "output": str(outcome.target) if outcome is not None and outcome.written else None,
        "summary": outcome.fold.to_dict()["summary"] if outcome is not None else None,
        "validation": _verdict(outcome, error),
        "max_abs": max_abs(worst),
        "reason": _fold_reason(path, worst, error),
    }


def _fold_detail(outcome: FoldFileResult | None, error: NormfoldError | None) -> str:
    """The per-model line's text: the fold summary and where it wrote, or the error."""
    if error is not None or outcome is None:
        return str(error)
    verdict = "validated" if outcome.validation is not None else "not validated"
    return f"{outcome.fold.summary()}; {verdict}; wrote {outcome.target}"


def _verdict(outcome: FoldFileResult | None, error: NormfoldError | None) -> str | None:
    """passed / failed / not validated, 'error' when validation could not run, None when nothing was folded."""
    if outcome is None:
        return None
    if outcome.validation is None:
        return "error" if error is not None else "not validated"
    return "passed" if outcome.validation.passed else "failed"


def _fold_reason(path: Path, worst: OutputComparison | None, error: NormfoldError | None) -> str | None:
    """Why the model failed: the worst differing output, or the error without the model's path."""
    if error is None:
        return None
    if worst is not None and not worst.passed:
        return failure_reason(worst)
    return error_reason(error, path)

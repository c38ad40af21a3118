"""Running one job per model (in order, in parallel processes with -j, with a progress bar on a terminal),
and the few facts about a validation or an error that both batch modes put in their rows."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from normfold.report_version import REPORT_VERSION

from . import verbosity
from .batch_table import fit_table, render_table
from .verbosity import Style

if TYPE_CHECKING:
    from normfold.validate import OutputComparison, ValidationReport

Item = TypeVar("Item")


def run_batch(
    function: Callable[..., Any], items: Sequence[Item], settings: Any, jobs: int, label: str, show_progress: bool
) -> Iterator[tuple[Item, Any]]:
    """Yield (item, function(item, settings)) in order; `function` must be picklable for jobs > 1."""
    interactive = show_progress and verbosity.stderr_is_terminal()
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(
            click.progressbar(length=len(items), label=label, file=sys.stderr if interactive else io.StringIO())
        )
        if jobs > 1:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=jobs))
            results = pool.map(function, items, [settings] * len(items))
        else:
            results = (function(item, settings) for item in items)
        for item, result in zip(items, results):
            bar.update(1)
            yield item, result


@dataclasses.dataclass(frozen=True)
class BatchReport:
    """How a batch reports: its progress label, a line per row, the JSON document, the table and the count.

    `line`, `header` and `cells` are the -v forms (every figure, lines of any width); `short_line`, `short_header`
    and `short_cells` the default ones, in 100 columns: the `squeeze` columns lose their middle, the last one
    (the reason) its end, and the `droppable` columns go, in that order, where that is not enough. `count` is
    formatted with `done` (rows that exited 0) and `total`.
    """

    label: str
    line: Callable[[dict[str, Any]], str]
    report: str
    key: str
    header: Sequence[str]
    cells: Callable[[dict[str, Any]], list[str]]
    count: str
    short_line: Callable[[dict[str, Any]], str]
    short_header: Sequence[str]
    short_cells: Callable[[dict[str, Any]], list[str]]
    squeeze: Sequence[int] = (0,)
    droppable: Sequence[int] = ()


def run_and_report(
    function: Callable[..., dict[str, Any]],
    items: Sequence[Item],
    settings: Any,
    jobs: int,
    style: Style,
    how: BatchReport,
) -> int:
    """Run the batch, print a line per row as it finishes, then the JSON document or the table and the count
    (with -q the count alone).

    Returns the worst exit code.
    """
    text = style in ("default", "verbose")
    rows: list[dict[str, Any]] = []
    for _, row in run_batch(function, items, settings, jobs, how.label, text):
        rows.append(row)
        if text:
            click.echo(how.line(row) if style == "verbose" else how.short_line(row))
    worst = max(row["exit_code"] for row in rows)
    if style == "json":
        click.echo(
            json.dumps(
                {"normfold_report": how.report, "version": REPORT_VERSION, "exit_code": worst, how.key: rows}, indent=2
            )
        )
        return worst
    if text:
        click.echo()
        table = (
            render_table(how.header, [how.cells(row) for row in rows])
            if style == "verbose"
            else fit_table(
                how.short_header, [how.short_cells(row) for row in rows], squeeze=how.squeeze, droppable=how.droppable
            )
        )
        for line in table:
            click.echo(line)
    click.echo(how.count.format(done=sum(row["exit_code"] == 0 for row in rows), total=len(rows)))
    return worst


def worst_comparison(report: ValidationReport) -> OutputComparison | None:
    """The comparison a row shows: failures before passes, then the largest max abs error (no figures = largest)."""
    return max(
        report.comparisons,
        default=None,
        key=lambda c: (not c.passed, c.metrics.max_abs if c.metrics is not None else math.inf),
    )


def max_abs(comparison: OutputComparison | None) -> float | None:
    """The comparison's max abs error, None when there is none (no comparison, or outputs not comparable)."""
    return comparison.metrics.max_abs if comparison is not None and comparison.metrics is not None else None


def figure(value: float | None) -> str:
    """A max abs error for a table cell: three significant digits, '-' when there is none."""
    return "-" if value is None else f"{value:.3g}"


def failure_reason(comparison: OutputComparison) -> str:
    """Why one output failed, in a few words: what exceeds tolerance, then its problem (shape, dtype, float64 check)."""
    metrics = comparison.metrics
    counts = (
        []
        if metrics is None
        else [
            (metrics.violations, "element(s) beyond tolerance"),
            (metrics.nan_mismatch, "NaN mismatch(es)"),
            (metrics.inf_mismatch, "Inf mismatch(es)"),
        ]
    )
    parts = [f"{count} {what}" for count, what in counts if count] + [comparison.problem]
    return f"output '{comparison.output}' ({comparison.section}): {', '.join(part for part in parts if part)}"


def error_reason(error: Exception, *paths: Path) -> str:
    """The error's text without a leading 'PATH: ' naming a file the row already shows."""
    text = str(error)
    for path in paths:
        text = text.removeprefix(f"{path}: ")
    return text

"""The options that fold, validate and check share in form, each command with its own help: -j/--jobs
(parallel processes over several models) and --report (a self-contained HTML page)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def jobs_option(help_text: str) -> Callable[[F], F]:
    """-j/--jobs N (at least 1, default 1), arriving as `jobs`."""
    return click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True, help=help_text)


def report_option(help_text: str) -> Callable[[F], F]:
    """--report FILE.html, arriving as `page_path`."""
    return click.option("--report", "page_path", type=click.Path(path_type=Path), metavar="FILE.html", help=help_text)

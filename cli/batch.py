"""Running one job per model: in order, in parallel processes with -j, with a progress bar on a terminal."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import click

Item = TypeVar("Item")


def run_batch(function: Callable[..., Any], items: Sequence[Item], settings: Any, jobs: int,
              label: str, show_progress: bool) -> Iterator[tuple[Item, Any]]:
    """Yield (item, function(item, settings)) in order; `function` must be picklable for jobs > 1."""
    interactive = show_progress and sys.stderr.isatty()
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(click.progressbar(length=len(items), label=label,
                                                    file=sys.stderr if interactive else io.StringIO()))
        if jobs > 1:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=jobs))
            results = pool.map(function, items, [settings] * len(items))
        else:
            results = (function(item, settings) for item in items)
        for item, result in zip(items, results):
            bar.update(1)
            yield item, result

"""How much a command prints: -q (the verdict line), the default (lines of 100 columns), -v (every figure), and
the phase it is in (`load 0.3s | fold 0.1s | validate 2.4s`) on stderr when that is a terminal."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

import click

from normfold.columns import WIDTH, cut
from normfold.errors import EXIT_USAGE, NormfoldError

Style = Literal["json", "quiet", "default", "verbose"]


def verbosity_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add -q/--quiet and -v/--verbose; they arrive as the keyword arguments `quiet` and `verbose`."""
    command = click.option(
        "-q", "--quiet", is_flag=True, help="Print only the final verdict line (errors still go to stderr)."
    )(command)
    return click.option(
        "-v", "--verbose", is_flag=True, help="Print every figure, full names and full reasons, however long the lines."
    )(command)


def output_style(as_json: bool, verbose: bool, quiet: bool) -> Style:
    """The style the options ask for; --json wins over -q and -v, which exclude each other."""
    if verbose and quiet:
        raise NormfoldError("-q and -v exclude each other", exit_code=EXIT_USAGE)
    return "json" if as_json else "quiet" if quiet else "verbose" if verbose else "default"


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal: progress is drawn there, never into CI logs or pipes."""
    return sys.stderr.isatty()


class PhaseProgress:
    """The phases done with their seconds and the current one with its running seconds, on one stderr line.

    The line is rewritten in place (carriage return) as time passes, taken off while a report line is printed
    (`echo`), and cleared at the end, so stdout and the terminal keep only the report. Disabled, it draws nothing.
    """

    def __init__(self, enabled: bool, tick: float = 0.25) -> None:
        self.enabled = enabled
        self._tick = tick
        self._done: list[str] = []
        self._phase: str | None = None
        self._started = 0.0
        self._shown = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    @classmethod
    def on_terminal(cls, style: Style) -> PhaseProgress:
        """Enabled when stderr is a terminal, except with -q and --json."""
        return cls(style in ("default", "verbose") and stderr_is_terminal())

    def __enter__(self) -> PhaseProgress:
        if self.enabled:
            self._ticker = threading.Thread(target=self._run, name="normfold-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            self._clear()
            self.enabled = False

    def phase(self, name: str) -> None:
        """Start phase `name`; the previous one is done."""
        if not self.enabled:
            return
        with self._lock:
            now = time.monotonic()
            if self._phase is not None:
                self._done.append(f"{self._phase} {now - self._started:.1f}s")
            self._phase, self._started = name, now
            self._draw()

    def echo(self, line: str = "") -> None:
        """Print a report line on stdout, with the progress line taken off for it and drawn again below it."""
        with self._lock:
            self._clear()
            click.echo(line)
            self._draw()

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            with self._lock:
                self._draw()

    def _draw(self) -> None:
        if not self.enabled or self._phase is None:
            return
        current = f"{self._phase} {time.monotonic() - self._started:.1f}s"
        text = cut(" | ".join([*self._done, current]), WIDTH - 1)
        click.echo("\r" + text.ljust(self._shown), err=True, nl=False)
        self._shown = len(text)

    def _clear(self) -> None:
        if self._shown:
            click.echo("\r" + " " * self._shown + "\r", err=True, nl=False)
            self._shown = 0

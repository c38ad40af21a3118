"""The `normfold` command: a thin click layer over the library."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from typing import Any

import click

from normfold import __version__
from normfold.errors import NormfoldError

# Each command's click declaration (arguments, options, help). The declarations import click and light modules
# only; a command's body (fold_command.run_fold, ...) imports onnx, onnx_ir and numpy when it runs, so that
# `normfold COMMAND --help` loads none of them (seconds). check's module is light as a whole.
COMMANDS = {
    "fold": "normfold.cli.fold_declaration:fold_command",
    "validate": "normfold.cli.validate_declaration:validate_command",
    "mode": "normfold.cli.mode_declaration:mode_command",
    "calibrate": "normfold.cli.calibrate_declaration:calibrate_command",
    "mc": "normfold.cli.mc_declaration:mc_command",
    "check": "normfold.cli.check_command:check_command",
}
# Each command's line in `normfold --help` (and its short help): kept here so that listing the commands
# imports none of them.
SUMMARIES = {
    "fold": "Fold BatchNormalization and per-channel Mul/Add, strip Dropout.",
    "validate": "Check that two models compute the same outputs.",
    "mode": "Switch BN and Dropout between training and inference mode.",
    "calibrate": "Re-estimate BN running statistics from data.",
    "mc": "Monte Carlo Dropout: mean and std over N passes.",
    "check": "Say whether models are ready to deploy (CI gate).",
}


class _Group(click.Group):
    """Turns NormfoldError into one line on stderr and its exit code; bugs keep their traceback.

    SIGTERM becomes an exit that unwinds like Ctrl-C, so temporary files are removed on the way out.
    Each command's declaration is imported only when that command runs (or shows its help), and its body's
    modules only when it runs, so `fold` does not pay for the imports of `validate`, `calibrate` or `mc`, the
    group's help (from SUMMARIES) imports no command, and a command's help none of its body's imports.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name].split(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        command.short_help = SUMMARIES[name]
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands section from SUMMARIES, without importing any command."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, SUMMARIES[name]) for name in self.list_commands(ctx)])

    def invoke(self, ctx: click.Context) -> Any:
        install_signal_handlers()
        try:
            return super().invoke(ctx)
        except NormfoldError as error:
            click.echo(f"normfold: error: {error}", err=True)
            ctx.exit(error.exit_code)


# Seconds the unwinding after SIGTERM/SIGINT may take (removing temporary files) before the process ends
# regardless: a worker thread blocked in C code (onnx's checker, ONNX Runtime) would otherwise keep the
# interpreter from exiting.
UNWIND_SECONDS = 5.0
_SIGNALLED = threading.Event()


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT unwind with a deadline (see _exit_on_signal); only the main thread can install them."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_signal)
        signal.signal(signal.SIGINT, _exit_on_signal)
        sys.unraisablehook = _redeliver_swallowed_exit


_PENDING: list[int] = []  # the signal being unwound


def _redeliver_swallowed_exit(unraisable: Any) -> None:
    """A signal that lands while Python runs a finalizer or weakref callback raises its SystemExit there, where
    Python only prints it and goes on: deliver the signal again, so the exit unwinds from the main code."""
    if isinstance(unraisable.exc_value, SystemExit) and _PENDING and _SIGNALLED.is_set():
        _SIGNALLED.clear()
        again = threading.Timer(0.01, os.kill, args=(os.getpid(), _PENDING[-1]))  # from outside this callback
        again.daemon = True
        again.start()
        return
    sys.__unraisablehook__(unraisable)


def _exit_on_signal(signum: int, frame: object) -> None:
    """Unwind like Ctrl-C (temporary files removed on the way out), with a deadline; a second signal ends at
    once."""
    code = 128 + signum
    if _SIGNALLED.is_set():
        os._exit(code)
    _SIGNALLED.set()
    _PENDING.append(signum)
    deadline = threading.Timer(UNWIND_SECONDS, os._exit, args=(code,))
    deadline.daemon = True
    deadline.start()
    raise SystemExit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="normfold")
def main() -> None:
    """Make ONNX models deployment-ready: fold BatchNormalization, strip Dropout.

    Exit codes: 0 success, 1 mismatch or not ready, 2 usage, 3 unusable input.
    """


def run() -> None:
    """The console script: signal handlers before anything heavy is imported, then the command."""
    install_signal_handlers()
    main()

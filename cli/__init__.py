"""The `normfold` command: a thin click layer over the library."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from normfold import __version__
from normfold.cli.calibrate_command import calibrate_command
from normfold.cli.check_command import check_command
from normfold.cli.fold_command import fold_command
from normfold.cli.mc_command import mc_command
from normfold.cli.mode_command import mode_command
from normfold.cli.validate_command import validate_command
from normfold.errors import NormfoldError


class _Group(click.Group):
    """Turns NormfoldError into one line on stderr and its exit code; bugs keep their traceback.

    SIGTERM becomes an exit that unwinds like Ctrl-C, so temporary files are removed on the way out.
    """

    def invoke(self, ctx: click.Context) -> Any:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _exit_on_signal)
        try:
            return super().invoke(ctx)
        except NormfoldError as error:
            click.echo(f"normfold: error: {error}", err=True)
            ctx.exit(error.exit_code)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="normfold")
def main() -> None:
    """Make ONNX models deployment-ready: fold BatchNormalization, strip Dropout.

    Exit codes: 0 success, 1 mismatch or not ready, 2 usage, 3 unusable input.
    """


main.add_command(fold_command)
main.add_command(validate_command)
main.add_command(mode_command)
main.add_command(calibrate_command)
main.add_command(mc_command)
main.add_command(check_command)

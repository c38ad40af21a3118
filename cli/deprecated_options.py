"""Old option names kept working: hidden from --help, each use prints one deprecation line on stderr."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from normfold.errors import EXIT_USAGE, NormfoldError


def deprecated_option(old: str, new: str, **attrs: Any) -> Callable[..., Any]:
    """A hidden click option `old` (default None) replaced by `new`; the command calls replace_deprecated when it
    is given."""
    return click.option(old, hidden=True, default=None, help=f"Deprecated: use {new}.", **attrs)


def replace_deprecated(old: str, new: str, command: str, advice: str) -> None:
    """Refuse `old` beside its replacement `new` (usage error), else print one line: use `advice` instead."""
    ctx = click.get_current_context()
    replacement = next(p for p in ctx.command.params if new in p.opts)
    if ctx.get_parameter_source(replacement.name or "") == click.core.ParameterSource.COMMANDLINE:
        raise NormfoldError(f"{old} is deprecated and {new} replaces it; give {new} only", exit_code=EXIT_USAGE)
    click.echo(f"normfold: warning: {old} is deprecated for {command}; use {advice}", err=True)


def momentum_advice(alpha: float) -> str:
    """What replaces the deprecated --alpha (the weight of the new batch statistic): ONNX's momentum, 1 - alpha."""
    return f"--momentum {1.0 - alpha:g} (ONNX's momentum, the weight of the old running statistic: 1 - alpha)"

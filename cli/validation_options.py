"""The validation options of every command that validates, built from ValidationConfig's fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from normfold.validate.config import OPT_LEVELS, PROVIDER_CHOICES, ValidationConfig

# How each kind of field is read on the command line; the values are checked by ValidationConfig itself.
CLICK_FORMS: dict[str, dict[str, Any]] = {
    "providers": {"multiple": True, "type": click.Choice(PROVIDER_CHOICES)},
    "opt_level": {"type": click.Choice(OPT_LEVELS)},
    "dims": {"multiple": True},
    "path": {"type": click.Path(path_type=Path)},
    "count": {"type": click.IntRange(min=1)},
    "int": {"type": int},
    "tolerance": {"type": float},
    "number": {"type": float},
    "tolerances": {"multiple": True},
    "switch": {"default": None},
    "size": {"type": str},
    "flag": {"is_flag": True},
}


def validation_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one click option per ValidationConfig field; values arrive as keyword arguments named after the fields."""
    defaults = ValidationConfig()
    for field in reversed(dataclasses.fields(ValidationConfig)):
        spec = field.metadata["option"]
        form = dict(CLICK_FORMS[spec.kind])
        if spec.show_default:
            form["default"] = _shown(spec.kind, getattr(defaults, field.name))
            form["show_default"] = True
        command = click.option(*spec.flags, field.name, help=spec.help, metavar=spec.metavar, **form)(command)
    return command


def _shown(kind: str, default: Any) -> Any:
    """Sizes are given and shown the way users write them."""
    if kind == "size" and default % 2**30 == 0:
        return f"{default // 2**30}GiB"
    return default


def validation_config(options: dict[str, Any]) -> ValidationConfig:
    """The ValidationConfig of the parsed options (the keyword arguments validation_options added)."""
    names = {field.name for field in dataclasses.fields(ValidationConfig)}
    return ValidationConfig.from_options({name: options.get(name) for name in names})

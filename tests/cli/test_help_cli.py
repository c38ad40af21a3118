"""`normfold --help`, every command's help, and --version."""

from __future__ import annotations

import click
import pytest
from cli_helpers import invoke

from normfold.cli import main


def _commands() -> dict[str, click.Command]:
    """Every subcommand, loaded the way `normfold` loads them (on demand)."""
    with click.Context(main) as ctx:
        return {name: main.get_command(ctx, name) for name in main.list_commands(ctx)}


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help(flag: str) -> None:
    """`normfold --help` lists every command with its short help and the exit codes."""
    result = invoke(flag)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: normfold ")
    assert "Exit codes: 0 success, 1 mismatch or not ready, 2 usage, 3 unusable input." in result.stdout
    for name, command in _commands().items():
        assert f"  {name} " in result.stdout
        assert command.get_short_help_str().rstrip(".")[:20] in result.stdout


def test_every_command_has_help() -> None:
    """Every command and every one of its options is documented, and `CMD --help` exits 0."""
    assert list(_commands()) == ["fold", "validate", "mode", "calibrate", "mc", "check"]
    for name, command in _commands().items():
        assert command.help and command.help.strip(), name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts}"
        result = invoke(name, "--help")
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"Usage: normfold {name} ")
        assert command.help.strip().splitlines()[0] in result.stdout


def test_fold_help_names_its_options() -> None:
    """`normfold fold --help` shows -o/--output, --in-place and --json."""
    result = invoke("fold", "--help")
    assert result.exit_code == 0
    for option in ("-o, --output", "--in-place", "--json"):
        assert option in result.stdout


def test_version() -> None:
    """`normfold --version` prints the package version."""
    from normfold import __version__

    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"normfold, version {__version__}\n"

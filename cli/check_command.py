"""`normfold check`: the CI gate. Exit 0 when every model is deployment-ready."""

from __future__ import annotations

from pathlib import Path

import click

from normfold.check import RULES, check_model, model_files
from normfold.check_formats import FORMATS, disabled_in_pyproject, render
from normfold.errors import EXIT_MISMATCH, EXIT_OK, EXIT_UNUSABLE_INPUT, EXIT_USAGE, NormfoldError


@click.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "form", type=click.Choice(FORMATS), default="text", show_default=True,
              help="text for people, json for machines, github for Actions annotations, sarif for code scanning.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--disable", multiple=True, metavar="RULE",
              help="Skip a rule, repeatable (also `[tool.normfold] disable = [...]` in pyproject.toml).")
@click.option("--report", "page_path", type=click.Path(path_type=Path), metavar="FILE.html",
              help="Also write a self-contained HTML page: a section per model with its findings and operator counts.")
@click.pass_context
def check_command(ctx: click.Context, paths: tuple[Path, ...], form: str, as_json: bool, disable: tuple[str, ...],
                  page_path: Path | None) -> None:
    """Check that each model (file, or every *.onnx in a folder) is deployment-ready.

    Exit codes: 0 all ready, 1 a model is not ready, 3 a model is unusable.
    """
    from normfold.html_report import check_page, check_page_path, file_op_counts, write_page
    disabled = [*disable, *disabled_in_pyproject(Path.cwd())]
    unknown = sorted(set(disabled) - set(RULES))
    if unknown:
        raise NormfoldError(f"unknown rule(s) {', '.join(unknown)}; rules: {', '.join(RULES)}", exit_code=EXIT_USAGE)
    files = model_files(paths)
    if not files:
        raise NormfoldError("no .onnx files in the given paths", exit_code=EXIT_USAGE)
    if page_path is not None:
        check_page_path(page_path, files)
    checks = [check_model(path, disabled) for path in files]
    click.echo(render(checks, "json" if as_json else form))
    if page_path is not None:
        ops = {c.path: file_op_counts(c.path) for c in checks if not c.error}
        write_page(page_path, check_page(checks, ops))
        if form == "text" and not as_json:
            click.echo(f"wrote report {page_path}")
    if any(c.error for c in checks):
        ctx.exit(EXIT_UNUSABLE_INPUT)
    ctx.exit(EXIT_OK if all(c.ready for c in checks) else EXIT_MISMATCH)

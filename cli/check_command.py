"""`normfold check`: the CI gate. Exit 0 when every model is deployment-ready."""

from __future__ import annotations

from pathlib import Path

import click

from normfold.check import RULES, Finding, ModelCheck, check_model, model_files
from normfold.check_formats import FORMATS, disabled_in_pyproject, render
from normfold.columns import Cuttable, Squeezable, fit
from normfold.errors import EXIT_MISMATCH, EXIT_OK, EXIT_UNUSABLE_INPUT, EXIT_USAGE, NormfoldError

from .batch_options import report_option
from .verbosity import output_style, verbosity_options


@click.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "form",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text for people, json for machines, github for Actions annotations, sarif for code scanning.",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option(
    "--disable",
    multiple=True,
    metavar="RULE",
    help="Skip a rule, repeatable (also `[tool.normfold] disable = [...]` in pyproject.toml).",
)
@report_option(
    "Also write a self-contained HTML page: a section per model with its findings and operator counts.",
)
@verbosity_options
@click.pass_context
def check_command(
    ctx: click.Context,
    paths: tuple[Path, ...],
    form: str,
    as_json: bool,
    disable: tuple[str, ...],
    page_path: Path | None,
    verbose: bool,
    quiet: bool,
) -> None:
    """Check that each model (file, or every *.onnx in a folder) is deployment-ready.

    Exit codes: 0 all ready, 1 a model is not ready, 3 a model is unusable. Text lines fit 100 columns, each
    fix printed once per model; -v prints every finding with its fix in full, -q only the count.
    """
    style = output_style(as_json or form != "text", verbose, quiet)
    disabled = [*disable, *disabled_in_pyproject(Path.cwd())]
    unknown = sorted(set(disabled) - set(RULES))
    if unknown:
        raise NormfoldError(f"unknown rule(s) {', '.join(unknown)}; rules: {', '.join(RULES)}", exit_code=EXIT_USAGE)
    files = model_files(paths)
    if not files:
        raise NormfoldError("no .onnx files in the given paths", exit_code=EXIT_USAGE)
    if page_path is not None:
        from normfold.html_report import check_page_path

        check_page_path(page_path, files)
    checks = [check_model(path, disabled) for path in files]
    if style in ("json", "verbose"):
        click.echo(render(checks, "json" if as_json else form))
    else:
        click.echo("\n".join(short_text(checks)[-1 if style == "quiet" else 0 :]))
    if page_path is not None:
        from normfold.html_report import check_page, file_op_counts, write_page

        ops = {c.path: file_op_counts(c.path) for c in checks if not c.error}
        write_page(page_path, check_page(checks, ops))
        if style in ("default", "verbose"):
            click.echo(
                f"wrote report {page_path}"
                if style == "verbose"
                else fit(["wrote report ", Squeezable(str(page_path))])
            )
    if any(c.error for c in checks):
        ctx.exit(EXIT_UNUSABLE_INPUT)
    ctx.exit(EXIT_OK if all(c.ready for c in checks) else EXIT_MISMATCH)


def short_text(checks: list[ModelCheck]) -> list[str]:
    """The text report in 100 columns: a line per model and per finding, the findings that one command fixes
    together and followed by it; paths and node names lose their middle, errors and messages their end."""
    lines = []
    for check in checks:
        path = Squeezable(check.path)
        if check.error:
            lines.append(fit(["UNUSABLE ", path, ": ", Cuttable(check.error)]))
        elif check.ready:
            lines.append(fit(["READY    ", path]))
        else:
            lines.append(fit(["NOT READY ", path, f": {len(check.findings)} finding(s)"]))
            by_fix: dict[str, list[Finding]] = {}
            for finding in check.findings:
                by_fix.setdefault(finding.fix, []).append(finding)
            for fix, findings in by_fix.items():
                lines += [fit([f"  {f.rule} '", Squeezable(f.node), "': ", Cuttable(f.message)]) for f in findings]
                spelled = (
                    [part for piece in fix.split(check.path) for part in (piece, path)][:-1] if check.path else [fix]
                )
                lines.append(fit(["  fix: ", *spelled]))
    lines.append(f"{sum(c.ready for c in checks)} of {len(checks)} model(s) deployment-ready")
    return lines

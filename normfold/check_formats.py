"""`normfold check` reports: text lines, JSON, GitHub Actions annotations, and SARIF 2.1.0."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from normfold.check import RULES, ModelCheck
from normfold.errors import EXIT_USAGE, NormfoldError, describe
from normfold.report_version import REPORT_VERSION

FORMATS = ("text", "json", "github", "sarif")


def render(checks: Sequence[ModelCheck], form: str) -> str:
    """The report for every checked model in the chosen format."""
    return {"text": _text, "json": _json, "github": _github, "sarif": _sarif}[form](checks)


def _text(checks: Sequence[ModelCheck]) -> str:
    lines = []
    for check in checks:
        if check.error:
            lines.append(f"UNUSABLE {check.path}: {check.error}")
        elif check.ready:
            lines.append(f"READY    {check.path}")
        else:
            lines.append(f"NOT READY {check.path}: {len(check.findings)} finding(s)")
            lines += [f"  {f.rule} '{f.node}': {f.message} (fix: {f.fix})" for f in check.findings]
    ready = sum(c.ready for c in checks)
    lines.append(f"{ready} of {len(checks)} model(s) deployment-ready")
    return "\n".join(lines)


def _json(checks: Sequence[ModelCheck]) -> str:
    document = {
        "normfold_report": "check",
        "version": REPORT_VERSION,
        "models": [
            {"path": c.path, "ready": c.ready, "error": c.error or None, "findings": [f.to_dict() for f in c.findings]}
            for c in checks
        ],
    }
    return json.dumps(document, indent=2)


def _github(checks: Sequence[ModelCheck]) -> str:
    """Workflow commands that GitHub Actions shows as annotations on the model file."""
    lines = []
    for check in checks:
        if check.error:
            lines.append(
                f"::error file={_escape_property(check.path)},title=normfold unusable model::{_escape(check.error)}"
            )
        for f in check.findings:
            lines.append(
                f"::error file={_escape_property(check.path)},title=normfold {f.rule}::"
                f"{_escape(f'{f.node}: {f.message}. Fix: {f.fix}')}"
            )
    return "\n".join(lines)


def _escape(text: str) -> str:
    """A workflow command's message: only %, CR and LF are escaped (GitHub shows the rest as written)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """A workflow command's property value (file=, title=): also ':' and ',', which end a property."""
    return _escape(text).replace(":", "%3A").replace(",", "%2C")


def _sarif(checks: Sequence[ModelCheck]) -> str:
    rules = [{"id": name, "shortDescription": {"text": rule.description}} for name, rule in RULES.items()]
    results: list[dict[str, Any]] = []
    for check in checks:
        location = [{"physicalLocation": {"artifactLocation": {"uri": Path(check.path).as_posix()}}}]
        if check.error:
            results.append(
                {"ruleId": "unusable-model", "level": "error", "message": {"text": check.error}, "locations": location}
            )
        for f in check.findings:
            results.append(
                {
                    "ruleId": f.rule,
                    "level": "error",
                    "locations": location,
                    "message": {"text": f"{f.node}: {f.message}. Fix: {f.fix}"},
                }
            )
    document = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{"tool": {"driver": {"name": "normfold", "rules": rules}}, "results": results}],
    }
    return json.dumps(document, indent=2)


def disabled_in_pyproject(start: Path) -> list[str]:
    """Rule names listed in `[tool.normfold] disable = [...]` of the nearest pyproject.toml above `start`."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    for folder in [start, *start.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                with candidate.open("rb") as handle:
                    config = tomllib.load(handle)
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
                raise NormfoldError(
                    f"{candidate}: not readable TOML ({describe(error)})", exit_code=EXIT_USAGE
                ) from None
            return _disable_list(candidate, config)
    return []


def _disable_list(source: Path, config: dict[str, Any]) -> list[str]:
    """`[tool.normfold] disable`, which must be a list of strings; any other shape is a usage error."""
    section: Any = config
    for key in ("tool", "normfold"):
        section = section.get(key, {})
        if not isinstance(section, dict):
            raise NormfoldError(
                f"{source}: [tool{'.normfold' if key == 'normfold' else ''}] must be a table, got {section!r}",
                exit_code=EXIT_USAGE,
            )
    disable = section.get("disable", [])
    if not isinstance(disable, list) or not all(isinstance(rule, str) for rule in disable):
        raise NormfoldError(
            f"{source}: [tool.normfold] disable must be a list of rule names, got {disable!r}", exit_code=EXIT_USAGE
        )
    return disable

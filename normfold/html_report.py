"""One self-contained HTML page for a fold, a validation or a check: summary, node records, operator counts
and error histograms.

The page loads nothing: inline CSS and inline SVG only, and a Content-Security-Policy that forbids the rest.
Every string that comes from a model, a path or an error is escaped. Usable from Python without the CLI.
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from normfold import __version__
from normfold.errors import EXIT_USAGE, NormfoldError
from normfold.output_paths import is_folder, require_name_fits

if TYPE_CHECKING:
    import onnx_ir as ir

    from normfold.check import ModelCheck
    from normfold.fold_file import FoldFileResult
    from normfold.validate.compare import ErrorHistogram
    from normfold.validate.report import OutputComparison, ValidationReport

OpCounts = Mapping[str, int]


# ---------------------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------------------


def fold_page(outcome: FoldFileResult, *, error: NormfoldError | None = None, input_ops: OpCounts | None = None) -> str:
    """The page of one `normfold fold`: written or not (`error` says why not), its records, operators, validation.

    `input_ops` are the input's operator counts, taken before the fold (an --in-place fold replaces the file).
    """
    result, report = outcome.fold, outcome.validation
    written = outcome.written
    summary = [
        ("input", str(outcome.source)),
        ("output", str(outcome.target) if written else f"nothing written (target {outcome.target})"),
        ("fold", result.summary()),
    ]
    if report is not None:  # the report names the staged copy as its candidate: show what it was compared with
        summary += [
            (
                "validation",
                f"against {report.reference}: {report.samples} sample(s) from {report.inputs}, "
                f"provider(s) {', '.join(report.providers)}",
            ),
            ("verdict", report.lines()[-1]),
        ]
    else:
        summary.append(("validation", "not validated"))
    if error is not None:
        summary += [("error", str(error)), ("exit code", str(error.exit_code))]
    else:
        summary.append(("exit code", "0"))
    records = _table(
        "records",
        ("graph", "node", "op type", "action", "what happened, or why not", "reason"),
        [(r.action, [r.graph, r.node, r.op_type, r.action, r.detail, r.reason or "-"]) for r in result.records],
        "no BatchNormalization or Dropout node",
    )
    after_label = "written" if written else "folded (not written)"
    columns = [("input", input_ops), (after_label, op_counts(result.model))]
    parts = [_h(3, "Nodes"), records, _h(3, "Operators"), _op_table(columns)]
    if report is not None:
        parts += _validation_parts(report)
    verdict = ("WRITTEN", True) if written else ("NOT WRITTEN", False)
    return _page("fold", str(outcome.source), None, [_section(str(outcome.source), verdict, summary, parts)])


def validation_page(
    report: ValidationReport, *, reference_ops: OpCounts | None = None, candidate_ops: OpCounts | None = None
) -> str:
    """The page of one `normfold validate`: verdict, each output's figures and histograms, the two models' operators."""
    summary = [
        ("reference", report.reference),
        ("candidate", report.candidate),
        ("inputs", f"{report.samples} sample(s) from {report.inputs}"),
        ("providers", ", ".join(report.providers)),
        ("verdict", report.lines()[-1]),
        ("exit code", str(report.return_code)),
    ]
    columns = [("reference", reference_ops), ("candidate", candidate_ops)]
    parts = [_h(3, "Operators"), _op_table(columns), *_validation_parts(report)]
    verdict = ("PASSED", True) if report.passed else ("FAILED", False)
    title = f"{report.candidate} against {report.reference}"
    return _page("validate", title, None, [_section(title, verdict, summary, parts)])


def check_page(checks: Sequence[ModelCheck], ops: Mapping[str, OpCounts | None] | None = None) -> str:
    """The page of one `normfold check`: a section per model with its findings; `ops` maps a path to its counts."""
    ready = sum(c.ready for c in checks)
    overall = f"{ready} of {len(checks)} model(s) deployment-ready"
    sections = []
    for check in checks:
        if check.error:
            verdict, status = ("UNUSABLE", False), f"unusable: {check.error}"
        elif check.ready:
            verdict, status = ("READY", True), "deployment-ready"
        else:
            verdict, status = ("NOT READY", False), f"not ready: {len(check.findings)} finding(s)"
        findings = _table(
            "findings",
            ("rule", "node", "finding", "fix"),
            [("finding", [f.rule, f.node, f.message, f.fix]) for f in check.findings],
            "no finding",
        )
        counts = (ops or {}).get(check.path)
        parts = [_h(3, "Findings"), findings, _h(3, "Operators"), _op_table([("model", counts)])]
        sections.append(_section(check.path, verdict, [("model", check.path), ("status", status)], parts))
    return _page("check", f"{len(checks)} model(s)", overall, sections)


# ---------------------------------------------------------------------------------------------------------
# Operator counts
# ---------------------------------------------------------------------------------------------------------


def op_counts(model: ir.Model) -> dict[str, int]:
    """Nodes per operator in every graph and function of the model; custom domains as 'domain::Op'."""
    from normfold.graph_walk import STANDARD_DOMAINS, iter_scopes

    counts: Counter[str] = Counter()
    for scope in iter_scopes(model):
        for node in scope.body:
            counts[node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}::{node.op_type}"] += 1
    return dict(counts)


def file_op_counts(path: str | os.PathLike[str]) -> dict[str, int] | None:
    """op_counts of a model file (external data and large inline weights not read), or None when it cannot be read.

    None rather than an error: the command that reads the model reports what is wrong with it.
    """
    import onnx
    import onnx_ir as ir

    from normfold.inline_mapping import read_mapped_proto

    try:
        mapped = read_mapped_proto(Path(path))
        proto = mapped[0] if mapped is not None else onnx.load(os.fspath(path), load_external_data=False)
        return op_counts(ir.serde.deserialize_model(proto))
    except Exception:  # protobuf and onnx_ir raise many unrelated types for a bad file
        return None


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


def check_page_path(path: Path, models: Iterable[Path] = ()) -> None:
    """Refuse (usage error) a page path in a missing folder, naming a folder, too long, or naming one of `models`.

    Called before the command runs, so that a typo does not cost a fold or a validation.
    """
    if not path.name or str(path).endswith(os.sep) or is_folder(path):
        raise NormfoldError(f"{path}: not a file path (it names a folder)", exit_code=EXIT_USAGE)
    if not is_folder(path.parent):
        raise NormfoldError(f"{path}: output folder '{path.parent}' does not exist", exit_code=EXIT_USAGE)
    require_name_fits(path)
    if any(path.resolve() == Path(model).resolve() for model in models):
        raise NormfoldError(
            f"{path}: refusing to overwrite a model this command reads or writes; name the report .html",
            exit_code=EXIT_USAGE,
        )


def write_page(path: Path, page: str) -> None:
    """Write the page atomically: a temporary file in the same folder, then os.replace (never half a page)."""
    check_page_path(path)
    try:
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:32]}.", suffix=".tmp")
    except OSError as error:
        raise NormfoldError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(page)
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, path)
    except OSError as error:
        Path(temp).unlink(missing_ok=True)
        raise NormfoldError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;
color:#1d2328;background:#fff}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;border-bottom:1px solid #ccd;padding-bottom:.2em;
overflow-wrap:anywhere}h3{font-size:1.05em;margin:1.4em 0 .4em}
.generated,.overall{color:#555;margin:.2em 0}
table{border-collapse:collapse;margin:.3em 0 1em;width:100%}
th,td{border:1px solid #d5d9de;padding:3px 7px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f2f4f6}table.summary th{width:9em}td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{display:inline-block;padding:1px 8px;border-radius:4px;margin-right:.5em;color:#fff;font-size:.85em}
.ok{background:#1a7f37}.bad{background:#c62828}
tr.folded td:nth-child(4),tr.stripped td:nth-child(4),tr.passed td:first-child{color:#1a7f37}
tr.skipped td:nth-child(4),tr.failed td:first-child,tr.finding td:first-child{color:#c62828}
tr.converted td:nth-child(4),tr.rewritten td:nth-child(4){color:#7a5c00}
.notes{color:#444}.empty{color:#777;font-style:italic}
figure{margin:.6em 0 1.2em}figcaption{color:#444;font-size:.9em;max-width:640px}
svg.histogram{max-width:100%;height:auto;font:11px system-ui,sans-serif;background:#fbfbfc}
svg .axis{stroke:#555;stroke-width:1}svg .under{fill:#4a78b5}svg .over{fill:#d9822b}
svg .reference{fill:#8a8fa0}svg .candidate{fill:#4a78b5}
svg .tolerance{stroke:#c62828;stroke-width:2;stroke-dasharray:5 3}svg .tolerance-label{fill:#c62828}
"""


def _page(kind: str, title: str, overall: str | None, sections: list[str]) -> str:
    head = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>normfold {_e(kind)}: {_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
    )
    header = f"<header><h1>normfold {_e(kind)}</h1>"
    if overall is not None:
        header += f'<p class="overall">{_e(overall)}</p>'
    header += f'<p class="generated">normfold {_e(__version__)}</p></header>\n'
    return head + header + "\n".join(sections) + "\n</body>\n</html>\n"


def _section(title: str, verdict: tuple[str, bool], summary: list[tuple[str, str]], parts: list[str]) -> str:
    word, ok = verdict
    badge = f'<span class="verdict {"ok" if ok else "bad"}">{_e(word)}</span>'
    rows = "".join(f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>" for key, value in summary)
    return (
        f'<section class="model">\n<h2>{badge}{_e(title)}</h2>\n<table class="summary">{rows}</table>\n'
        + "\n".join(parts)
        + "\n</section>"
    )


def _h(level: int, text: str) -> str:
    return f"<h{level}>{_e(text)}</h{level}>"


def _table(kind: str, header: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]], empty: str) -> str:
    """A table of escaped cells; each row carries its class (an action, a status) for colour and for tests."""
    if not rows:
        return f'<p class="empty {_e(kind)}">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        f'<tr class="{_e(css)}">' + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>" for css, cells in rows
    )
    return f'<table class="{_e(kind)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _op_table(columns: Sequence[tuple[str, OpCounts | None]]) -> str:
    """Operators as rows, one column per model whose counts are known, and the change between two models."""
    known = [(label, counts) for label, counts in columns if counts is not None]
    ops = sorted(set().union(*(counts for _, counts in known)))
    if not ops:
        return '<p class="empty op-counts">no operator counts</p>'
    head = "<th>operator</th>" + "".join(f"<th>{_e(label)}</th>" for label, _ in known)
    head += "<th>change</th>" if len(known) == 2 else ""
    rows = []
    for op in [*ops, None]:
        values = [sum(counts.values()) if op is None else counts.get(op, 0) for _, counts in known]
        cells = "".join(f'<td class="num">{v}</td>' for v in values)
        if len(values) == 2:
            cells += f'<td class="num">{"" if values[0] == values[1] else f"{values[1] - values[0]:+d}"}</td>'
        name = "<th>all nodes</th>" if op is None else f"<td>{_e(op)}</td>"
        rows.append(f'<tr class="{"total" if op is None else "op"}">{name}{cells}</tr>')
    return f'<table class="op-counts"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _validation_parts(report: ValidationReport) -> list[str]:
    """The validation's notes, a row per compared output, and the histograms of each output's errors."""
    parts = [_h(3, "Validation")]
    if report.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in report.notes) + "</ul>")
    rows = []
    for c in report.comparisons:
        m = c.metrics
        figures = (
            ["-"] * 6
            if m is None
            else [
                _g(m.max_abs),
                _g(m.max_rel),
                _g(m.mean_abs),
                str(m.violations),
                f"{m.nan_mismatch} / {m.inf_mismatch}",
                f"{_g(c.reference_vs_float64)} / {_g(c.candidate_vs_float64)}",
            ]
        )
        status = "passed" if c.passed else "failed"
        tolerance = c.describe_tolerance()
        rows.append((status, [status.upper(), c.output, c.section, *figures, tolerance, c.problem or "-"]))
    parts.append(
        _table(
            "comparisons",
            (
                "status",
                "output",
                "section",
                "max abs",
                "max rel",
                "mean abs",
                "beyond tolerance",
                "NaN / Inf mismatches",
                "vs float64: reference / candidate",
                "tolerance",
                "problem",
            ),
            rows,
            "no output compared",
        )
    )
    figures = [_figures(c) for c in report.comparisons]
    parts.append('<div class="figures">' + "".join(figures) + "</div>")
    return parts


def _figures(comparison: OutputComparison) -> str:
    """The |candidate - reference| histogram against the tolerance, and the float64 one where the truth ran."""
    metrics = comparison.metrics
    where = f"output '{comparison.output}' ({comparison.section})"
    if metrics is None or metrics.histogram is None:
        return f'<p class="empty histogram">{_e(where)}: no figures ({_e(comparison.problem or "not compared")})</p>'
    atol = (
        comparison.atol_in_force
        if comparison.atol_in_force is not None
        else comparison.tolerance.absolute(metrics.scale)
    )
    out = [
        _figure(
            f"{where}: |candidate - reference| per element",
            "tolerance-histogram",
            [("difference", metrics.histogram)],
            atol,
            "absolute error |candidate - reference| (log10 bins)",
            f"{where}: elements per decade of |candidate - reference|; the dashed line is the atol in force "
            f"({_g(atol)}); an element fails beyond atol + rtol x |reference| "
            f"({metrics.violations} did)",
        )
    ]
    ref, cand = comparison.reference_vs_float64_histogram, comparison.candidate_vs_float64_histogram
    if ref is not None and cand is not None:
        out.append(
            _figure(
                f"{where}: error against the float64 truth",
                "float64-histogram",
                [("reference", ref), ("candidate", cand)],
                atol,
                "absolute error against float64 (log10 bins)",
                f"{where}: elements per decade of |output - float64 truth|, reference (max "
                f"{_g(comparison.reference_vs_float64)}) and candidate (max "
                f"{_g(comparison.candidate_vs_float64)}); the dashed line is the atol in force",
            )
        )
    return "".join(out)


# Chart geometry, in SVG user units.
_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 640, 270, 62, 16, 30, 78
_PLOT_W, _PLOT_H = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
_BASE = _TOP + _PLOT_H


@dataclasses.dataclass(frozen=True)
class _Scale:
    """Where a decade or a count lands: slot 0 holds exact zeros (when shown), then one slot per decade from `low`;
    bar heights grow with log10(1 + count)."""

    low: int
    slots: int
    zero_slot: int
    largest: int

    @classmethod
    def of(cls, series: Sequence[tuple[str, ErrorHistogram]], atol: float) -> _Scale:
        decades = [h.start + i for _, h in series for i, count in enumerate(h.counts) if count]
        if atol > 0:
            decades.append(math.floor(math.log10(atol)))
        low, high = (min(decades), max(decades)) if decades else (0, 0)
        zero_slot = 1 if atol == 0 or any(h.zero for _, h in series) else 0
        largest = max([c for _, h in series for c in (h.zero, *h.counts)] + [1])
        return cls(low, zero_slot + high - low + 1, zero_slot, largest)

    @property
    def slot_w(self) -> float:
        return _PLOT_W / self.slots

    def x_of(self, decade: float) -> float:
        """The x of log10(error) on the decade axis."""
        return _LEFT + (self.zero_slot + decade - self.low) * self.slot_w

    def x_of_tolerance(self, atol: float) -> float:
        """The atol's x; an atol of 0 sits between the zero slot and the decades."""
        return self.x_of(math.log10(atol)) if atol > 0 else _LEFT + self.zero_slot * self.slot_w

    def y_of(self, count: int) -> float:
        return _BASE - math.log10(1 + count) / math.log10(1 + self.largest) * _PLOT_H


def _figure(
    label: str, kind: str, series: list[tuple[str, ErrorHistogram]], atol: float, x_title: str, caption: str
) -> str:
    """A bar chart of decade counts (one bar per series per decade, log-scaled heights), the atol as a line."""
    scale = _Scale.of(series, atol)
    svg = [
        f'<svg class="histogram {_e(kind)}" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
        f'role="img" aria-label="{_e(label)}">'
    ]
    for index, (name, histogram) in enumerate(series):
        svg += _bars(scale, index, len(series), name, histogram, atol)
    svg += _axes(scale, x_title)
    x = scale.x_of_tolerance(atol)
    anchor, shift = ("end", -4) if x > _LEFT + _PLOT_W * 0.7 else ("start", 4)
    svg.append(
        f'<line class="tolerance" x1="{x:.1f}" y1="{_TOP - 6}" x2="{x:.1f}" y2="{_BASE}">'
        f'<title>atol {_g(atol)}</title></line><text class="tolerance-label" x="{x + shift:.1f}" '
        f'y="{_TOP - 10}" text-anchor="{anchor}">atol {_g(atol)}</text>'
    )
    if len(series) > 1:
        for index, (name, _) in enumerate(series):
            x = _LEFT + index * 100
            svg.append(
                f'<rect class="{_e(name)}" x="{x}" y="{_H - 18}" width="10" height="10"/>'
                f'<text x="{x + 14}" y="{_H - 9}">{_e(name)}</text>'
            )
    svg.append("</svg>")
    return f"<figure>{''.join(svg)}<figcaption>{_e(caption)}</figcaption></figure>"


def _bars(
    scale: _Scale, index: int, count_of_series: int, name: str, histogram: ErrorHistogram, atol: float
) -> list[str]:
    """One series' bars, each with a tooltip; alone, a bar is 'over' when its whole decade is above atol."""
    bins = [(0, "error 0", False, histogram.zero)] if scale.zero_slot else []
    bins += [
        (scale.zero_slot + decade - scale.low, f"1e{decade} <= error < 1e{decade + 1}", 10.0**decade >= atol, count)
        for decade, count in enumerate(histogram.counts, start=histogram.start)
    ]
    width = scale.slot_w * 0.8 / count_of_series
    out = []
    for slot, where, over, count in bins:
        if not count:
            continue
        x = _LEFT + (slot + 0.1) * scale.slot_w + index * width
        y = min(scale.y_of(count), _BASE - 1)
        css = name if count_of_series > 1 else ("over" if over else "under")
        out.append(
            f'<rect class="bar {_e(css)}" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" '
            f'height="{_BASE - y:.1f}"><title>{_e(name)}: {_e(where)}: {count} element(s)</title></rect>'
        )
    return out


def _axes(scale: _Scale, x_title: str) -> list[str]:
    """Both axes with their ticks and titles: decades below (thinned to fit), powers of ten of the counts left."""
    out = [
        f'<line class="axis" x1="{_LEFT}" y1="{_BASE}" x2="{_W - _RIGHT}" y2="{_BASE}"/>',
        f'<line class="axis" x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_BASE}"/>',
    ]
    step = max(1, math.ceil(36 / scale.slot_w))
    ticks = [(_LEFT + scale.slot_w / 2, "0")] if scale.zero_slot else []
    ticks += [
        (scale.x_of(decade), f"1e{decade}")
        for decade in range(scale.low, scale.low + scale.slots - scale.zero_slot, step)
    ]
    for x, text in ticks:
        out.append(
            f'<line class="axis" x1="{x:.1f}" y1="{_BASE}" x2="{x:.1f}" y2="{_BASE + 4}"/>'
            f'<text x="{x:.1f}" y="{_BASE + 16}" text-anchor="middle">{_e(text)}</text>'
        )
    marks = [10**power for power in range(len(str(scale.largest)))]
    if scale.y_of(marks[-1]) - scale.y_of(scale.largest) > 12:  # the largest count too, where it has room
        marks.append(scale.largest)
    for mark in marks:
        y = scale.y_of(mark)
        out.append(
            f'<line class="axis" x1="{_LEFT - 4}" y1="{y:.1f}" x2="{_LEFT}" y2="{y:.1f}"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_count(mark)}</text>'
        )
    out.append(
        f'<text class="x-title" x="{_LEFT + _PLOT_W / 2:.1f}" y="{_BASE + 36}" '
        f'text-anchor="middle">{_e(x_title)}</text>'
    )
    out.append(
        f'<text class="y-title" transform="translate(14 {_TOP + _PLOT_H / 2:.1f}) rotate(-90)" '
        'text-anchor="middle">elements (log scale)</text>'
    )
    return out


def _e(text: object) -> str:
    """Escaped for element text and quoted attributes alike."""
    return html.escape(str(text), quote=True)


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _count(count: int) -> str:
    """An axis label: plain up to 9999, else three significant digits."""
    return str(count) if count < 10_000 else f"{count:.3g}"

"""`--report FILE.html` of fold, validate and check: the page's content, escaping, no network, atomic writing,
and the error histograms behind it."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import break_folds_gemm_bias
from click.testing import CliRunner
from examples import MODELS
from graphs import bn_params, make_model, rng
from onnx import helper, numpy_helper

from normfold import NormfoldError, fold, save_model
from normfold.cli import main
from normfold.html_report import validation_page, write_page
from normfold.validate import Tolerance
from normfold.validate import compare as compare_module
from normfold.validate.compare import ErrorHistogram, compare_arrays, error_figures, max_abs_error
from normfold.validate.report import OutputComparison, ValidationReport

HOSTILE = '<script>alert("bn")</script>&amp;'
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
VOID = {"meta", "br", "link", "img", "input", "hr"}


@dataclasses.dataclass
class Element:
    """One parsed element: its tag, attributes, children and the text directly inside it."""

    tag: str
    attrs: dict[str, str]
    children: list[Element] = dataclasses.field(default_factory=list)
    texts: list[str] = dataclasses.field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join(self.texts) + "".join(child.text() for child in self.children)

    def walk(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            yield from child.walk()

    def find_all(self, tag: str, css: str | None = None) -> list[Element]:
        return [e for e in self.walk() if e.tag == tag and (css is None or css in e.classes)]

    def cells(self) -> list[str]:
        return [cell.text() for cell in self.children if cell.tag in ("td", "th")]


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        while len(self.stack) > 1:
            if self.stack.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        self.stack[-1].texts.append(data)


def parse(page: str) -> Element:
    parser = _Parser()
    parser.feed(page)
    parser.close()
    return parser.root


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="normfold")


def summary_of(section: Element) -> dict[str, str]:
    (table,) = section.find_all("table", "summary")
    return {row.cells()[0]: row.cells()[1] for row in table.find_all("tr")}


def op_counts_of(section: Element) -> dict[str, list[str]]:
    (table,) = section.find_all("table", "op-counts")
    return {row.cells()[0]: row.cells()[1:] for row in table.find_all("tr")}


def assert_self_contained(page: str) -> None:
    lowered = page.lower()
    for external in ("http://", "https://", "<script", "<link", "<img", "url(", "@import", "<iframe"):
        assert external not in lowered, external


def _hostile_model(path: Path) -> Path:
    """Conv -> BatchNormalization whose node name is markup."""
    generator = rng(0)
    weights = {"w": generator.standard_normal((3, 3, 1, 1)).astype(np.float32), **bn_params("bn", 3, generator)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("BatchNormalization", ["y", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["z"], name=HOSTILE),
    ]
    onnx.save(make_model(nodes, {"x": [1, 3, 4, 4]}, ["z"], weights), path)
    return path


def _perturbed(source: Path, target: Path) -> Path:
    """The model with the first element of its Gemm bias moved by 0.5."""
    model = onnx.load(source)
    tensor = next(t for t in model.graph.initializer if t.name.startswith("fc_b"))
    array = numpy_helper.to_array(tensor).copy()
    array.flat[0] += 0.5
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    onnx.save(model, target)
    return target


@pytest.fixture()
def resnet(tmp_path: Path) -> Path:
    source = tmp_path / "resnet.onnx"
    shutil.copy(MODELS / "resnet_block.onnx", source)
    return source


def test_fold_page_has_summary_records_op_counts_and_a_histogram(resnet: Path, tmp_path: Path) -> None:
    page_path = tmp_path / "fold.html"
    result = invoke("fold", resnet, "--provider", "cpu", "--report", page_path)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"wrote report {page_path}"
    page = page_path.read_text(encoding="utf-8")
    assert_self_contained(page)
    (section,) = parse(page).find_all("section", "model")
    summary = summary_of(section)
    assert summary["input"] == str(resnet) and summary["output"] == str(tmp_path / "resnet.folded.onnx")
    assert summary["fold"] == "BatchNormalization folded 6/6, Dropout stripped 1/1, nodes 23 -> 16"
    assert summary["verdict"] == "PASSED: equivalent" and summary["exit code"] == "0"
    assert summary["validation"].startswith(f"against {resnet}: 1 sample(s) from random inputs")
    records = fold(resnet).records
    (table,) = section.find_all("table", "records")
    rows = table.find_all("tr")[1:]
    assert [row.cells() for row in rows] == [
        [r.graph, r.node, r.op_type, r.action, r.detail, r.reason or "-"] for r in records
    ]
    counts = op_counts_of(section)
    assert counts["operator"] == ["input", "written", "change"]
    assert counts["BatchNormalization"] == ["6", "0", "-6"] and counts["Dropout"] == ["1", "0", "-1"]
    assert counts["Conv"] == ["6", "6", ""] and counts["all nodes"] == ["23", "16", "-7"]
    (svg,) = section.find_all("svg", "tolerance-histogram")
    assert len(svg.find_all("line", "tolerance")) == 1
    assert "logits" in svg.attrs["aria-label"]
    assert "absolute error |candidate - reference| (log10 bins)" in svg.text()
    assert "elements (log scale)" in svg.text()
    assert sum(int(bar.text().split(": ")[-1].split()[0]) for bar in svg.find_all("rect", "bar")) == 10


def test_page_escapes_model_strings(tmp_path: Path) -> None:
    model = _hostile_model(tmp_path / "hostile.onnx")
    page_path = tmp_path / "hostile.html"
    result = invoke("fold", model, "--provider", "cpu", "--report", page_path)
    assert result.exit_code == 0, result.output
    page = page_path.read_text(encoding="utf-8")
    assert "<script" not in page and "&lt;script&gt;" in page
    assert_self_contained(page)
    (table,) = parse(page).find_all("table", "records")
    assert table.find_all("tr")[1].cells()[1] == HOSTILE


def test_report_is_written_when_validation_fails(resnet: Path, tmp_path: Path) -> None:
    candidate = tmp_path / "candidate.onnx"
    save_model(fold(resnet).model, candidate)
    broken = _perturbed(candidate, tmp_path / "broken.onnx")
    page_path = tmp_path / "validate.html"
    result = invoke("validate", resnet, broken, "--provider", "cpu", "--report", page_path)
    assert result.exit_code == 1, result.output
    page = page_path.read_text(encoding="utf-8")
    assert_self_contained(page)
    (section,) = parse(page).find_all("section", "model")
    assert section.find_all("span", "verdict")[0].text() == "FAILED"
    summary = summary_of(section)
    assert summary["verdict"] == "FAILED: 1 of 1 output comparison(s) differ" and summary["exit code"] == "1"
    assert summary["reference"] == str(resnet) and summary["candidate"] == str(broken)
    (row,) = section.find_all("table", "comparisons")[0].find_all("tr", "failed")
    assert row.cells()[:3] == ["FAILED", "logits", "cpu"]
    assert op_counts_of(section)["operator"] == ["reference", "candidate", "change"]
    (svg,) = section.find_all("svg", "tolerance-histogram")
    assert svg.find_all("line", "tolerance") and svg.find_all("rect", "over")


def test_fold_that_writes_nothing_still_writes_its_page(
    resnet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_folds_gemm_bias(monkeypatch)
    page_path = tmp_path / "page.html"
    result = invoke("fold", resnet, "--provider", "cpu", "--report", page_path)
    assert result.exit_code == 1
    assert result.stderr.startswith("normfold: error: the folded model differs from")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html", "resnet.onnx"]
    (section,) = parse(page_path.read_text(encoding="utf-8")).find_all("section", "model")
    assert section.find_all("span", "verdict")[0].text() == "NOT WRITTEN"
    summary = summary_of(section)
    assert summary["output"].startswith("nothing written") and summary["exit code"] == "1"
    assert summary["error"].startswith("the folded model differs from")
    assert op_counts_of(section)["operator"] == ["input", "folded (not written)", "change"]
    assert section.find_all("tr", "failed") and len(section.find_all("svg", "tolerance-histogram")) == 1


def test_fold_without_validation_has_no_histogram(resnet: Path, tmp_path: Path) -> None:
    page_path = tmp_path / "page.html"
    result = invoke("fold", resnet, "--no-validate", "--json", "--report", page_path)
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)  # --json output stays one document
    (section,) = parse(page_path.read_text(encoding="utf-8")).find_all("section", "model")
    assert summary_of(section)["validation"] == "not validated"
    assert not section.find_all("svg")


def test_check_page_has_a_section_per_model(tmp_path: Path) -> None:
    _hostile_model(tmp_path / "a.onnx")
    (tmp_path / "b.onnx").write_bytes(b"not onnx")
    page_path = tmp_path / "check.html"
    result = invoke("check", tmp_path, "--report", page_path)
    assert result.exit_code == 3, result.output
    assert result.stdout.splitlines()[-1] == f"wrote report {page_path}"
    page = page_path.read_text(encoding="utf-8")
    assert_self_contained(page)
    document = parse(page)
    assert document.find_all("p", "overall")[0].text() == "0 of 2 model(s) deployment-ready"
    first, second = document.find_all("section", "model")
    assert summary_of(first) == {"model": str(tmp_path / "a.onnx"), "status": "not ready: 1 finding(s)"}
    (finding,) = first.find_all("tr", "finding")
    assert finding.cells()[:2] == ["foldable-bn", HOSTILE]
    assert op_counts_of(first)["BatchNormalization"] == ["1"]
    assert summary_of(second)["status"].startswith("unusable: ")
    assert second.find_all("p", "op-counts")


@pytest.mark.parametrize("command", ["fold", "validate", "check"])
def test_a_page_in_a_missing_folder_is_refused_before_anything_runs(resnet: Path, tmp_path: Path, command: str) -> None:
    page_path = tmp_path / "nowhere" / "page.html"
    args = {"fold": [resnet], "validate": [resnet, resnet], "check": [resnet]}[command]
    before = sorted(tmp_path.iterdir())
    result = invoke(command, *args, "--report", page_path)
    assert result.exit_code == 2
    assert result.stderr == f"normfold: error: {page_path}: output folder '{page_path.parent}' does not exist\n"
    assert result.stdout == ""
    assert sorted(tmp_path.iterdir()) == before


def test_a_page_that_would_replace_a_model_or_a_folder_is_refused(resnet: Path, tmp_path: Path) -> None:
    replaced = invoke("fold", resnet, "--no-validate", "--report", resnet)
    assert replaced.exit_code == 2 and replaced.stderr.startswith(f"normfold: error: {resnet}: refusing to overwrite")
    folder = invoke("check", resnet, "--report", tmp_path)
    assert folder.stderr == f"normfold: error: {tmp_path}: not a file path (it names a folder)\n"


def test_several_models_are_refused_with_a_usage_error(resnet: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.onnx"
    shutil.copy(resnet, other)
    page_path = tmp_path / "page.html"
    result = invoke("fold", resnet, other, "--report", page_path)
    assert result.exit_code == 2
    assert result.stderr == (
        "normfold: error: --report writes the page of one model; give one MODEL, not several or a folder\n"
    )
    folders = invoke("validate", tmp_path, tmp_path, "--report", page_path)
    assert folders.exit_code == 2 and "--report writes the page of one comparison" in folders.stderr
    assert not page_path.exists() and not list(tmp_path.glob("*.folded.onnx"))


def test_page_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page_path = tmp_path / "page.html"
    write_page(page_path, "<!DOCTYPE html><p>old</p>")
    write_page(page_path, "<!DOCTYPE html><p>new</p>")
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"] and "new" in page_path.read_text()

    def full_disk(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("normfold.html_report.os.replace", full_disk)
    with pytest.raises(NormfoldError, match=f"cannot write {page_path}: No space left on device"):
        write_page(page_path, "<!DOCTYPE html><p>newer</p>")
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"] and "new" in page_path.read_text()


def test_histogram_counts_decades_of_the_finite_errors() -> None:
    reference = np.zeros(8, np.float32)
    candidate = np.array([0, 0, 1.5e-7, 2e-7, 5e-7, 3e-3, np.nan, 0], np.float32)
    reference[6] = np.nan
    metrics, problem = compare_arrays(reference, candidate, Tolerance(1e-6, 0.0))
    assert not problem and metrics is not None
    histogram = metrics.histogram
    assert histogram is not None
    assert (histogram.start, histogram.counts, histogram.zero) == (-7, (3, 0, 0, 0, 1), 3)
    assert histogram.total == 7
    integers, _ = compare_arrays(np.array([1, 2, 3]), np.array([1, 2, 13]), Tolerance(0.0, 0.0))
    assert integers is not None and integers.histogram == ErrorHistogram(1, (1,), 2)


def test_histogram_is_the_same_whatever_the_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = rng(3)
    reference = generator.standard_normal(1000).astype(np.float32)
    candidate = reference + generator.standard_normal(1000).astype(np.float32) * 1e-5
    whole, _ = compare_arrays(reference, candidate, Tolerance(None, 1e-4))
    figures = error_figures(candidate, reference.astype(np.float64))
    monkeypatch.setattr(compare_module, "BLOCK", 7)
    blocked, _ = compare_arrays(reference, candidate, Tolerance(None, 1e-4))
    assert whole is not None and blocked is not None and whole.histogram == blocked.histogram
    assert whole.histogram is not None and whole.histogram.total == 1000
    assert error_figures(candidate, reference.astype(np.float64)) == figures
    assert figures[0] == max_abs_error(candidate, reference.astype(np.float64)) and figures[1].total == 1000


def test_json_report_carries_the_histogram(resnet: Path, tmp_path: Path) -> None:
    candidate = tmp_path / "candidate.onnx"
    save_model(fold(resnet).model, candidate)
    result = invoke("validate", resnet, candidate, "--provider", "cpu", "--json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["outputs"]
    histogram = entry["metrics"]["histogram"]
    assert set(histogram) == {"start", "counts", "zero"}
    assert histogram["zero"] + sum(histogram["counts"]) == 10


def test_float64_histograms_are_drawn_where_the_truth_ran() -> None:
    metrics = compare_arrays(
        np.zeros(4, np.float32), np.array([0, 1e-7, 1e-6, 1e-6], np.float32), Tolerance(1e-5, 0.0)
    )[0]
    comparison = OutputComparison(
        "y<1>",
        "cpu",
        True,
        Tolerance(None, 1e-4),
        metrics,
        "",
        2e-7,
        3e-7,
        1e-5,
        "rounding",
        ErrorHistogram(-8, (2, 2), 0),
        ErrorHistogram(-8, (1, 3), 0),
    )
    page = validation_page(ValidationReport("ref.onnx", "cand.onnx", ["cpu"], [], 1, "random inputs", [comparison]))
    assert_self_contained(page)
    document = parse(page)
    (svg,) = document.find_all("svg", "float64-histogram")
    assert len(svg.find_all("rect", "reference")) == 3 and len(svg.find_all("rect", "candidate")) == 3
    assert svg.find_all("line", "tolerance") and "y<1>" in svg.attrs["aria-label"]
    assert len(document.find_all("svg", "tolerance-histogram")) == 1


def test_headless_browser_shows_the_page(resnet: Path, tmp_path: Path) -> None:
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        pytest.skip(
            f"chromium not installed: none of {', '.join(BROWSERS)} is on PATH (Debian's chromium is not "
            "installed system-wide for the tests)"
        )
    page_path = tmp_path / "page.html"
    assert invoke("fold", resnet, "--provider", "cpu", "--report", page_path).exit_code == 0
    dumped = subprocess.run(
        [browser, "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", page_path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    document = parse(dumped)
    (section,) = document.find_all("section", "model")
    assert summary_of(section)["verdict"] == "PASSED: equivalent"
    assert len(section.find_all("table", "records")[0].find_all("tr")) == 8
    assert section.find_all("svg", "tolerance-histogram")[0].find_all("line", "tolerance")


def test_a_real_fold_report_draws_the_float64_histogram(resnet: Path, tmp_path: Path) -> None:
    """End to end: the validation inside `fold` runs the float64 truth, and the page charts both errors against it."""
    page_path = tmp_path / "page.html"
    assert invoke("fold", resnet, "--provider", "cpu", "--report", page_path).exit_code == 0
    document = parse(page_path.read_text())
    (svg,) = document.find_all("svg", "float64-histogram")
    assert svg.find_all("rect", "reference") and svg.find_all("rect", "candidate")

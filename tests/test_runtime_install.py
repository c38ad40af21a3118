"""Two ONNX Runtime packages in one environment (onnxruntime and onnxruntime-gpu) stop the commands that run it
with one line, the fix and exit 3; the README's CPU-only install names every other requirement."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
import pytest
from cli_helpers import invoke
from onnx import helper, numpy_helper

from normfold import NormfoldError
from normfold.errors import EXIT_UNUSABLE_INPUT
from normfold.validate import providers

ROOT = Path(__file__).resolve().parent.parent
SITE = "/venv/lib/python3.11/site-packages"


class FakeDistribution:
    """What the check reads of an installed distribution: name, version, folder, top_level.txt and file list."""

    def __init__(
        self, name: str, version: str, top_level: str | None, folder: str = SITE, files: tuple[str, ...] = ()
    ) -> None:
        self.metadata = {"Name": name}
        self.version = version
        self.folder = folder
        self.top_level = top_level
        self.files = [PurePosixPath(f) for f in files]

    def read_text(self, filename: str) -> str | None:
        return self.top_level if filename == "top_level.txt" else None

    def locate_file(self, path: str) -> str:
        return f"{self.folder}/{path}".rstrip("/")


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeDistribution]]:
    """The distributions importlib.metadata reports; the check's cached answer is dropped before and after."""
    fakes: list[FakeDistribution] = [FakeDistribution("numpy", "2.0", "numpy\n")]
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter(fakes))
    monkeypatch.setattr(providers, "_driver_missing", lambda: False)
    providers.require_one_onnxruntime.cache_clear()
    yield fakes
    providers.require_one_onnxruntime.cache_clear()


def _refusal() -> NormfoldError:
    providers.require_one_onnxruntime.cache_clear()
    with pytest.raises(NormfoldError) as raised:
        providers.require_one_onnxruntime()
    return raised.value


def test_one_runtime_is_fine(installed: list[FakeDistribution]) -> None:
    installed.append(FakeDistribution("onnxruntime-gpu", "1.31.1", "onnxruntime\n"))
    installed.append(FakeDistribution("onnxruntime-extensions", "0.14", "onnxruntime_extensions\n"))
    installed.append(FakeDistribution("onnxruntime_genai", "0.9", None, files=("onnxruntime_genai/__init__.py",)))
    providers.require_one_onnxruntime()


def test_cpu_and_gpu_packages_together_are_refused(installed: list[FakeDistribution]) -> None:
    installed.append(FakeDistribution("onnxruntime-gpu", "1.31.1", "onnxruntime\n"))
    installed.append(FakeDistribution("onnxruntime", "1.20.1", "onnxruntime\n"))
    error = _refusal()
    assert str(error) == (
        "both onnxruntime 1.20.1 and onnxruntime-gpu 1.31.1 are installed in this environment; they "
        "overwrite each other's files. Fix: pip uninstall -y onnxruntime onnxruntime-gpu && "
        "pip install onnxruntime-gpu"
    )
    assert error.exit_code == EXIT_UNUSABLE_INPUT == 3


def test_without_an_nvidia_driver_the_fix_installs_the_cpu_package(
    installed: list[FakeDistribution], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(providers, "_driver_missing", lambda: True)
    installed.append(FakeDistribution("onnxruntime", "1.20.1", "onnxruntime\n"))
    installed.append(FakeDistribution("onnxruntime-gpu", "1.31.1", None, files=("onnxruntime/__init__.py",)))
    assert str(_refusal()).endswith("Fix: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime")


def test_three_runtimes_are_all_named(installed: list[FakeDistribution]) -> None:
    for name in ("onnxruntime-directml", "onnxruntime", "onnxruntime-gpu"):
        installed.append(FakeDistribution(name, "1.2", "onnxruntime\n"))
    assert str(_refusal()).startswith("onnxruntime 1.2, onnxruntime-directml 1.2 and onnxruntime-gpu 1.2 are installed")


def test_runtimes_in_different_folders_do_not_clash(installed: list[FakeDistribution]) -> None:
    """A virtual environment's onnxruntime-gpu shadows the system's onnxruntime: nothing is overwritten."""
    installed.append(FakeDistribution("onnxruntime-gpu", "1.31.1", "onnxruntime\n"))
    installed.append(
        FakeDistribution("onnxruntime", "1.20.1", "onnxruntime\n", folder="/usr/lib/python3/dist-packages")
    )
    providers.require_one_onnxruntime()


def _dropout_model(folder: Path) -> Path:
    nodes = [helper.make_node("Dropout", ["x", "ratio"], ["y"], name="drop")]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(0.5, np.float32), "ratio")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.save(model, folder / "m.onnx")
    return folder / "m.onnx"


@pytest.mark.parametrize(
    "command",
    [
        ["mc", "{model}", "--provider", "cpu"],
        ["validate", "{model}", "{model}", "--provider", "cpu"],
        ["fold", "{model}", "-o", "{folder}/out.onnx", "--provider", "cpu"],
    ],
)
def test_commands_that_run_onnxruntime_stop_with_one_line(
    installed: list[FakeDistribution], tmp_path: Path, command: list[str]
) -> None:
    installed.append(FakeDistribution("onnxruntime-gpu", "1.31.1", "onnxruntime\n"))
    installed.append(FakeDistribution("onnxruntime", "1.20.1", "onnxruntime\n"))
    model = _dropout_model(tmp_path)
    result = invoke(*[part.format(model=model, folder=tmp_path) for part in command])
    assert result.exit_code == 3, result.output
    assert "validate: PASSED" not in result.stdout
    assert result.stderr.startswith("normfold: error: both onnxruntime 1.20.1 and onnxruntime-gpu 1.31.1 are installed")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out.onnx").exists()


def test_the_reference_provider_needs_no_onnxruntime(installed: list[FakeDistribution], tmp_path: Path) -> None:
    installed.append(FakeDistribution("onnxruntime-gpu", "1.31.1", "onnxruntime\n"))
    installed.append(FakeDistribution("onnxruntime", "1.20.1", "onnxruntime\n"))
    model = _dropout_model(tmp_path)
    result = invoke("validate", model, model, "--provider", "reference")
    assert result.exit_code == 0, result.output


def test_readme_cpu_install_names_every_requirement_but_the_runtime() -> None:
    """The CPU-only line installs with --no-deps, so it must list pyproject's requirements itself."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    expected = {r.replace(" ", "") for r in required if not r.startswith(("onnxruntime", "tomli"))} | {"onnxruntime"}
    line = next(
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("pip install --no-deps .")
    )
    assert re.fullmatch(r"pip install --no-deps \. && pip install .*", line)
    assert set(shlex.split(line.split("&&")[1])[2:]) == expected

"""A validated fold reads its input once and runs onnx's checker once on the input and once on the output."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
from examples import MODELS

from normfold.fold_file import fold_file
from normfold.validate import ValidationConfig


def _counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Record every model parse (onnx.load and its aliases) and every checker run, by what it was given."""
    calls: dict[str, list[str]] = {"load": [], "check": []}

    def wrap(kind: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def counted(model: Any, *args: Any, **kwargs: Any) -> Any:
            calls[kind].append(str(model) if isinstance(model, (str, Path)) else type(model).__name__)
            return function(model, *args, **kwargs)

        return counted

    load = wrap("load", onnx.load_model)
    monkeypatch.setattr(onnx, "load", load)
    monkeypatch.setattr(onnx, "load_model", load)
    monkeypatch.setattr(onnx.checker, "check_model", wrap("check", onnx.checker.check_model))
    return calls


@pytest.mark.parametrize(("name", "eval_mode"), [("resnet_block.onnx", False), ("training_export.onnx", True)])
def test_validated_fold_parses_once_and_checks_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, eval_mode: bool
) -> None:
    source = tmp_path / name
    shutil.copy(MODELS / name, source)
    calls = _counting(monkeypatch)
    outcome = fold_file(
        source, tmp_path / "out.onnx", eval_mode=eval_mode, validation=ValidationConfig(providers=("cpu",))
    )
    assert outcome.written and outcome.validation is not None and outcome.validation.passed
    assert outcome.validation.comparisons[0].candidate_vs_float64 is not None  # the float64 truth ran
    assert calls["load"] == [str(source)]
    assert calls["check"] == [str(source), "bytes"]  # the input by path, the output as it is written

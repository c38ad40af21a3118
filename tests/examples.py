"""The example-model builders of models/build_examples.py, loaded by path (models/ is not installed)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from normfold import fold, save_model

MODELS = Path(__file__).resolve().parent.parent / "models"

_spec = importlib.util.spec_from_file_location("normfold_examples", MODELS / "build_examples.py")
assert _spec is not None and _spec.loader is not None
build_examples = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_examples)
EXAMPLES = build_examples.EXAMPLES


def shipped_and_folded(
    folder: Path, name: str, copy_as: str | None = None, folded_as: str = "folded.onnx"
) -> tuple[Path, Path]:
    """A model of models/ copied into `folder`, and its fold written beside it."""
    source = folder / (copy_as or name)
    shutil.copy(MODELS / name, source)
    target = folder / folded_as
    save_model(fold(source).model, target)
    return source, target

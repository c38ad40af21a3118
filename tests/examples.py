"""The example-model builders of models/build_examples.py, loaded by path (models/ is not installed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

MODELS = Path(__file__).resolve().parent.parent / "models"

_spec = importlib.util.spec_from_file_location("normfold_examples", MODELS / "build_examples.py")
assert _spec is not None and _spec.loader is not None
build_examples = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_examples)
EXAMPLES = build_examples.EXAMPLES

"""benchmarks/run.py imported as a module, as the benchmark tests read it (it puts benchmarks/ on sys.path)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_benchmark_run() -> ModuleType:
    """benchmarks/run.py as the module `normfold_benchmark_run` (its report module is its `report`)."""
    spec = importlib.util.spec_from_file_location("normfold_benchmark_run", ROOT / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module

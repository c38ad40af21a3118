"""Where normfold's time goes on one model: phases of `normfold fold --no-validate`, then cProfile.

    python benchmarks/profile_normfold.py MODEL OUTPUT [TOP]

Prints one JSON line: seconds for import, load_model, fold, save_model (and, inside them, onnx's
checker at load and its full check at save, each running beside other work in a second thread, and
the serialization), then the TOP functions by own time (tottime).
"""

from __future__ import annotations

import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

start = time.perf_counter()
import normfold.cli.fold_command  # noqa: E402,F401  (the CLI's imports, as `normfold fold` pays them)
from normfold import atomic_write, model_reading  # noqa: E402
from normfold.atomic_write import save_model  # noqa: E402
from normfold.external_data import has_external_data  # noqa: E402
from normfold.folding import fold  # noqa: E402
from normfold.model_reading import load_model  # noqa: E402

IMPORT_S = time.perf_counter() - start


def phases(model: Path, output: Path) -> dict[str, float]:
    """Seconds per phase, with the checker runs and the serialization timed inside load_model and save_model."""
    spent = {
        "import": IMPORT_S,
        "load: checker (beside parsing)": 0.0,
        "save: serialize": 0.0,
        "save: full check (beside the write)": 0.0,
    }
    patched = {
        (model_reading, "_run_checker"): "load: checker (beside parsing)",
        (atomic_write, "_serialize"): "save: serialize",
        (atomic_write, "_full_check"): "save: full check (beside the write)",
    }
    real = {(module, name): getattr(module, name) for module, name in patched}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0

        return wrapper

    for (module, name), label in patched.items():
        setattr(module, name, timed(label, real[module, name]))
    try:
        t0 = time.perf_counter()
        loaded = load_model(model)
        external = has_external_data(loaded)
        t1 = time.perf_counter()
        result = fold(loaded, in_place=True)
        t2 = time.perf_counter()
        save_model(result.model, output, external_data=external)
        t3 = time.perf_counter()
    finally:
        for (module, name), function in real.items():
            setattr(module, name, function)
    spent.update(load_model=t1 - t0, fold=t2 - t1, save_model=t3 - t2)
    return spent


def top_functions(model: Path, output: Path, count: int) -> list[dict[str, object]]:
    profiler = cProfile.Profile()
    profiler.enable()
    loaded = load_model(model)
    external = has_external_data(loaded)
    save_model(fold(loaded, in_place=True).model, output, external_data=external)
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:count]
    return [
        {"function": f"{Path(file).name}:{line}({name})", "calls": calls, "tottime": tottime, "cumtime": cumtime}
        for (file, line, name), (_, calls, tottime, cumtime, _) in rows
    ]


if __name__ == "__main__":
    model, output = Path(sys.argv[1]), Path(sys.argv[2])
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 12
    report = {"phases": phases(model, output), "top": top_functions(model, output, count)}
    print(json.dumps(report))

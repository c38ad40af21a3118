"""Where normfold's time goes on one model: phases of `normfold fold --no-validate`, then cProfile.

    python benchmarks/profile_normfold.py MODEL OUTPUT [TOP]

Prints one JSON line: seconds for import, load_model, fold, save_model (and, inside save, the
onnx.checker full check and the ir.save), then the TOP functions by own time (tottime).
"""

from __future__ import annotations

import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

start = time.perf_counter()
import onnx  # noqa: E402
import onnx_ir as ir  # noqa: E402

from normfold.cli import main as _cli  # noqa: E402,F401  (the CLI's imports, as `normfold fold` pays them)
from normfold.fold import fold  # noqa: E402
from normfold.io import has_external_data, load_model, save_model  # noqa: E402

IMPORT_S = time.perf_counter() - start


def phases(model: Path, output: Path) -> dict[str, float]:
    """Seconds per phase, with onnx.checker and ir.save timed inside save_model."""
    spent = {"import": IMPORT_S, "check_model": 0.0, "ir.save": 0.0}
    real_check, real_save = onnx.checker.check_model, ir.save

    def timed(name, function):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0
        return wrapper

    onnx.checker.check_model, ir.save = timed("check_model", real_check), timed("ir.save", real_save)
    try:
        t0 = time.perf_counter()
        loaded = load_model(model)
        t1 = time.perf_counter()
        result = fold(loaded)
        t2 = time.perf_counter()
        save_model(result.model, output, external_data=has_external_data(loaded))
        t3 = time.perf_counter()
    finally:
        onnx.checker.check_model, ir.save = real_check, real_save
    spent.update(load_model=t1 - t0, fold=t2 - t1, save_model=t3 - t2)
    return spent


def top_functions(model: Path, output: Path, count: int) -> list[dict[str, object]]:
    profiler = cProfile.Profile()
    profiler.enable()
    loaded = load_model(model)
    save_model(fold(loaded).model, output, external_data=has_external_data(loaded))
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

"""Where `normfold fold MODEL -o OUT --no-validate` spends its time, phase by phase, for benchmarks.

    python -m normfold.phase_timing MODEL OUTPUT

prints one JSON object: seconds for load, each fold pass (summed over its rounds), the rest of the fold,
the release of the replaced weights and the write, each also per BatchNormalization node. The phases are
those of `fold_file` without validation, called the same way: `load_model_file`, `fold` in place,
`return_freed_heap`, `save_model` (staged, checked, renamed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from normfold.atomic_write import save_model
from normfold.external_data import has_external_data
from normfold.folding import fold
from normfold.mapped_pages import return_freed_heap
from normfold.model_reading import load_model_file


@dataclasses.dataclass
class PhaseTimes:
    """Seconds per phase of one fold; `passes` by pass class name, `fold` the whole fold (passes included);
    BatchNormalization nodes seen and folded."""

    load: float
    passes: dict[str, float]
    fold: float
    release: float
    write: float
    batchnorms: int
    folded: int

    @property
    def fold_other(self) -> float:
        """The fold's seconds outside its passes (node counts, record merging)."""
        return self.fold - sum(self.passes.values())

    @property
    def total(self) -> float:
        return self.load + self.fold + self.release + self.write

    def phases(self) -> dict[str, float]:
        """Every phase's seconds, in order: load, the passes, the rest of the fold, release, write."""
        return {
            "load": self.load,
            **{f"fold: {name}": seconds for name, seconds in self.passes.items()},
            "fold: other": self.fold_other,
            "release": self.release,
            "write": self.write,
        }

    def to_dict(self) -> dict[str, Any]:
        """The figures as plain data: seconds, and milliseconds per BatchNormalization node (when there are any)."""
        per = 1e3 / self.batchnorms if self.batchnorms else 0.0
        phases = self.phases()
        return {
            "batchnorms": self.batchnorms,
            "folded": self.folded,
            "seconds": {**phases, "fold": self.fold, "total": self.total},
            "ms_per_batchnorm": {name: seconds * per for name, seconds in {**phases, "total": self.total}.items()},
        }


def time_phases(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> PhaseTimes:
    """Fold `source` into `target` as `normfold fold --no-validate` does, timing each phase."""
    start = time.perf_counter()
    loaded = load_model_file(source, keep_proto=False)
    external = has_external_data(loaded.model)
    loaded_at = time.perf_counter()
    passes: dict[str, float] = {}
    result = fold(loaded.model, in_place=True, timings=passes)
    folded_at = time.perf_counter()
    return_freed_heap()
    released_at = time.perf_counter()
    save_model(result.model, Path(target), external_data=external)
    written_at = time.perf_counter()
    return PhaseTimes(
        load=loaded_at - start,
        passes=passes,
        fold=folded_at - loaded_at,
        release=released_at - folded_at,
        write=written_at - released_at,
        batchnorms=result.count("BatchNormalization"),
        folded=result.count("BatchNormalization", "folded"),
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m normfold.phase_timing MODEL OUTPUT", file=sys.stderr)
        return 2
    print(json.dumps(time_phases(argv[0], argv[1]).to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

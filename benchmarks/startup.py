"""The start-up table: `normfold --help`, `check --help` and `check` on a small model against
a bare `python -c "import onnx"`, each at most START_UP_LIMIT times it.

The four commands run side by side: each round runs every command once, in order, so a machine that gets
busier or quieter during the measurement weighs on all of them alike. A first round fills the file cache
and is not counted. Run from the repository root, as users type the commands.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "models/resnet_block.onnx"
START_UP_LIMIT = 1.5
BASELINE = 'python -c "import onnx"'
# label -> arguments after the program (the baseline's program is this interpreter, the others' the normfold script)
COMMANDS = {
    BASELINE: ["-c", "import onnx"],
    "normfold --help": ["--help"],
    "normfold check --help": ["check", "--help"],
    f"normfold check {MODEL}": ["check", MODEL],
}
# Exit codes that are a finished run: check exits 1 on this model (it has a foldable BatchNormalization).
FINISHED = (0, 1)

# run.run_once: (command, timeout, log, rss_limit, cwd) -> (wall seconds, peak RSS bytes, exit status, why killed)
RunOnce = Callable[..., tuple[float, int, int, str | None]]


def command_lines() -> dict[str, list[str]]:
    """Each label's full command: this interpreter for the baseline, the normfold script installed beside it."""
    normfold_cli = shutil.which("normfold", path=str(Path(sys.executable).parent)) or shutil.which("normfold")
    if normfold_cli is None:
        raise SystemExit("start-up benchmark: no `normfold` script beside this interpreter or on PATH")
    return {label: [sys.executable if label == BASELINE else normfold_cli, *args] for label, args in COMMANDS.items()}


def measure_startup(run_once: RunOnce, folder: Path, runs: int, timeout: float = 120) -> dict:
    """Wall seconds of every run of every command (rounds interleaved), or the first failure's reason."""
    folder.mkdir(parents=True, exist_ok=True)
    commands = command_lines()
    times: dict[str, list[float]] = {label: [] for label in commands}
    for round_number in range(runs + 1):
        for number, (label, command) in enumerate(commands.items()):
            log = folder / f"startup{number}.log"
            wall, _, code, killed = run_once(command, timeout, log, None, cwd=ROOT)
            if code not in FINISHED or killed:
                reason = killed or (log.read_text(errors="replace").strip().splitlines() or [f"exit {code}"])[-1]
                return {"runs": runs, "error": f"{label}: {reason}"[:200]}
            if round_number:
                times[label].append(wall)
        print(
            f"  start-up round {round_number}/{runs}" + (" (warm-up, not counted)" if not round_number else ""),
            flush=True,
        )
    return {"runs": runs, "times": times}

"""Seeded byte flips and truncations of the shipped models: each folds into a valid, validated model, or
gives one clear error line and a non-zero exit; never a traceback, never a partial or invalid output."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from examples import MODELS
from normfold.cli import main

VARIANTS = int(os.environ.get("NORMFOLD_CORRUPTION_VARIANTS", "400"))
SOURCES = ["mlp.onnx", "resnet_block.onnx", "training_export.onnx"]


def _variant(data: bytes, seed: int) -> bytes:
    g = np.random.default_rng(seed)
    if seed % 4 == 0:
        return data[: int(g.integers(1, len(data)))]
    corrupted = bytearray(data)
    for _ in range(int(g.integers(1, 4))):
        position = int(g.integers(0, len(data)))
        corrupted[position] ^= 1 << int(g.integers(0, 8))
    return bytes(corrupted)


@pytest.mark.parametrize("chunk", range(4))
def test_corrupted_variants_fold_cleanly_or_fail_in_one_line(tmp_path: Path, chunk: int) -> None:
    runner = CliRunner()
    outcomes = {"folded": 0, "refused": 0}
    for seed in range(chunk, VARIANTS, 4):
        name = SOURCES[seed % len(SOURCES)]
        source = tmp_path / f"v{seed}.onnx"
        source.write_bytes(_variant((MODELS / name).read_bytes(), seed))
        target = tmp_path / f"v{seed}.out.onnx"
        result = runner.invoke(main, ["fold", str(source), "-o", str(target), "--provider", "cpu", "--no-float64"])
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"seed {seed} ({name}): {type(result.exception).__name__}: {result.exception}")
        assert "Traceback" not in result.output
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
        assert leftovers == [], (seed, leftovers)
        if result.exit_code == 0:
            onnx.checker.check_model(str(target), full_check=True)
            outcomes["folded"] += 1
        else:
            assert not target.exists(), seed
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("normfold: error: "), (seed, result.stderr)
            outcomes["refused"] += 1
        source.unlink()
        target.unlink(missing_ok=True)
    assert outcomes["refused"] > 0

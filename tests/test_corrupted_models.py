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
            f"seed {seed} ({name}): {type(result.exception).__name__}: {result.exception}"
        )
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


FIELD_VALUES = [
    "",
    "0",
    "-1",
    "-0",
    "+4",
    "4.0",
    "1e3",
    "abc",
    " 8",
    "8 ",
    "\x00",
    "9" * 30,
    "0x10",
    "٣",
    "w.data",
    "../w.data",
    "/etc/passwd",
    "w.data\x00x",
    "sub/../w.data",
    ".",
    "w.data/",
]


def _external_variant(folder: Path, seed: int) -> Path:
    """The Conv+BN model with its tensors in w.data and one external-data entry of one tensor replaced (or
    added, or duplicated) with a random value from FIELD_VALUES."""
    from cli_helpers import conv_bn_model, save_external

    path = folder / f"e{seed}.onnx"
    save_external(conv_bn_model(), path)
    g = np.random.default_rng(seed)
    model = onnx.load(str(path), load_external_data=False)
    tensor = model.graph.initializer[int(g.integers(0, len(model.graph.initializer)))]
    key = str(g.choice(["location", "offset", "length", "checksum", "location"]))
    value = str(g.choice(FIELD_VALUES))
    entries = [e for e in tensor.external_data if e.key == key]
    if entries and g.integers(0, 4):
        entries[0].value = value
    else:
        tensor.external_data.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("chunk", range(2))
def test_random_external_data_fields_fold_cleanly_or_fail_in_one_line(tmp_path: Path, chunk: int) -> None:
    runner = CliRunner()
    for seed in range(chunk, VARIANTS // 4, 2):
        source = _external_variant(tmp_path, seed)
        before = (tmp_path / "w.data").read_bytes()
        target = tmp_path / f"e{seed}.out.onnx"
        result = runner.invoke(main, ["fold", str(source), "-o", str(target), "--provider", "cpu", "--no-float64"])
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"seed {seed}: {type(result.exception).__name__}: {result.exception}"
        )
        assert (tmp_path / "w.data").read_bytes() == before, seed
        if result.exit_code == 0:
            onnx.checker.check_model(str(target), full_check=True)
        else:
            assert result.exit_code in (2, 3) and not target.exists(), (seed, result.output)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("normfold: error: "), (seed, result.stderr)
        for stale in [source, target, *tmp_path.glob(f"e{seed}.out.onnx*.data")]:
            stale.unlink(missing_ok=True)
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], seed


def _npz_variant(data: bytes, seed: int) -> bytes:
    """Byte flips and truncations as for models, plus a chance of a rewritten .npy header length."""
    corrupted = bytearray(_variant(data, seed))
    if seed % 5 == 1 and len(corrupted) > 64:
        header = corrupted.find(b"\x93NUMPY")
        if header >= 0:
            corrupted[header + 8 : header + 10] = int(np.random.default_rng(seed).integers(0, 65536)).to_bytes(
                2, "little"
            )
    return bytes(corrupted)


@pytest.mark.parametrize("chunk", range(2))
def test_corrupted_npz_inputs_validate_cleanly_or_fail_in_one_line(tmp_path: Path, chunk: int) -> None:
    from cli_helpers import conv_bn_model

    model = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), str(model))
    x = np.random.default_rng(0).standard_normal((2, 1, 3, 8, 8)).astype(np.float32)
    for compress in (False, True):
        clean = tmp_path / "clean.npz"
        (np.savez_compressed if compress else np.savez)(clean, x=x)
        data = clean.read_bytes()
        runner = CliRunner()
        for seed in range(chunk, VARIANTS // 4, 2):
            inputs = tmp_path / f"i{seed}.npz"
            inputs.write_bytes(_npz_variant(data, seed))
            result = runner.invoke(
                main, ["validate", str(model), str(model), "--inputs", str(inputs), "--provider", "cpu", "--no-float64"]
            )
            assert result.exception is None or isinstance(result.exception, SystemExit), (
                f"seed {seed}: {type(result.exception).__name__}: {result.exception}"
            )
            if result.exit_code != 0:
                assert result.exit_code == 3, (seed, result.output)
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("normfold: error: "), (seed, result.stderr)
            inputs.unlink()

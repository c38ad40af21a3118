"""A model over 2 GB (external data) folds: memory-mapped in, external data out, checked, equivalent,
and streamed: the fold's process never holds the 2.16 GB weight or its folded copy in memory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from click.testing import CliRunner

from normfold.cli import main

K, N = 16384, 33000  # 16384 x 33000 float32 weights: 2.16 GB
NEEDED_DISK = 7 * 2**30


def _initializer(name: str, array: np.ndarray) -> ir.Value:
    tensor = ir.tensor(array, name=name)
    return ir.Value(name=name, type=ir.TensorType(tensor.dtype), shape=tensor.shape, const_value=tensor)


def _build(path: Path) -> np.ndarray:
    """MatMul with a 2.16 GB weight, then BN; saved with external data. Returns the BN scale s."""
    g = np.random.default_rng(0)
    params = [g.uniform(0.5, 1.5, N), g.normal(0, 0.2, N), g.normal(0, 0.5, N), g.uniform(0.5, 2.0, N)]
    values = [_initializer(n, p.astype(np.float32)) for n, p in zip(("s", "b", "m", "v"), params)]
    weight = _initializer("w", g.standard_normal((K, N), dtype=np.float32))
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["batch", K]))
    matmul = ir.Node("", "MatMul", [x, weight], name="mm")
    bn = ir.Node("", "BatchNormalization", [matmul.outputs[0], *values], name="bn")
    bn.outputs[0].name, bn.outputs[0].type, bn.outputs[0].shape = (
        "z",
        ir.TensorType(ir.DataType.FLOAT),
        ir.Shape(["batch", N]),
    )
    graph = ir.Graph(
        [x], [bn.outputs[0]], nodes=[matmul, bn], initializers=[weight, *values], opset_imports={"": 17}, name="big"
    )
    ir.save(ir.Model(graph, ir_version=8), path, external_data=f"{path.name}.data")
    return params


pytestmark = pytest.mark.skipif(
    shutil.disk_usage("/tmp").free < NEEDED_DISK, reason="needs 7 GiB of free disk for a 2.16 GB model and its fold"
)


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    source = tmp_path_factory.mktemp("big") / "big.onnx"
    return source, _build(source)


def test_model_over_2gb_folds_with_external_data(big_model: tuple[Path, list[np.ndarray]]) -> None:
    source, (gamma, beta, mean, var) = big_model
    tmp_path = source.parent
    result = CliRunner().invoke(main, ["fold", str(source)])
    assert result.exit_code == 0, result.output
    assert "FOLDED   BatchNormalization 'bn': into MatMul 'mm' (backward) (MatMul rewritten as Gemm)" in result.output
    target = tmp_path / "big.folded.onnx"
    assert (tmp_path / "big.folded.onnx.data").stat().st_size > 2**31
    folded = ir.load(target)
    (gemm,) = list(folded.graph)
    assert gemm.op_type == "Gemm"
    epsilon = float(np.float32(1e-5))  # ONNX's default: the float32 attribute value
    s = gamma.astype(np.float32).astype(np.float64) / np.sqrt(var.astype(np.float32).astype(np.float64) + epsilon)
    t = beta.astype(np.float32).astype(np.float64) - s * mean.astype(np.float32).astype(np.float64)
    original = ir.load(source).graph.initializers["w"].const_value.numpy()
    new_weight = gemm.inputs[1].const_value.numpy()
    for rows in (slice(0, 3), slice(K - 3, K)):
        expected = (original[rows].astype(np.float64) * s).astype(np.float32)
        np.testing.assert_array_equal(new_weight[rows], expected)
    np.testing.assert_array_equal(gemm.inputs[2].const_value.numpy(), t.astype(np.float32))


PEAK_RSS = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.stderr.strip()[-300:])
"""


def test_fold_of_a_2gb_weight_never_holds_it_in_memory(big_model: tuple[Path, list[np.ndarray]]) -> None:
    """Peak RSS of a fresh `normfold fold` process stays far below the 2.16 GB weight: it is read through a
    released memory map and the folded copy is computed block by block while it is written."""
    source, params = big_model
    target = source.parent / "streamed.onnx"
    fold_command = [
        sys.executable,
        "-c",
        "from normfold.cli import main; main()",
        "fold",
        str(source),
        "-o",
        str(target),
        "--no-validate",
    ]
    code, peak_kib, stderr = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *fold_command], capture_output=True, text=True, check=True, cwd=source.parent
    ).stdout.split(" ", 2)
    assert code == "0", stderr
    assert int(peak_kib) < 2**20, f"peak RSS {int(peak_kib) // 1024} MiB for a {K * N * 4 // 2**20} MiB weight"
    (gemm,) = list(ir.load(target).graph)
    gamma, _, _, var = params
    epsilon = float(np.float32(1e-5))  # ONNX's default: the float32 attribute value
    s = gamma.astype(np.float32).astype(np.float64) / np.sqrt(var.astype(np.float32).astype(np.float64) + epsilon)
    original = ir.load(source).graph.initializers["w"].const_value.numpy()
    for rows in (slice(0, 2), slice(K // 2, K // 2 + 2), slice(K - 2, K)):
        expected = (original[rows].astype(np.float64) * s).astype(np.float32)
        np.testing.assert_array_equal(gemm.inputs[1].const_value.numpy()[rows], expected)

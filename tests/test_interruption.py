"""A fold stopped at any moment leaves the input untouched and no partial output; concurrent folds of one
output leave one complete, valid file."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

NORMFOLD = shutil.which("normfold")
pytestmark = pytest.mark.skipif(NORMFOLD is None, reason="the normfold console script is not installed")


def _model(path: Path) -> None:
    """A Conv+BN chain with ~40 MB of weights, so that writing takes a noticeable time."""
    g = np.random.default_rng(0)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["N", 256, 4, 4]))
    nodes, inits, value = [], [], x
    for i in range(16):
        w = ir.Value(
            name=f"w{i}", const_value=ir.tensor(g.normal(0, 0.05, (256, 256, 3, 3)).astype(np.float32), name=f"w{i}")
        )
        params = [
            ir.Value(name=f"p{i}_{k}", const_value=ir.tensor(a.astype(np.float32), name=f"p{i}_{k}"))
            for k, a in enumerate(
                (g.uniform(0.5, 1.5, 256), g.normal(0, 0.2, 256), g.normal(0, 0.5, 256), g.uniform(0.5, 2, 256))
            )
        ]
        for v in (w, *params):
            v.type, v.shape = ir.TensorType(ir.DataType.FLOAT), v.const_value.shape
        conv = ir.Node("", "Conv", [value, w], attributes=[ir.AttrInt64s("pads", [1, 1, 1, 1])], name=f"conv{i}")
        bn = ir.Node("", "BatchNormalization", [conv.outputs[0], *params], name=f"bn{i}")
        nodes += [conv, bn]
        inits += [w, *params]
        value = bn.outputs[0]
    value.name, value.type, value.shape = "y", ir.TensorType(ir.DataType.FLOAT), ir.Shape(["N", 256, 4, 4])
    graph = ir.Graph([x], [value], nodes=nodes, initializers=inits, opset_imports={"": 17}, name="big")
    ir.save(ir.Model(graph, ir_version=8), path)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_fold_killed_at_any_moment_leaves_input_and_no_partial_output(tmp_path: Path, sig: int) -> None:
    source = tmp_path / "m.onnx"
    _model(source)
    before = _digest(source)
    target = tmp_path / "m.folded.onnx"
    for delay in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0):
        target.unlink(missing_ok=True)
        process = subprocess.Popen(
            [NORMFOLD, "fold", str(source), "--no-validate"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        time.sleep(delay)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
        assert b"Traceback" not in stderr, stderr
        # finished, unwound by normfold's handler, or (during interpreter shutdown, where Python has put the
        # default handlers back) ended by the signal itself
        assert process.returncode in (0, 128 + sig, -sig), (delay, process.returncode)
        assert _digest(source) == before
        leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
        assert leftovers == [], (delay, leftovers)
        if target.exists():
            onnx.checker.check_model(str(target), full_check=True)


def test_concurrent_folds_to_one_output_leave_one_valid_file(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    _model(source)
    target = tmp_path / "out.onnx"
    processes = [
        subprocess.Popen(
            [NORMFOLD, "fold", str(source), "-o", str(target), "--no-validate"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    onnx.checker.check_model(str(target), full_check=True)
    assert [n.op_type for n in onnx.load(str(target)).graph.node] == ["Conv"] * 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]


def _streamed_model(path: Path) -> None:
    """MatMul with a 64 MiB weight (the size from which the fold streams it), then BN; external data."""
    g = np.random.default_rng(1)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["N", 4096]))
    w = ir.Value(name="w", const_value=ir.tensor(g.standard_normal((4096, 4096), dtype=np.float32), name="w"))
    params = [
        ir.Value(name=f"p{k}", const_value=ir.tensor(a.astype(np.float32), name=f"p{k}"))
        for k, a in enumerate(
            (g.uniform(0.5, 1.5, 4096), g.normal(0, 0.2, 4096), g.normal(0, 0.5, 4096), g.uniform(0.5, 2, 4096))
        )
    ]
    for v in (w, *params):
        v.type, v.shape = ir.TensorType(ir.DataType.FLOAT), v.const_value.shape
    matmul = ir.Node("", "MatMul", [x, w], name="mm")
    bn = ir.Node("", "BatchNormalization", [matmul.outputs[0], *params], name="bn")
    bn.outputs[0].name, bn.outputs[0].type, bn.outputs[0].shape = (
        "y",
        ir.TensorType(ir.DataType.FLOAT),
        ir.Shape(["N", 4096]),
    )
    graph = ir.Graph(
        [x], [bn.outputs[0]], nodes=[matmul, bn], initializers=[w, *params], opset_imports={"": 17}, name="streamed"
    )
    ir.save(ir.Model(graph, ir_version=8), path, external_data=f"{path.name}.data")


def test_streamed_fold_killed_at_any_moment_leaves_input_and_no_partial_output(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    _streamed_model(source)
    before = (_digest(source), _digest(tmp_path / "m.onnx.data"))
    target = tmp_path / "m.folded.onnx"
    for delay in (0.4, 0.7, 0.9, 1.05, 1.2, 1.35):  # a whole fold takes about 1.3 s here
        target.unlink(missing_ok=True)
        (tmp_path / "m.folded.onnx.data").unlink(missing_ok=True)
        process = subprocess.Popen(
            [NORMFOLD, "fold", str(source), "--no-validate"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        time.sleep(delay)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
        assert b"Traceback" not in stderr, stderr
        assert (_digest(source), _digest(tmp_path / "m.onnx.data")) == before
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], delay
        if target.exists():
            onnx.checker.check_model(str(target), full_check=True)
    done = subprocess.run([NORMFOLD, "fold", str(source), "-o", str(target), "--no-validate"], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert (
        "FOLDED   BatchNormalization 'bn': into MatMul 'mm' (backward) (MatMul rewritten as Gemm)"
        in done.stdout.decode()
    )
    assert [n.op_type for n in onnx.load(str(target), load_external_data=False).graph.node] == ["Gemm"]


SWALLOWED = r"""
import os, signal, weakref
from normfold.cli import install_signal_handlers
install_signal_handlers()
class Held: pass
held = Held()
def finalizer(ref):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000): pass
ref = weakref.ref(held, finalizer)
try:
    del held
    for _ in range(10**7): pass
    print("not unwound")
except SystemExit as done:
    print("unwound", done.code)
"""


def test_a_signal_during_a_finalizer_still_unwinds_without_a_traceback(tmp_path: Path) -> None:
    """SIGTERM landing in a weakref callback (where Python only prints a SystemExit) is delivered again, so the
    process unwinds from its main code and prints nothing. Run from tmp_path: `python -c` would otherwise
    import the source tree's normfold/, which has no cli package."""
    done = subprocess.run([sys.executable, "-c", SWALLOWED], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert (done.stdout, done.stderr) == ("unwound 143\n", "")

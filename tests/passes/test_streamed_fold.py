"""Large folded weights are computed as they are written (FoldedTensor), and mapped pages are released."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from graphs import bn_node, bn_params, make_model, rng
from numerics import assert_fold_exact, random_feeds
from onnx import helper

import normfold.layer_fold as layer_fold
from normfold import fold, load_model, save_model
from normfold.bn_math import ROW_BLOCK_ELEMENTS, check_scale, output_factor, rounded_parts, scale_and_round
from normfold.folded_tensor import FoldedTensor
from normfold.mapped_pages import release_pages


def _conv_bn(channels: int = 8, dtype: type = np.float32, opset: int = 17) -> onnx.ModelProto:
    g = rng(3)
    inits = {"w": g.normal(0, 0.5, (channels, 3, 3, 3)).astype(dtype), **bn_params("bn", channels, g, dtype)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), bn_node("y", "z", "bn")]
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return make_model(nodes, {"x": [1, 3, 6, 6]}, ["z"], inits, opset=opset, dtype=elem)


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {n: v.const_value.numpy() for n, v in model.graph.initializers.items()}


@pytest.fixture
def stream_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every folded weight takes the streamed path; row blocks of 7 elements so weights span many blocks."""
    monkeypatch.setattr(layer_fold, "STREAM_BYTES", 0)
    monkeypatch.setattr(sys.modules["normfold.bn_math"], "ROW_BLOCK_ELEMENTS", 7)


def test_streamed_fold_writes_the_same_bytes_as_the_eager_fold(tmp_path: Path, stream_everything: None) -> None:
    model = _conv_bn()
    streamed = fold(model)
    (conv,) = list(streamed.model.graph)
    assert isinstance(conv.inputs[1].const_value, FoldedTensor)
    assert not isinstance(conv.inputs[2].const_value, FoldedTensor)  # biases are small and eager
    save_model(streamed.model, tmp_path / "external.onnx", external_data=True)
    save_model(streamed.model, tmp_path / "inline.onnx")
    with pytest.MonkeyPatch.context() as eager:
        eager.setattr(layer_fold, "STREAM_BYTES", 1 << 62)
        expected = fold(model)
    assert not isinstance(list(expected.model.graph)[0].inputs[1].const_value, FoldedTensor)
    want = _weights(expected.model)
    for written in ("external.onnx", "inline.onnx"):
        got = _weights(load_model(tmp_path / written))
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{written}: {name}")
    assert_fold_exact(model, load_model(tmp_path / "inline.onnx"), random_feeds(model))


def test_streamed_fold_refuses_float16_overflow_with_the_eager_reason(stream_everything: None) -> None:
    model = _conv_bn(dtype=np.float16)
    for tensor in model.graph.initializer:
        if tensor.name == "bn_var":
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.full(8, 1e-7, np.float16), "bn_var"))
        if tensor.name == "w":
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.full((8, 3, 3, 3), 60000, np.float16), "w"))
    (record,) = [r for r in fold(model).records if r.op_type == "BatchNormalization"]
    assert record.action == "skipped"
    assert "folded values overflow float16 (216 values" in record.detail, record.detail


def test_check_scale_and_rounded_parts_agree_with_scale_and_round() -> None:
    g = rng(5)
    weight = g.normal(0, 1, (64, 3, 5, 5)).astype(np.float32)
    factor = output_factor(weight.shape, g.uniform(0.5, 2, 64), "conv")
    eager, reason = scale_and_round(weight, factor, np.float32)
    assert reason == "" and check_scale(weight, factor, np.float32) == ""
    assert ROW_BLOCK_ELEMENTS > weight[0].size
    np.testing.assert_array_equal(np.concatenate(list(rounded_parts([(weight, factor)], np.float32))), eager)
    # seven parts of rows, each with its rows' factor, computed by a pool of threads and given back in order
    starts = range(0, 64, 10)
    parts = [
        (weight[i : i + 10], (lambda i: lambda rows: factor(slice(rows.start + i, rows.stop + i)))(i)) for i in starts
    ]
    np.testing.assert_array_equal(np.concatenate(list(rounded_parts(parts, np.float32))), eager)
    tiny = output_factor(weight.shape, np.full(64, 1e-37), "conv")
    pushed = int((np.abs(weight.astype(np.float64) * 1e-37) < np.finfo(np.float32).smallest_normal).sum())
    assert pushed > 100
    assert check_scale(weight, tiny, np.float32).startswith(
        f"folding pushes {pushed} weights below float32's smallest normal"
    )


def test_folded_tensor_reads_whole_when_asked(stream_everything: None) -> None:
    weight = rng(7).normal(0, 1, (5, 4)).astype(np.float32)
    scale = np.array([2.0, 0.5, 1.0, 3.0])
    tensor = FoldedTensor(weight, output_factor(weight.shape, scale, "kn"), np.float32, name="w_folded")
    expected = (weight.astype(np.float64) * scale).astype(np.float32)
    assert tensor.dtype == ir.DataType.FLOAT and tensor.shape == ir.Shape([5, 4]) and tensor.name == "w_folded"
    np.testing.assert_array_equal(tensor.numpy(), expected)
    assert tensor.tobytes() == expected.tobytes()


def _resident_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile line")


@pytest.mark.skipif(
    not Path("/proc/self/status").exists() or not hasattr(mmap, "MADV_DONTNEED"),
    reason="needs Linux /proc and madvise to observe resident pages",
)
def test_release_pages_drops_read_pages_from_resident_memory_and_keeps_the_data(tmp_path: Path) -> None:
    data = rng(9).standard_normal((1024, 16384)).astype(np.float32)  # 64 MiB
    data.tofile(tmp_path / "w.bin")
    with open(tmp_path / "w.bin", "rb") as file:
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    array = np.frombuffer(mapping, np.float32).reshape(1024, 16384)
    before = _resident_file_kib()
    total = float(array.sum(dtype=np.float64))
    touched = _resident_file_kib()
    assert touched - before > 50_000, (before, touched)
    for start in range(0, 1024, 100):
        release_pages(array[start : start + 100])
    assert touched - _resident_file_kib() > 50_000
    assert float(array.sum(dtype=np.float64)) == total
    np.testing.assert_array_equal(array[1000], data[1000])
    del array
    mapping.close()


def test_release_pages_ignores_arrays_that_are_not_mapped_read_only() -> None:
    plain = np.arange(10.0)
    release_pages(plain[2:5])
    writable = mmap.mmap(-1, mmap.PAGESIZE * 2)
    view = np.frombuffer(writable, np.uint8)
    view[:] = 7
    release_pages(view)
    assert int(view.sum()) == 7 * mmap.PAGESIZE * 2 and plain.sum() == 45.0
    del view
    writable.close()


def test_writable_weights_are_folded_eagerly(stream_everything: None) -> None:
    """A caller's writable array could change between fold and save: only read-only weights are streamed."""
    model = ir.from_proto(_conv_bn())
    weight = model.graph.initializers["w"]
    weight.const_value = ir.tensor(np.array(weight.const_value.numpy()), name="w")
    assert weight.const_value.numpy().flags.writeable
    (conv,) = list(fold(model).model.graph)
    assert not isinstance(conv.inputs[1].const_value, FoldedTensor)

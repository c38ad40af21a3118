"""Small and medium folded weights are streamed too: a model of many of them never holds every folded copy.

Every read-only weight of STREAM_BYTES or more becomes a FoldedTensor, written chunk by chunk of rows with
the bytes of the eager fold; a weight of one chunk costs no thread pool; the mapped pages a fold reads are
released with the neighbours the kernel mapped around them; a file read without keeping its proto gives
every tensor its own, with the same written bytes.
"""

from __future__ import annotations

import io
import mmap
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import bn_node, bn_params, make_model, rng
from onnx import helper

import normfold.folded_tensor as folded_tensor
import normfold.layer_fold as layer_fold
import normfold.mapped_pages as mapped_pages
import normfold.model_reading as model_reading
from normfold.atomic_write import save_model
from normfold.bn_math import Factor, input_factor, output_factor, scale_and_round
from normfold.fold_file import fold_file
from normfold.folded_tensor import STREAM_BYTES, FoldedTensor
from normfold.mapped_pages import release_pages
from normfold.model_reading import load_model_file


def _layers() -> onnx.ModelProto:
    """Conv 16->16 3x3 (9 KiB: streamed), depthwise Conv (576 B: eager), Gemm 16->32, each followed by BN, then
    an Add of a Constant node's tensor."""
    g = rng(11)
    inits = {
        "w1": g.normal(0, 0.3, (16, 16, 3, 3)).astype(np.float32),
        **bn_params("bn1", 16, g),
        "w2": g.normal(0, 0.3, (16, 1, 3, 3)).astype(np.float32),
        **bn_params("bn2", 16, g),
        "w3": g.normal(0, 0.3, (32, 16)).astype(np.float32),
        **bn_params("bn3", 32, g),
    }
    constant = helper.make_node(
        "Constant", [], ["c"], name="c", value=onnx.numpy_helper.from_array(g.normal(0, 1, 32).astype(np.float32))
    )
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["y1"], name="conv1", pads=[1, 1, 1, 1]),
        bn_node("y1", "z1", "bn1"),
        helper.make_node("Conv", ["z1", "w2"], ["y2"], name="conv2", group=16),
        bn_node("y2", "z2", "bn2"),
        helper.make_node("GlobalAveragePool", ["z2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w3"], ["y3"], name="gemm", transB=1),
        bn_node("y3", "z3", "bn3"),
        constant,
        helper.make_node("Add", ["z3", "c"], ["out"], name="add"),
    ]
    return make_model(nodes, {"x": [1, 16, 6, 6]}, ["out"], inits)


def _save_input(folder: Path, external: bool) -> Path:
    folder.mkdir()
    path = folder / "model.onnx"
    if external:
        onnx.save(_layers(), path, save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    else:
        onnx.save(_layers(), path)
    return path


def _written(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.name.startswith("out")}


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external"])
def test_small_weights_are_streamed_in_chunks_and_written_as_the_eager_fold_writes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external: bool
) -> None:
    source = _save_input(tmp_path / "in", external)
    streamed: list[str] = []

    class Recorded(FoldedTensor):
        def __init__(self, weight: np.ndarray, factor: Factor, dtype: np.dtype, name: str | None = None) -> None:
            super().__init__(weight, factor, dtype, name)
            streamed.append(f"{weight.shape}")

    with monkeypatch.context() as patch:
        patch.setattr(layer_fold, "FoldedTensor", Recorded)
        patch.setattr(folded_tensor, "CHUNK_ELEMENTS", 200)  # conv1's 2304 elements in 16 chunks of one row
        (tmp_path / "streamed").mkdir()
        fold_file(source, tmp_path / "streamed" / "out.onnx")
    assert STREAM_BYTES <= 16 * 16 * 9 * 4 and streamed == ["(16, 16, 3, 3)"]  # w2 (576 B), w3 (2 KiB) eager
    monkeypatch.setattr(layer_fold, "STREAM_BYTES", 1 << 62)
    (tmp_path / "eager").mkdir()
    fold_file(source, tmp_path / "eager" / "out.onnx")
    eager, written = _written(tmp_path / "eager"), _written(tmp_path / "streamed")
    assert list(written) == (["out.onnx", "out.onnx.data"] if external else ["out.onnx"])
    assert written == eager


def _factors() -> list[tuple[str, tuple[int, ...], Factor]]:
    """Every factor shape a fold uses: output and input channels, plain and grouped."""
    g = rng(4)
    return [
        ("output conv", (6, 4, 3, 3), output_factor((6, 4, 3, 3), g.uniform(0.5, 2, 6), "conv")),
        ("output convt grouped", (6, 2, 3, 3), output_factor((6, 2, 3, 3), g.uniform(0.5, 2, 6), "convt", 3)),
        ("output kn", (10, 7), output_factor((10, 7), g.uniform(0.5, 2, 7), "kn")),
        ("output nk", (7, 10), output_factor((7, 10), g.uniform(0.5, 2, 7), "nk")),
        ("input conv grouped", (6, 2, 3, 3), input_factor((6, 2, 3, 3), g.uniform(0.5, 2, 6), "conv", 3)),
        ("input kn", (10, 7), input_factor((10, 7), g.uniform(0.5, 2, 10), "kn")),
        ("input nk", (7, 10), input_factor((7, 10), g.uniform(0.5, 2, 10), "nk")),
    ]


@pytest.mark.parametrize("chunk", [1, 5, 23, 1 << 20])
@pytest.mark.parametrize(("label", "shape", "factor"), _factors(), ids=[f[0] for f in _factors()])
def test_tofile_writes_each_chunk_with_its_rows_factor(
    monkeypatch: pytest.MonkeyPatch, chunk: int, label: str, shape: tuple[int, ...], factor: Factor
) -> None:
    monkeypatch.setattr(folded_tensor, "CHUNK_ELEMENTS", chunk)
    weight = rng(5).normal(0, 1, shape).astype(np.float32)
    weight.flags.writeable = False
    expected, reason = scale_and_round(weight, factor, np.float32)
    assert expected is not None and reason == ""
    file = io.BytesIO()
    FoldedTensor(weight, factor, np.float32, name="w_folded").tofile(file)
    assert file.getvalue() == expected.tobytes(), label


def test_a_weight_of_one_chunk_is_written_without_a_thread_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four thousand small weights must not start four thousand thread pools (about 0.8 ms each)."""

    def no_pool(*args: object, **kwargs: object) -> None:
        raise AssertionError("a thread pool was started")

    monkeypatch.setattr(sys.modules["normfold.bn_math"], "ThreadPoolExecutor", no_pool)
    weight = rng(6).normal(0, 1, (56, 56, 3, 3)).astype(np.float32)  # 110 KiB: one chunk
    factor = output_factor(weight.shape, rng(7).uniform(0.5, 2, 56), "conv")
    file = io.BytesIO()
    FoldedTensor(weight, factor, np.float32).tofile(file)
    assert len(file.getvalue()) == weight.nbytes


def _resident_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile line")


@pytest.mark.skipif(
    not Path("/proc/self/status").exists() or not hasattr(mmap, "MADV_DONTNEED") or not hasattr(os, "posix_fadvise"),
    reason="needs Linux /proc, madvise and fadvise",
)
@pytest.mark.parametrize("cached_by", ["faults", "read"])
def test_released_small_weights_leave_no_neighbouring_pages_resident(tmp_path: Path, cached_by: str) -> None:
    """onnx_ir maps the data file once per tensor; a read fault maps the cached pages around it (fault-around:
    60 KiB a tensor of 110 KiB without the widened release) and, where the file was cached by read() with
    read-ahead (onnx's checker, `cat`), the whole large folio they lie in (13 MiB of these 200 tensors' 22 MiB
    left resident with only fault-around windows released, on Linux 6.18)."""
    size, count = 56 * 56 * 9 * 4, 200
    path = tmp_path / "weights.data"
    with open(path, "wb") as out:
        out.write(rng(8).standard_normal(size * count // 4).astype(np.float32).tobytes())
        out.flush()
        os.fsync(out.fileno())
        os.posix_fadvise(out.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # read back through readahead, as a model is
    if cached_by == "read":
        with open(path, "rb") as file:
            while file.read(1 << 20):
                pass
    mappings, before = [], _resident_file_kib()
    for index in range(count):
        with open(path, "rb") as file:
            mappings.append(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
        weight = np.frombuffer(mappings[-1], np.float32, count=size // 4, offset=index * size)
        assert np.isfinite(weight.astype(np.float64).sum())
        release_pages(weight)
        del weight
    assert _resident_file_kib() - before < 512
    for mapping in mappings:
        mapping.close()


def test_the_largest_folio_is_the_pmd_size_linux_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reported, missing, garbled = tmp_path / "reported", tmp_path / "missing", tmp_path / "garbled"
    reported.write_text(f"{4 << 20}\n")
    garbled.write_text("huge\n")
    sizes = []
    for file in (reported, missing, garbled):
        monkeypatch.setattr(mapped_pages, "PMD_SIZE_FILE", file)
        mapped_pages.largest_folio_bytes.cache_clear()
        sizes.append(mapped_pages.largest_folio_bytes())
    mapped_pages.largest_folio_bytes.cache_clear()
    assert sizes == [4 << 20, 2 << 20, 2 << 20]


def _attribute_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [attr.t for node in model.graph.node for attr in node.attribute if attr.HasField("t")]


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external"])
@pytest.mark.parametrize("detach_bytes", [0, model_reading.DETACH_BYTES], ids=["detached", "small"])
def test_a_model_read_without_its_proto_writes_the_same_bytes(
    tmp_path: Path, external: bool, detach_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_reading, "DETACH_BYTES", detach_bytes)
    source = _save_input(tmp_path / "in", external)
    kept, detached = load_model_file(source), load_model_file(source, keep_proto=False)
    assert kept.proto is not None and detached.proto is None
    for label, loaded in (("kept", kept), ("detached", detached)):
        (tmp_path / label).mkdir()
        save_model(loaded.model, tmp_path / label / "out.onnx")
    assert _written(tmp_path / "detached") == _written(tmp_path / "kept")
    written = onnx.load(str(tmp_path / "detached" / "out.onnx"), load_external_data=False)
    assert [t.name for t in _attribute_tensors(written)] == [t.name for t in _attribute_tensors(_layers())]


@pytest.mark.parametrize("large", [True, False], ids=["large-parse", "small-parse"])
def test_tensors_get_their_own_proto_only_from_a_large_parse(
    tmp_path: Path, large: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copying each tensor frees the parsed file's memory tensor by tensor: worth it only for a large parse."""
    source = _save_input(tmp_path / "in", external=False)
    assert source.stat().st_size < model_reading.DETACH_BYTES
    if large:
        monkeypatch.setattr(model_reading, "DETACH_BYTES", source.stat().st_size)
    copied: list[str] = []
    own_copy = model_reading._own_copy
    monkeypatch.setattr(model_reading, "_own_copy", lambda tensor: copied.append(tensor.name) or own_copy(tensor))
    load_model_file(source, keep_proto=False)
    layers = _layers()
    every_tensor = [t.name for t in layers.graph.initializer] + [t.name for t in _attribute_tensors(layers)]
    assert sorted(copied) == (sorted(every_tensor) if large else [])

"""Large models with their weights inside the .onnx file: read with each large raw_data memory-mapped where it
lies (inline_mapping), written as one file without serializing the weights in memory (inline_streaming).

The size thresholds are lowered so that small models take these paths; each test compares with the same
model read or written whole by protobuf.
"""

from __future__ import annotations

import mmap
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from graphs import bn_node, bn_params, make_model, rng
from onnx import helper, numpy_helper

from normfold import inline_mapping, inline_streaming
from normfold import protobuf_wire as wire
from normfold.errors import NormfoldError
from normfold.external_data import has_external_data
from normfold.fold_file import fold_file
from normfold.inline_mapping import InlineMappedTensor
from normfold.mapped_pages import release_range
from normfold.model_reading import load_model_file, read_model_proto

ROOT = Path(__file__).resolve().parent.parent
TENSOR_BYTES = 64  # mapped from this many bytes of raw data in these tests


@pytest.fixture
def mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file is large enough to map, every tensor of TENSOR_BYTES or more is mapped."""
    monkeypatch.setattr(inline_mapping, "MAP_FILE_BYTES", 0)
    monkeypatch.setattr(inline_mapping, "MAP_TENSOR_BYTES", TENSOR_BYTES)


def _conv_bn(path: Path) -> Path:
    """Conv (weight 8x4x3x3: 1152 bytes) -> BN (four 32-byte vectors, under TENSOR_BYTES), saved inline."""
    g = rng(3)
    inits = {"w": g.standard_normal((8, 4, 3, 3)).astype(np.float32), **bn_params("bn", 8, g)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), bn_node("c", "y", "bn")]
    onnx.save(make_model(nodes, {"x": [1, 4, 6, 6]}, ["y"], inits), str(path))
    return path


def _arrays(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_large_initializers_are_mapped_in_place(tmp_path: Path, mapping: None) -> None:
    path = _conv_bn(tmp_path / "m.onnx")
    model = load_model_file(path).model
    kinds = {name: type(value.const_value).__name__ for name, value in model.graph.initializers.items()}
    assert kinds == {
        "w": "InlineMappedTensor",
        **{f"bn_{p}": "TensorProtoTensor" for p in ("scale", "bias", "mean", "var")},
    }
    expected = _arrays(path)
    for name, value in model.graph.initializers.items():
        np.testing.assert_array_equal(value.const_value.numpy(), expected[name])
    assert not has_external_data(model)


def test_mapped_tensor_lies_at_its_raw_data(tmp_path: Path, mapping: None) -> None:
    path = _conv_bn(tmp_path / "m.onnx")
    tensor = load_model_file(path).model.graph.initializers["w"].const_value
    assert isinstance(tensor, InlineMappedTensor)
    raw = onnx.load(str(path)).graph.initializer[0].raw_data
    assert path.read_bytes()[tensor.offset : tensor.offset + tensor.length] == raw
    assert (tensor.location, tensor.length) == ("m.onnx", 1152)


def test_small_file_is_parsed_whole(tmp_path: Path) -> None:
    path = _conv_bn(tmp_path / "m.onnx")
    assert inline_mapping.read_mapped_proto(path) is None
    assert not any(
        isinstance(v.const_value, InlineMappedTensor) for v in load_model_file(path).model.graph.initializers.values()
    )


def test_file_name_not_printable_is_parsed_whole(tmp_path: Path, mapping: None) -> None:
    path = _conv_bn(tmp_path / "m\tx.onnx")
    assert inline_mapping.read_mapped_proto(path) is None


def test_already_external_tensor_stays_external(tmp_path: Path, mapping: None) -> None:
    model = onnx.load(str(_conv_bn(tmp_path / "a.onnx")))
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=1024)
    loaded = load_model_file(tmp_path / "m.onnx").model
    assert type(loaded.graph.initializers["w"].const_value) is ir.ExternalTensor
    assert has_external_data(loaded)


def test_two_graph_fields_are_parsed_whole(tmp_path: Path, mapping: None) -> None:
    """protobuf merges repeated graph fields; the walker leaves such a file to protobuf."""
    path = _conv_bn(tmp_path / "m.onnx")
    data = path.read_bytes() + wire.length_delimited(7, b"")
    path.write_bytes(data)
    assert inline_mapping.read_mapped_proto(path) is None
    assert load_model_file(path).model.graph.initializers["w"].const_value.numpy().shape == (8, 4, 3, 3)


def test_mapped_raw_data_of_wrong_length_is_refused(tmp_path: Path, mapping: None) -> None:
    model = onnx.load(str(_conv_bn(tmp_path / "a.onnx")))
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(NormfoldError) as error:
        load_model_file(path)
    assert str(error.value) == f"{path}: tensor 'w' holds 1148 bytes but its shape [8, 4, 3, 3] needs 1152"


def test_truncated_file_is_refused_by_protobuf(tmp_path: Path, mapping: None) -> None:
    path = _conv_bn(tmp_path / "m.onnx")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(NormfoldError, match=r"^.*m\.onnx: not a readable ONNX model \("):
        load_model_file(path)


def test_invalid_mapped_model_fails_the_checker(tmp_path: Path, mapping: None) -> None:
    model = onnx.load(str(_conv_bn(tmp_path / "a.onnx")))
    model.graph.node[0].op_type = "NoSuchOp"
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(NormfoldError, match=r"m\.onnx: invalid ONNX model: .*NoSuchOp"):
        load_model_file(path)


def test_read_model_proto_maps_and_checks(tmp_path: Path, mapping: None) -> None:
    proto = read_model_proto(_conv_bn(tmp_path / "m.onnx"))
    weight = proto.graph.initializer[0]
    assert (weight.data_location, weight.HasField("raw_data")) == (onnx.TensorProto.EXTERNAL, False)


def _fold_both_ways(source: Path, monkeypatch: pytest.MonkeyPatch, **options: object) -> tuple[Path, Path]:
    """The fold of `source` read and written whole, and read mapped and written streamed."""
    whole = source.with_name("whole.onnx")
    fold_file(source, whole, **options)  # type: ignore[arg-type]
    monkeypatch.setattr(inline_mapping, "MAP_FILE_BYTES", 0)
    monkeypatch.setattr(inline_mapping, "MAP_TENSOR_BYTES", TENSOR_BYTES)
    streamed = source.with_name("streamed.onnx")
    fold_file(source, streamed, **options)  # type: ignore[arg-type]
    return whole, streamed


def _same_model(a: Path, b: Path) -> None:
    """Same graph, same initializers in the same order with the same bytes, no external data."""
    first, second = onnx.load(str(a)), onnx.load(str(b))
    assert [t.name for t in first.graph.initializer] == [t.name for t in second.graph.initializer]
    for x, y in zip(first.graph.initializer, second.graph.initializer):
        assert numpy_helper.to_array(x).tobytes() == numpy_helper.to_array(y).tobytes()
        assert y.data_location == onnx.TensorProto.DEFAULT and not y.external_data
    first.graph.ClearField("initializer")
    second.graph.ClearField("initializer")
    assert first == second


def test_fold_of_mapped_model_writes_the_same_inline_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole, streamed = _fold_both_ways(_conv_bn(tmp_path / "m.onnx"), monkeypatch, validation=None)
    _same_model(whole, streamed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "streamed.onnx", "whole.onnx"]
    onnx.checker.check_model(str(streamed), full_check=True)


def test_validated_fold_of_mapped_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from normfold.validate import ValidationConfig

    whole, streamed = _fold_both_ways(_conv_bn(tmp_path / "m.onnx"), monkeypatch, validation=ValidationConfig())
    _same_model(whole, streamed)


def test_shipped_model_folds_the_same_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "resnet_block.onnx"
    shutil.copy(ROOT / "models" / "resnet_block.onnx", source)
    whole, streamed = _fold_both_ways(source, monkeypatch, validation=None)
    _same_model(whole, streamed)


def test_in_place_fold_of_mapped_model(tmp_path: Path, mapping: None) -> None:
    source = _conv_bn(tmp_path / "m.onnx")
    original = source.read_bytes()
    fold_file(source, source, in_place=True)
    folded = onnx.load(str(source))
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    assert source.read_bytes() != original and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_large_model_built_in_memory_is_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not read from a file: its initializers' size alone takes the streamed writer."""
    from normfold import save_model

    model = ir.from_proto(onnx.load(str(_conv_bn(tmp_path / "m.onnx"))))
    save_model(model, tmp_path / "whole.onnx")
    monkeypatch.setattr(inline_mapping, "MAP_FILE_BYTES", 1000)
    assert inline_streaming.needs_streaming(model)
    save_model(model, tmp_path / "streamed.onnx")
    _same_model(tmp_path / "whole.onnx", tmp_path / "streamed.onnx")
    monkeypatch.setattr(inline_mapping, "MAP_FILE_BYTES", 2000)
    assert not inline_streaming.needs_streaming(model)


def test_streamed_model_over_protobuf_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from normfold import save_model

    model = ir.from_proto(onnx.load(str(_conv_bn(tmp_path / "m.onnx"))))
    monkeypatch.setattr(inline_mapping, "MAP_FILE_BYTES", 0)
    monkeypatch.setattr(inline_streaming, "PROTOBUF_LIMIT", 1000)
    target = tmp_path / "out.onnx"
    with pytest.raises(NormfoldError) as error:
        save_model(model, target)
    assert str(error.value).endswith(
        "out.onnx: the model would be over 2 GiB, protobuf's limit for a model inside one file; write it with "
        "its weights in a data file (a model read with external data is written so)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_copy_without_copy_file_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernel cannot copy between the files, the bytes go through a buffer: the same file."""
    from normfold import save_model

    model = ir.from_proto(onnx.load(str(_conv_bn(tmp_path / "m.onnx"))))
    monkeypatch.setattr(inline_mapping, "MAP_FILE_BYTES", 0)
    save_model(model, tmp_path / "kernel.onnx")

    def unsupported(*args: object) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    monkeypatch.setattr(inline_streaming, "COPY_CHUNK", 100)
    save_model(model, tmp_path / "buffered.onnx")
    assert (tmp_path / "kernel.onnx").read_bytes() == (tmp_path / "buffered.onnx").read_bytes()


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31 - 1, 2**63])
def test_varint_round_trip(value: int) -> None:
    encoded = wire.encode_varint(value)
    assert wire.decode_varint(encoded, 0, len(encoded)) == (value, len(encoded))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80", "truncated or overlong varint at byte 1"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "truncated or overlong varint at byte 11"),
        (b"\x0b", "wire type 3 at byte 0"),
        (b"\x0a\x05abc", "field at byte 0 runs past its message"),
        (b"\x02\x00", "field at byte 0 runs past its message"),
    ],
)
def test_malformed_messages_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(wire.MalformedMessage) as error:
        list(wire.fields(data, 0, len(data)))
    assert str(error.value) == message


def test_fields_locate_values_without_reading_them() -> None:
    tensor = numpy_helper.from_array(np.arange(3, dtype=np.float32), "t")
    data = tensor.SerializeToString()
    found = {f.number: data[f.value_start : f.end] for f in wire.fields(data, 0, len(data))}
    assert found == {1: b"\x03", 2: b"\x01", 8: b"t", 9: tensor.raw_data}


def test_corrupt_message_inside_the_graph_is_refused_as_without_mapping(tmp_path: Path, mapping: None) -> None:
    """A node the walker skips over holds bytes protobuf cannot parse: the file is left to protobuf, which refuses
    it with the error any unreadable file gets."""
    model = onnx.load(str(_conv_bn(tmp_path / "a.onnx")))
    graph = model.graph.SerializeToString() + wire.length_delimited(1, b"\x0a\xff")
    model.ClearField("graph")
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString() + wire.length_delimited(7, graph))
    assert inline_mapping.read_mapped_proto(path) is None
    with pytest.raises(NormfoldError, match=r"m\.onnx: not a readable ONNX model \(.*\)$"):
        load_model_file(path)


def test_validated_eval_fold_of_mapped_training_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--eval validates against the input switched to inference mode, a model without a parsed proto whose
    weights are mapped from the input file: the float64 reference reads it from the file written for it."""
    from normfold.validate import ValidationConfig

    source = tmp_path / "training_export.onnx"
    shutil.copy(ROOT / "models" / "training_export.onnx", source)
    config = ValidationConfig(providers=("cpu",))
    whole, streamed = _fold_both_ways(source, monkeypatch, eval_mode=True, validation=config)
    _same_model(whole, streamed)


def test_streamed_output_is_mapped_when_read_again(tmp_path: Path, mapping: None) -> None:
    """The writer leaves no explicit data_location on the tensors it writes inline, so its output is read
    mapped too (validation reads it right after the fold)."""
    folded = tmp_path / "folded.onnx"
    fold_file(_conv_bn(tmp_path / "m.onnx"), folded)
    kinds = {name: type(v.const_value).__name__ for name, v in load_model_file(folded).model.graph.initializers.items()}
    assert sorted(kinds.values()) == ["InlineMappedTensor", "TensorProtoTensor"]  # the weight, the 8 biases


def test_explicit_default_data_location_is_mapped(tmp_path: Path, mapping: None) -> None:
    model = onnx.load(str(_conv_bn(tmp_path / "a.onnx")))
    model.graph.initializer[0].data_location = onnx.TensorProto.DEFAULT
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    tensor = load_model_file(path).model.graph.initializers["w"].const_value
    assert isinstance(tensor, InlineMappedTensor)
    np.testing.assert_array_equal(tensor.numpy(), numpy_helper.to_array(model.graph.initializer[0]))


def _layers_inline(path: Path, count: int) -> Path:
    """`count` Conv -> BN layers (weights 8x8x3x3: 2304 bytes each), saved inline."""
    g = rng(5)
    inits: dict[str, np.ndarray] = {}
    nodes, x = [], "x"
    for i in range(count):
        inits[f"w{i}"] = g.standard_normal((8, 8, 3, 3)).astype(np.float32)
        inits.update(bn_params(f"bn{i}", 8, g))
        nodes += [
            helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            bn_node(f"c{i}", f"y{i}", f"bn{i}"),
        ]
        x = f"y{i}"
    onnx.save(make_model(nodes, {"x": [1, 8, 6, 6]}, [x], inits), str(path))
    return path


def test_the_walk_unmaps_what_it_has_passed(tmp_path: Path, mapping: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The few header bytes read from each tensor would otherwise keep the whole file mapped (read-ahead)."""
    path = _layers_inline(tmp_path / "m.onnx", 6)
    whole = inline_mapping.read_mapped_proto(path)
    assert whole is not None
    monkeypatch.setattr(inline_mapping, "RELEASE_EVERY_BYTES", 1)
    ends: list[int] = []
    monkeypatch.setattr(inline_mapping, "release_range", lambda data, end: ends.append(end))
    walked = inline_mapping.read_mapped_proto(path)
    assert walked is not None
    assert walked[0] == whole[0] and [t.name for t in walked[1]] == [f"w{i}" for i in range(6)]
    assert len(ends) > 6 * 5 and ends == sorted(set(ends)) and ends[-1] < path.stat().st_size


def test_the_walk_unmaps_nothing_before_its_step(
    tmp_path: Path, mapping: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _layers_inline(tmp_path / "m.onnx", 6)
    ends: list[int] = []
    monkeypatch.setattr(inline_mapping, "release_range", lambda data, end: ends.append(end))
    assert inline_mapping.read_mapped_proto(path) is not None
    assert ends == []  # the file is far smaller than RELEASE_EVERY_BYTES


@pytest.mark.skipif(
    not Path("/proc/self/status").exists() or not hasattr(os, "posix_fadvise"),
    reason="reads RssFile from /proc/self/status (Linux)",
)
def test_released_range_leaves_the_resident_set(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(8 << 20))

    def resident_file_kib() -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("RssFile:"))
        return int(line.split()[1])

    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        before = resident_file_kib()
        assert sum(data[i] for i in range(0, len(data), mmap.PAGESIZE)) >= 0  # touch every page
        touched = resident_file_kib()
        release_range(data, len(data) // 2 + 100)  # whole pages before the end only
        half = resident_file_kib()
        release_range(data, len(data))
        after = resident_file_kib()
    assert touched - before >= 7 << 10
    assert abs((touched - half) - (4 << 10)) <= 64  # 4 MiB unmapped, within a few pages
    assert after - before <= 256


def _session_outputs(session: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session.run(None, feeds)  # type: ignore[attr-defined]


def test_onnx_runtime_reads_a_large_inline_model_from_its_file_without_parsing_the_weights(
    tmp_path: Path, mapping: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session is given the model without its weights (bytes), each weight read from the .onnx file itself;
    from another working directory, as the folder comes from the model's path; outputs those of the whole file."""
    import onnxruntime as ort

    from normfold.validate.providers import EXTERNAL_DATA_FOLDER_KEY, open_session, session_source

    path = _conv_bn(tmp_path / "m.onnx")
    options = ort.SessionOptions()
    source = session_source(path, options)
    assert isinstance(source, bytes)
    stripped = onnx.ModelProto.FromString(source)
    assert {t.name for t in stripped.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL} == {"w"}
    assert options.get_session_config_entry(EXTERNAL_DATA_FOLDER_KEY) == str(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    feeds = {"x": rng(9).standard_normal((1, 4, 6, 6)).astype(np.float32)}
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as open_session
    whole = ort.InferenceSession(str(path), plain, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(_session_outputs(open_session(path, "cpu"), feeds)[0], whole.run(None, feeds)[0])


def test_onnx_runtime_opens_a_small_model_from_its_path(tmp_path: Path) -> None:
    import onnxruntime as ort

    from normfold.validate.providers import EXTERNAL_DATA_FOLDER_KEY, session_source

    path = _conv_bn(tmp_path / "m.onnx")
    options = ort.SessionOptions()
    assert session_source(path, options) == str(path)
    with pytest.raises(RuntimeError, match="does not have configuration with key"):
        options.get_session_config_entry(EXTERNAL_DATA_FOLDER_KEY)


def test_a_model_that_cannot_be_read_is_left_to_onnx_runtime(tmp_path: Path, mapping: None) -> None:
    """ONNX Runtime's own reading of the path says what is wrong with it."""
    import onnxruntime as ort

    from normfold.validate.providers import session_source

    missing = tmp_path / "missing.onnx"
    assert session_source(missing, ort.SessionOptions()) == str(missing)

"""Hostile and unusual input, one test per class: each ends in one clean line and its exit code, the input
intact and nothing left behind.

Classes: malformed external-data fields (in models and in test-data folders), special files (a FIFO given
where a file is expected, and signals while something blocks), `.npz` archives whose headers claim more than
the budget or whose members are not arrays, broken `[tool.normfold]` configuration, and `check` on names
and shapes that are not what they look like.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import assert_one_line_error, conv_bn_model, invoke, save_external, snapshot
from onnx import helper, numpy_helper

from normfold.check import check_model

NORMFOLD = shutil.which("normfold")


def _external_model(folder: Path, **fields: str) -> Path:
    """Conv+BN with every tensor in `w.data`, the first tensor's external-data entries overridden by `fields`."""
    path = folder / "m.onnx"
    save_external(conv_bn_model(), path)
    model = onnx.load(str(path), load_external_data=False)
    tensor = model.graph.initializer[0]
    entries = {entry.key: entry.value for entry in tensor.external_data} | fields
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


BAD_FIELDS = {
    "negative offset": ({"offset": "-5"}, "tensor 'w' has external data offset '-5', not a non-negative integer"),
    "word length": ({"length": "abc"}, "tensor 'w' has external data length 'abc', not a non-negative integer"),
    "NUL in location": ({"location": "w\0.data"}, "tensor 'w' has no usable external data location ('w\\x00.data')"),
    "empty location": ({"location": ""}, "tensor 'w' has no usable external data location ('')"),
    "short length": (
        {"length": "4"},
        "tensor 'w' has external data length 4 but its shape [8, 3, 3, 3] needs 864 bytes",
    ),
    "data file is a folder": ({"location": "sub"}, "external data 'sub' of tensor 'w' is not a regular file"),
    "through a missing folder": (
        {"location": "missing/../w.data"},
        "external data file 'missing/../w.data' of tensor 'w' is missing",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_malformed_external_data_fields_are_one_line_errors(tmp_path: Path, case: str) -> None:
    fields, message = BAD_FIELDS[case]
    (tmp_path / "sub").mkdir()
    path = _external_model(tmp_path, **fields)
    before = snapshot(tmp_path)
    assert_one_line_error(invoke("fold", path), f"{path}: {message}", exit_code=3)
    assert_one_line_error(invoke("validate", path, path), f"{path}: {message}", exit_code=3)
    checked = invoke("check", path, "-v")
    assert checked.exit_code == 3 and checked.stdout.splitlines()[0] == f"UNUSABLE {path}: {path}: {message}"
    assert snapshot(tmp_path) == before


def test_a_test_data_tensor_pointing_outside_its_folder_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), str(model))
    (tmp_path / "secret.bin").write_bytes(np.ones((1, 3, 8, 8), np.float32).tobytes())
    data = tmp_path / "data"
    data.mkdir()
    tensor = onnx.TensorProto(
        name="x", data_type=onnx.TensorProto.FLOAT, dims=[1, 3, 8, 8], data_location=onnx.TensorProto.EXTERNAL
    )
    tensor.external_data.add(key="location", value="../secret.bin")
    (data / "input_0.pb").write_bytes(tensor.SerializeToString())
    result = invoke("validate", model, model, "--inputs", data)
    assert_one_line_error(
        result,
        f"{data / 'input_0.pb'}: tensor 'x' points outside the model's folder for its data ('../secret.bin')",
        exit_code=3,
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_a_fifo_is_refused_before_anything_opens_it(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    model = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), str(model))
    assert_one_line_error(invoke("fold", fifo), f"{fifo}: not a regular file", exit_code=3)
    assert_one_line_error(
        invoke("validate", model, model, "--inputs", fifo), f"{fifo}: not a regular file", exit_code=3
    )
    assert invoke("check", fifo, "-v").stdout.splitlines()[0] == f"UNUSABLE {fifo}: {fifo}: not a regular file"


BLOCKED = """
import os, sys, threading
from normfold.cli import install_signal_handlers
install_signal_handlers()
threading.Thread(target=lambda: open(sys.argv[1], "rb"), daemon=False).start()
print("ready", flush=True)
threading.Event().wait()
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_process_even_when_a_thread_is_blocked(tmp_path: Path, sig: int) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    # from tmp_path, so that `python -c` imports the installed package and not the source tree
    process = subprocess.Popen(
        [sys.executable, "-c", BLOCKED, str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    started = time.monotonic()
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + sig
    assert time.monotonic() - started < 15
    assert "Traceback" not in stderr


def _npz_with(path: Path, member: str, payload: bytes, compress: bool = False) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        archive.writestr(member, payload)
    return path


def _npy_header(shape: tuple[int, ...]) -> bytes:
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1")


def test_npz_headers_are_checked_against_the_budget_before_reading(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), str(model))
    huge = _npz_with(tmp_path / "huge.npz", "x.npy", _npy_header((1 << 20, 1 << 20, 3)))
    assert_one_line_error(
        invoke("validate", model, model, "--inputs", huge),
        f"{huge}: its arrays need 12.0 TiB (13194139533312 bytes) but the budget is 1.0 GiB "
        "(1073741824 bytes) (raise --max-input-bytes)",
        exit_code=3,
    )
    bomb = np.zeros((2048, 3, 8, 8), np.float32)  # 1.5 MiB of zeros: compresses to a few KiB
    bomb_npy = _npy_header(bomb.shape) + bomb.tobytes()
    packed = _npz_with(tmp_path / "bomb.npz", "x.npy", bomb_npy, compress=True)
    assert packed.stat().st_size < 64 << 10
    assert_one_line_error(
        invoke("validate", model, model, "--inputs", packed, "--max-input-bytes", "1MiB"),
        f"{packed}: its arrays need 1.5 MiB (1572864 bytes) but the budget is 1.0 MiB "
        "(1048576 bytes) (raise --max-input-bytes)",
        exit_code=3,
    )


def test_npz_members_that_are_not_arrays_are_refused(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), str(model))
    text = _npz_with(tmp_path / "text.npz", "x.txt", b"1 2 3")
    assert_one_line_error(
        invoke("validate", model, model, "--inputs", text), f"{text}: member 'x.txt' is not an .npy array", exit_code=3
    )
    fake = _npz_with(tmp_path / "fake.npz", "x.npy", b"not numpy at all")
    assert_one_line_error(
        invoke("validate", model, model, "--inputs", fake),
        f"{fake}: array 'x' has no valid .npy header (the magic string is not correct; "
        "expected b'\\x93NUMPY', got b'not nu')",
        exit_code=3,
    )


BAD_CONFIG = {
    "syntax error": (
        b"[tool.normfold\ndisable = [",
        "not readable TOML (Expected ']' at the end of a table declaration (at line 1, column 15))",
    ),
    "not UTF-8": (
        b"[tool.normfold]\ndisable = ['\xff']\n",
        "not readable TOML ('utf-8' codec can't decode byte 0xff in position 28: invalid start byte)",
    ),
    "numbers": (
        b"[tool.normfold]\ndisable = [1, 2]\n",
        "[tool.normfold] disable must be a list of rule names, got [1, 2]",
    ),
    "a string": (
        b'[tool.normfold]\ndisable = "foldable-bn"\n',
        "[tool.normfold] disable must be a list of rule names, got 'foldable-bn'",
    ),
    "not a table": (b"[tool]\nnormfold = 3\n", "[tool.normfold] must be a table, got 3"),
    "tool not a table": (b"tool = 3\n", "[tool] must be a table, got 3"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIG))
def test_broken_configuration_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    content, message = BAD_CONFIG[case]
    (tmp_path / "pyproject.toml").write_bytes(content)
    model = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), str(model))
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(invoke("check", model), f"{tmp_path / 'pyproject.toml'}: {message}", exit_code=2)


def test_a_custom_domain_namesake_is_not_judged_as_onnx(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("BatchNormalization", ["x"], ["b"], name="bn", domain="vendor", training_mode=1),
        helper.make_node("Dropout", ["b"], ["y"], name="drop", domain="vendor", ratio=0.9),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("vendor", 1)], ir_version=10
    )
    path = tmp_path / "vendor.onnx"
    onnx.save(model, str(path))
    assert check_model(path).findings == []


def test_a_batch_one_inference_model_is_ready(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((1, 8, 4, 4)).astype(np.float32)
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")]
    params = {"s": np.ones(8), "b": np.zeros(8), "m": np.zeros(8), "v": np.ones(8)}
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, x.shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()],
    )
    path = tmp_path / "batch1.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=10), str(path))
    assert check_model(path).findings == []  # no bn-batch-below-2: batch statistics exist only in training


def test_github_annotations_escape_messages_and_properties_apart(tmp_path: Path) -> None:
    folder = tmp_path / "a,b:c"
    folder.mkdir()
    path = folder / "m.onnx"
    nodes = [helper.make_node("Dropout", ["x"], ["y"], name="drop, first: 50%", ratio=0.8)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=10), str(path))
    lines = invoke("check", path, "--format", "github").stdout.splitlines()
    escaped = str(path).replace(":", "%3A").replace(",", "%2C")
    assert lines[0] == (
        f"::error file={escaped},title=normfold inference-dropout::drop, first: 50%25: an inference "
        f"Dropout is the identity; remove it. Fix: normfold fold {path}"
    )
    assert json.loads(invoke("check", path, "--json").stdout)["models"][0]["findings"][0]["node"] == "drop, first: 50%"


def test_a_parameter_behind_thousands_of_identity_nodes_folds(tmp_path: Path) -> None:
    model = conv_bn_model()
    graph = model.graph
    bn = next(node for node in graph.node if node.op_type == "BatchNormalization")
    previous = bn.input[1]
    for index in range(3000):  # deeper than Python's recursion limit
        graph.node.insert(index, helper.make_node("Identity", [previous], [f"chain{index}"], name=f"id{index}"))
        previous = f"chain{index}"
    bn.input[1] = previous
    path = tmp_path / "deep.onnx"
    onnx.save(model, str(path))
    result = invoke("fold", path, "-o", tmp_path / "out.onnx", "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "FOLDED   BatchNormalization 'bn': into Conv 'conv' (backward)"
    assert [node.op_type for node in onnx.load(str(tmp_path / "out.onnx")).graph.node] == ["Conv"]
    assert [f.rule for f in check_model(path).findings] == ["foldable-bn"]


def test_names_over_the_file_system_limit_are_clean_errors(tmp_path: Path) -> None:
    source = tmp_path / ("m" * 245 + ".onnx")
    onnx.save(conv_bn_model(), str(source))
    default = tmp_path / ("m" * 245 + ".folded.onnx")
    assert_one_line_error(
        invoke("fold", source, "--no-validate"),
        f"{default}: the file name is 257 bytes, over this file system's limit of 255; choose a shorter one with -o",
        exit_code=2,
    )
    long_output = tmp_path / ("o" * 300 + ".onnx")
    assert_one_line_error(
        invoke("fold", source, "-o", long_output, "--no-validate"),
        f"{long_output}: the file name "
        "is 305 bytes, over this file system's limit of 255; choose a shorter one with -o",
        exit_code=2,
    )
    missing = tmp_path / ("z" * 300 + ".onnx")
    assert_one_line_error(
        invoke("validate", missing, source), f"{missing}: cannot read (File name too long)", exit_code=3
    )
    assert invoke("check", missing, "-v").stdout.splitlines()[0] == (
        f"UNUSABLE {missing}: {missing}: cannot read (File name too long)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]


def test_the_longest_legal_output_name_is_written_with_its_data_file(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    save_external(conv_bn_model(), source)
    target = tmp_path / ("o" * 250 + ".onnx")  # 255 bytes: the data file cannot be named after it
    result = invoke("fold", source, "-o", target, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    written = onnx.load(str(target), load_external_data=False)
    locations = {
        entry.value for tensor in written.graph.initializer for entry in tensor.external_data if entry.key == "location"
    }
    assert len(locations) == 1 and len(next(iter(locations))) == 64 + len(".data")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", "w.data", target.name, *locations])


def test_a_model_newer_than_onnx_runtime_says_so_and_offers_the_reference_provider(tmp_path: Path) -> None:
    import onnxruntime

    model = conv_bn_model()
    model.ir_version = onnx.IR_VERSION  # the newest onnx writes (14 with onnx 1.23; onnxruntime 1.31 reads 13)
    path = tmp_path / "new.onnx"
    onnx.save(model, str(path))
    result = invoke("fold", path, "--provider", "cpu")
    if result.exit_code == 0:
        pytest.skip(f"onnxruntime {onnxruntime.__version__} reads IR version {onnx.IR_VERSION}: no newer model here")
    assert result.exit_code == 3 and not (tmp_path / "new.folded.onnx").exists()
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"normfold: error: {path}: ONNX Runtime cannot load the model: ")
    assert f"Unsupported model IR version: {onnx.IR_VERSION}" in line  # ONNX Runtime's cause, never cut
    assert line.endswith(
        f"(the model is newer than onnxruntime {onnxruntime.__version__} reads: upgrade "
        "onnxruntime, or --provider reference validates on onnx's reference evaluator in float64 "
        "instead; --no-validate would write a model this onnxruntime cannot load)"
    )

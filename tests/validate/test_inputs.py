"""Validation inputs: specs from a model, --dim parsing, seeded random feeds, .npz files and test_data_set folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from normfold.errors import NormfoldError
from normfold.validate.inputs import (
    DEFAULT_DIM,
    DEFAULT_MEMORY_BUDGET,
    InputSpec,
    input_specs,
    load_npz_inputs,
    load_test_data_sets,
    parse_dims,
    random_inputs,
    resolve_shape,
)

F32, F16, I64, BOOL = np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int64), np.dtype(np.bool_)
X = InputSpec("x", F32, ("batch", 3))
IDS = InputSpec("ids", I64, (2,))
SPECS = [X, IDS]


def _model(inputs: list[onnx.ValueInfoProto], initializers: list[onnx.TensorProto] = ()) -> onnx.ModelProto:
    graph = helper.make_graph([], "inputs", inputs, [], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _raises(call: Callable[..., object], *args: object, **kwargs: object) -> NormfoldError:
    with pytest.raises(NormfoldError) as caught:
        call(*args, **kwargs)
    return caught.value


def test_input_specs_in_graph_order_without_initializers() -> None:
    weight = numpy_helper.from_array(np.ones(3, np.float32), "w")
    model = _model(
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, None]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT16, [2, 2]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["seq"]),
            helper.make_tensor_value_info("scalar", TensorProto.BFLOAT16, []),
        ],
        [weight],
    )
    assert input_specs(model) == [
        InputSpec("x", F32, ("batch", 3, None)),
        InputSpec("h", F16, (2, 2)),
        InputSpec("ids", I64, ("batch", "seq")),
        InputSpec("mask", BOOL, ("seq",)),
        InputSpec("scalar", np.dtype(ml_dtypes.bfloat16), ()),
    ]


def test_negative_dim_value_is_unknown() -> None:
    model = _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 4])])
    assert input_specs(model) == [InputSpec("x", F32, (None, 4))]


@pytest.mark.parametrize(
    ("value_info", "message"),
    [
        (
            helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [2]),
            "input 's' has sequence type, not a tensor; normfold validates tensor inputs only",
        ),
        (
            helper.make_tensor_value_info("r", TensorProto.FLOAT, None),
            "input 'r' has no shape in the model (unknown rank)",
        ),
        (
            helper.make_value_info("t", onnx.TypeProto()),
            "input 't' has no type, not a tensor; normfold validates tensor inputs only",
        ),
    ],
)
def test_input_specs_refuses_inputs_it_cannot_describe(value_info: onnx.ValueInfoProto, message: str) -> None:
    error = _raises(input_specs, _model([value_info]))
    assert (str(error), error.exit_code) == (message, 3)


def test_resolve_shape() -> None:
    spec = InputSpec("x", F32, ("batch", 3, None, "seq"))
    assert DEFAULT_DIM == 1
    assert resolve_shape(spec, {}) == (1, 3, 1, 1)
    assert resolve_shape(spec, {"batch": 8, "seq": 5, "other": 7}) == (8, 3, 1, 5)
    assert resolve_shape(spec, {"batch": 8}, default_dim=4) == (8, 3, 4, 4)


def test_parse_dims() -> None:
    assert parse_dims([]) == {}
    assert parse_dims(["batch=8", " seq = 128 ", "batch=8"]) == {"batch": 8, "seq": 128}


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["batch"], "--dim 'batch': expected NAME=SIZE, e.g. batch=8"),
        (["=8"], "--dim '=8': the dimension name is empty"),
        (["batch="], "--dim 'batch=': size '' is not an integer"),
        (["batch=x"], "--dim 'batch=x': size 'x' is not an integer"),
        (["batch=1.5"], "--dim 'batch=1.5': size '1.5' is not an integer"),
        (["batch=0"], "--dim 'batch=0': size must be a positive integer"),
        (["seq=4", "batch=-2"], "--dim 'batch=-2': size must be a positive integer"),
        (["batch=8", "batch=4"], "--dim 'batch=4': 'batch' is already set to 8"),
    ],
)
def test_parse_dims_refuses_bad_pairs(pairs: list[str], message: str) -> None:
    error = _raises(parse_dims, pairs)
    assert (str(error), error.exit_code) == (message, 2)


def _assert_feeds_equal(left: list[dict[str, np.ndarray]], right: list[dict[str, np.ndarray]]) -> None:
    assert [list(feeds) for feeds in left] == [list(feeds) for feeds in right]
    for a, b in zip(left, right):
        for name in a:
            assert a[name].dtype == b[name].dtype
            np.testing.assert_array_equal(a[name], b[name])


def test_random_inputs_are_deterministic_per_seed() -> None:
    specs = [X, IDS, InputSpec("mask", BOOL, (64,))]
    first = random_inputs(specs, dims={"batch": 4}, samples=2, seed=7)
    _assert_feeds_equal(first, random_inputs(specs, dims={"batch": 4}, samples=2, seed=7))
    other = random_inputs(specs, dims={"batch": 4}, samples=2, seed=8)
    assert not np.array_equal(first[0]["x"], other[0]["x"])
    assert not np.array_equal(first[0]["mask"], other[0]["mask"])


def test_sample_k_does_not_depend_on_the_sample_count() -> None:
    three = random_inputs(SPECS, samples=3, seed=1)
    _assert_feeds_equal(random_inputs(SPECS, samples=1, seed=1), three[:1])
    assert len(three) == 3
    assert not np.array_equal(three[0]["x"], three[1]["x"])
    assert not np.array_equal(three[1]["x"], three[2]["x"])


def test_an_input_does_not_depend_on_the_shapes_of_the_others() -> None:
    specs = [InputSpec("ids", I64, ("n",)), X]
    (short,), (long,) = random_inputs(specs, dims={"n": 2}), random_inputs(specs, dims={"n": 50})
    np.testing.assert_array_equal(short["x"], long["x"])


def test_inputs_of_the_same_type_get_different_values() -> None:
    (feeds,) = random_inputs([InputSpec("a", F32, (8,)), InputSpec("b", F32, (8,))])
    assert not np.array_equal(feeds["a"], feeds["b"])


def test_random_inputs_dtypes_shapes_and_ranges() -> None:
    specs = [
        InputSpec("f32", F32, ("batch", 100, None)),
        InputSpec("f16", F16, (10_000,)),
        InputSpec("bf16", np.dtype(ml_dtypes.bfloat16), (3,)),
        InputSpec("i64", I64, ("batch", 5_000)),
        InputSpec("i4", np.dtype(ml_dtypes.int4), (1_000,)),
        InputSpec("u8", np.dtype(np.uint8), (10_000,)),
        InputSpec("mask", BOOL, (1_000,)),
    ]
    (feeds,) = random_inputs(specs, dims={"batch": 2})
    assert {name: (a.dtype, a.shape) for name, a in feeds.items()} == {
        "f32": (F32, (2, 100, 1)),
        "f16": (F16, (10_000,)),
        "bf16": (np.dtype(ml_dtypes.bfloat16), (3,)),
        "i64": (I64, (2, 5_000)),
        "i4": (np.dtype(ml_dtypes.int4), (1_000,)),
        "u8": (np.dtype(np.uint8), (10_000,)),
        "mask": (BOOL, (1_000,)),
    }
    normal = feeds["f16"].astype(np.float64)
    assert abs(normal.mean()) < 0.05 and abs(normal.std() - 1) < 0.05
    assert set(np.unique(feeds["i64"]).tolist()) == set(range(10))
    assert set(np.unique(feeds["i4"].astype(np.int64)).tolist()) == set(range(8))
    assert (feeds["u8"].min(), feeds["u8"].max()) == (0, 255)
    assert 400 < feeds["mask"].sum() < 600


def test_random_inputs_refuse_strings() -> None:
    error = _raises(random_inputs, [InputSpec("text", np.dtype(object), (2,))])
    assert str(error) == (
        "input 'text' holds strings; random inputs cover numbers and booleans, "
        "give it from an .npz file or a test_data_set folder"
    )


def test_memory_budget_is_checked_before_allocating() -> None:
    # 4 TB could not be allocated here: a NormfoldError (not a MemoryError) shows the check came first.
    huge = InputSpec("big", F32, (100_000, 100_000, "n"))
    error = _raises(random_inputs, [huge, IDS], dims={"n": 100})
    assert DEFAULT_MEMORY_BUDGET == 1 << 30
    assert (str(error), error.exit_code) == (
        "random inputs need 3.6 TiB (4000000000016 bytes) for 1 sample "
        "but the budget is 1.0 GiB (1073741824 bytes); "
        "the largest, 'big' [100000, 100000, 100] float32, takes 3.6 TiB (4000000000000 bytes) per sample; "
        "set symbolic dimensions with --dim, use fewer --samples, or raise --max-input-bytes",
        3,
    )


def test_memory_budget_counts_every_sample() -> None:
    small = InputSpec("x", F32, (2, 3))
    assert len(random_inputs([small], samples=2, memory_budget=48)) == 2
    error = _raises(random_inputs, [small], samples=2, memory_budget=47)
    assert str(error) == (
        "random inputs need 48 bytes for 2 samples but the budget is 47 bytes; "
        "the largest, 'x' [2, 3] float32, takes 24 bytes per sample; "
        "set symbolic dimensions with --dim, use fewer --samples, or raise --max-input-bytes"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"samples": 0}, "--samples must be at least 1, not 0"),
        ({"seed": -1}, "--seed must be non-negative, not -1"),
    ],
)
def test_random_inputs_refuse_bad_options(options: dict[str, int], message: str) -> None:
    error = _raises(random_inputs, SPECS, **options)
    assert (str(error), error.exit_code) == (message, 2)


def test_npz_single_sample(tmp_path: Path) -> None:
    x, ids = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([3, 4])
    np.savez(tmp_path / "in.npz", x=x, ids=ids)
    (feeds,) = load_npz_inputs(tmp_path / "in.npz", SPECS, {"batch": 2})
    _assert_feeds_equal([feeds], [{"x": x, "ids": ids}])


def test_npz_several_samples(tmp_path: Path) -> None:
    x, ids = np.arange(24, dtype=np.float32).reshape(4, 2, 3), np.arange(8).reshape(4, 2)
    np.savez(tmp_path / "in.npz", ids=ids, x=x)
    samples = load_npz_inputs(tmp_path / "in.npz", SPECS)
    _assert_feeds_equal(samples, [{"x": x[k], "ids": ids[k]} for k in range(4)])


def test_npz_bfloat16_comes_back_from_raw_bytes(tmp_path: Path) -> None:
    values = np.array([1.5, -2.0, 3.25], ml_dtypes.bfloat16)
    np.savez(tmp_path / "in.npz", h=values)
    (feeds,) = load_npz_inputs(tmp_path / "in.npz", [InputSpec("h", np.dtype(ml_dtypes.bfloat16), (3,))])
    assert feeds["h"].dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(feeds["h"].astype(np.float32), [1.5, -2.0, 3.25])


GOOD = {"x": np.zeros((2, 3), np.float32), "ids": np.zeros(2, np.int64)}

NPZ_ERRORS = {
    "missing input": (
        {"x": GOOD["x"], "other": GOOD["ids"]},
        None,
        "no array for input(s) 'ids' (the file has: 'other', 'x')",
    ),
    "extra key": (
        {**GOOD, "labels": GOOD["ids"], "a": GOOD["ids"]},
        None,
        "array(s) 'a', 'labels' match no model input (inputs: 'x', 'ids')",
    ),
    "dtype": ({**GOOD, "x": GOOD["x"].astype(np.float64)}, None, "input 'x' is float64 but the model expects float32"),
    "fixed dim": (
        {**GOOD, "x": np.zeros((2, 4), np.float32)},
        None,
        "input 'x' has size 4 on axis 1 but the model fixes it to 3",
    ),
    "fixed dim in a sample": (
        {"x": np.zeros((5, 2, 4), np.float32), "ids": np.zeros((5, 2), np.int64)},
        None,
        "input 'x' has size 4 on axis 1 but the model fixes it to 3",
    ),
    "--dim": (GOOD, {"batch": 8}, "input 'x' has size 2 on axis 0 ('batch') but --dim batch=8"),
    "rank": (
        {**GOOD, "ids": np.zeros((1, 1, 2), np.int64)},
        None,
        "input 'ids' has 3 dimension(s) but the model's input has rank 1 (2 with a leading samples axis)",
    ),
    "mixed samples axis": (
        {**GOOD, "ids": np.zeros((4, 2), np.int64)},
        None,
        "input(s) 'ids' have a leading samples axis but 'x' do not; give it to every input or to none",
    ),
    "sample counts": (
        {"x": np.zeros((4, 2, 3), np.float32), "ids": np.zeros((3, 2), np.int64)},
        None,
        "inconsistent sample counts on axis 0: 'x' has 4, 'ids' has 3",
    ),
    "no samples": (
        {"x": np.zeros((0, 2, 3), np.float32), "ids": np.zeros((0, 2), np.int64)},
        None,
        "no samples (axis 0 has size 0)",
    ),
}


@pytest.mark.parametrize(("arrays", "dims", "message"), NPZ_ERRORS.values(), ids=NPZ_ERRORS.keys())
def test_npz_refuses_mismatched_arrays(tmp_path: Path, arrays: dict, dims: dict | None, message: str) -> None:
    path = tmp_path / "in.npz"
    np.savez(path, **arrays)
    error = _raises(load_npz_inputs, path, SPECS, dims)
    assert (str(error), error.exit_code) == (f"{path}: {message}", 3)


def _write_bytes(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_npz_refuses_unreadable_files(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.zeros(2))
    cases = {
        tmp_path / "absent.npz": "no such file",
        tmp_path: "not a regular file",
        _write_bytes(
            tmp_path / "array.npz", (tmp_path / "one.npy").read_bytes()
        ): "a single .npy array, not an .npz archive of arrays named after the inputs",
        _write_bytes(tmp_path / "text.npz", b"x,ids\n1,2\n"): "not an .npz archive",
        _write_bytes(
            tmp_path / "broken.npz", b"PK\x03\x04 truncated"
        ): "not a readable .npz archive (File is not a zip file)",
    }
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object), ids=GOOD["ids"])
    cases[tmp_path / "objects.npz"] = "cannot read array 'x' (Object arrays cannot be loaded when allow_pickle=False)"
    for path, message in cases.items():
        assert str(_raises(load_npz_inputs, path, SPECS)) == f"{path}: {message}"


def _write_set(folder: Path, inputs: list[tuple[str, np.ndarray]], outputs: list[np.ndarray] = ()) -> Path:
    folder.mkdir(parents=True)
    for stem, tensors in (("input", inputs), ("output", [(f"out{i}", a) for i, a in enumerate(outputs)])):
        for index, (name, array) in enumerate(tensors):
            tensor = numpy_helper.from_array(array, name)
            (folder / f"{stem}_{index}.pb").write_bytes(tensor.SerializeToString())
    return folder


def _sample(k: int) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 3), k, np.float32), "ids": np.array([k, k + 1])}


def test_one_data_set_without_outputs_maps_by_index(tmp_path: Path) -> None:
    feeds = _sample(0)
    folder = _write_set(tmp_path / "test_data_set_0", [("", feeds["x"]), ("unrelated", feeds["ids"])])
    inputs, outputs = load_test_data_sets(folder, SPECS)
    _assert_feeds_equal(inputs, [feeds])
    assert outputs is None


def test_one_data_set_maps_by_tensor_name_first(tmp_path: Path) -> None:
    feeds = _sample(5)
    folder = _write_set(tmp_path / "any_name", [("ids", feeds["ids"]), ("x", feeds["x"])], [np.ones(2)])
    inputs, outputs = load_test_data_sets(folder, SPECS)
    _assert_feeds_equal(inputs, [feeds])
    assert len(outputs) == 1 and len(outputs[0]) == 1
    np.testing.assert_array_equal(outputs[0][0], np.ones(2))


def test_several_data_sets_in_numeric_order_with_outputs(tmp_path: Path) -> None:
    for k in (10, 2, 0):
        feeds = _sample(k)
        _write_set(
            tmp_path / f"test_data_set_{k}",
            [("x", feeds["x"]), ("ids", feeds["ids"])],
            [np.full(2, k, np.float32), np.array(k)],
        )
    (tmp_path / "README.txt").write_text("not a set")
    inputs, outputs = load_test_data_sets(tmp_path, SPECS)
    _assert_feeds_equal(inputs, [_sample(0), _sample(2), _sample(10)])
    assert [[a.tolist() for a in arrays] for arrays in outputs] == [[[0, 0], 0], [[2, 2], 2], [[10, 10], 10]]


def test_several_data_sets_without_outputs(tmp_path: Path) -> None:
    for k in (0, 1):
        _write_set(tmp_path / f"test_data_set_{k}", [("x", _sample(k)["x"]), ("ids", _sample(k)["ids"])])
    inputs, outputs = load_test_data_sets(tmp_path, SPECS)
    _assert_feeds_equal(inputs, [_sample(0), _sample(1)])
    assert outputs is None


def test_data_set_errors(tmp_path: Path) -> None:
    x, ids = _sample(0)["x"], _sample(0)["ids"]
    empty = tmp_path / "empty"
    empty.mkdir()
    gap = _write_set(tmp_path / "gap", [("x", x), ("ids", ids)])
    (gap / "input_1.pb").rename(gap / "input_2.pb")
    dtype = _write_set(tmp_path / "dtype", [("x", x.astype(np.float64)), ("ids", ids)])
    twice = _write_set(tmp_path / "twice", [("x", x), ("x", x)])
    extra = _write_set(tmp_path / "extra", [("x", x), ("ids", ids), ("", ids)])
    short = _write_set(tmp_path / "short", [("x", x)])
    garbage = _write_set(tmp_path / "garbage", [("x", x)])
    (garbage / "input_1.pb").write_bytes(b"\xff\xff\xff")
    cases = {
        tmp_path / "absent": f"{tmp_path / 'absent'}: no such folder",
        gap / "input_0.pb": f"{gap / 'input_0.pb'}: not a folder",
        empty: f"{empty}: no input_*.pb files and no test_data_set_N folders",
        gap: f"{gap}: input_1.pb is missing (found input_0.pb, input_2.pb)",
        dtype: f"{dtype / 'input_0.pb'}: input 'x' is float64 but the model expects float32",
        twice: f"{twice / 'input_1.pb'}: input 'x' is already given by input_0.pb",
        extra: f"{extra / 'input_2.pb'}: tensor '' matches no input name and the model has only 2 input(s)",
        short: f"{short}: no tensor for input(s) 'ids' (1 input_*.pb file(s) for 2 model input(s))",
        garbage: f"{garbage / 'input_1.pb'}: not a serialized onnx.TensorProto",
    }
    for folder, message in cases.items():
        error = _raises(load_test_data_sets, folder, SPECS)
        assert (str(error), error.exit_code) == (message, 3)


def test_data_sets_need_inputs_in_every_set_and_outputs_in_all_or_none(tmp_path: Path) -> None:
    x, ids = _sample(0)["x"], _sample(0)["ids"]
    _write_set(tmp_path / "a" / "test_data_set_0", [("x", x), ("ids", ids)])
    (tmp_path / "a" / "test_data_set_1").mkdir()
    error = _raises(load_test_data_sets, tmp_path / "a", SPECS)
    assert str(error) == f"{tmp_path / 'a' / 'test_data_set_1'}: no input_*.pb files"
    _write_set(tmp_path / "b" / "test_data_set_0", [("x", x), ("ids", ids)])
    _write_set(tmp_path / "b" / "test_data_set_1", [("x", x), ("ids", ids)], [np.ones(1)])
    error = _raises(load_test_data_sets, tmp_path / "b", SPECS)
    assert str(error) == (
        f"{tmp_path / 'b' / 'test_data_set_0'}: no output_*.pb files, but test_data_set_1 has "
        "them; give expected outputs for every set or for none"
    )

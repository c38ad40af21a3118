"""Inputs for validation runs: the model's input specs, seeded random feeds, and feeds read from files.

Random values, chosen so that any model accepting its declared types runs on them:
- floats (float16/32/64, bfloat16, float8/float4): standard normal, drawn in float32 (float64 for double)
  and cast once to the input's dtype;
- complex: standard normal real and imaginary parts;
- bool: Bernoulli(0.5);
- uint8: the whole range [0, 255], since uint8 inputs are usually pixels;
- every other integer type: [0, 10), clipped to the type's range. Non-negative and small because integer
  inputs are mostly indices (token ids, Gather indices, masks): negative or large ones would fall outside
  small tables and turn a numeric check into an indexing error;
- strings: refused; they must come from a file.

Each (sample, input) pair has its own random stream derived from (seed, sample, input position), so sample k
is the same whatever the number of samples and whatever the shapes of the other inputs.

numpy, ml_dtypes, onnx and the model readers are imported in the functions that use them: every command's
options read DEFAULT_MEMORY_BUDGET and parse_dims (through normfold.validate.config), and `--help` imports none
of those (seconds of start-up).
"""

from __future__ import annotations

import dataclasses
import math
import re
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from normfold.errors import EXIT_USAGE, NormfoldError, describe

if TYPE_CHECKING:
    import numpy as np
    import onnx

DEFAULT_DIM: int = 1
DEFAULT_MEMORY_BUDGET: int = 1 << 30

INT_RANGE = (0, 10)
UINT8_RANGE = (0, 256)

Dim = int | str | None
if TYPE_CHECKING:
    Feeds = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype, and dims (int fixed, str symbolic, None unknown)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """Graph inputs that are not initializers, in graph order; needs no external data.

    An input without a tensor type, element type or shape (unknown rank) is a NormfoldError: normfold can
    neither make nor check values for it.
    """
    graph = model.graph
    constants = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    return [_spec(info) for info in graph.input if info.name not in constants]


def _spec(info: onnx.ValueInfoProto) -> InputSpec:
    import numpy as np
    import onnx
    from onnx import helper

    kind = info.type.WhichOneof("value")
    if kind != "tensor_type":
        what = f"has {kind.removesuffix('_type').replace('_', ' ')} type" if kind else "has no type"
        raise NormfoldError(f"input '{info.name}' {what}, not a tensor; normfold validates tensor inputs only")
    tensor_type = info.type.tensor_type
    if tensor_type.elem_type == onnx.TensorProto.UNDEFINED:
        raise NormfoldError(f"input '{info.name}' has no element type in the model")
    if not tensor_type.HasField("shape"):
        raise NormfoldError(f"input '{info.name}' has no shape in the model (unknown rank)")
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    return InputSpec(info.name, dtype, tuple(_dim(d) for d in tensor_type.shape.dim))


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    which = dim.WhichOneof("value")
    if which == "dim_value" and dim.dim_value >= 0:
        return dim.dim_value
    if which == "dim_param" and dim.dim_param:
        return dim.dim_param
    return None  # negative values are how some exporters write "unknown"


def resolve_shape(spec: InputSpec, dims: Mapping[str, int], default_dim: int = DEFAULT_DIM) -> tuple[int, ...]:
    """Concrete shape: fixed dims kept, symbolic ones from `dims` (else default_dim), unknown ones default_dim."""
    return tuple(d if isinstance(d, int) else dims.get(d, default_dim) if d else default_dim for d in spec.shape)


def parse_dims(pairs: Sequence[str]) -> dict[str, int]:
    """['batch=8', 'seq=128'] -> {'batch': 8, 'seq': 128}; a bad pair is a usage error naming it."""
    dims: dict[str, int] = {}
    for pair in pairs:
        name, equals, value = (part.strip() for part in pair.partition("="))
        if not equals:
            raise _usage(f"--dim '{pair}': expected NAME=SIZE, e.g. batch=8")
        if not name:
            raise _usage(f"--dim '{pair}': the dimension name is empty")
        if not re.fullmatch(r"[+-]?[0-9]+", value):
            raise _usage(f"--dim '{pair}': size '{value}' is not an integer")
        if int(value) <= 0:
            raise _usage(f"--dim '{pair}': size must be a positive integer")
        if name in dims and dims[name] != int(value):
            raise _usage(f"--dim '{pair}': '{name}' is already set to {dims[name]}")
        dims[name] = int(value)
    return dims


def _usage(message: str) -> NormfoldError:
    return NormfoldError(message, exit_code=EXIT_USAGE)


def random_inputs(
    specs: Sequence[InputSpec],
    *,
    dims: Mapping[str, int] | None = None,
    samples: int = 1,
    seed: int = 0,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> list[Feeds]:
    """Seeded random feeds, one dict per sample (value ranges in the module docstring).

    The total size is checked against memory_budget before anything is allocated.
    """
    if samples < 1:
        raise _usage(f"--samples must be at least 1, not {samples}")
    if seed < 0:
        raise _usage(f"--seed must be non-negative, not {seed}")
    shapes = [resolve_shape(spec, dims or {}) for spec in specs]
    for spec in specs:
        if _value_kind(spec.dtype) == "string":
            raise NormfoldError(
                f"input '{spec.name}' holds strings; random inputs cover numbers and booleans, "
                "give it from an .npz file or a test_data_set folder"
            )
    _check_budget(specs, shapes, samples, memory_budget)
    return [
        {
            spec.name: _random_array(_stream(seed, k, i), spec.dtype, shape)
            for i, (spec, shape) in enumerate(zip(specs, shapes))
        }
        for k in range(samples)
    ]


def _stream(seed: int, sample: int, position: int) -> np.random.Generator:
    import numpy as np

    return np.random.default_rng(np.random.SeedSequence([seed, sample, position]))


def _check_budget(specs: Sequence[InputSpec], shapes: Sequence[tuple[int, ...]], samples: int, budget: int) -> None:
    """Refuse inputs larger than the budget, naming the largest input so the user sees which dims to shrink."""
    sizes = [math.prod(shape) * spec.dtype.itemsize for spec, shape in zip(specs, shapes)]
    total = sum(sizes) * samples
    if total <= budget:
        return
    largest = max(range(len(specs)), key=sizes.__getitem__)
    shape, dtype = list(shapes[largest]), specs[largest].dtype.name
    plural = "" if samples == 1 else "s"
    raise NormfoldError(
        f"random inputs need {_size(total)} for {samples} sample{plural} but the budget is {_size(budget)}; "
        f"the largest, '{specs[largest].name}' {shape} {dtype}, takes {_size(sizes[largest])} per sample; "
        "set symbolic dimensions with --dim, use fewer --samples, or raise --max-input-bytes"
    )


def _size(count: int) -> str:
    """Bytes in binary units with the exact count, which --max-input-bytes takes: '1.5 KiB (1536 bytes)'."""
    if count < 1024:
        return f"{count} bytes"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    return f"{value:.1f} {unit} ({count} bytes)"


def _value_kind(dtype: np.dtype) -> str:
    """'bool', 'complex', 'string', 'float' or 'int' (ml_dtypes' types are numpy kind 'V')."""
    import ml_dtypes

    if dtype.kind in "bcOUS":
        return {"b": "bool", "c": "complex"}.get(dtype.kind, "string")
    if dtype.kind == "f" or (dtype.kind == "V" and _has_info(ml_dtypes.finfo, dtype)):
        return "float"
    if dtype.kind in "iu" or (dtype.kind == "V" and _has_info(ml_dtypes.iinfo, dtype)):
        return "int"
    raise NormfoldError(f"unsupported input dtype {dtype}")


def _has_info(info: type, dtype: np.dtype) -> bool:
    try:
        info(dtype)
    except ValueError:
        return False
    return True


def _random_array(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    import ml_dtypes
    import numpy as np

    kind = _value_kind(dtype)
    if kind == "bool":
        return rng.integers(0, 2, size=shape, dtype=np.bool_)
    if kind == "float":
        wide = np.float64 if dtype == np.float64 else np.float32
        return rng.standard_normal(shape, dtype=wide).astype(dtype)
    if kind == "complex":
        wide = np.float64 if dtype == np.complex128 else np.float32
        return (rng.standard_normal(shape, dtype=wide) + 1j * rng.standard_normal(shape, dtype=wide)).astype(dtype)
    info = ml_dtypes.iinfo(dtype)
    low, high = UINT8_RANGE if dtype == np.uint8 else INT_RANGE
    low, high = max(low, int(info.min)), min(high, int(info.max) + 1)
    return rng.integers(low, high, size=shape, dtype=np.int64).astype(dtype)


def load_npz_inputs(
    path: Path,
    specs: Sequence[InputSpec],
    dims: Mapping[str, int] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> list[Feeds]:
    """Feeds from an .npz holding one array per graph input, keyed by input name.

    If every array has one more dimension than its input's rank, axis 0 indexes samples; otherwise the file
    is one sample. Arrays are checked against the specs' dtypes, fixed dims and the symbolic dims in `dims`;
    their headers against `memory_budget` before any array is read.
    """
    source = str(path)
    arrays = _read_npz(Path(path), memory_budget)
    _check_names(source, arrays, specs)
    stacked = _has_samples_axis(source, arrays, specs)
    count = _sample_count(source, arrays) if stacked else 1
    arrays = {spec.name: _conform(source, spec, arrays[spec.name], dims or {}, stacked) for spec in specs}
    if not stacked:
        return [arrays]
    return [{name: array[k] for name, array in arrays.items()} for k in range(count)]


def _read_npz(path: Path, budget: int) -> dict[str, np.ndarray]:
    """Every array of the archive, without unpickling anything, once their headers fit the budget."""
    import numpy as np

    magic = _read_start(path, 6)
    if magic.startswith(b"\x93NUMPY"):
        raise NormfoldError(f"{path}: a single .npy array, not an .npz archive of arrays named after the inputs")
    if not magic.startswith(b"PK"):
        raise NormfoldError(f"{path}: not an .npz archive")
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(_member_bytes(path, archive, info) for info in archive.infolist())
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise NormfoldError(f"{path}: not a readable .npz archive ({describe(error)})") from None
    if total > budget:
        raise NormfoldError(
            f"{path}: its arrays need {_size(total)} but the budget is {_size(budget)} (raise --max-input-bytes)"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise NormfoldError(f"{path}: not a readable .npz archive ({describe(error)})") from None
    with archive:
        return {key: _read_member(path, archive, key) for key in archive.files}


def _member_bytes(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """The bytes an archive member's array takes, from its .npy header alone; an error for anything else."""
    import numpy as np

    key = info.filename.removesuffix(".npy")
    if not info.filename.endswith(".npy"):
        raise NormfoldError(f"{path}: member '{info.filename}' is not an .npy array")
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(member)
        except ValueError as error:
            raise NormfoldError(f"{path}: array '{key}' has no valid .npy header ({describe(error)})") from None
    if dtype.hasobject:
        raise NormfoldError(
            f"{path}: cannot read array '{key}' (Object arrays cannot be loaded when allow_pickle=False)"
        )
    return math.prod(shape) * dtype.itemsize


def _read_start(path: Path, count: int) -> bytes:
    from normfold.model_reading import require_regular_file

    require_regular_file(path)
    try:
        with path.open("rb") as stream:
            return stream.read(count)
    except OSError as error:
        raise NormfoldError(f"{path}: cannot read ({describe(error)})") from None


def _read_member(path: Path, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise NormfoldError(f"{path}: cannot read array '{key}' ({describe(error)})") from None


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{name}'" for name in names) or "none"


def _check_names(source: str, arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec]) -> None:
    """Exactly one array per input: a missing one lists what the file has, an extra one what the model takes."""
    names = [spec.name for spec in specs]
    missing = [name for name in names if name not in arrays]
    if missing:
        available = _quoted(sorted(arrays))
        raise NormfoldError(f"{source}: no array for input(s) {_quoted(missing)} (the file has: {available})")
    extra = sorted(key for key in arrays if key not in names)
    if extra:
        raise NormfoldError(f"{source}: array(s) {_quoted(extra)} match no model input (inputs: {_quoted(names)})")


def _has_samples_axis(source: str, arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec]) -> bool:
    """True when every array has a leading samples axis, False when none has; anything else is an error."""
    stacked: list[str] = []
    single: list[str] = []
    for spec in specs:
        rank, ndim = len(spec.shape), arrays[spec.name].ndim
        if ndim not in (rank, rank + 1):
            raise NormfoldError(
                f"{source}: input '{spec.name}' has {ndim} dimension(s) but the model's input has "
                f"rank {rank} ({rank + 1} with a leading samples axis)"
            )
        (stacked if ndim == rank + 1 else single).append(spec.name)
    if stacked and single:
        raise NormfoldError(
            f"{source}: input(s) {_quoted(stacked)} have a leading samples axis but "
            f"{_quoted(single)} do not; give it to every input or to none"
        )
    return bool(stacked)


def _sample_count(source: str, arrays: Mapping[str, np.ndarray]) -> int:
    counts = {name: array.shape[0] for name, array in arrays.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"'{name}' has {count}" for name, count in counts.items())
        raise NormfoldError(f"{source}: inconsistent sample counts on axis 0: {listed}")
    count = next(iter(counts.values()))
    if count == 0:
        raise NormfoldError(f"{source}: no samples (axis 0 has size 0)")
    return count


def _conform(source: str, spec: InputSpec, array: np.ndarray, dims: Mapping[str, int], stacked: bool) -> np.ndarray:
    """The array in the input's dtype, after checking dtype, rank, fixed dims and the dims given by --dim."""
    array = _check_dtype(source, spec, array)
    offset = 1 if stacked else 0
    if array.ndim != len(spec.shape) + offset:
        raise NormfoldError(
            f"{source}: input '{spec.name}' has {array.ndim} dimension(s) "
            f"but the model's input has rank {len(spec.shape)}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape[offset:])):
        if isinstance(want, int) and got != want:
            raise NormfoldError(
                f"{source}: input '{spec.name}' has size {got} on axis {axis} but the model fixes it to {want}"
            )
        if isinstance(want, str) and want in dims and got != dims[want]:
            raise NormfoldError(
                f"{source}: input '{spec.name}' has size {got} on axis {axis} ('{want}') but --dim {want}={dims[want]}"
            )
    return array


def _check_dtype(source: str, spec: InputSpec, array: np.ndarray) -> np.ndarray:
    """Exact dtypes only; ml_dtypes arrays come back from .npz as raw void bytes, reinterpreted here."""
    if array.dtype == spec.dtype:
        return array
    if _value_kind(spec.dtype) == "string" and array.dtype.kind in "OUS":
        return array
    raw = array.dtype.kind == "V" and array.dtype.fields is None and array.dtype.itemsize == spec.dtype.itemsize
    if spec.dtype.kind == "V" and raw:
        return array.view(spec.dtype)
    raise NormfoldError(f"{source}: input '{spec.name}' is {array.dtype} but the model expects {spec.dtype}")


def load_test_data_sets(folder: Path, specs: Sequence[InputSpec]) -> tuple[list[Feeds], list[list[np.ndarray]] | None]:
    """Feeds and expected outputs from the ONNX model-zoo layout.

    `folder` is one set (it holds input_0.pb, input_1.pb, ... and maybe output_0.pb, ...) or holds
    test_data_set_N folders, read in numeric order of N. A tensor goes to the input with its name, else to the
    input at its file's index. Outputs are None when no set has output_*.pb, a list per set otherwise.
    """
    sets = _data_set_folders(Path(folder))
    inputs = [_read_set_inputs(path, specs) for path in sets]
    outputs = [_numbered(path, "output") for path in sets]
    if not any(outputs):
        return inputs, None
    if not all(outputs):
        lacking = next(path for path, files in zip(sets, outputs) if not files)
        having = next(path for path, files in zip(sets, outputs) if files)
        raise NormfoldError(
            f"{lacking}: no output_*.pb files, but {having.name} has them; "
            "give expected outputs for every set or for none"
        )
    return inputs, [[_tensor_array(file, _read_tensor(file)) for file in files] for files in outputs]


def _data_set_folders(folder: Path) -> list[Path]:
    if not folder.exists():
        raise NormfoldError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise NormfoldError(f"{folder}: not a folder")
    if _numbered(folder, "input"):
        return [folder]
    sets = [path for path in folder.iterdir() if path.is_dir() and re.fullmatch(r"test_data_set_\d+", path.name)]
    if not sets:
        raise NormfoldError(f"{folder}: no input_*.pb files and no test_data_set_N folders")
    return sorted(sets, key=lambda path: int(path.name.rsplit("_", 1)[1]))


def _numbered(folder: Path, stem: str) -> list[Path]:
    """stem_0.pb, stem_1.pb, ... in index order; a gap in the numbering is an error."""
    found = {}
    for path in folder.iterdir():
        match = re.fullmatch(rf"{stem}_(\d+)\.pb", path.name)
        if match and path.is_file():
            found[int(match.group(1))] = path
    for index in range(len(found)):
        if index not in found:
            raise NormfoldError(
                f"{folder}: {stem}_{index}.pb is missing (found {', '.join(found[i].name for i in sorted(found))})"
            )
    return [found[index] for index in range(len(found))]


def _read_set_inputs(folder: Path, specs: Sequence[InputSpec]) -> Feeds:
    files = _numbered(folder, "input")
    if not files and specs:
        raise NormfoldError(f"{folder}: no input_*.pb files")
    feeds: Feeds = {}
    origin: dict[str, Path] = {}
    for index, file in enumerate(files):
        tensor = _read_tensor(file)
        spec = _spec_for_tensor(file, tensor.name, index, specs)
        if spec.name in origin:
            raise NormfoldError(f"{file}: input '{spec.name}' is already given by {origin[spec.name].name}")
        origin[spec.name] = file
        feeds[spec.name] = _conform(str(file), spec, _tensor_array(file, tensor), {}, stacked=False)
    missing = [spec.name for spec in specs if spec.name not in feeds]
    if missing:
        raise NormfoldError(
            f"{folder}: no tensor for input(s) {_quoted(missing)} "
            f"({len(files)} input_*.pb file(s) for {len(specs)} model input(s))"
        )
    return {spec.name: feeds[spec.name] for spec in specs}


def _spec_for_tensor(file: Path, name: str, index: int, specs: Sequence[InputSpec]) -> InputSpec:
    """The input named like the tensor, else the one at the file's index."""
    by_name = {spec.name: spec for spec in specs}
    if name in by_name:
        return by_name[name]
    if index < len(specs):
        return specs[index]
    raise NormfoldError(f"{file}: tensor '{name}' matches no input name and the model has only {len(specs)} input(s)")


def _read_tensor(file: Path) -> onnx.TensorProto:
    import onnx
    from google.protobuf.message import DecodeError

    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(file.read_bytes())
    except OSError as error:
        raise NormfoldError(f"{file}: cannot read ({describe(error)})") from None
    except DecodeError:
        raise NormfoldError(f"{file}: not a serialized onnx.TensorProto") from None
    if tensor.data_type == onnx.TensorProto.UNDEFINED:
        raise NormfoldError(f"{file}: not a serialized onnx.TensorProto (no data type)")
    return tensor


def _tensor_array(file: Path, tensor: onnx.TensorProto) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    from normfold.external_data import check_external_tensor

    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        check_external_tensor(tensor, file)
    try:
        return numpy_helper.to_array(tensor, base_dir=str(file.parent))
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise NormfoldError(f"{file}: cannot decode tensor '{tensor.name}' ({describe(error)})") from None

"""ONNX Runtime sessions on a chosen execution provider, with proof that the provider really runs.

"Really works" is decided by creating a session and reading `get_providers()`: onnxruntime-gpu lists
CUDA and TensorRT as available on machines without a GPU, and a session asked for CUDA alone then
silently runs on CPU. A provider that was asked for and does not run is an error with its reason.

The choice `reference` is no ONNX Runtime provider: it runs both models on onnx's reference evaluator
in float64 (reference_runner.py), for models ONNX Runtime has no kernels for. Only asking for it selects it.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import importlib.metadata
import io
import os
import sys
from pathlib import Path

from normfold.errors import EXIT_UNUSABLE_INPUT, NormfoldError, describe
from normfold.mapped_pages import keep_large_blocks_mapped

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
REFERENCE = "reference"
REFERENCE_LABEL = "onnx-reference (float64)"
PROVIDER_CHOICES = ("auto", *PROVIDER_NAMES, REFERENCE)
REFERENCE_HINT = "--provider reference validates on onnx's reference evaluator in float64 instead"
OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclasses.dataclass(frozen=True)
class ProviderChoice:
    """The provider a comparison runs on, and why it was chosen."""

    key: str
    note: str = ""
    session: object | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def ort_name(self) -> str:
        """ONNX Runtime's name for the provider."""
        return PROVIDER_NAMES[self.key]

    @property
    def label(self) -> str:
        """The name reports give it: the key, or 'onnx-reference (float64)'."""
        return REFERENCE_LABEL if self.key == REFERENCE else self.key


def _ort():
    require_one_onnxruntime()
    import onnxruntime

    return onnxruntime


# Name prefixes of the distributions that may install the `onnxruntime` module (onnxruntime, onnxruntime-gpu,
# onnxruntime-directml, ort-nightly, ...; confirmed by their file list). Two of them in one folder overwrite each
# other's files, and the module left behind matches neither.
RUNTIME_PREFIXES = ("onnxruntime", "ort-nightly")


@functools.cache
def require_one_onnxruntime() -> None:
    """Refuse to run with two ONNX Runtime packages installed side by side (onnxruntime and onnxruntime-gpu, say).

    Read from the installed packages' metadata (milliseconds), before onnxruntime is imported, since the mix
    imports and then fails in ways that name neither package.
    """
    installed = _runtime_distributions()
    if len(installed) < 2:
        return
    names = [name for name, _ in installed]
    listed = [f"{name} {version}" for name, version in installed]
    both = f"both {listed[0]} and {listed[1]}" if len(listed) == 2 else f"{', '.join(listed[:-1])} and {listed[-1]}"
    keep = "onnxruntime-gpu" if "onnxruntime-gpu" in names and not _driver_missing() else "onnxruntime"
    raise NormfoldError(
        f"{both} are installed in this environment; they overwrite each other's files. "
        f"Fix: pip uninstall -y {' '.join(names)} && pip install {keep}",
        exit_code=EXIT_UNUSABLE_INPUT,
    )


def _runtime_distributions() -> list[tuple[str, str]]:
    """(name, version) of the distributions providing the `onnxruntime` module in the first folder holding two.

    Only packages installed into the same folder overwrite each other's files; one in a virtual environment
    and another in the system's site-packages do not (the first on sys.path is imported).
    """
    by_folder: dict[str, dict[str, str]] = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith(RUNTIME_PREFIXES) and _provides_onnxruntime(dist):
            by_folder.setdefault(str(dist.locate_file("")), {}).setdefault(name, dist.version)
    clashing = [names for names in by_folder.values() if len(names) > 1]
    return sorted(clashing[0].items()) if clashing else []


def _provides_onnxruntime(dist: importlib.metadata.Distribution) -> bool:
    """Whether the distribution installs the `onnxruntime` package itself (not onnxruntime-extensions, -genai)."""
    top_level = dist.read_text("top_level.txt")
    if top_level is not None:
        return "onnxruntime" in top_level.split()
    return any(file.parts[:1] == ("onnxruntime",) for file in dist.files or ())


@functools.cache
def _preload() -> None:
    """Let onnxruntime-gpu find CUDA/cuDNN from pip-installed nvidia packages.

    Skipped without an NVIDIA driver; its messages are captured so they never mix into a report.
    """
    ort = _ort()
    if not hasattr(ort, "preload_dlls") or _driver_missing():
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            ort.preload_dlls()
        except Exception:  # preloading is best effort; the session check decides
            pass


def _driver_missing() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return True
    return False


def open_session(model_path: Path, provider: str, opt_level: str = "disable", *, suggest_reference: bool = False):
    """An InferenceSession on `provider` (a key of PROVIDER_NAMES) that provably runs there.

    With `suggest_reference` (validation), an error for an operator ONNX Runtime has no kernel for
    (bfloat16 Conv on CPU, say) ends with the hint to use --provider reference.
    """
    ort = _ort()
    keep_large_blocks_mapped()  # the session's initializers mapped, and returned when it closes
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    options.log_severity_level = 4
    name = PROVIDER_NAMES[provider]
    if provider != "cpu":
        ort.set_default_logger_severity(4)
        _preload()
        if name not in ort.get_available_providers():
            raise NormfoldError(f"{name} is not in this onnxruntime build ({ort.__version__}); install onnxruntime-gpu")
    source = session_source(model_path, options)
    try:
        with _quiet_stdout(provider != "cpu"):
            session = ort.InferenceSession(source, options, providers=[name])
    except Exception as error:
        text = describe(error, 2000)
        missing = suggest_reference and _kernel_missing(error)
        if provider == "cpu" and "Unsupported model IR version" in text:  # ONNX Runtime's own words for it
            advice = (
                f"the model is newer than onnxruntime {ort.__version__} reads: upgrade onnxruntime, or "
                f"{REFERENCE_HINT}; --no-validate would write a model this onnxruntime cannot load"
            )
            raise NormfoldError(f"{model_path}: ONNX Runtime cannot load the model: {text} ({advice})") from None
        if provider == "cpu":
            advice = "--no-validate skips validation" + (f"; {REFERENCE_HINT}" if missing else "")
            raise NormfoldError(f"{model_path}: ONNX Runtime cannot load the model: {text} ({advice})") from None
        suffix = f" ({REFERENCE_HINT})" if missing else ""
        raise NormfoldError(f"{name} failed to create a session: {text}{suffix}") from None
    if session.get_providers()[0] != name:
        raise NormfoldError(f"{name} was requested but does not run here: {provider_failure_reason(provider)}")
    return session


# ONNX Runtime's session option naming the folder of the external data of a model given as bytes.
EXTERNAL_DATA_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def session_source(model_path: Path, options) -> str | bytes:
    """What ONNX Runtime opens the model from: its path, or, for a large model with its weights inside the file,
    the model without them, each weight an external-data entry naming the file itself at its offset
    (inline_mapping; `options` then name the model's folder for them). ONNX Runtime parsing the whole file holds
    the parse beside its own copy of every weight: 1000 MiB for a 436 MiB model of 4000 weights, 660 MiB so."""
    from normfold.inline_mapping import read_mapped_proto

    try:
        mapped = read_mapped_proto(model_path)
    except OSError:  # unreadable: ONNX Runtime's reading of the path says why
        mapped = None
    if mapped is None:
        return str(model_path)
    options.add_session_config_entry(EXTERNAL_DATA_FOLDER_KEY, str(model_path.resolve().parent))
    return mapped[0].SerializeToString()


def _kernel_missing(error: Exception) -> bool:
    """Whether ONNX Runtime refused the model for lack of a kernel (its NOT_IMPLEMENTED status)."""
    missing = getattr(_ort().capi.onnxruntime_pybind11_state, "NotImplemented", None)
    return missing is not None and isinstance(error, missing)


@contextlib.contextmanager
def _quiet_stdout(active: bool):
    """Silence file descriptor 1 while a GPU provider is probed: ONNX Runtime prints its fallback banner there."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def provider_failure_reason(provider: str) -> str:
    """Why a GPU provider cannot run: missing driver, or the library the provider fails to load."""
    if provider == "cpu":
        return ""
    if _driver_missing():
        return "no NVIDIA driver (libcuda.so.1 not found)"
    library = "libonnxruntime_providers_cuda.so" if provider == "cuda" else "libonnxruntime_providers_tensorrt.so"
    path = Path(_ort().__file__).parent / "capi" / library
    try:
        ctypes.CDLL(str(path), mode=os.RTLD_LAZY)
    except OSError as error:
        return f"{library} cannot load: {describe(error)}"
    return "the provider loaded but the session fell back to CPU (unsupported GPU, or CUDA/cuDNN versions that do not match)"


def resolve_providers(
    requested: tuple[str, ...], probe_model: Path, opt_level: str = "disable"
) -> list[ProviderChoice]:
    """Turn --provider values into the providers to run; `auto` is CUDA when it really runs, else CPU.

    Whether CUDA runs is first decided without a session where that is certain (no CUDA in this build,
    no NVIDIA driver); otherwise a CUDA session on `probe_model` decides, and it is kept in the choice for
    the run itself. `reference` is taken only when asked for: auto never picks it.
    """
    chosen: list[ProviderChoice] = []
    for key in requested or ("auto",):
        if key == "auto":
            choice = _auto(probe_model, opt_level)
        elif key in PROVIDER_NAMES:
            choice = ProviderChoice(key)
        elif key == REFERENCE:
            choice = ProviderChoice(
                REFERENCE,
                f"{REFERENCE_LABEL}: onnx's reference evaluator runs both models with "
                "every float tensor widened exactly to float64; tolerances follow "
                "each output's declared dtype",
            )
        else:
            raise NormfoldError(f"unknown provider '{key}' (choose from {', '.join(PROVIDER_CHOICES)})", exit_code=2)
        if choice.key not in [c.key for c in chosen]:
            chosen.append(choice)
    return chosen


def _auto(probe_model: Path, opt_level: str) -> ProviderChoice:
    """CUDA with its session when a CUDA session really runs `probe_model`, else CPU with the reason."""
    name = PROVIDER_NAMES["cuda"]
    if name not in _ort().get_available_providers():
        return ProviderChoice(
            "cpu", f"auto: CPU, because {name} is not in this onnxruntime build ({_ort().__version__})"
        )
    if _driver_missing():
        return ProviderChoice("cpu", f"auto: CPU, CUDA does not run here: {provider_failure_reason('cuda')}")
    try:
        session = open_session(probe_model, "cuda", opt_level, suggest_reference=True)
    except NormfoldError as error:
        return ProviderChoice("cpu", f"auto: CPU, because {error}")
    return ProviderChoice("cuda", "auto: CUDA runs here", session)

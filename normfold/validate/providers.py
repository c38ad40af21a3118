"""ONNX Runtime sessions on a chosen execution provider, with proof that the provider really runs.

"Really works" is decided by creating a session and reading `get_providers()`: onnxruntime-gpu lists
CUDA and TensorRT as available on machines without a GPU, and a session asked for CUDA alone then
silently runs on CPU. A provider that was asked for and does not run is an error with its reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import io
import os
import sys
from pathlib import Path

from normfold.errors import NormfoldError, describe

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
PROVIDER_CHOICES = ("auto", *PROVIDER_NAMES)
OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclasses.dataclass(frozen=True)
class ProviderChoice:
    """The provider a comparison runs on, and why it was chosen."""

    key: str
    note: str = ""

    @property
    def ort_name(self) -> str:
        """ONNX Runtime's name for the provider."""
        return PROVIDER_NAMES[self.key]


def _ort():
    import onnxruntime

    return onnxruntime


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


def open_session(model_path: Path, provider: str, opt_level: str = "disable"):
    """An InferenceSession on `provider` (a key of PROVIDER_NAMES) that provably runs there."""
    ort = _ort()
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
    try:
        with _quiet_stdout(provider != "cpu"):
            session = ort.InferenceSession(str(model_path), options, providers=[name])
    except Exception as error:
        text = describe(error, 300)
        if provider == "cpu":
            raise NormfoldError(f"{model_path}: ONNX Runtime cannot load the model: {text} "
                                "(--no-validate skips validation)") from None
        raise NormfoldError(f"{name} failed to create a session: {text}") from None
    if session.get_providers()[0] != name:
        raise NormfoldError(f"{name} was requested but does not run here: {provider_failure_reason(provider)}")
    return session


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


def resolve_providers(requested: tuple[str, ...], probe_model: Path) -> list[ProviderChoice]:
    """Turn --provider values into the providers to run; `auto` is CUDA when it really runs, else CPU."""
    chosen: list[ProviderChoice] = []
    for key in requested or ("auto",):
        if key == "auto":
            try:
                open_session(probe_model, "cuda")
                choice = ProviderChoice("cuda", "auto: CUDA runs here")
            except NormfoldError as error:
                choice = ProviderChoice("cpu", f"auto: CPU, because {error}")
        elif key in PROVIDER_NAMES:
            choice = ProviderChoice(key)
        else:
            raise NormfoldError(f"unknown provider '{key}' (choose from {', '.join(PROVIDER_CHOICES)})", exit_code=2)
        if choice.key not in [c.key for c in chosen]:
            chosen.append(choice)
    return chosen


@functools.cache
def cuda_usable() -> str:
    """'' when a CUDA session runs on this machine, else the reason (used to skip GPU tests)."""
    import tempfile

    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "probe.onnx"
        onnx.save(model, path)
        try:
            open_session(path, "cuda")
        except NormfoldError as error:
            return str(error)
    return ""

"""Monte Carlo Dropout: BN in inference mode, Dropout active, N seeded passes on ONNX Runtime.

Masks are inverted Dropout's, exactly: m ~ Bernoulli(p), y = m / p * x, with the keep
probability p = 1 - ratio (ONNX's `ratio` is the drop probability: the attribute before opset 12, the
input from 12 on). They are drawn by numpy from `seed` and fed to the model, each Dropout replaced by a
Mul with its mask input, because ONNX Runtime's own CPU Dropout is biased: measured with onnxruntime
1.31.1, element 0 of its mask is false on every run. The same seed gives the same passes on every build
and provider. Mean and standard deviation per output element are accumulated in float64 (Welford).
Every name the rewrite adds is fresh, so it never collides with a name the model already uses.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from normfold.errors import NormfoldError, describe
from normfold.folding import as_ir_model
from normfold.graph_edit import NameSource, take_over
from normfold.graph_walk import is_op, iter_scopes, node_label
from normfold.model_reading import LoadedModel
from normfold.modes import dropout_ratio
from normfold.passes.set_inference_mode import SetInferenceModePass

ModelArgument = ir.Model | onnx.ModelProto | str | os.PathLike[str] | LoadedModel
IN_MEMORY = "the model"


@dataclasses.dataclass
class MonteCarloResult:
    """Per output name: the mean and the standard deviation over the passes."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    passes: int
    dropouts: list[str]


@dataclasses.dataclass(frozen=True)
class _Site:
    """A Dropout replaced by `x * mask`: its name, drop ratio, and the graph input/output used for it."""

    label: str
    ratio: float
    mask_input: str
    probe_output: str


def masked_model(model: ir.Model, source: str = IN_MEMORY) -> tuple[ir.Model, ir.Model, list[_Site]]:
    """(probe, masked): the inference model exposing each Dropout's input, and one taking masks as inputs.

    `model` is not modified; `source` names it in errors (its path, or "the model").
    """
    inference = SetInferenceModePass()(model).model
    opset = next(iter_scopes(inference)).opset
    dropouts = [n for n in inference.graph if is_op(n, "Dropout")]
    if not dropouts:
        raise NormfoldError(f"{source} has no Dropout in its main graph: Monte Carlo Dropout needs at least one")
    ratios = [_mask_ratio(node, opset, source) for node in dropouts]
    probe = inference.clone()
    probe_outputs = _expose_dropout_inputs(probe)
    names = NameSource(inference)
    sites = [
        _Site(node_label(node), ratio, _replace_by_mask(inference, node, names), probe_output)
        for node, ratio, probe_output in zip(dropouts, ratios, probe_outputs)
    ]
    return probe, inference, sites


def _mask_ratio(node: ir.Node, opset: int, source: str) -> float:
    """The drop ratio to sample masks with; an error for a Dropout that masks cannot stand in for."""
    label, ratio = node_label(node), dropout_ratio(node, opset)
    if ratio is None or not 0 <= ratio < 1:
        raise NormfoldError(f"Dropout '{label}' of {source} has no constant ratio in [0, 1) to sample masks with")
    if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        raise NormfoldError(
            f"Dropout '{label}' of {source} has its mask output in use; Monte Carlo Dropout replaces it"
        )
    return ratio


def _expose_dropout_inputs(probe: ir.Model) -> list[str]:
    """Make each main-graph Dropout's data input a graph output of `probe` (through an Identity: the input
    may be a graph input, an initializer, unnamed, or shared by several Dropouts); their names, in order."""
    names = NameSource(probe)
    exposed = []
    for node in [n for n in probe.graph if is_op(n, "Dropout")]:
        label = node_label(node)
        identity = ir.Node("", "Identity", [node.inputs[0]], name=names.fresh(f"{label}.mc_probe"))
        identity.outputs[0].name = names.fresh(f"{label}.mc_input")
        probe.graph.insert_before(node, identity)
        probe.graph.outputs.append(identity.outputs[0])
        exposed.append(identity.outputs[0].name)
    return exposed


def _replace_by_mask(model: ir.Model, node: ir.Node, names: NameSource) -> str:
    """Replace `node` by `x * mask` with a new graph input `mask` (typed once its shape is known); its name."""
    label, x = node_label(node), node.inputs[0]
    mask = ir.Value(name=names.fresh(f"{label}.mc_mask"))
    model.graph.inputs.append(mask)
    product = ir.Node("", "Mul", [x, mask], name=names.fresh(f"{label}.mc_dropout"))
    product.outputs[0].name = names.fresh(f"{label}.mc_output")
    model.graph.insert_before(node, product)
    take_over(node.outputs[0], product.outputs[0])
    model.graph.remove(node, safe=True)
    return mask.name or ""


def monte_carlo(
    model: ModelArgument, feeds: dict[str, np.ndarray], *, passes: int = 50, seed: int = 0, provider: str = "cpu"
) -> MonteCarloResult:
    """Run `passes` stochastic forward passes on `feeds` and summarize every output.

    `model` is a path, an onnx.ModelProto, an onnx_ir.Model (not modified) or a LoadedModel; errors name
    its path, or "the model" for a model in memory.
    """
    if passes < 2:
        raise NormfoldError(f"Monte Carlo Dropout needs at least 2 passes (--passes), got {passes}", exit_code=2)
    source, loaded = _source(model)
    probe, masked, sites = masked_model(loaded, source)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="normfold-mc-") as folder:
        shapes = _dropout_input_shapes(probe, feeds, len(sites), Path(folder), provider, source)
        inputs = {v.name: v for v in masked.graph.inputs}
        for site, (shape, dtype) in zip(sites, shapes):
            inputs[site.mask_input].type = ir.TensorType(ir.DataType.from_numpy(dtype))
            inputs[site.mask_input].shape = ir.Shape(list(shape))
        session = _session(masked, Path(folder) / "mc.onnx", provider, source)
        names = [o.name for o in session.get_outputs()]
        count = 0
        mean: list[np.ndarray] = []
        m2: list[np.ndarray] = []
        for _ in range(passes):
            masks = {s.mask_input: _mask(rng, shape, dtype, s.ratio) for s, (shape, dtype) in zip(sites, shapes)}
            outputs = [o.astype(np.float64) for o in _run(session, {**feeds, **masks}, provider, source)]
            count += 1
            if count == 1:
                mean, m2 = outputs, [np.zeros_like(o) for o in outputs]
                continue
            for index, value in enumerate(outputs):
                delta = value - mean[index]
                mean[index] = mean[index] + delta / count
                m2[index] = m2[index] + delta * (value - mean[index])
    std = [np.sqrt(m / (count - 1)) for m in m2]
    return MonteCarloResult(dict(zip(names, mean)), dict(zip(names, std)), passes, [s.label for s in sites])


def _source(model: ModelArgument) -> tuple[str, ir.Model]:
    """How errors name the model (its path, or "the model"), and the model as onnx_ir."""
    if isinstance(model, LoadedModel):
        return str(model.path), model.model
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model), as_ir_model(model)
    return IN_MEMORY, as_ir_model(model)


def _dropout_input_shapes(
    probe: ir.Model, feeds: dict[str, np.ndarray], count: int, folder: Path, provider: str, source: str
) -> list[tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each Dropout's input on these feeds: the probe's last `count` outputs."""
    session = _session(probe, folder / "probe.onnx", provider, source)
    outputs = _run(session, feeds, provider, source)
    return [(o.shape, o.dtype) for o in outputs[len(outputs) - count :]]


def _session(model: ir.Model, path: Path, provider: str, source: str) -> Any:
    """A session on `model`, saved to the temporary `path`; a model ONNX Runtime refuses is named as `source`."""
    from normfold.validate.providers import open_session

    ir.save(model, path, external_data=f"{path.name}.data")
    try:
        return open_session(path, provider)
    except NormfoldError as error:
        refusal = error.__context__  # ONNX Runtime's own error, when the session could not be created
        if refusal is None:
            raise  # the provider does not run here: the message is about the provider, not about a file
        text = describe(refusal, 2000).replace(str(path), "the Monte Carlo model")
        raise NormfoldError(f"ONNX Runtime cannot run {source} with Dropout masks on {provider}: {text}") from None


def _run(session: Any, feeds: dict[str, np.ndarray], provider: str, source: str) -> list[np.ndarray]:
    """One forward pass; inputs ONNX Runtime refuses are a user error naming `source`."""
    try:
        return session.run(None, feeds)
    except Exception as error:  # ONNX Runtime raises its own types for inputs that do not fit
        raise NormfoldError(
            f"ONNX Runtime cannot run {source} on {provider} with these inputs: {describe(error, 2000)}"
        ) from None


def _mask(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype, ratio: float) -> np.ndarray:
    """Inverted Dropout's mask: m ~ Bernoulli(p) with keep probability p = 1 - ratio, scaled by 1/p."""
    keep = 1.0 - ratio
    return ((rng.random(shape) < keep) / keep).astype(dtype)

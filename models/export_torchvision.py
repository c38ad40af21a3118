"""Export small torchvision models to ONNX fixtures for normfold.

Needs the ``export`` extra (torch, torchvision) plus onnx and an onnxruntime
build. The committed files were produced with torch 2.14.1, torchvision
0.29.1, onnx 1.23.2 and onnxruntime-gpu 1.31.1 (run on CPU).

Run as ``python models/export_torchvision.py``; the files are written next to
this script:

* ``torchvision_resnet_{eval,train}.onnx``: torchvision ``ResNet`` with
  ``BasicBlock`` and layers ``[1, 1, 1, 1]``, built by :class:`SmallResNet`
  with stage widths ``(16, 32, 64, 128)`` instead of ``(64, 128, 256, 512)``.
* ``torchvision_mobilenetv3_{eval,train}.onnx``: torchvision
  ``mobilenet_v3_small(width_mult=0.25, num_classes=10)``.

Weights are random (``weights=None``, ``torch.manual_seed(0)``) and every
BatchNorm gets seeded random affine parameters and running statistics so that
folding changes the numbers. The eval files use ``TrainingMode.EVAL`` and the
train files ``TrainingMode.TRAINING``, both with the TorchScript exporter
(``dynamo=False``) at opset 17 and a dynamic batch dimension named ``batch``.
Constant folding stays off for both: with it on, the eval export fuses every
BatchNormalization into the preceding Conv, leaving nothing to fold.

``--out DIR`` writes the fixtures to DIR instead (to check that a rerun
reproduces the committed files byte for byte).

Full-size models (``--models``) for comparing normfold with other optimizers
(``benchmarks/peer_folds.py``) are written to ``--out`` (default
``/tmp/exports``), never into the repository::

    python models/export_torchvision.py --models resnet18 mobilenet_v3_large \
        deeplabv3_mobilenet_v3_large resnet18_frozenbn \
        --exporters torchscript dynamo dynamo_optimized

Each model is built with ``weights=None`` (and ``weights_backbone=None``),
seed 0, randomized BatchNorm statistics (``FrozenBatchNorm2d`` buffers too),
in eval mode, input ``(2, 3, 224, 224)`` with a dynamic batch dimension, and
written as ``MODEL_EXPORTER.onnx`` with its weights inline:

* ``torchscript``: ``dynamo=False``, ``TrainingMode.EVAL``, opset 17, no
  constant folding (as the fixtures).
* ``dynamo``: ``dynamo=True, optimize=False`` (the exporter's default opset).
* ``dynamo_optimized``: ``dynamo=True, optimize=True`` (onnxscript's optimizer,
  which already fuses BatchNormalization into Conv), for comparison.

``resnet18_frozenbn`` is ``resnet18(norm_layer=FrozenBatchNorm2d)``, whose
BatchNorm is exported as Mul/Add arithmetic instead of BatchNormalization;
``deeplabv3_mobilenet_v3_large`` is wrapped to return its ``out`` tensor.

onnxruntime is optional: without it the onnxruntime checks are skipped with a
printed note and only the ONNX checker runs.
"""

from __future__ import annotations

import argparse
import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small, resnet18
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large
from torchvision.ops.misc import FrozenBatchNorm2d

OPSET = 17
SEED = 0
INPUT_SHAPE = (1, 3, 64, 64)
NUM_CLASSES = 10
RESNET_WIDTHS = (16, 32, 64, 128)
MOBILENET_WIDTH_MULT = 0.25
OUT_DIR = Path(__file__).resolve().parent
FULL_OUT_DIR = Path("/tmp/exports")
FULL_INPUT_SHAPE = (2, 3, 224, 224)
FULL_TOLERANCE = 1e-4
EXPORTERS = ("torchscript", "dynamo", "dynamo_optimized")


class SmallResNet(ResNet):
    """torchvision ``ResNet`` with configurable stage widths.

    ``ResNet.__init__`` hard-codes 64 stem channels and stage widths
    64/128/256/512. This mirrors it with ``widths`` instead and reuses
    ``ResNet._make_layer`` and ``ResNet.forward`` unchanged.
    """

    def __init__(
        self,
        layers: list[int],
        widths: tuple[int, int, int, int],
        num_classes: int,
    ) -> None:
        """Build the stem, four ``BasicBlock`` stages and the classifier."""
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, widths[0], layers[0])
        self.layer2 = self._make_layer(BasicBlock, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm (and FrozenBatchNorm2d) seeded random parameters and stats."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            elif isinstance(m, FrozenBatchNorm2d):
                n = m.weight.numel()
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)


def build_resnet() -> nn.Module:
    """Return the reduced-width ResNet with randomized BatchNorm."""
    torch.manual_seed(SEED)
    model = SmallResNet([1, 1, 1, 1], RESNET_WIDTHS, NUM_CLASSES)
    randomize_batchnorm(model, torch.Generator().manual_seed(SEED + 1))
    return model


def build_mobilenetv3() -> nn.Module:
    """Return MobileNetV3-small at reduced width with randomized BatchNorm.

    The classifier's Linear weights are redrawn with std ``1/sqrt(fan_in)``
    instead of torchvision's 0.01 so that the logits are of order one.
    """
    torch.manual_seed(SEED)
    model = mobilenet_v3_small(weights=None, width_mult=MOBILENET_WIDTH_MULT, num_classes=NUM_CLASSES)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, m.in_features**-0.5)
    randomize_batchnorm(model, torch.Generator().manual_seed(SEED + 1))
    return model


class SegmentationOutput(nn.Module):
    """Wrap a torchvision segmentation model to return its ``out`` tensor only."""

    def __init__(self, model: nn.Module) -> None:
        """Keep ``model`` as the only submodule."""
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``model(x)["out"]``."""
        return self.model(x)["out"]


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model under seed ``SEED``, randomize its BatchNorm and set eval mode."""
    torch.manual_seed(SEED)
    model = build()
    randomize_batchnorm(model, torch.Generator().manual_seed(SEED + 1))
    return model.eval()


FULL_MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: resnet18(weights=None),
    "mobilenet_v3_large": lambda: mobilenet_v3_large(weights=None),
    "deeplabv3_mobilenet_v3_large": lambda: SegmentationOutput(
        deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None)
    ),
    "resnet18_frozenbn": lambda: resnet18(weights=None, norm_layer=FrozenBatchNorm2d),
}


def export_full(model: nn.Module, path: Path, exporter: str) -> None:
    """Export an eval-mode full-size model with ``exporter`` (one of ``EXPORTERS``)."""
    dummy = torch.randn(*FULL_INPUT_SHAPE, generator=torch.Generator().manual_seed(SEED + 2))
    common = {"input_names": ["input"], "output_names": ["output"]}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        if exporter == "torchscript":
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                opset_version=OPSET,
                training=torch.onnx.TrainingMode.EVAL,
                do_constant_folding=False,
                dynamo=False,
                **common,
            )
        else:
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                external_data=False,
                dynamo=True,
                optimize=exporter == "dynamo_optimized",
                **common,
            )


def check_full(path: Path, model: nn.Module) -> str:
    """Run the ONNX checker and compare onnxruntime on CPU with PyTorch; return a summary."""
    onnx.checker.check_model(str(path), full_check=True)
    ort = _onnxruntime(path)
    if ort is None:
        return "onnxruntime check skipped"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(SEED).standard_normal(FULL_INPUT_SHAPE, dtype=np.float32)
    (y,) = session.run(None, {"input": x})
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    scale = float(np.max(np.abs(expected)))
    diff = float(np.max(np.abs(y - expected)))
    if y.shape != expected.shape or not diff <= FULL_TOLERANCE * max(scale, 1.0):
        raise RuntimeError(f"{path.name}: shape {y.shape} vs {expected.shape}, max abs diff {diff:.3g}")
    return f"onnxruntime vs torch max abs diff {diff:.2g} (output scale {scale:.3g})"


def _onnxruntime(path: Path) -> ModuleType | None:
    """Import onnxruntime, or print a note that ``path``'s onnxruntime check is skipped."""
    try:
        import onnxruntime
    except ImportError:
        print(f"note: onnxruntime is not installed; skipping the onnxruntime check of {path.name}")
        return None
    return onnxruntime


def export(model: nn.Module, path: Path, training: bool) -> None:
    """Export ``model`` to ``path`` in eval or training mode."""
    torch.manual_seed(SEED)
    model.train(training)
    dummy = torch.randn(*INPUT_SHAPE, generator=torch.Generator().manual_seed(SEED + 2))
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=".*legacy TorchScript-based ONNX export",
            category=DeprecationWarning,
        )
        warnings.filterwarnings(
            "ignore",
            message=".*num_batches_tracked.*changes graph semantics",
            category=UserWarning,
        )
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=OPSET,
            training=torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL,
            do_constant_folding=False,
            dynamo=False,
        )


def check(path: Path, model: nn.Module, training: bool) -> None:
    """Run the full ONNX checker and one onnxruntime CPU inference.

    For eval exports the onnxruntime output must also match PyTorch's.
    """
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    ort = _onnxruntime(path)
    if ort is None:
        return
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(SEED).standard_normal((2, *INPUT_SHAPE[1:]), dtype=np.float32)
    (y,) = session.run(None, {"input": x})
    if y.shape != (2, NUM_CLASSES) or not np.all(np.isfinite(y)):
        raise RuntimeError(f"{path.name}: unexpected output shape {y.shape} or non-finite values")
    if not training:
        model.eval()
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4, err_msg=path.name)


def write_fixtures(out_dir: Path) -> None:
    """Build both small models and write their eval and training exports to ``out_dir``."""
    for name, build in (("resnet", build_resnet), ("mobilenetv3", build_mobilenetv3)):
        model = build()
        for mode, training in (("eval", False), ("train", True)):
            path = out_dir / f"torchvision_{name}_{mode}.onnx"
            export(copy.deepcopy(model), path, training)
            check(path, copy.deepcopy(model), training)
            print(f"wrote {path.name} ({path.stat().st_size} bytes)")


def write_full(names: list[str], exporters: list[str], out_dir: Path) -> None:
    """Export each full-size model in ``names`` with each exporter to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        model = _seeded(FULL_MODELS[name])
        for exporter in exporters:
            path = out_dir / f"{name}_{exporter}.onnx"
            export_full(copy.deepcopy(model), path, exporter)
            summary = check_full(path, model)
            opsets = onnx.load(str(path), load_external_data=False).opset_import
            opset = next(o.version for o in opsets if o.domain in ("", "ai.onnx"))
            print(f"wrote {path} ({path.stat().st_size} bytes, opset {opset}; {summary})", flush=True)


def main() -> None:
    """Write the fixtures, or with ``--models`` the full-size exports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(FULL_MODELS), help="export these full-size models")
    parser.add_argument("--exporters", nargs="+", choices=EXPORTERS, default=list(EXPORTERS), help="with --models")
    parser.add_argument(
        "--out", type=Path, help=f"output folder (default: beside this script; with --models, {FULL_OUT_DIR})"
    )
    args = parser.parse_args()
    if args.models:
        write_full(args.models, args.exporters, args.out or FULL_OUT_DIR)
    else:
        write_fixtures(args.out or OUT_DIR)


if __name__ == "__main__":
    main()

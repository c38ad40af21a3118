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
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torchvision.models import mobilenet_v3_small
from torchvision.models.resnet import BasicBlock, ResNet

OPSET = 17
SEED = 0
INPUT_SHAPE = (1, 3, 64, 64)
NUM_CLASSES = 10
RESNET_WIDTHS = (16, 32, 64, 128)
MOBILENET_WIDTH_MULT = 0.25
OUT_DIR = Path(__file__).resolve().parent


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
        self.conv1 = nn.Conv2d(
            3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False
        )
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
    """Give every BatchNorm seeded random affine parameters and running stats."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
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
    model = mobilenet_v3_small(
        weights=None, width_mult=MOBILENET_WIDTH_MULT, num_classes=NUM_CLASSES
    )
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, m.in_features**-0.5)
    randomize_batchnorm(model, torch.Generator().manual_seed(SEED + 1))
    return model


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
            training=torch.onnx.TrainingMode.TRAINING
            if training
            else torch.onnx.TrainingMode.EVAL,
            do_constant_folding=False,
            dynamo=False,
        )


def check(path: Path, model: nn.Module, training: bool) -> None:
    """Run the full ONNX checker and one onnxruntime CPU inference.

    For eval exports the onnxruntime output must also match PyTorch's.
    """
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(SEED).standard_normal(
        (2, *INPUT_SHAPE[1:]), dtype=np.float32
    )
    (y,) = session.run(None, {"input": x})
    if y.shape != (2, NUM_CLASSES) or not np.all(np.isfinite(y)):
        raise RuntimeError(
            f"{path.name}: unexpected output shape {y.shape} or non-finite values"
        )
    if not training:
        model.eval()
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4, err_msg=path.name)


def main() -> None:
    """Build both models and write their eval and training exports."""
    for name, build in (("resnet", build_resnet), ("mobilenetv3", build_mobilenetv3)):
        model = build()
        for mode, training in (("eval", False), ("train", True)):
            path = OUT_DIR / f"torchvision_{name}_{mode}.onnx"
            export(copy.deepcopy(model), path, training)
            check(path, copy.deepcopy(model), training)
            print(f"wrote {path.name} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

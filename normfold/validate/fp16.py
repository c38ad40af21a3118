"""The float16 deployment path: a model converted to float16 (inputs and outputs kept float32),
as users deploy on GPUs, via onnxconverter-common's converter."""

from __future__ import annotations

from pathlib import Path

import onnx

from normfold.errors import NormfoldError, describe


def float16_copy(source: Path, model: onnx.ModelProto, folder: Path) -> Path:
    """Write a float16 version of `model` (read from `source`) into a new `folder` and return its path."""
    from onnxconverter_common import float16

    folder.mkdir()
    try:
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as error:  # the converter raises assorted types on models it cannot handle
        raise NormfoldError(f"{source}: float16 conversion failed: {describe(error, 2000)}") from None
    target = folder / f"{source.stem}.fp16.onnx"
    onnx.save(converted, str(target))
    return target

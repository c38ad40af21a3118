"""A large folded weight that is computed as it is written, never held whole in memory.

Folding a weight of several gigabytes eagerly needs its folded copy in memory beside the
(memory-mapped) original. Above STREAM_BYTES the fold checks the rounding block by block first,
then hands onnx_ir this tensor: `ir.save` calls `tofile`, which computes and writes one row block
at a time. Reading it any other way (numpy(), tobytes()) computes it whole.
"""

from __future__ import annotations

from typing import IO

import numpy as np
import onnx_ir as ir

from normfold.bn_math import Factor, scale_and_round, scaled_blocks

# Folded weights at least this large are streamed.
STREAM_BYTES = 64 << 20


class FoldedTensor(ir.LazyTensor):
    """weight * factor in float64, rounded once to `dtype`; the rounding was checked by `check_scale`."""

    def __init__(self, weight: np.ndarray, factor: Factor, dtype: np.dtype, name: str | None = None) -> None:
        self._weight, self._factor, self._numpy_dtype = weight, factor, np.dtype(dtype)
        super().__init__(self._whole, dtype=ir.DataType.from_numpy(self._numpy_dtype),
                         shape=ir.Shape(weight.shape), name=name)

    def _whole(self) -> ir.Tensor:
        array, reason = scale_and_round(self._weight, self._factor, self._numpy_dtype)
        if array is None:
            raise ValueError(f"folded tensor '{self.name}' cannot be rounded: {reason}")
        return ir.Tensor(array, name=self.name)

    def tofile(self, file: IO[bytes]) -> None:
        """Write the folded bytes block by block (what onnx_ir's external-data writer calls)."""
        for block in scaled_blocks(self._weight, self._factor, self._numpy_dtype):
            file.write(np.ascontiguousarray(block).reshape(-1).view(np.uint8).data)

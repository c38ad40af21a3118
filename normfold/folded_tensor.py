"""A folded weight that is computed as it is written, never held whole in memory.

Folding a weight eagerly keeps its folded copy in memory beside the (memory-mapped or parsed)
original until the model is written; a model of many medium or small weights would then hold every
folded copy at once. From STREAM_BYTES on, a read-only weight's fold checks the rounding first, then
hands onnx_ir this tensor: `ir.save` calls `tofile`, which computes and writes one chunk of rows at a
time. Reading it any other way (numpy(), tobytes()) computes it whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

import numpy as np
import onnx_ir as ir

from normfold.bn_math import Factor, rounded_parts, scale_and_round

# Folded weights at least this large are streamed: below it, the FoldedTensor and the factor it keeps
# cost about as much memory as the folded copy itself.
STREAM_BYTES = 4 << 10
# Elements computed per step of `tofile`: float64 working copy, rounded copy and the mapped input
# pages of one chunk (about 16 MB for float32) are all it holds at a time.
CHUNK_ELEMENTS = 1 << 20


class FoldedTensor(ir.LazyTensor):
    """weight * factor in float64, rounded once to `dtype`; the rounding was checked by `check_scale`."""

    def __init__(self, weight: np.ndarray, factor: Factor, dtype: np.dtype, name: str | None = None) -> None:
        self._weight, self._factor, self._numpy_dtype = weight, factor, np.dtype(dtype)
        super().__init__(
            self._whole, dtype=ir.DataType.from_numpy(self._numpy_dtype), shape=ir.Shape(weight.shape), name=name
        )

    def _whole(self) -> ir.Tensor:
        array, reason = scale_and_round(self._weight, self._factor, self._numpy_dtype)
        if array is None:
            raise ValueError(f"folded tensor '{self.name}' cannot be rounded: {reason}")
        return ir.Tensor(array, name=self.name)

    def tofile(self, file: IO[bytes]) -> None:
        """Write the folded bytes chunk by chunk of rows (what onnx_ir's external-data writer calls).

        Each chunk is computed by `rounded_parts`, the eager fold's arithmetic (elementwise, so the bytes are
        those of the whole tensor) without the range checks `check_scale` has already passed, a thread per core
        for a weight of several chunks; a weight of one chunk, the common case in a model of many small weights,
        costs one call and no thread pool.
        """
        for array in rounded_parts(list(self._chunks()), self._numpy_dtype):
            file.write(array.reshape(-1).view(np.uint8).data)

    def _chunks(self) -> Iterator[tuple[np.ndarray, Factor]]:
        """(rows of the weight, their factor) of about CHUNK_ELEMENTS each, in order."""
        weight = self._weight
        if weight.ndim == 0 or weight.size <= CHUNK_ELEMENTS:
            yield weight, self._factor
            return
        step = max(1, CHUNK_ELEMENTS // max(1, weight.size // weight.shape[0]))
        for start in range(0, weight.shape[0], step):
            yield weight[start : start + step], _shifted(self._factor, start)


def _shifted(factor: Factor, start: int) -> Factor:
    """The factor of rows counted from `start`: row i of a chunk is row start + i of the weight."""
    return lambda rows: factor(slice(rows.start + start, rows.stop + start))

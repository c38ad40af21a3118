"""Dropping blocks of a memory-mapped weight from resident memory once they are read.

onnx_ir maps external data files; every page a fold reads would otherwise stay in the process's
resident set until exit, so reading a 2 GB weight once costs 2 GB of RSS. The page cache keeps the
data, so a later read only faults it back in.
"""

from __future__ import annotations

import mmap

import numpy as np


def release_pages(view: np.ndarray) -> None:
    """Unmap the pages under `view` if it is a contiguous view of a read-only mmap; otherwise do nothing."""
    mapping = _mapping_of(view)
    if mapping is None or not view.flags.c_contiguous or not view.nbytes or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = view.__array_interface__["data"][0] - np.frombuffer(mapping, np.uint8).__array_interface__["data"][0]
    begin = start - start % mmap.PAGESIZE
    mapping.madvise(mmap.MADV_DONTNEED, begin, min(start + view.nbytes, len(mapping)) - begin)


def _mapping_of(array: np.ndarray) -> mmap.mmap | None:
    """The read-only mmap an array's memory belongs to, following views and memoryviews."""
    base: object = array
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    if isinstance(base, mmap.mmap) and not base.closed and _read_only(base):
        return base
    return None


def _read_only(mapping: mmap.mmap) -> bool:
    """Dropping pages of a writable private mapping would lose writes: only read-only maps qualify."""
    try:
        with memoryview(mapping) as view:
            return view.readonly
    except (TypeError, ValueError):
        return False

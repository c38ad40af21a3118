"""Dropping blocks of a memory-mapped weight from resident memory once they are read.

onnx_ir maps external data files; every page a fold reads would otherwise stay in the process's
resident set until exit, so reading a 2 GB weight once costs 2 GB of RSS. The page cache keeps the
data, so a later read only faults it back in.

A read fault also maps the cached pages around it (Linux's fault-around, 64 KiB by default), beyond the
array read: onnx_ir maps the whole data file once per tensor, so a model of four thousand 0.1 MB weights
would keep up to 64 KiB of neighbours resident per weight (250 MiB). The range dropped is therefore
widened to whole FAULT_AROUND_BYTES windows; dropping a neighbour's pages only costs it a fault.
"""

from __future__ import annotations

import mmap

import numpy as np

# The window a read fault maps around the faulting page (Linux's default fault_around_bytes); a multiple
# of the page size.
FAULT_AROUND_BYTES = 64 << 10


def release_pages(view: np.ndarray) -> None:
    """Unmap the pages under `view` if it is a contiguous view of a read-only mmap; otherwise do nothing."""
    mapping = _mapping_of(view)
    if mapping is None or not view.flags.c_contiguous or not view.nbytes or not hasattr(mmap, "MADV_DONTNEED"):
        return
    base = np.frombuffer(mapping, np.uint8).__array_interface__["data"][0]
    start = view.__array_interface__["data"][0]
    window = max(FAULT_AROUND_BYTES, mmap.PAGESIZE)  # fault-around windows are aligned in the address space
    begin = max(start - start % window, base)
    end = min(-(-(start + view.nbytes) // window) * window, base + len(mapping))
    mapping.madvise(mmap.MADV_DONTNEED, begin - base, end - begin)


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

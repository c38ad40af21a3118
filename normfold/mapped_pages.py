"""Dropping blocks of a memory-mapped weight from resident memory once they are read, and freed heap memory.

onnx_ir maps external data files; every page a fold reads would otherwise stay in the process's
resident set until exit, so reading a 2 GB weight once costs 2 GB of RSS. The page cache keeps the
data, so a later read only faults it back in.

A read fault also maps cached pages beyond the array read: those around it (Linux's fault-around, 64 KiB
windows by default) and, on recent kernels (6.18 here), the whole large folio the page cache holds them in
(up to the PMD size, 2 MiB on x86-64; a file read through read() with read-ahead is cached in such folios).
onnx_ir maps the whole data file once per tensor, so a model of four thousand 0.1 MB weights would keep that
much of its neighbours resident per weight (150 MiB for a 436 MiB model read by `cat` first). The range
dropped is therefore widened to whole fault-around windows and whole folios; dropping a neighbour's pages
only costs it a fault.
"""

from __future__ import annotations

import functools
import gc
import mmap
from collections.abc import Callable
from pathlib import Path

import numpy as np

# The window a read fault maps around the faulting page (Linux's default fault_around_bytes); a multiple
# of the page size.
FAULT_AROUND_BYTES = 64 << 10
# Where Linux says how large a PMD-mapped huge page is: the largest folio its page cache holds.
PMD_SIZE_FILE = Path("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
_DEFAULT_FOLIO_BYTES = 2 << 20


def release_pages(view: np.ndarray) -> None:
    """Unmap the pages under `view` if it is a contiguous view of a read-only mmap; otherwise do nothing.

    The mapping is taken to start at file offset 0 (onnx_ir's and normfold's maps of a whole file): folios are
    aligned in the file, fault-around windows in the address space."""
    mapping = _mapping_of(view)
    if mapping is None or not view.flags.c_contiguous or not view.nbytes or not hasattr(mmap, "MADV_DONTNEED"):
        return
    base = np.frombuffer(mapping, np.uint8).__array_interface__["data"][0]
    start = view.__array_interface__["data"][0]
    stop = start + view.nbytes
    around, folio = max(FAULT_AROUND_BYTES, mmap.PAGESIZE), largest_folio_bytes()
    begin = max(min(_down(start, around), base + _down(start - base, folio)), base)
    end = min(max(_up(stop, around), base + _up(stop - base, folio)), base + len(mapping))
    mapping.madvise(mmap.MADV_DONTNEED, begin - base, end - begin)


@functools.cache
def largest_folio_bytes() -> int:
    """The largest folio a read fault may map whole: the PMD size Linux reports (2 MiB when it reports none)."""
    try:
        size = int(PMD_SIZE_FILE.read_text())
    except (OSError, ValueError):
        return _DEFAULT_FOLIO_BYTES
    return size if size >= mmap.PAGESIZE and size % mmap.PAGESIZE == 0 else _DEFAULT_FOLIO_BYTES


def _down(value: int, step: int) -> int:
    return value - value % step


def _up(value: int, step: int) -> int:
    return -(-value // step) * step


def release_range(mapping: mmap.mmap, end: int) -> None:
    """Unmap the pages of a read-only `mapping` before byte `end` (whole pages only), kept in the page cache.

    For a walk through a mapped file (`inline_mapping`): what it has read stays resident otherwise, and
    read-ahead and fault-around bring in far more than the few bytes read from each message."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    end = min(end, len(mapping)) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > 0:
        mapping.madvise(mmap.MADV_DONTNEED, 0, end)


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


def return_freed_heap() -> None:
    """Free what only reference cycles still hold, then hand the heap memory the process has freed back to the
    kernel (glibc's malloc_trim; elsewhere only the collection).

    A fold leaves the tensors it replaced in reference cycles, freed at the collector's next full pass, which
    may come after the write: for a 450 MB inline model, 450 MB of replaced weights beside the serialized
    output. And freeing a buffer larger than glibc's mmap threshold raises that threshold (up to 32 MiB), so
    after onnx's checker frees its copy of a large file, the medium blocks protobuf parses the same file into
    come from the heap and, once freed, stay resident. Later small allocations may reuse such memory, but
    large ones (a serialized model) are mapped afresh beside it.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# Blocks from this size are mapped by glibc and returned to the kernel when freed (mallopt's M_MMAP_THRESHOLD).
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3


@functools.cache
def keep_large_blocks_mapped() -> None:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD_BYTES for the rest of the process (elsewhere: nothing).

    glibc raises the threshold each time a mapped block is freed (up to 32 MiB): after a fold or a float64
    reference frees its float64 copies, the next weights (ONNX Runtime's initializers, protobuf's parse) come
    from the heap, and what is freed there stays resident. An ONNX Runtime session on a 420 MB model then
    peaks at 870 MiB instead of 450 MiB. A fixed threshold keeps every large block mapped and returned.
    """
    import ctypes  # on first use: `normfold --help` never needs it

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none."""
    import ctypes  # on first use: `normfold --help` never needs it

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None

"""How much memory this machine has free now: the one fact every memory budget starts from."""

from __future__ import annotations

import os


def available_memory() -> int:
    """Bytes the kernel reports available (MemAvailable), else free physical pages; 0 when neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            return next(int(line.split()[1]) << 10 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        if hasattr(os, "sysconf"):
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return 0

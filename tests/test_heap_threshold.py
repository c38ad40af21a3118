"""glibc's mmap threshold held fixed: medium blocks freed after a large one go back to the kernel (an ONNX
Runtime session after a float64 reference would otherwise keep the freed half of its load resident)."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

SCRIPT = """
import re, sys
import numpy as np
from normfold.mapped_pages import keep_large_blocks_mapped

def anon_mib():
    return int(re.search(r"RssAnon:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) >> 10

if sys.argv[1] == "fixed":
    keep_large_blocks_mapped()
big = np.ones(2 << 20)  # 16 MiB, mapped: freeing it raises glibc's own threshold to 16 MiB
del big
base = anon_mib()
blocks = [np.ones(1 << 18) for _ in range(24)]  # 24 blocks of 2 MiB
pin = bytearray(256 << 10)  # above them on the heap: the heap's top cannot shrink past it
del blocks
print(anon_mib() - base)
"""


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return True


def _kept_mib(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True, cwd="/")
    return int(done.stdout)


@pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's: other C libraries keep their own policy")
def test_fixed_threshold_returns_freed_medium_blocks() -> None:
    assert _kept_mib("fixed") < 8


@pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's: other C libraries keep their own policy")
def test_without_it_glibc_keeps_them_resident() -> None:
    """The control: what the fixed threshold prevents does happen without it."""
    assert _kept_mib("dynamic") >= 40

"""Keep freed memory in the process instead of handing it back to the kernel after every batch.

glibc serves allocations above 128 KB with fresh mmap()s and trims the heap on free, so every batch of
4 x 128 x 128 snapshots (and every 256 KB snapshot) is new memory that page-faults on first touch. On the VMs we
measured, that was a third of the data pipeline's time (data_throughput: ~2,300 -> ~3,100 pairs/s). Raising the
mmap and trim thresholds lets the heap reuse freed blocks; the resident set stays at its peak instead. Linux
with glibc only; elsewhere (or with jemalloc/tcmalloc preloaded) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MAX_MMAP_THRESHOLD = 32 * 2**20  # glibc refuses more on 64-bit
_done = False


def keep_freed_memory() -> bool:
    """Make glibc reuse freed blocks up to 32 MB (inherited by DataLoader workers forked afterwards)."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MAX_MMAP_THRESHOLD) == 1 and ok
    except (OSError, AttributeError):  # not glibc
        return False
    _done = ok
    return ok

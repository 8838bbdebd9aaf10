"""The ``sway`` process's heap: a forward's freed activations are reused by the next.

glibc serves a block above its mmap threshold (128 KiB, rising to at most 32 MiB as
such blocks are freed) with fresh pages from the kernel, and hands freed memory
above its trim threshold back: every forward's activations, tens of MB each, are
then faulted in page by page again. On SmolLM2 a null-calibrated rolling suite took
1.2-1.9 M page faults and 6-8 s of system time that way; with both thresholds at
256 MiB, 0.17 M faults, 1.5 s and 0.89x the time, at the same peak RSS. Only the
command line does this: it owns its process, a library caller's heap is its own.
"""

from __future__ import annotations

import ctypes
import os

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this come from the heap, and this much freed heap stays mapped.
KEEP_BYTES = 256 << 20
#: glibc's own environment settings of the two: a user who tuned them keeps theirs.
TUNED_BY_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to ``KEEP_BYTES``; whether they were set
    (not on another C library, nor where the environment already tunes them)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(name in os.environ for name in TUNED_BY_ENV) or "glibc.malloc." in tunables:
        return False
    try:
        os.confstr("CS_GNU_LIBC_VERSION")  # glibc only: musl's mallopt does nothing
        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
    )


__all__ = ["KEEP_BYTES", "keep_freed_memory"]

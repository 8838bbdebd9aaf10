"""Cast a freshly loaded fp32 model to a half dtype without holding both in memory.

transformers maps a safetensors checkpoint into memory and its fp32 tensors point
into that one mapping. Casting to bf16 reads every page of it, and the kernel keeps
each page read counted in this process's resident set until the whole mapping is
released after the cast: SmolLM2-135M peaked at 1157 MB for a 270 MB bf16 model
(fp32 file pages + the bf16 copy + the libraries).

:func:`cast_releasing_pages` casts parameter by parameter and, on Linux, hands each
old tensor's pages back with ``madvise(MADV_DONTNEED)`` once nothing reads them: a
plain cast then peaks at 648 MB, and a bf16 load (whose fp32 reference forward for
the dtype floor touches every page first) peaks where an fp32 load does. Only pages
of a *file* mapping are released, and none that another tensor overlaps: a clean
page of a file reads back from the file on the next touch, so no data anything
still uses is lost; anonymous memory (GGUF's dequantized weights, tensors built in
memory) is left alone.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import logging
import mmap
import os
import sys
from pathlib import Path

import torch

_log = logging.getLogger(__name__)
#: Linux's MADV_DONTNEED (mmap exposes it from Python 3.8 on Linux).
_DONTNEED = getattr(mmap, "MADV_DONTNEED", 4)


def cast_releasing_pages(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """``model.to(dtype)``, releasing each fp32 tensor's file pages once cast.

    Returns the bytes handed back (0 off Linux or when nothing is file-backed).
    """
    spans = _file_spans() if sys.platform.startswith("linux") else []
    shared = _aliased(model) if spans else set()
    released = 0
    with torch.no_grad():
        for param in model.parameters():  # tied weights appear once
            old = param.data
            if not old.is_floating_point() or old.dtype == dtype or old.device.type != "cpu":
                continue
            param.data = old.to(dtype)
            if spans and old.is_contiguous() and old.data_ptr() not in shared:
                released += _release(old.data_ptr(), _nbytes(old), spans)
            del old
    model.to(dtype)  # floating buffers, and anything the loop left (no copy if cast already)
    return released


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _aliased(model: torch.nn.Module) -> set[int]:
    """Data pointers of tensors whose bytes overlap another parameter's or buffer's:
    their pages stay (a view may still read them, and may have written them)."""
    # Whole storages, not tensor extents: a strided view may reach past numel·itemsize.
    ranges = sorted(
        (t.data_ptr(), t.data_ptr() + _nbytes(t))
        if t.is_contiguous()
        else (
            t.untyped_storage().data_ptr(),
            t.untyped_storage().data_ptr() + t.untyped_storage().nbytes(),
        )
        for t in [*model.parameters(), *model.buffers()]
        if t.device.type == "cpu" and _nbytes(t) > 0
    )
    shared: set[int] = set()
    reach = (-1, -1)  # the furthest-reaching range so far: (end, start)
    for start, end in ranges:
        if start < reach[0]:
            shared.update((start, reach[1]))
        if end > reach[0]:
            reach = (end, start)
    return shared


def _file_spans() -> list[tuple[int, int]]:
    """Sorted (start, end) of this process's file-backed mappings (not [heap], [stack]…)."""
    spans: list[tuple[int, int]] = []
    try:
        with Path("/proc/self/maps").open(encoding="utf-8") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                # A regular file only: /dev/zero or a memfd mapping is anonymous memory.
                if len(fields) < 6 or fields[4] == "0" or not Path(fields[5].strip()).is_file():
                    continue
                start, _, end = fields[0].partition("-")
                spans.append((int(start, 16), int(end, 16)))
    except OSError as exc:  # no procfs (a sandbox): nothing is released, the cast still runs
        _log.debug("no /proc/self/maps: %s", exc)
        return []
    spans.sort()
    return spans


def _release(address: int, length: int, spans: list[tuple[int, int]]) -> int:
    """MADV_DONTNEED the whole pages of [address, address + length) inside one file span."""
    i = bisect.bisect_right(spans, (address, float("inf"))) - 1
    if i < 0 or address + length > spans[i][1]:
        return 0  # not (wholly) inside a file mapping: anonymous memory is never touched
    page = os.sysconf("SC_PAGE_SIZE")
    start = -(-address // page) * page
    end = (address + length) // page * page
    if end <= start:
        return 0
    if _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _DONTNEED) != 0:
        _log.debug("madvise failed: errno %d", ctypes.get_errno())
        return 0
    return end - start


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


__all__ = ["cast_releasing_pages"]

"""Giving memory back to the OS after big requests (glibc only; elsewhere a no-op).

glibc raises its mmap threshold each time a big mmapped block is freed, so after a few large
requests every later large buffer (a 3 MiB body, its decoded copy) comes from the heap, where
freed space fragments and the RSS stays at the high-water mark. A fixed threshold (setting it
turns the adjustment off, see mallopt(3)) keeps those buffers in mmap: freed means returned.
`malloc_trim` returns what is free at the top of the heaps and in the thread arenas.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

M_MMAP_THRESHOLD = -3  # glibc malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value


def _libc() -> Any | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc_trim, libc.mallopt  # noqa: B018 - AttributeError when not glibc
    except (OSError, AttributeError, TypeError):
        return None
    return libc


_LIBC = _libc()


def fix_mmap_threshold() -> bool:
    """Big allocations always from mmap; True when the allocator took the setting."""
    return _LIBC is not None and bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def return_freed_memory() -> None:
    """Hand freed memory back to the OS (well under a millisecond on a fresh heap; the GIL
    is released meanwhile: ctypes calls into CDLL functions without it)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)

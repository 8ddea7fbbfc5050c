"""Give the C allocator's free memory back to the system after a big list.

A list of 10,000 VMIs decodes tens of MiB that are freed again at once; glibc keeps most of
it mapped (and per thread arena) unless asked. `malloc_trim(0)` asks; elsewhere (musl, macOS)
this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)

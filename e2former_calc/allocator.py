"""Keeping freed memory in the process (glibc), for large systems on the CPU.

glibc's ``malloc`` serves blocks above its mmap threshold with a fresh ``mmap`` and gives them
back with ``munmap`` when they are freed; the threshold follows the largest block freed so far,
but only up to 32 MiB. A per-edge tensor of a system of ~10,000 atoms is larger than that, so
every such tensor of every call is a new mapping whose pages the kernel zero-fills and maps one
by one: on this project's CPU the system time of one energy+forces call of 10,976 Cu atoms was
5.8 s of 18.8 s (``docs/model.md``, "Memory and scaling"). :func:`keep_freed_memory` raises the
mmap and trim thresholds to 1 GiB (``mallopt``), so that freed blocks are reused from the heap.

It changes the whole process, so the package never calls it on import: the ``e2former``
command calls it at start-up (its own process), and a script may call it too. The environment
variables ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` do the same for any program.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: glibc's mallopt parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD = 2**30


def keep_freed_memory(threshold: int = THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold`` bytes; True if it did (False on a
    C library without ``mallopt``, or when ``MALLOC_MMAP_THRESHOLD_`` is set: the user chose)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))

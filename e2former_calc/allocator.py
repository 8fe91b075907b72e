"""Keeping freed memory in the process (glibc), for large systems on the CPU.

glibc's ``malloc`` serves blocks above its mmap threshold with a fresh ``mmap`` and gives them
back with ``munmap`` when they are freed; the threshold follows the largest block freed so far,
but only up to 32 MiB. A per-edge tensor of a system of ~10,000 atoms is larger than that, so
every such tensor of every call is a new mapping whose pages the kernel zero-fills and maps one
by one: on this project's CPU the system time of one energy+forces call of 10,976 Cu atoms was
5.8 s of 18.8 s (``docs/model.md``, "Memory and scaling"). :func:`keep_freed_memory` raises the
mmap and trim thresholds to 1 GiB (``mallopt``), so that freed blocks are reused from the heap.

It changes the whole process, so importing the package never calls it. What runs a model on the
CPU does, when it is built (:func:`keep_freed_memory_on`): the ASE calculator, :class:`Predictor`
and the torch-sim model (their ``keep_freed_memory=False`` leaves the allocator alone), and the
``e2former`` command at start-up. The price is memory the process keeps after a large call instead
of returning it to the system (peak memory 9-23% higher at 10,976 Cu atoms, the same at 4,000:
``docs/model.md``). The environment variables ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` are the user's choice and win.
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


def keep_freed_memory_on(device, wanted: bool = True) -> bool:
    """:func:`keep_freed_memory` if ``wanted`` and ``device`` (a ``torch.device``) is the CPU, where
    the network's tensors come from ``malloc``; True if it raised the thresholds."""
    if not isinstance(wanted, bool):
        raise ValueError(f"keep_freed_memory must be True or False, got {wanted!r}")
    return wanted and device.type == "cpu" and keep_freed_memory()

"""Memory figures of this process and this machine from /proc (Linux), in KiB; no imports
beyond the standard library, so the benchmarks' worker processes can use it before loading
the tree under test."""

from __future__ import annotations


def proc_kib(path: str, key: str) -> int:
    """A ``key: N kB`` value of a /proc file, in KiB (0 where there is none)."""
    with open(path) as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM)."""
    return proc_kib("/proc/self/status", "VmHWM")


def available_kib() -> int:
    """The machine's available memory (MemAvailable)."""
    return proc_kib("/proc/meminfo", "MemAvailable")

"""Shared pieces of the benchmarks: test structures, timing and a description of the machine."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import torch
from matscipy.neighbours import neighbour_list

from e2former_calc.training.trainer import cpu_name

#: Number density of the benchmark structures (atoms / Å^3), about that of water or a metal.
DENSITY = 0.1


def jittered_lattice(n_atoms: int, density: float = DENSITY, jitter: float = 0.15, seed: int = 0):
    """About ``n_atoms`` on a simple cubic lattice of the given density, each moved by a Gaussian
    of ``jitter`` lattice spacings; returns positions ``[n, 3]`` and the cubic cell ``[3, 3]``."""
    side = round(n_atoms ** (1 / 3))
    spacing = density ** (-1 / 3)
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = (grid + 0.5 + rng.normal(scale=jitter, size=grid.shape)) * spacing
    return positions, np.eye(3) * side * spacing


def cutoff_for_neighbours(k: float, density: float = DENSITY) -> float:
    """Cutoff radius whose sphere holds ``k`` atoms on average at the given density."""
    return (3 * k / (4 * math.pi * density)) ** (1 / 3)


def periodic_edges(positions, cell, cutoff):
    """Receivers, senders and Cartesian shifts of a fully periodic structure (matscipy)."""
    i, j, S = neighbour_list("ijS", positions=positions, cell=cell, pbc=np.array([True] * 3), cutoff=cutoff)
    return (
        torch.from_numpy(i).long(),
        torch.from_numpy(j).long(),
        torch.from_numpy(S.astype(np.float64) @ cell),
    )


def median_seconds(fn, repeats: int, warmup: int = 1, sync=None) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_description(device: str) -> dict:
    info = {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info

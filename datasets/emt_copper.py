"""EMT copper: bulk (rattled, strained, triclinic), vacancies, (111)/(100) surfaces and MD from
300 K to 1,500 K, labelled with ASE's EMT (energies, forces, and stress for the periodic cells).

Every structure is periodic in all three directions (surface slabs carry 8 Å of vacuum along z,
so their stress has a vacuum-diluted meaning but is still the exact EMT derivative); 8 to 108
atoms per cell. Random numbers come from one generator seeded by ``--seed``. Splits: 80% train,
10% validation, 10% test, one seeded permutation over all frames.

Usage::

    python datasets/emt_copper.py --out datasets/emt-cu
    python datasets/emt_copper.py --out /tmp/cu --scale 0.05     # a quick check

Writes ``OUT/{train,valid,test}.extxyz.gz`` (``config_type`` = kind of structure), ``OUT/all.extxyz.gz``
and ``OUT/splits.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import label, split_indices, write_frames, write_json  # noqa: E402

LATTICE = 3.59  # Å, close to EMT's own fcc copper lattice constant
MD_TEMPERATURES = (300, 600, 900, 1200, 1500)  # K


def random_strain(rng, amplitude):
    """``I + e`` with ``e`` a random symmetric matrix, entries uniform in +-amplitude."""
    e = rng.uniform(-amplitude, amplitude, (3, 3))
    return np.eye(3) + 0.5 * (e + e.T)


def bulk_cells():
    """fcc cells of 8 to 108 atoms: primitive (triclinic-looking) and cubic supercells."""
    primitive = bulk("Cu", "fcc", a=LATTICE)
    cubic = bulk("Cu", "fcc", a=LATTICE, cubic=True)
    return [primitive * (2, 2, 2), primitive * (3, 3, 3), primitive * (4, 3, 3), cubic * (2, 2, 2), cubic * (3, 3, 3)]


def rattled(atoms, rng, sigma):
    atoms = atoms.copy()
    atoms.positions += rng.normal(0, sigma, atoms.positions.shape)
    return atoms


def strained(atoms, rng, amplitude):
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell.array @ random_strain(rng, amplitude), scale_atoms=True)
    return atoms


def structures(rng, scale: float):
    """(config_type, atoms) pairs, unlabelled; ``scale`` multiplies every count."""
    def count(n):
        return max(1, int(round(n * scale)))

    cells = bulk_cells()
    for _ in range(count(250)):
        yield "bulk_rattled", rattled(cells[rng.integers(len(cells))], rng, rng.uniform(0.02, 0.15))
    for _ in range(count(250)):
        cell = cells[rng.integers(len(cells))]
        yield "bulk_strained", rattled(strained(cell, rng, rng.uniform(0.01, 0.06)), rng, rng.uniform(0.0, 0.1))
    for _ in range(count(200)):
        cell = cells[rng.integers(1, len(cells))].copy()
        for _ in range(rng.integers(1, 3)):
            del cell[int(rng.integers(len(cell)))]
        yield "vacancy", rattled(strained(cell, rng, 0.02), rng, rng.uniform(0.02, 0.12))
    for _ in range(count(150)):
        slab = fcc111("Cu", size=(3, 3, 4), a=LATTICE, vacuum=4.0, periodic=True)
        slab.info.clear()
        yield "surface_111", rattled(slab, rng, rng.uniform(0.02, 0.12))
    for _ in range(count(150)):
        slab = fcc100("Cu", size=(3, 3, 4), a=LATTICE, vacuum=4.0, periodic=True)
        slab.info.clear()
        yield "surface_100", rattled(slab, rng, rng.uniform(0.02, 0.12))
    for temperature in MD_TEMPERATURES:
        for start in (cells[3], cells[4]):
            atoms = start.copy()
            atoms.calc = EMT()
            thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
            dynamics = Langevin(atoms, 2 * units.fs, temperature_K=temperature, friction=0.02 / units.fs,
                                fixcm=False, rng=rng)
            dynamics.run(max(10, int(round(200 * scale))))
            for _ in range(count(40)):
                dynamics.run(25)
                snapshot = atoms.copy()
                snapshot.calc = None
                yield f"md_{temperature}K", snapshot


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the number of structures of each kind")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    frames = []
    for k, (kind, atoms) in enumerate(structures(rng, args.scale)):
        frames.append(label(atoms, EMT(), stress=True, config_type=kind, frame=k))
    n = len(frames)
    n_valid = n_test = n // 10
    indices = split_indices(n, {"train": n - n_valid - n_test, "valid": n_valid, "test": None}, args.seed)
    write_frames(args.out / "all.extxyz.gz", frames)
    for part, chosen in indices.items():
        write_frames(args.out / f"{part}.extxyz.gz", [frames[i] for i in chosen])
    kinds = sorted({f.info["config_type"] for f in frames})
    sizes = sorted({len(f) for f in frames})
    write_json(args.out / "splits.json", {"seed": args.seed, "lattice_constant": LATTICE, "splits": indices})
    print(f"wrote {n} frames ({', '.join(f'{p}: {len(i)}' for p, i in indices.items())}); kinds: {', '.join(kinds)}; "
          f"atoms per cell: {sizes[0]} to {sizes[-1]}")


if __name__ == "__main__":
    main()

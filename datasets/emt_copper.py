"""EMT copper: bulk (rattled, strained, triclinic), vacancies, surfaces, defects, MD and liquid,
labelled with ASE's EMT (energies, forces, and stress for the periodic cells).

``--kinds classic`` (the data set ``datasets/emt-cu``): bulk rattled and strained, one or two
vacancies, (111)/(100) slabs, Langevin MD from 300 K to 1,500 K on 32- and 108-atom cells; split
80/10/10 % by one seeded permutation over all frames.

``--kinds extended`` (the default; ``datasets/emt-cu-diverse``) adds, from a second generator so
that the classic frames come out identical: (110) slabs, adatoms on (111)/(100), vacancy clusters
(two to four neighbouring sites), twin boundaries and stacking faults (periodic (111) stacks),
a third MD trajectory per temperature (36 atoms), liquid copper (melted at 2,500 K, sampled at
1,800 K, 3 % expanded) and one isolated atom. Split: every MD or liquid trajectory has an id, and
one whole trajectory per temperature is test data (so no test frame sits 50 fs from a training
frame); everything else 80/10/10 % by a seeded permutation, as before.

Every structure is periodic in all three directions (surface slabs carry 8 Å of vacuum along z,
so their stress has a vacuum-diluted meaning but is still the exact EMT derivative); 1 to 108
atoms per cell.

Usage::

    python datasets/emt_copper.py --out datasets/emt-cu-diverse
    python datasets/emt_copper.py --out datasets/emt-cu --kinds classic
    python datasets/emt_copper.py --out /tmp/cu --scale 0.05     # a quick check

Writes ``OUT/{train,valid,test}.extxyz.gz`` (``config_type`` = kind of structure), ``OUT/all.extxyz.gz``
and ``OUT/splits.json``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from ase import units
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc100, fcc110, fcc111
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


def _counter(scale):
    return lambda n: max(1, int(round(n * scale)))


def md_frames(rng, start, temperature, equilibrate, frames, interval=25, volume_scale=1.0, melt_temperature=None):
    """Snapshots of Langevin MD with EMT (2 fs steps, friction 0.02/fs), ``interval`` steps apart,
    after ``equilibrate`` steps at ``temperature``; with ``melt_temperature``, the (``volume_scale``
    expanded) cell is first held there for ``equilibrate`` steps."""
    atoms = start.copy()
    atoms.set_cell(atoms.cell.array * volume_scale ** (1 / 3), scale_atoms=True)
    atoms.calc = EMT()
    stages = ([melt_temperature] if melt_temperature else []) + [temperature]
    thermalize_momenta(atoms, temperature_K=stages[0], rng=rng)
    for stage in stages:
        dynamics = Langevin(atoms, 2 * units.fs, temperature_K=stage, friction=0.02 / units.fs, fixcm=False, rng=rng)
        dynamics.run(equilibrate)
    for _ in range(frames):
        dynamics.run(interval)
        snapshot = atoms.copy()
        snapshot.calc = None
        yield snapshot


def stacking(sequence: str, size: int = 3) -> Atoms:
    """A periodic fcc (111) stack with the given layer sequence (letters A, B, C), ``size`` x
    ``size`` atoms per layer: ABC... is perfect fcc, a reversal (ABCACB) a twin boundary, a
    missing letter (ABCAB|ABC) an intrinsic stacking fault."""
    d = LATTICE / np.sqrt(2)
    a1, a2 = np.array([d, 0, 0]), np.array([d / 2, d * np.sqrt(3) / 2, 0])
    shift = {"A": 0.0, "B": 1 / 3, "C": 2 / 3}
    spacing = LATTICE / np.sqrt(3)
    positions = [i * a1 + j * a2 + shift[letter] * (a1 + a2) + [0, 0, k * spacing]
                 for k, letter in enumerate(sequence) for i in range(size) for j in range(size)]
    return Atoms("Cu" * len(positions), positions=positions, cell=[size * a1, size * a2, [0, 0, len(sequence) * spacing]],
                 pbc=True)


def structures(rng, scale: float):
    """(config_type, atoms, trajectory id or None) triples, unlabelled; ``scale`` multiplies every count."""
    count = _counter(scale)

    cells = bulk_cells()
    for _ in range(count(250)):
        yield "bulk_rattled", rattled(cells[rng.integers(len(cells))], rng, rng.uniform(0.02, 0.15)), None
    for _ in range(count(250)):
        cell = cells[rng.integers(len(cells))]
        yield "bulk_strained", rattled(strained(cell, rng, rng.uniform(0.01, 0.06)), rng, rng.uniform(0.0, 0.1)), None
    for _ in range(count(200)):
        cell = cells[rng.integers(1, len(cells))].copy()
        for _ in range(rng.integers(1, 3)):
            del cell[int(rng.integers(len(cell)))]
        yield "vacancy", rattled(strained(cell, rng, 0.02), rng, rng.uniform(0.02, 0.12)), None
    for _ in range(count(150)):
        slab = fcc111("Cu", size=(3, 3, 4), a=LATTICE, vacuum=4.0, periodic=True)
        slab.info.clear()
        yield "surface_111", rattled(slab, rng, rng.uniform(0.02, 0.12)), None
    for _ in range(count(150)):
        slab = fcc100("Cu", size=(3, 3, 4), a=LATTICE, vacuum=4.0, periodic=True)
        slab.info.clear()
        yield "surface_100", rattled(slab, rng, rng.uniform(0.02, 0.12)), None
    for temperature in MD_TEMPERATURES:
        for k, start in enumerate((cells[3], cells[4])):
            for snapshot in md_frames(rng, start, temperature, max(10, int(round(200 * scale))), count(40)):
                yield f"md_{temperature}K", snapshot, f"md_{temperature}K_{k}"


def extra_structures(rng, scale: float):
    """What ``--kinds extended`` adds to :func:`structures`, from its own generator."""
    count = _counter(scale)
    cells = bulk_cells()
    for _ in range(count(100)):
        slab = fcc110("Cu", size=(3, 2, 6), a=LATTICE, vacuum=4.0, periodic=True)
        slab.info.clear()
        yield "surface_110", rattled(slab, rng, rng.uniform(0.02, 0.12)), None
    sites = {fcc111: ("ontop", "bridge", "fcc", "hcp"), fcc100: ("ontop", "bridge", "hollow")}
    for _ in range(count(150)):
        build = (fcc111, fcc100)[int(rng.integers(2))]
        slab = build("Cu", size=(3, 3, 4), a=LATTICE, vacuum=5.0, periodic=True)
        for _ in range(int(rng.integers(1, 3))):
            site = sites[build][int(rng.integers(len(sites[build])))]
            add_adsorbate(slab, "Cu", height=rng.uniform(1.7, 2.5), position=site,
                          offset=tuple(int(i) for i in rng.integers(0, 3, 2)))
            if min(slab.get_distances(len(slab) - 1, range(len(slab) - 1), mic=True)) < 2.0:
                del slab[-1]  # the second adatom landed on or next to the first
        slab.info.clear()
        yield "adatom", rattled(slab, rng, rng.uniform(0.02, 0.1)), None
    for _ in range(count(100)):
        cell = cells[4].copy()
        centre = int(rng.integers(len(cell)))
        distances = cell.get_distances(centre, range(len(cell)), mic=True)
        neighbours = np.flatnonzero((distances > 0.1) & (distances < 0.8 * LATTICE))
        removed = [centre, *rng.choice(neighbours, int(rng.integers(1, 4)), replace=False).tolist()]
        del cell[sorted(removed, reverse=True)]
        yield "vacancy_cluster", rattled(strained(cell, rng, 0.02), rng, rng.uniform(0.02, 0.12)), None
    for _ in range(count(100)):
        sequence = ("ABCABCACBACB", "ABCABCABCAB")[int(rng.integers(2))]
        yield "planar_defect", rattled(strained(stacking(sequence), rng, 0.02), rng, rng.uniform(0.02, 0.12)), None
    for temperature in MD_TEMPERATURES:
        for snapshot in md_frames(rng, cells[2], temperature, max(10, int(round(200 * scale))), count(40)):
            yield f"md_{temperature}K", snapshot, f"md_{temperature}K_2"
    for k in range(3):
        for snapshot in md_frames(rng, cells[4], 1800, max(10, int(round(500 * scale))), count(40),
                                  volume_scale=1.03, melt_temperature=2500):
            yield "liquid", snapshot, f"liquid_{k}"
    yield "isolated_atom", Atoms("Cu", positions=[[6.0, 6.0, 6.0]], cell=[12.0] * 3, pbc=True), None


def trajectory_split(frames, seed: int) -> dict:
    """Train/valid/test indices: per config_type one whole trajectory (seeded choice) is test;
    frames without a trajectory, and the other trajectories' frames, go 80/10/10 % (test share
    only for the frames without a trajectory) by one seeded permutation."""
    rng = np.random.default_rng(seed)
    trajectories = {}
    for i, frame in enumerate(frames):
        if frame.info.get("trajectory"):
            trajectories.setdefault(frame.info["config_type"], {}).setdefault(frame.info["trajectory"], []).append(i)
    test = []
    for kind in sorted(trajectories):
        names = sorted(trajectories[kind])
        test += trajectories[kind][names[int(rng.integers(len(names)))]]
    test_set = set(test)
    free = [i for i, f in enumerate(frames) if not f.info.get("trajectory")]
    in_trajectories = [i for i, f in enumerate(frames) if f.info.get("trajectory") and i not in test_set]
    free = [free[i] for i in rng.permutation(len(free))]
    in_trajectories = [in_trajectories[i] for i in rng.permutation(len(in_trajectories))]
    n_free = len(free) // 10
    valid = free[:n_free] + in_trajectories[:len(in_trajectories) // 10]
    test += free[n_free:2 * n_free]
    train = free[2 * n_free:] + in_trajectories[len(in_trajectories) // 10:]
    return {"train": sorted(train), "valid": sorted(valid), "test": sorted(test)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the number of structures of each kind")
    parser.add_argument("--kinds", choices=("classic", "extended"), default="extended")
    args = parser.parse_args(argv)
    generated = structures(np.random.default_rng(args.seed), args.scale)
    if args.kinds == "extended":
        generated = itertools.chain(generated, extra_structures(np.random.default_rng(args.seed + 1), args.scale))
    frames = []
    for k, (kind, atoms, trajectory) in enumerate(generated):
        frames.append(label(atoms, EMT(), stress=True, config_type=kind, frame=k,
                            **({"trajectory": trajectory} if args.kinds == "extended" and trajectory else {})))
    n = len(frames)
    if args.kinds == "classic":
        n_valid = n_test = n // 10
        indices = split_indices(n, {"train": n - n_valid - n_test, "valid": n_valid, "test": None}, args.seed)
    else:
        indices = trajectory_split(frames, args.seed)
    write_frames(args.out / "all.extxyz.gz", frames)
    for part, chosen in indices.items():
        write_frames(args.out / f"{part}.extxyz.gz", [frames[i] for i in chosen])
    kinds = sorted({f.info["config_type"] for f in frames})
    sizes = sorted({len(f) for f in frames})
    write_json(args.out / "splits.json", {"seed": args.seed, "kinds": args.kinds, "lattice_constant": LATTICE,
                                          "splits": indices})
    print(f"wrote {n} frames ({', '.join(f'{p}: {len(i)}' for p, i in indices.items())}); kinds: {', '.join(kinds)}; "
          f"atoms per cell: {sizes[0]} to {sizes[-1]}")


if __name__ == "__main__":
    main()

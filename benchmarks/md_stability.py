"""MD stability of the shipped potentials (float32), as in the MD17 literature.

``organic``: each of the ten xTB-rMD17 molecules, Langevin MD at 500 K, 0.5 fs steps, for
``--ps`` picoseconds (20 by default), starting from the molecule's first test-set frame. A
molecule is *unstable* from the first check (every ``--check`` steps) where a bond is more than
0.5 Å longer or shorter than its reference length. Bonds are the pairs closer than 1.2 x the sum
of covalent radii in the starting frame; the reference length of a bond is its mean over the
molecule's xTB test frames (500 K), so the criterion does not depend on the potential. The ten
molecules run side by side as one system, 40 Å apart (far beyond the 5 Å cutoff, so they do not
interact: every atom has its own Langevin thermostat), which costs one potential call per step
for all ten.

``copper``: a 4,000-atom fcc cell (10 x 10 x 10 cubic cells), Langevin NVT at 1,000 K, 4 fs
steps, for ``--ps-copper`` ps (2 by default). Reported: the potential energy per atom in time,
E2Former against EMT on the same frames, the mean-square displacement from the lattice sites
(bounded for a stable solid) and the nearest-neighbour distance.

Progress is printed; the state is saved every ``--save`` steps and ``--resume`` continues from it.
Results: ``benchmarks/results/md_stability.{json,md}``.

Usage::

    python benchmarks/md_stability.py               # both, full length (about 25 min on 2 cores)
    python benchmarks/md_stability.py --quick       # 0.2 ps and 40 fs: a smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.data import covalent_radii
from ase.md.langevin import Langevin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_description  # noqa: E402

from e2former_calc import E2FormerCalculator  # noqa: E402
from e2former_calc.training.data import read_frames  # noqa: E402
from e2former_calc.workflows import thermalize  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SPACING = 40.0  # Å between molecules
MAX_BOND_CHANGE = 0.5  # Å


def bonds_of(atoms) -> np.ndarray:
    """Pairs (i < j) closer than 1.2 x the sum of their covalent radii: ``[B, 2]``."""
    d = atoms.get_all_distances()
    r = covalent_radii[atoms.numbers]
    i, j = np.nonzero(np.triu(d < 1.2 * (r[:, None] + r[None, :]), k=1))
    return np.stack([i, j], axis=1)


def bond_lengths(positions, bonds) -> np.ndarray:
    return np.linalg.norm(positions[bonds[:, 0]] - positions[bonds[:, 1]], axis=1)


def pair_minimum(positions) -> float:
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    return float(d[np.triu_indices(len(positions), 1)].min())


def remove_unstable(system, molecules, dynamics, calc):
    """The system without the molecules that became unstable (they stay in the report), and a
    Langevin integrator that continues with the same random-number stream."""
    keep = np.ones(len(system), bool)
    for m in molecules:
        if m["active"] and m["stable_until_ps"] is not None:
            keep[m["atoms"]] = False
            m["active"] = False
    smaller = system[keep]
    smaller.calc = calc
    start = 0
    for m in molecules:
        if m["active"]:
            size = m["atoms"].stop - m["atoms"].start
            m["atoms"] = slice(start, start + size)
            start += size
    rng = dynamics.rng
    return smaller, Langevin(smaller, 0.5 * units.fs, temperature_K=500.0, friction=0.01 / units.fs, fixcm=False, rng=rng)


def organic(args, out: dict) -> None:
    test = read_frames(ROOT / "datasets" / "xtb-rmd17" / "test.extxyz.gz")
    names = sorted({f.info["config_type"] for f in test})
    system = Atoms()
    molecules = []
    for k, name in enumerate(names):
        frames = [f for f in test if f.info["config_type"] == name]
        start = frames[0].copy()
        start.calc = None
        bonds = bonds_of(start)
        reference = np.mean([bond_lengths(f.positions, bonds) for f in frames], axis=0)
        start.positions += np.array([k * SPACING, 0.0, 0.0]) - start.positions.mean(axis=0)
        molecules.append({"name": name, "atoms": slice(len(system), len(system) + len(start)), "bonds": bonds,
                          "reference": reference, "stable_until_ps": None, "worst_change": 0.0, "active": True})
        system += start
    system.info.clear()
    atoms_total = len(system)
    calc = E2FormerCalculator.from_pretrained("e2former-xtb-organic", dtype="float32", quiet=True)
    system.calc = calc
    steps = int(round(args.ps * 1000 / 0.5))
    thermalize(system, 500.0, seed=args.seed)
    dynamics = Langevin(system, 0.5 * units.fs, temperature_K=500.0, friction=0.01 / units.fs, fixcm=False,
                        rng=np.random.default_rng(args.seed))
    state = RESULTS / f"md_stability_organic{'_quick' if args.quick else ''}_state.npz"
    done = 0
    if args.resume and state.exists():
        saved = np.load(state, allow_pickle=False)
        system.set_positions(saved["positions"])
        system.set_momenta(saved["momenta"])
        done = int(saved["step"])
        dynamics.rng.bit_generator.state = json.loads(str(saved["rng"]))
        for m, until, worst in zip(molecules, saved["stable_until"], saved["worst"]):
            m["stable_until_ps"] = None if until < 0 else float(until)
            m["worst_change"] = float(worst)
        if any(m["stable_until_ps"] is not None for m in molecules):
            raise SystemExit("resuming a run in which molecules left is not supported: run it again without --resume")
        print(f"organic: resuming at step {done}")
    temperatures = {m["name"]: [] for m in molecules}
    start_time = time.perf_counter()
    first_step = done
    while done < steps:
        n = min(args.check, steps - done)
        try:
            dynamics.run(n)
        except (ValueError, FloatingPointError) as error:  # atoms collapsed: find the culprit(s)
            broken = [m for m in molecules if m["stable_until_ps"] is None and m["active"] and (
                np.abs(bond_lengths(system.positions[m["atoms"]], m["bonds"]) - m["reference"]).max() > MAX_BOND_CHANGE
                or pair_minimum(system.positions[m["atoms"]]) < 0.5)]
            if not broken:
                raise
            for m in broken:
                m["stable_until_ps"] = done * 0.5 / 1000
                change = np.abs(bond_lengths(system.positions[m["atoms"]], m["bonds"]) - m["reference"]).max()
                m["worst_change"] = max(m["worst_change"], float(change))
                print(f"organic: {m['name']} broke apart ({error}); it leaves the run", flush=True)
        else:
            done += n
        positions, momenta, masses = system.positions, system.get_momenta(), system.get_masses()
        for m in molecules:
            if not m["active"]:
                continue
            sl = m["atoms"]
            change = np.abs(bond_lengths(positions[sl], m["bonds"]) - m["reference"]).max()
            m["worst_change"] = max(m["worst_change"], float(change))
            if change > MAX_BOND_CHANGE and m["stable_until_ps"] is None:
                m["stable_until_ps"] = (done - n) * 0.5 / 1000
            kinetic = 0.5 * (np.sum(momenta[sl] ** 2, axis=1) / masses[sl]).sum()
            temperatures[m["name"]].append(2 * kinetic / (3 * (sl.stop - sl.start) * units.kB))
        if any(m["active"] and m["stable_until_ps"] is not None for m in molecules):
            system, dynamics = remove_unstable(system, molecules, dynamics, calc)
            if len(system) == 0:
                print("organic: every molecule has become unstable; stopping", flush=True)
                break
        if done % args.save == 0 or done == steps:
            np.savez(state, positions=system.positions, momenta=system.get_momenta(), step=done,
                     rng=json.dumps(dynamics.rng.bit_generator.state),
                     stable_until=[-1 if m["stable_until_ps"] is None else m["stable_until_ps"] for m in molecules],
                     worst=[m["worst_change"] for m in molecules])
        elapsed = time.perf_counter() - start_time
        rate = max(done - first_step, 1) / elapsed
        unstable = [m["name"] for m in molecules if m["stable_until_ps"] is not None]
        if done % (args.check * 20) == 0 or done == steps:
            print(f"organic: {done}/{steps} steps ({done * 0.5 / 1000:.2f} ps), {1000 / rate:.1f} ms/step, "
                  f"ETA {(steps - done) / rate:.0f} s; unstable: {', '.join(unstable) or 'none'}", flush=True)
    seconds = time.perf_counter() - start_time
    # time per step of one molecule alone through the ASE calculator (what a user running one sees)
    single = Atoms(test[0].numbers, test[0].positions)
    single.calc = E2FormerCalculator.from_pretrained("e2former-xtb-organic", dtype="float32", quiet=True)
    rng = np.random.default_rng(1)
    single.get_forces()
    t0 = time.perf_counter()
    for _ in range(200):  # MD-like small moves: the Verlet list is reused as in a run
        single.positions = test[0].positions + rng.normal(0, 0.01, single.positions.shape)
        single.get_forces()
    single_ms = (time.perf_counter() - t0) / 200 * 1000
    out["organic"] = {
        "ps": args.ps, "timestep_fs": 0.5, "temperature_K": 500.0, "friction_per_fs": 0.01, "steps": steps,
        "atoms_total": atoms_total, "ms_per_step_all_ten": 1000 * seconds / max(steps - first_step, 1),
        "ms_per_step_single": {test[0].info["config_type"]: single_ms, "atoms": len(single)},
        "molecules": {m["name"]: {
            "atoms": m["atoms"].stop - m["atoms"].start, "bonds": len(m["bonds"]),
            "stable": m["stable_until_ps"] is None,
            "stable_ps": args.ps if m["stable_until_ps"] is None else m["stable_until_ps"],
            "largest_bond_change_A": m["worst_change"],
            "mean_temperature_K": float(np.mean(temperatures[m["name"]][len(temperatures[m["name"]]) // 2:]))
            if temperatures[m["name"]] else None,
        } for m in molecules},
    }


def copper(args, out: dict) -> None:
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", "fcc", a=3.59, cubic=True).repeat((10, 10, 10))
    sites = atoms.positions.copy()
    atoms.calc = E2FormerCalculator.from_pretrained("e2former-emt-cu", dtype="float32", quiet=True)
    thermalize(atoms, 1000.0, seed=args.seed)
    timestep = 4.0
    steps = int(round(args.ps_copper * 1000 / timestep))
    dynamics = Langevin(atoms, timestep * units.fs, temperature_K=1000.0, friction=0.01 / units.fs, fixcm=False,
                        rng=np.random.default_rng(args.seed))
    emt = EMT()
    rows = []
    interval = max(1, steps // 20)
    t0 = time.perf_counter()
    for done in range(interval, steps + 1, interval):
        dynamics.run(interval)
        snapshot = atoms.copy()
        snapshot.calc = emt
        displacement = atoms.positions - sites
        displacement -= np.round(displacement @ np.linalg.inv(atoms.cell.array)) @ atoms.cell.array
        d = snapshot.get_distances(0, range(1, len(atoms)), mic=True)
        rows.append({
            "ps": done * timestep / 1000,
            "potential_per_atom_eV": atoms.get_potential_energy() / len(atoms),
            "emt_potential_per_atom_eV": snapshot.get_potential_energy() / len(atoms),
            "temperature_K": atoms.get_temperature(),
            "msd_A2": float((displacement**2).sum(axis=1).mean()),
            "nearest_neighbour_A": float(np.sort(d)[:12].mean()),
        })
        rate = done / (time.perf_counter() - t0)
        print(f"copper: {done}/{steps} steps, {1000 / rate:.0f} ms/step, T {rows[-1]['temperature_K']:.0f} K, "
              f"MSD {rows[-1]['msd_A2']:.3f} Å², E-E_EMT {1000 * (rows[-1]['potential_per_atom_eV'] - rows[-1]['emt_potential_per_atom_eV']):+.1f} meV/atom",
              flush=True)
    seconds = time.perf_counter() - t0
    second_half = rows[len(rows) // 2:]
    out["copper"] = {
        "atoms": len(atoms), "ps": args.ps_copper, "timestep_fs": timestep, "temperature_K": 1000.0,
        "ms_per_step": 1000 * seconds / steps, "rows": rows,
        "mean_temperature_K": float(np.mean([r["temperature_K"] for r in second_half])),
        "potential_drift_meV_per_atom_first_to_second_half": 1000 * float(
            np.mean([r["potential_per_atom_eV"] for r in second_half])
            - np.mean([r["potential_per_atom_eV"] for r in rows[: len(rows) // 2]])),
        "mean_error_vs_emt_meV_per_atom": 1000 * float(np.mean(
            [r["potential_per_atom_eV"] - r["emt_potential_per_atom_eV"] for r in rows])),
        "final_msd_A2": rows[-1]["msd_A2"],
    }


def markdown(out: dict) -> str:
    def machine(section):
        m = section.get("machine", out["machine"])
        return f"Machine: {m['cpu']}, {m['threads']} torch threads, torch {m['torch']}. "

    lines = ["# MD stability of the shipped potentials (float32)\n\nCommand: `python benchmarks/md_stability.py` "
             "(`--only organic` or `--only copper` reruns one section).\n"]
    if "organic" in out:
        o = out["organic"]
        lines += [f"{machine(o)}Langevin MD at {o['temperature_K']:.0f} K, {o['timestep_fs']} fs steps, {o['ps']} ps per molecule "
                  f"(all ten side by side, {o['atoms_total']} atoms: {o['ms_per_step_all_ten']:.1f} ms per step; one "
                  f"{next(iter(o['ms_per_step_single']))} alone through the ASE calculator: "
                  f"{next(iter(o['ms_per_step_single'].values())):.1f} ms per step). Unstable = a bond "
                  f"more than {MAX_BOND_CHANGE} Å off its reference length.\n",
                  "| molecule | atoms | stable | stable for (ps) | largest bond change (Å) | mean T, 2nd half (K) |",
                  "|---|---|---|---|---|---|"]
        for name, m in o["molecules"].items():
            lines.append(f"| {name} | {m['atoms']} | {'yes' if m['stable'] else '**no**'} | {m['stable_ps']:.2f} | "
                         f"{m['largest_bond_change_A']:.3f} | {m['mean_temperature_K']:.0f} |")
    if "copper" in out:
        c = out["copper"]
        lines += ["", f"{machine(c)}Copper: {c['atoms']} atoms, Langevin NVT at {c['temperature_K']:.0f} K, {c['timestep_fs']} fs "
                  f"steps, {c['ps']} ps: {c['ms_per_step']:.0f} ms per step. Mean T (2nd half) {c['mean_temperature_K']:.0f} K; "
                  f"potential energy, 2nd half minus 1st half: {c['potential_drift_meV_per_atom_first_to_second_half']:+.2f} "
                  f"meV/atom; E2Former minus EMT on the same frames: {c['mean_error_vs_emt_meV_per_atom']:+.2f} meV/atom "
                  f"(mean); final MSD from the lattice sites {c['final_msd_A2']:.3f} Å².\n",
                  "| t (ps) | T (K) | E/atom (eV) | EMT E/atom (eV) | MSD (Å²) | nearest-neighbour distance (Å) |",
                  "|---|---|---|---|---|---|"]
        for r in c["rows"]:
            lines.append(f"| {r['ps']:.2f} | {r['temperature_K']:.0f} | {r['potential_per_atom_eV']:.4f} | "
                         f"{r['emt_potential_per_atom_eV']:.4f} | {r['msd_A2']:.3f} | {r['nearest_neighbour_A']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("organic", "copper"), default=None)
    parser.add_argument("--ps", type=float, default=20.0, help="ps per molecule")
    parser.add_argument("--ps-copper", type=float, default=2.0)
    parser.add_argument("--check", type=int, default=20, help="steps between bond checks")
    parser.add_argument("--save", type=int, default=2000, help="steps between saved states")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--quick", action="store_true", help="0.2 ps organic, 0.04 ps copper; writes *_quick files")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.quick:
        args.ps, args.ps_copper = 0.2, 0.04
    suffix = "_quick" if args.quick else ""
    path = RESULTS / f"md_stability{suffix}.json"
    out = json.loads(path.read_text()) if path.exists() and args.only else {}
    out["machine"] = machine_description("cpu")
    if args.only in (None, "organic"):
        organic(args, out)
        out["organic"]["machine"] = out["machine"]
    if args.only in (None, "copper"):
        copper(args, out)
        out["copper"]["machine"] = out["machine"]
    path.write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / f"md_stability{suffix}.md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()

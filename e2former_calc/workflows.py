"""Molecular dynamics, geometry optimisation and batch evaluation with progress and safe stops.

Each function takes ASE ``Atoms`` with an E2Former calculator attached (or a calculator) and
writes its files as it goes: an interrupted run (Ctrl-C, a crash) keeps every frame written so
far, and MD resumes from the last frame of its trajectory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import units
from ase.io import Trajectory, write

from .predictor import predict
from .progress import progress_bar

ENSEMBLES = ("nve", "nvt", "npt")


@dataclass
class MDReport:
    steps: int
    seconds: float
    energy_drift_per_atom_per_ps: float | None  # NVE only: slope of the total energy (eV/atom/ps)
    max_energy_deviation_per_atom: float | None  # NVE only: max |E_total - E_total(0)| / N (eV)
    trajectory: Path | None


def thermalize(atoms, temperature_K: float, seed: int = 0) -> None:
    """Maxwell-Boltzmann momenta at ``temperature_K``, no centre-of-mass motion (and, for a
    molecule, no rotation)."""
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)


def _dynamics(atoms, ensemble, timestep_fs, temperature, friction, pressure_bar, seed):
    dt = timestep_fs * units.fs
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if ensemble == "nvt":
        from ase.md.langevin import Langevin

        return Langevin(atoms, timestep=dt, temperature_K=temperature, friction=friction / units.fs,
                        fixcm=False, rng=np.random.default_rng(seed))
    if not atoms.pbc.all():
        raise ValueError("NPT needs a fully periodic cell")
    try:  # ASE >= 3.25; NVE and NVT work with every ASE the package allows
        from ase.md.nose_hoover_chain import IsotropicMTKNPT
    except ImportError:
        import ase

        raise ValueError(f"NPT needs ase >= 3.25 (ase.md.nose_hoover_chain.IsotropicMTKNPT); this is ase "
                         f"{ase.__version__}: pip install 'ase>=3.25'") from None
    return IsotropicMTKNPT(atoms, timestep=dt, temperature_K=temperature, pressure_au=pressure_bar * units.bar,
                           tdamp=100 * dt, pdamp=1000 * dt)


def run_md(atoms, ensemble="nvt", steps=1000, timestep_fs=0.5, temperature=300.0, friction=0.01,
           pressure_bar=1.0, trajectory=None, log=None, interval=10, seed=0, resume=False,
           progress=True) -> MDReport:
    """Run MD in place on ``atoms`` (a calculator attached).

    Args:
        ensemble: ``"nvt"`` (Langevin, ``friction`` in 1/fs), ``"nve"`` (velocity Verlet) or
            ``"npt"`` (isotropic Martyna-Tobias-Klein, fully periodic cells, ase >= 3.25).
        steps: MD steps to run (with ``resume``: steps in total, counting those already run).
        temperature: K; the initial velocities are Maxwell-Boltzmann at this temperature (in NVE
            from a minimum-energy structure, equipartition brings it down to about half).
        trajectory: ASE ``.traj`` file, a frame every ``interval`` steps (appended to on resume,
            else overwritten: the ``e2former`` command chooses a free name).
        log: text log (ASE's MDLogger) every ``interval`` steps (appended to on resume).
        resume: continue from the last frame of ``trajectory`` (positions, momenta, cell).
        progress: a progress bar on standard error with the temperature and the total energy.
    """
    from ase.md import MDLogger

    if ensemble not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble!r}; choose one of {', '.join(ENSEMBLES)}")
    done = 0
    if resume and trajectory and Path(trajectory).is_file() and os.path.getsize(trajectory) > 0:
        frames = Trajectory(str(trajectory))
        last = frames[-1]
        done = (len(frames) - 1) * interval
        frames.close()
        atoms.set_positions(last.get_positions())
        atoms.set_cell(last.get_cell())
        atoms.set_momenta(last.get_momenta())
    else:
        thermalize(atoms, temperature, seed)
    remaining = max(steps - done, 0)
    dyn = _dynamics(atoms, ensemble, timestep_fs, temperature, friction, pressure_bar, seed + done)
    writer = None
    if trajectory:
        writer = Trajectory(str(trajectory), "a" if resume and done else "w", atoms)
        if not done:
            writer.write()
    logger = MDLogger(dyn, atoms, str(log), header=not done, mode="a" if done else "w") if log else None

    n_atoms = len(atoms)
    times, totals = [], []
    bar = progress_bar(remaining, label=f"MD {ensemble}", unit="steps") if progress else None
    import time

    start = time.perf_counter()
    ran = 0
    try:
        while ran < remaining:
            chunk = min(interval, remaining - ran)
            dyn.run(chunk)
            ran += chunk
            total = atoms.get_potential_energy() + atoms.get_kinetic_energy()
            times.append((done + ran) * timestep_fs / 1000)
            totals.append(total)
            if writer is not None and ran % interval == 0:
                writer.write()
            if logger is not None:
                logger()
            if bar is not None:
                temperature_now = atoms.get_kinetic_energy() / (1.5 * units.kB * n_atoms)
                bar.set_postfix_str(f"T={temperature_now:6.1f} K E_tot={total:.4f} eV", refresh=False)
                bar.update(chunk)
    finally:  # Ctrl-C or a crash: what was written stays readable
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if logger is not None:
            logger.close()
    seconds = time.perf_counter() - start
    drift = deviation = None
    if ensemble == "nve" and len(totals) >= 2:
        drift = float(np.polyfit(times, totals, 1)[0]) / n_atoms
        deviation = float(np.max(np.abs(np.array(totals) - totals[0]))) / n_atoms
    return MDReport(ran, seconds, drift, deviation, Path(trajectory) if trajectory else None)


def run_relax(atoms, optimizer="fire", fmax=0.05, steps=500, relax_cell=False, trajectory=None, progress=True):
    """Minimise the energy in place (FIRE or BFGS; with ``relax_cell`` also the cell through
    ``FrechetCellFilter``). Returns whether it converged."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS, FIRE

    optimizers = {"fire": FIRE, "bfgs": BFGS}
    if optimizer not in optimizers:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(optimizers)}")
    if relax_cell and not atoms.pbc.all():
        raise ValueError("cell relaxation needs a fully periodic cell")
    target = FrechetCellFilter(atoms) if relax_cell else atoms
    opt = optimizers[optimizer](target, trajectory=str(trajectory) if trajectory else None, logfile=None)
    bar = progress_bar(steps, label=f"relax {optimizer}", unit="steps") if progress else None
    converged = False
    try:
        for n, _ in enumerate(opt.irun(fmax=fmax, steps=steps)):
            forces = target.get_forces()
            largest = float(np.sqrt((forces**2).sum(axis=1)).max())
            if bar is not None:
                energy = atoms.get_potential_energy()
                bar.set_postfix_str(f"E_pot={energy:.5f} eV fmax={largest:.4f} eV/Å", refresh=False)
                bar.update(min(n, steps) - bar.n)
            converged = largest < fmax
    finally:
        if bar is not None:
            bar.close()
        if hasattr(opt, "close"):
            opt.close()
    return converged


def run_eval(atoms_list, calc, output=None, batch_size=16, progress=True, keys=None):
    """Energies, forces (and stresses) of many structures in batches; writes extended XYZ with the
    predictions as ``e2former_energy``, ``e2former_forces``, ``e2former_stress``. Returns the
    predictions, the errors against the structures' reference labels by configuration type
    (:class:`~e2former_calc.training.metrics.ErrorTally`) and the parity data."""
    from .evaluation import tally_errors

    atoms_list = list(atoms_list)
    bar = progress_bar(len(atoms_list), label="eval", unit="structures") if progress else None
    results = predict(atoms_list, calc, batch_size=batch_size,
                      progress=(lambda done, total: bar.update(done - bar.n)) if bar is not None else None)
    if bar is not None:
        bar.close()
    tally, parity = tally_errors(atoms_list, results, keys)
    labelled = []
    for atoms, result in zip(atoms_list, results):
        copy = atoms.copy()
        copy.calc = None
        copy.info["e2former_energy"] = result["energy"]
        copy.arrays["e2former_forces"] = result["forces"]
        copy.arrays["e2former_energies"] = result["energies"]
        if "stress" in result:
            copy.info["e2former_stress"] = result["stress"]
        labelled.append(copy)
    if output:
        write(str(output), labelled, format="extxyz")
    return results, tally, parity


def energy_drift_text(report: MDReport) -> str:
    if report.energy_drift_per_atom_per_ps is None:
        return ""
    return (
        f"NVE energy drift {report.energy_drift_per_atom_per_ps * 1e3:+.3f} meV/atom/ps, "
        f"largest deviation {report.max_energy_deviation_per_atom * 1e3:.3f} meV/atom"
    )

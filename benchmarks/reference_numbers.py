"""Numbers a refactor must not change: the shipped potentials through the ASE calculator and one
training step, in float64. Run it on two source trees and compare::

    PYTHONPATH=OLD_TREE python benchmarks/reference_numbers.py --write before.npz
    PYTHONPATH=NEW_TREE python benchmarks/reference_numbers.py --write after.npz
    python benchmarks/reference_numbers.py --compare before.npz after.npz

Each entry is compared as max |a - b| / max(1, max |a|). The training step is one force, energy and
stress loss (and its gradient with respect to every weight) of a small fresh model on four copper
frames of ``datasets/emt-cu``; ``train_no_energy`` is the same with the energy weight at 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch



def structures(name):
    from ase import Atoms
    from ase.build import bulk, molecule

    if name == "e2former-emt-cu":
        crystal = bulk("Cu", "fcc", a=3.6).repeat((3, 3, 3))
        crystal.rattle(0.05, seed=3)
        triclinic = Atoms("Cu4", positions=[[0.1, 0.2, 0.1], [1.8, 1.1, 0.6], [0.9, 2.2, 1.9], [2.6, 0.4, 2.2]],
                          cell=[[3.4, 0, 0], [0.9, 3.1, 0], [0.5, 0.7, 3.3]], pbc=True)
        slab = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
        slab.pbc = [True, True, False]
        slab.rattle(0.05, seed=4)
        return {"bulk": crystal, "triclinic": triclinic, "slab": slab}
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.02, seed=1)
    acetic = molecule("CH3COOH")
    acetic.rattle(0.02, seed=2)
    box = molecule("CH3CH2OH")
    box.cell = [7, 7.5, 8]
    box.pbc = True
    box.center()
    return {"ethanol": ethanol, "acetic": acetic, "ethanol-box": box}


def training_step(energy_weight: float) -> dict:
    import e2former_calc
    from e2former_calc.training import Trainer, parse_config

    data = Path(e2former_calc.__file__).resolve().parent.parent / "datasets" / "emt-cu"
    config = parse_config({
        "name": "reference", "output": tempfile.mkdtemp(),
        "data": {"train": str(data / "test.extxyz.gz"), "valid": str(data / "valid.extxyz.gz")},
        "model": {"preset": "small", "channels": 8, "num_layers": 1, "num_heads": 2, "head_dim": 4},
        "training": {"batch_size": 4, "max_epochs": 1, "dtype": "float64", "seed": 0,
                     "loss": {"energy": energy_weight, "forces": 10.0, "stress": 100.0}},
    })
    trainer = Trainer(config, progress=False, log=lambda message: None)
    trainer._build()
    batch = trainer.train[:4]
    counts = {"structures": 4, "atoms": sum(s.n_atoms for s in batch), "stress": sum(s.stress is not None for s in batch)}
    loss = trainer._loss(batch, counts)
    loss.backward()
    grads = {f"grad/{name}": p.grad.numpy().copy() for name, p in trainer.model.named_parameters()}
    return {"loss": float(loss.detach()), **grads}


def write(path) -> None:
    from e2former_calc import E2FormerCalculator

    torch.set_num_threads(2)
    out = {}
    for name in ("e2former-xtb-organic", "e2former-emt-cu"):
        calc = E2FormerCalculator.from_pretrained(name, device="cpu", dtype="float64", quiet=True)
        for key, atoms in structures(name).items():
            atoms.calc = calc
            out[f"{name}/{key}/energy"] = atoms.get_potential_energy()
            out[f"{name}/{key}/forces"] = atoms.get_forces()
            out[f"{name}/{key}/energies"] = atoms.get_potential_energies()
            if atoms.pbc.all():
                out[f"{name}/{key}/stress"] = atoms.get_stress()
    for label, weight in (("train", 1.0), ("train_no_energy", 0.0)):
        for key, value in training_step(weight).items():
            out[f"{label}/{key}"] = value
    np.savez(path, **out)
    print(f"wrote {path}: {len(out)} entries")


def compare(a_path, b_path) -> float:
    a, b = np.load(a_path), np.load(b_path)
    worst = 0.0
    print("| quantity | max rel. difference |\n|---|---|")
    for key in a.files:
        if key not in b.files or a[key].shape != b[key].shape:
            print(f"| {key} | only in {a_path} |" if key not in b.files else f"| {key} | shapes differ |")
            continue
        difference = float(np.abs(a[key] - b[key]).max() / max(1.0, float(np.abs(a[key]).max())))
        worst = max(worst, difference)
        print(f"| {key} | {difference:.1e} |")
    for key in sorted(set(b.files) - set(a.files)):
        print(f"| {key} | only in {b_path} |")
    print(f"largest: {worst:.1e}")
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="OUT.npz")
    group.add_argument("--compare", nargs=2, metavar=("A.npz", "B.npz"))
    args = parser.parse_args(argv)
    if args.write:
        write(args.write)
    else:
        compare(*args.compare)
    return 0


if __name__ == "__main__":
    sys.exit(main())

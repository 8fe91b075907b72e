"""The ASE calculator: derivatives, symmetries, periodicity, precision and bad input."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from conftest import make_calculator

from e2former_calc import predict
from e2former_calc.testing import (
    assert_batch_equals_single,
    assert_equivariant,
    assert_forces_are_minus_gradient,
    assert_permutation_invariant,
    assert_smooth_at_cutoff,
    assert_stress_is_strain_derivative,
)
from e2former_calc.validation import MINIMUM_DISTANCE


def copper(repeat=(2, 2, 2), seed=1):
    atoms = bulk("Cu", "fcc", a=3.6).repeat(repeat)
    atoms.rattle(0.1, seed=seed)
    return atoms


def triclinic():
    atoms = Atoms("CuCuOH", positions=[[0.1, 0.2, 0.1], [1.8, 1.1, 0.6], [0.9, 2.2, 1.9], [2.6, 0.4, 2.2]],
                  cell=[[3.4, 0.0, 0.0], [0.9, 3.1, 0.0], [0.5, 0.7, 3.3]], pbc=True)
    return atoms


def energy(atoms, calc):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy()


@pytest.mark.parametrize("structure", ["molecule", "copper", "triclinic"])
def test_forces_are_minus_the_numerical_gradient(calc, structure):
    atoms = {"molecule": molecule("CH3CH2OH"), "copper": copper(), "triclinic": triclinic()}[structure]
    # passes when max |F - F_fd| <= max(1e-6, 1e-6 max |F|)
    report = assert_forces_are_minus_gradient(atoms, calc, eps=1e-4, atol=1e-6, rtol=1e-6)
    assert np.abs(report["forces"]).max() > 1e-3, "forces too small for the test to mean anything"


@pytest.mark.parametrize("structure", ["copper", "triclinic"])
def test_stress_is_the_numerical_strain_derivative(calc, structure):
    atoms = {"copper": copper(), "triclinic": triclinic()}[structure]
    report = assert_stress_is_strain_derivative(atoms, calc, eps=1e-5, atol=1e-7, rtol=0.0)
    assert np.abs(report["stress"]).max() > 1e-4


def test_per_atom_energies_sum_to_the_energy_and_free_energy_equals_energy(calc):
    atoms = copper()
    atoms.calc = calc
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    assert calc.get_property("free_energy", atoms) == atoms.get_potential_energy()


def test_rotation_reflection_translation_and_permutation(calc):
    """Energy, per-atom energies, forces and stress to 1e-10 (absolute) under rotations, an
    improper rotation, translations (e3nn's assert_equivariant too) and relabelling."""
    atoms = triclinic()
    assert_equivariant(atoms, calc, seed=3, atol=1e-10, rtol=0.0)
    assert_permutation_invariant(atoms, calc, seed=3, atol=1e-10, rtol=0.0)


def test_energy_is_extensive_and_a_cell_shorter_than_the_cutoff_is_fine(calc):
    small = bulk("Cu", "fcc", a=3.6)  # one atom, cell vectors 2.5 Å < cutoff 4 Å
    small.rattle(0.0)
    assert max(small.cell.lengths()) < calc.cutoff
    for repeat in ((2, 1, 1), (2, 3, 1)):
        n = np.prod(repeat)
        assert energy(small.repeat(repeat), calc) == pytest.approx(n * energy(small, calc), rel=1e-11)


def test_wrapped_and_unwrapped_positions_agree(calc):
    atoms = copper()
    unwrapped = atoms.copy()
    unwrapped.positions[::3] += atoms.cell[0] * 2 - atoms.cell[2]
    assert energy(unwrapped, calc) == pytest.approx(energy(atoms, calc), abs=1e-10)


def test_molecule_far_from_the_origin(calc):
    atoms = molecule("CH3CH2OH")
    far = atoms.copy()
    far.positions += 10_000.0
    assert energy(far, calc) == pytest.approx(energy(atoms, calc), abs=1e-9)


@pytest.mark.parametrize("prune", [False, True])
def test_energy_and_forces_are_smooth_where_a_lone_neighbour_leaves(prune):
    """A C-O dimer pulled through the cutoff: energy and force reach the isolated values continuously.

    With a skin, the pair just beyond the cutoff is in the neighbour list and must add exactly 0
    (``prune=False``: the network sees it) or be dropped (``prune=True``)."""
    calc = make_calculator(skin=1.0, prune=prune)
    for r in (calc.cutoff - 1e-2, calc.cutoff - 1e-3, calc.cutoff + 1e-3):
        dimer = Atoms("CO", positions=[[0, 0, 0], [r, 0, 0]])
        assert calc.predictor.verlet.update(dimer.positions, dimer.cell.array, dimer.pbc, dimer.numbers)[0].receivers.size == 2
    # C² envelope: from 1 to 32 mÅ on either side, E - E_out ~ delta^3, F ~ delta^2, dF/dr ~ delta
    # inside; the separated atoms' energy and forces beyond (dimer, and a trimer C-O-H)
    report = assert_smooth_at_cutoff(calc, ("C", "O", "H"), calc.cutoff)
    dimer = report["dimer"]
    # beyond the cutoff the dimer is exactly the two lone atoms, with exactly zero forces
    assert np.all(dimer["outside_energy"] == 0.0) and np.all(dimer["outside_force"] == 0.0)
    assert np.all(dimer["reference_forces"] == 0.0)
    assert dimer["delta"][0] == 1e-3 and abs(dimer["energy"][0]) < 1e-6 and dimer["force"][0] < 1e-4
    assert np.all(np.diff(np.abs(dimer["energy"])) > 0) and np.all(np.diff(dimer["force"]) > 0)


def test_batched_prediction_equals_one_by_one(calc):
    structures = [molecule("CH3CH2OH"), copper(), triclinic(), copper((1, 2, 1), seed=4)]
    report = assert_batch_equals_single(structures, lambda frames: predict(frames, calc, batch_size=3), calc,
                                        atol={"energy": 1e-10, "energies": 1e-10, "forces": 1e-10, "stress": 1e-12},
                                        rtol=0.0)
    for atoms, result in zip(structures, report["results"]):
        assert atoms.pbc.all() or "stress" not in result


@pytest.mark.parametrize("filters", [(1,), (1, 2)])
def test_float32_agrees_with_float64(filters):
    """f = 1 runs the convolution's stages in float32 with blocks, f = 2 in float64."""
    import dataclasses

    from conftest import TEST_CONFIG

    config = dataclasses.replace(TEST_CONFIG, filter_degrees=filters)
    atoms = copper((3, 3, 3))
    atoms.positions += 500.0  # far from the origin: float32 must not care
    results = {}
    for dtype in ("float32", "float64"):
        a = atoms.copy()
        a.calc = make_calculator(dtype, config=config)
        results[dtype] = (a.get_potential_energy(), a.get_forces())
    (e32, f32), (e64, f64) = results["float32"], results["float64"]
    assert abs(e32 - e64) / len(atoms) < 1e-6
    assert np.abs(f32 - f64).max() / np.sqrt((f64**2).mean()) < 1e-4


def test_stress_is_refused_for_a_molecule(calc):
    from ase.calculators.calculator import PropertyNotImplementedError

    atoms = molecule("H2O")
    atoms.calc = calc
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: molecule("NH3"), r"element N \(atom 0\) is not known to this potential; it knows H, C, O, Cu"),
        (lambda: Atoms(), "no atoms"),
        (lambda: Atoms("CO", positions=[[0, 0, 0], [np.nan, 0, 0]]), r"atom 1 \(O\) has a non-finite position"),
        (lambda: Atoms("Cu", cell=[[0, 0, 0], [0, 3, 0], [0, 0, 3]], pbc=True), r"cell axis a .* vector is zero"),
        (lambda: Atoms("Cu", cell=[[3, 0, 0], [6, 0, 0], [0, 0, 3]], pbc=True), "degenerate"),
        (lambda: Atoms("Cu", cell=[[3, 0, 0], [0, np.inf, 0], [0, 0, 3]], pbc=True), r"cell axis b .* not finite"),
        (lambda: Atoms("COH", positions=[[0, 0, 0], [3, 0, 0], [3.2, 0, 0]]), r"atoms 1 \(O\) and 2 \(H\) .* 0\.200 Å apart"),
    ],
)
def test_bad_input_is_named(calc, make, message):
    atoms = make()
    atoms.calc = calc
    with pytest.raises(ValueError, match=message):
        atoms.get_potential_energy()


def test_minimum_distance_is_documented_and_below_chemical_bonds():
    assert 0.1 < MINIMUM_DISTANCE < 0.7


@pytest.mark.parametrize("prune", [False, True])
def test_verlet_skin_gives_the_same_trajectory_as_rebuilding_every_step(prune):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    runs = []
    for skin in (0.0, 0.1):
        atoms = copper()
        atoms.calc = make_calculator(skin=skin, prune=prune)
        rng = np.random.default_rng(0)
        atoms.set_momenta(rng.normal(scale=1.5, size=(len(atoms), 3)))
        VelocityVerlet(atoms, timestep=2 * units.fs).run(30)
        runs.append((atoms.positions.copy(), atoms.calc.predictor.verlet.builds))
    (p0, builds0), (p1, builds1) = runs
    assert 1 < builds1 < builds0, "the skin list must be reused and also rebuilt during the run"
    assert np.abs(p0 - p1).max() < 1e-10


def test_nve_conserves_energy_in_float64():
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = copper()
    atoms.calc = make_calculator(skin=1.0)
    atoms.set_momenta(np.random.default_rng(1).normal(scale=0.5, size=(len(atoms), 3)))
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    potential, total = [], []
    for _ in range(20):
        dyn.run(5)
        potential.append(atoms.get_potential_energy())
        total.append(potential[-1] + atoms.get_kinetic_energy())
    swing = max(potential) - min(potential)
    assert swing > 1e-4, "the potential energy barely moved: the test would pass for any integrator"
    assert max(total) - min(total) < 0.02 * swing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    atoms = copper()
    cpu = energy(atoms, make_calculator("float64"))
    from conftest import TEST_CONFIG

    from e2former_calc import E2FormerCalculator

    gpu = E2FormerCalculator.from_config(TEST_CONFIG, species=("H", "C", "O", "Cu"), e0=[-1.0, -2.0, -3.0, -4.0],
                                         device="cuda", dtype="float64", quiet=True)
    assert energy(atoms, gpu) == pytest.approx(cpu, abs=1e-9)


@pytest.mark.parametrize("prune", [False, True])
def test_skin_list_reused_across_a_cell_change_gives_fresh_results(prune):
    """NPT changes the cell every step: the list is kept (builds == 1) and the numbers are those
    of a freshly built list."""
    atoms = copper()
    reused = make_calculator(skin=1.0, prune=prune)
    atoms.calc = reused
    atoms.get_potential_energy()
    atoms.set_cell(atoms.cell.array @ np.diag([1.01, 0.995, 1.0]), scale_atoms=True)
    energy_reused, stress_reused = atoms.get_potential_energy(), atoms.get_stress()
    assert reused.predictor.verlet.builds == 1
    fresh = atoms.copy()
    fresh.calc = make_calculator(skin=0.0)
    assert energy_reused == pytest.approx(fresh.get_potential_energy(), abs=1e-10)
    assert np.abs(stress_reused - fresh.get_stress()).max() < 1e-12


def test_pruning_evaluates_only_the_pairs_within_the_cutoff():
    """``prune=True``: at every call the network sees only the Verlet list's pairs within the
    cutoff, with a plan of its own; the numbers are those of ``prune=False`` (which evaluates every
    pair of the list) to rounding, over steps that reuse the list and one that rebuilds it."""
    from e2former_calc.forces import ForceField, StepGraphs

    seen = {True: [], False: []}
    original = ForceField.forward

    def recording(self, graph, plan=None, **kwargs):
        lengths = torch.linalg.vector_norm(graph.edge_vectors(), dim=-1)
        seen[current].append((graph.n_edges, float(lengths.max()), plan))
        return original(self, graph, plan, **kwargs)

    atoms = copper(repeat=(3, 3, 3))
    calcs = {prune: make_calculator(skin=0.6, prune=prune) for prune in (True, False)}
    rng = np.random.default_rng(2)
    try:
        ForceField.forward = recording
        for _ in range(4):
            atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape).clip(-0.14, 0.14)
            results = {}
            for current, calc in calcs.items():
                moved = atoms.copy()
                moved.calc = calc
                results[current] = (moved.get_potential_energy(), moved.get_forces(), moved.get_stress())
            assert results[True][0] == pytest.approx(results[False][0], abs=1e-10)
            assert np.abs(results[True][1] - results[False][1]).max() < 1e-10
            assert np.abs(results[True][2] - results[False][2]).max() < 1e-12
    finally:
        ForceField.forward = original
    cutoff = calcs[True].cutoff
    assert all(longest < cutoff for _, longest, _ in seen[True])
    assert all(longest > cutoff for _, longest, _ in seen[False])  # the skin's pairs are evaluated
    assert all(n_pruned < n_all for (n_pruned, _, _), (n_all, _, _) in zip(seen[True], seen[False]))
    assert calcs[True].predictor.verlet.builds == calcs[False].predictor.verlet.builds == 2
    assert len({id(plan) for _, _, plan in seen[True]}) == 4  # a plan per call
    assert len({id(plan) for _, _, plan in seen[False]}) == 2  # a plan per list
    with pytest.raises(ValueError, match="prune must be"):
        StepGraphs(calcs[True].predictor.forcefield, prune="yes")


def test_prune_auto_prunes_only_large_lists_on_the_cpu(monkeypatch):
    """``"auto"``: a list of fewer than PRUNE_MIN_PAIRS pairs keeps its plan; a larger one is
    pruned at every call; no skin, nothing to prune."""
    from e2former_calc import forces

    monkeypatch.setattr(forces, "PRUNE_MIN_PAIRS", 2_000)  # between the two lists below
    small, large = copper(repeat=(2, 2, 2)), copper(repeat=(5, 5, 5))
    for atoms, expected in ((small, False), (large, True)):
        atoms.calc = make_calculator(skin=0.5)
        atoms.get_potential_energy()
        graph = atoms.calc.predictor.step_graphs._kept[0]
        assert (graph.n_edges >= forces.PRUNE_MIN_PAIRS) == expected
        assert atoms.calc.predictor.step_graphs.pruning == expected
    large.calc = make_calculator(skin=0.0, prune=True)
    large.get_potential_energy()
    assert not large.calc.predictor.step_graphs.pruning

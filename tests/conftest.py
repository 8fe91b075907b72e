"""Shared test fixtures: small graphs built without the package's own graph code."""

import numpy as np
import pytest
import torch
from matscipy.neighbours import neighbour_list

from e2former_calc.conv import ConvGraph


def cluster_graph(n_atoms=12, cutoff=3.5, spread=2.0, seed=0, offset=(0.0, 0.0, 0.0)):
    """A random non-periodic cluster, every pair within the cutoff an edge (both directions)."""
    gen = torch.Generator().manual_seed(seed)
    positions = torch.randn(n_atoms, 3, generator=gen, dtype=torch.float64) * spread
    positions = positions + torch.tensor(offset, dtype=torch.float64)
    distances = torch.cdist(positions, positions)
    mask = (distances < cutoff) & ~torch.eye(n_atoms, dtype=torch.bool)
    receivers, senders = mask.nonzero(as_tuple=True)
    return ConvGraph.build(positions, receivers, senders)


def periodic_graph(positions, cell, cutoff, pbc=(True, True, True)):
    """Edges of a periodic structure from matscipy (i receives from the image j + S)."""
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    i, j, S = neighbour_list("ijS", positions=positions, cell=cell, pbc=np.array(pbc), cutoff=cutoff)
    shifts = torch.from_numpy(S.astype(np.float64) @ cell)
    return ConvGraph.build(torch.from_numpy(positions), torch.from_numpy(i), torch.from_numpy(j), shifts,
                           torch.from_numpy(S.astype(np.int64)))


def jittered_lattice(n_per_side, spacing=2.0, jitter=0.3, seed=0):
    """Positions on a jittered simple cubic lattice and its cubic cell."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n_per_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = (grid + 0.5) * spacing + rng.normal(scale=jitter, size=grid.shape)
    return positions, np.eye(3) * n_per_side * spacing


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# -- model fixtures ---------------------------------------------------------------------------
from e2former_calc.model import E2FormerConfig  # noqa: E402

#: A small but complete configuration: two layers, two filter degrees, L_max 2.
TEST_CONFIG = E2FormerConfig(
    cutoff=4.0, channels=8, max_degree=2, num_layers=2, num_heads=2, head_dim=4, filter_degrees=(1, 2),
    radial_basis=6, radial_hidden=16, species_features=4, feedforward_channels=16, average_neighbours=10.0,
    energy_scale=2.0,
)


def make_calculator(dtype="float64", skin=0.0, seed=0, config=TEST_CONFIG, species=("H", "C", "O", "Cu"),
                    prune="auto"):
    from e2former_calc import E2FormerCalculator

    return E2FormerCalculator.from_config(config, species=species, seed=seed, device="cpu", dtype=dtype, skin=skin,
                                          e0=[-1.0, -2.0, -3.0, -4.0][: len(species)], quiet=True, prune=prune)


@pytest.fixture
def calc():
    return make_calculator()


def assert_aggregation_derivatives(plan, values, weights, target_values):
    """An aggregation plan's sum and its sampled inner product pass first- and second-order
    gradient checks (float64 inputs, made to require gradients here)."""
    for tensor in (values, weights, target_values):
        tensor.requires_grad_(True)
    assert torch.autograd.gradcheck(plan, (values, weights))
    assert torch.autograd.gradgradcheck(plan, (values, weights))
    assert torch.autograd.gradcheck(plan.edge_inner, (values, target_values))
    assert torch.autograd.gradgradcheck(plan.edge_inner, (values, target_values))

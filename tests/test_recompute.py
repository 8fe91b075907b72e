"""Recomputing whole blocks in the backward pass changes memory, never numbers."""

import numpy as np
import pytest
import torch
from ase.build import bulk

from e2former_calc import E2FormerCalculator
from e2former_calc.conv.factorised import Wigner6jConvolution
from e2former_calc.forces import ForceField
from e2former_calc.graph import AtomGraph
from e2former_calc.model import E2Former, E2FormerConfig
from e2former_calc.model.recompute import set_recompute
from e2former_calc.neighbours import neighbour_list


def _frozen_field_and_graph(dtype, device="cpu"):
    """A frozen untrained copper model and a rattled 32-atom fcc cell on ``device``."""
    torch.manual_seed(0)
    model = E2Former(E2FormerConfig(cutoff=4.0), atomic_numbers=(29,))
    return ForceField.frozen(model, device, dtype), _graph(model, device)


def _graph(model, device="cpu"):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=1)
    neighbours = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, model.config.cutoff)
    return AtomGraph.from_arrays([model.species_indices(atoms.numbers)], [atoms.positions], [atoms.cell.array],
                                 [atoms.pbc], [neighbours], torch.device(device))


def _saved_bytes(fn):
    """Bytes of the distinct storages that autograd keeps for the backward pass of ``fn()``."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("stress", [False, True])
@pytest.mark.parametrize("recompute", ["auto", "blocks"])
def test_recomputing_gives_the_same_energy_forces_stress_and_second_derivatives(recompute, stress):
    field, graph = _frozen_field_and_graph(torch.float64)
    results = {}
    for mode in (False, recompute):
        set_recompute(field, mode)
        out = field(graph, forces=True, stress=stress, create_graph=True)
        # a second derivative: the gradient of sum |F|^2 with respect to the positions
        positions = graph.positions.detach().requires_grad_(True)
        energy = field.model(graph.species, graph.with_geometry(positions).conv_graph()).sum()
        (gradient,) = torch.autograd.grad(energy, positions, create_graph=True)
        (curvature,) = torch.autograd.grad(gradient.pow(2).sum(), positions)
        results[mode] = {k: v.detach() for k, v in out.items() if torch.is_tensor(v) and v.is_floating_point()}
        results[mode]["curvature"] = curvature
    for key, value in results[False].items():
        torch.testing.assert_close(results[recompute][key], value, rtol=1e-12, atol=1e-12, msg=key)
    assert results[recompute]["forces"].abs().max() > 1e-3  # not a trivial comparison


def test_recomputed_blocks_keep_the_numbers_of_layer_stages():
    """The stage-by-stage evaluation LAMMPS uses (each block on fewer nodes: the outer half of the
    nodes one hop out) under ``"blocks"``, on the ordinary and the first-order path."""
    from e2former_calc.model.stages import LayerStages

    field, graph = _frozen_field_and_graph(torch.float64)
    model = field.model
    conv = graph.conv_graph()
    n = conv.n_nodes
    hops = np.zeros(n, dtype=np.int64)
    hops[n // 2:] = 1
    stages = LayerStages.build(model, conv, hops)
    results = {}
    for mode in (False, "blocks"):
        for first_order in (False, True):
            set_recompute(field, mode)
            positions = graph.positions.detach().requires_grad_(True)
            energies = model(graph.species, graph.with_geometry(positions).conv_graph(), stages=stages,
                             first_derivatives_only=first_order)
            (gradient,) = torch.autograd.grad(energies.sum(), positions)
            results[mode, first_order] = (energies.detach(), gradient)
    for key, value in results.items():
        torch.testing.assert_close(value, results[False, False], rtol=1e-12, atol=1e-12, msg=str(key))
    assert results[False, False][1].abs().max() > 1e-3 and results[False, False][0].shape == (n // 2,)


def _forward_with_positions(field, graph, **kwargs):
    """The model's atom energies with the positions requiring gradients (a forward pass whose
    backward pass would give forces)."""
    positions = graph.positions.detach().requires_grad_(True)
    return field.model(graph.species, graph.with_geometry(positions).conv_graph(), **kwargs)


def test_recomputing_keeps_less_for_the_backward_pass_and_blocks_only_with_frozen_weights():
    field, graph = _frozen_field_and_graph(torch.float32)
    kept = {}
    for mode in (False, "auto", "blocks"):
        set_recompute(field, mode)
        kept[mode] = _saved_bytes(lambda: _forward_with_positions(field, graph))
    config = field.model.config
    # auto: the convolutions' source products [U, C, K] are not kept (U >= atoms, K >= 4 per
    # filter degree: at least 4 floats per atom and channel and convolution)
    products = (1 + config.num_layers) * graph.positions.shape[0] * config.channels * 4 * 4
    assert kept["auto"] <= kept[False] - products, (kept, products)
    # blocks: between the forward and the backward pass, per-atom features and the shared per-edge
    # inputs only (basis, species features, envelope, lengths: 8 + 2*8 + 2 floats per edge), no
    # per-edge activation of any block
    shared_per_edge = (config.radial_basis + 2 * config.species_features + 2) * 4 * graph.n_edges
    features = (1 + config.num_layers) * graph.positions.shape[0] * config.channels * (config.max_degree + 1) ** 2 * 4
    assert kept["blocks"] <= 2 * (shared_per_edge + features), (kept, shared_per_edge, features)
    assert kept["blocks"] < 0.2 * kept[False], kept
    # trainable weights: every block keeps its activations whatever the mode
    set_recompute(field, "blocks")
    field.requires_grad_(True)
    kept_trainable = _saved_bytes(lambda: _forward_with_positions(field, graph))
    field.requires_grad_(False)
    assert kept_trainable >= kept["auto"], (kept_trainable, kept)


def test_the_calculator_passes_recompute_on_and_refuses_nonsense():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=0)
    forces = {}
    for mode in ("auto", False, "blocks"):
        calc = E2FormerCalculator.from_config("small", species=("Cu",), dtype="float64", recompute=mode, quiet=True)
        assert calc.predictor.model.recompute_blocks == (mode == "blocks")
        convolutions = [m for m in calc.predictor.model.modules() if isinstance(m, Wigner6jConvolution)]
        assert convolutions and all(m.recompute_products == (mode is not False) for m in convolutions)
        forces[mode] = calc.get_forces(atoms)
    np.testing.assert_allclose(forces[False], forces["auto"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(forces["blocks"], forces["auto"], rtol=0, atol=1e-12)
    for wrong in ("yes", True):
        with pytest.raises(ValueError, match="recompute must be 'auto', False or 'blocks'"):
            E2FormerCalculator.from_config("small", species=("Cu",), recompute=wrong, quiet=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_recomputed_blocks_give_the_numbers_of_keeping():
    field, graph = _frozen_field_and_graph(torch.float64, "cuda")
    set_recompute(field, "blocks")
    recomputed = field(graph, forces=True, stress=True)
    set_recompute(field, False)
    kept = field(graph, forces=True, stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(recomputed[key], kept[key], rtol=1e-12, atol=1e-12)

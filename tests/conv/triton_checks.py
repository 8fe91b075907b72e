"""Checks of the Triton edge kernels, run by test_triton_edge.py in a subprocess with
``TRITON_INTERPRET=1`` (Triton reads it when the kernels are defined): prints one JSON line of
the largest relative differences against the sparse-product implementation."""

import json
import os
import sys

import numpy as np
import torch
from ase.build import bulk

from e2former_calc.conv import triton_edge
from e2former_calc.conv.aggregation import BlockCSRAggregation, EdgeAggregation


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def graph(E, U, T, seed):
    g = torch.Generator().manual_seed(seed)
    sources = torch.randint(0, U, (E,), generator=g)
    targets = torch.randint(0, T - 2, (E,), generator=g)  # the last targets get no edge
    return sources, targets  # unsorted: the canonical (target-sorted) order is exercised


def faces(dtype, seed=0):
    """Forward, first and second derivatives of the aggregation and edge_inner: kernels vs the
    block-CSR reference."""
    torch.manual_seed(seed)
    E, U, T, C, K = 300, 70, 45, 20, 9
    sources, targets = graph(E, U, T, seed)
    fused, reference = EdgeAggregation(sources, targets, U, T, C), BlockCSRAggregation(sources, targets, U, T, C)
    v = torch.randn(U, C, K, dtype=dtype, requires_grad=True)
    w = torch.randn(E, C, dtype=dtype, requires_grad=True)
    g = torch.randn(T, C, K, dtype=dtype)
    out = {}
    results = []
    for form in (fused, reference):
        os.environ["E2FORMER_EDGE_KERNEL"] = "triton" if form is fused else "torch"
        y = form(v, w)
        gv, gw = torch.autograd.grad((y * g).sum(), (v, w), create_graph=True)
        second = torch.autograd.grad((gv ** 2).sum() + (gw * gw.detach()).sum() + (y ** 2).sum(), (v, w))
        inner = form.edge_inner(v, g)
        results.append([y, gv, gw, *second, inner])
    os.environ["E2FORMER_EDGE_KERNEL"] = "triton"
    for name, a, b in zip(("forward", "d_values", "d_weights", "dd_values", "dd_weights", "edge_inner"), *results):
        out[name] = relative(a.detach(), b.detach())
    again = fused(v, w)
    out["deterministic"] = bool(torch.equal(again, results[0][0]))
    return out


def empty():
    sources = torch.zeros(0, dtype=torch.long)
    agg = EdgeAggregation(sources, sources, 3, 4, 5)
    y = agg(torch.randn(3, 5, 2, dtype=torch.float64), torch.zeros(0, 5, dtype=torch.float64))
    return {"empty_is_zero": bool(y.shape == (4, 5, 2) and not y.any())}


def model(kernel_dtype):
    """Energy, forces and the gradient of a force loss of the whole model on a rattled Cu cell."""
    from e2former_calc.forces import ForceField
    from e2former_calc.graph import AtomGraph
    from e2former_calc.model import E2Former, E2FormerConfig

    torch.manual_seed(1)
    config = E2FormerConfig(cutoff=4.0, channels=8, max_degree=2, num_layers=2, num_heads=2, head_dim=4,
                            filter_degrees=(1, 2), radial_basis=6, radial_hidden=16, species_features=4,
                            feedforward_channels=16, average_neighbours=12.0)
    net = E2Former(config, [29]).to(kernel_dtype)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.1, seed=2)
    from e2former_calc.neighbours import neighbour_list

    nb = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0)
    graph = AtomGraph.from_arrays([np.zeros(len(atoms), dtype=np.int64)], [atoms.positions], [atoms.cell.array],
                                  [atoms.pbc], [nb])
    runs = []
    for kernel in ("triton", "torch"):
        os.environ["E2FORMER_EDGE_KERNEL"] = kernel
        field = ForceField(net)
        out = field(graph, stress=True, create_graph=True)
        loss = (out["forces"] ** 2).sum() + out["energy"].sum()
        grads = torch.autograd.grad(loss, list(net.parameters()))
        runs.append([out["energy"], out["forces"], out["virial"], torch.cat([p.flatten() for p in grads])])
    return {f"model_{name}": relative(a.detach(), b.detach())
            for name, a, b in zip(("energy", "forces", "virial", "force_loss_gradient"), *runs)}


if __name__ == "__main__":
    assert triton_edge.available() and os.environ.get("TRITON_INTERPRET") == "1"
    which = sys.argv[1]
    if which == "faces64":
        result = faces(torch.float64)
    elif which == "faces32":
        result = faces(torch.float32)
    elif which == "empty":
        result = empty()
    else:
        result = model(torch.float64)
    print(json.dumps(result))

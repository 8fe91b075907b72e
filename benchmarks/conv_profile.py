"""Where the factorised convolution spends its time: forward+backward, by kind of operation.

    python benchmarks/conv_profile.py --K 20 --lmax 2 --f 2 --channels 128

Operations are grouped as: edge stage (CSR sparse products and sampled dot products, and the
gathers that put the edge weights in the sparse layout), node tensor products (the batched
matrix products of stages 1 and 3 and their backward), coupling matrices (solid harmonics times
the constant coupling tensors), and everything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cutoff_for_neighbours, jittered_lattice, periodic_edges  # noqa: E402

from e2former_calc.conv import ConvGraph, Wigner6jConvolution  # noqa: E402
from e2former_calc.so3 import FeatureLayout  # noqa: E402

GROUPS = {
    "edge stage: sparse products": ("aten::addmm", "aten::mm", "aten::sparse_sampled_addmm"),
    "edge stage: weight layout": ("aten::index_select", "aten::_index_put_impl_", "aten::index_put_"),
    "node tensor products (bmm)": ("aten::bmm",),
    "memory: fill / copy": ("aten::fill_", "aten::copy_", "aten::zero_"),
    "elementwise": ("aten::mul", "aten::add", "aten::add_", "aten::sum", "aten::div", "aten::pow", "aten::reciprocal"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--K", type=int, default=20)
    parser.add_argument("--lmax", type=int, default=2)
    parser.add_argument("--f", type=int, default=2)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--atoms", type=int, default=1728)
    args = parser.parse_args(argv)
    positions, cell = jittered_lattice(args.atoms)
    cutoff = cutoff_for_neighbours(args.K)
    receivers, senders, shifts = periodic_edges(positions, cell, cutoff)
    positions = torch.from_numpy(positions)
    layout = FeatureLayout.spherical(args.lmax)
    conv = Wigner6jConvolution(layout, args.channels, (args.f,), layout)
    graph = ConvGraph.build(positions, receivers, senders, shifts)
    x = torch.randn(len(positions), args.channels, layout.dim)
    w = torch.randn(len(receivers), 1, args.channels)
    stage, side = conv.resolve(x.dtype, cutoff)
    plan = conv.plan(graph, x.dtype, cutoff)

    def step():
        g = ConvGraph.build(positions.clone().requires_grad_(True), receivers, senders, shifts, graph.images)
        xg = x.detach().requires_grad_(True)
        out = conv(xg, g, w, plan)
        torch.autograd.grad(out.sum(), (g.positions, xg))

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    sums = {name: 0.0 for name in GROUPS}
    sums["other"] = 0.0
    for e in events:
        for name, keys in GROUPS.items():
            if e.key in keys:
                sums[name] += e.self_cpu_time_total
                break
        else:
            sums["other"] += e.self_cpu_time_total
    print(f"K={args.K} lmax={args.lmax} f={args.f} C={args.channels}: stages in {stage}, block side {side} Å, "
          f"{plan.n_sources / len(positions):.2f} source entries/atom, {len(receivers) / len(positions):.1f} edges/atom")
    print(f"forward+backward: {total / 1e3:.1f} ms of CPU time (self time, both threads)")
    print("| part | ms | share |\n|---|---|---|")
    for name, value in sums.items():
        print(f"| {name} | {value / 1e3:.1f} | {100 * value / total:.0f}% |")


if __name__ == "__main__":
    main()

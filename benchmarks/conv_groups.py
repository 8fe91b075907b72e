"""The edge stage's channel groups: one convolution timed with plans of several group sizes, side by side.

``EdgeAggregation`` runs one sparse product per group of ``G`` channels
(``e2former_calc.conv.aggregation``: ``GROUP_ENTRIES``, ``MIN_GROUP``, ``MAX_GROUPS``). This times
the Wigner 6j convolution (forward and backward: gradients with respect to positions and node
features, float32) on the periodic box of ``conv_speed.py`` with one plan per group size, the
plans made once and the calls interleaved, medians over the repeats; ``policy`` marks the size the
package picks now and ``before`` the one it picked without ``MAX_GROUPS``
(``clamp(GROUP_ENTRIES // E, MIN_GROUP, C)``).

    python benchmarks/conv_groups.py                     # K 80, L_max 2, f 1 and 2, C 128, G 8 16 32 128
    python benchmarks/conv_groups.py --threads 1 --output benchmarks/results/conv_groups
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cutoff_for_neighbours, jittered_lattice, machine_description, periodic_edges  # noqa: E402

from e2former_calc.allocator import keep_freed_memory  # noqa: E402
from e2former_calc.conv import ConvGraph, Wigner6jConvolution, aggregation  # noqa: E402
from e2former_calc.so3 import FeatureLayout  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def plan_with_group(conv, graph, dtype, cutoff, group: int):
    """A plan whose edge stage uses groups of ``group`` channels (the module constants set for it)."""
    saved = aggregation.GROUP_ENTRIES, aggregation.MIN_GROUP, aggregation.MAX_GROUPS
    aggregation.GROUP_ENTRIES, aggregation.MIN_GROUP, aggregation.MAX_GROUPS = 1, group, 10**9
    try:
        return conv.plan(graph, dtype, cutoff)
    finally:
        aggregation.GROUP_ENTRIES, aggregation.MIN_GROUP, aggregation.MAX_GROUPS = saved


def run(k, lmax, f, channels, n_atoms, groups, repeats):
    positions, cell = jittered_lattice(n_atoms)
    cutoff = cutoff_for_neighbours(k)
    receivers, senders, shifts = periodic_edges(positions, cell, cutoff)
    positions = torch.from_numpy(positions)
    layout = FeatureLayout.spherical(lmax)
    conv = Wigner6jConvolution(layout, channels, (f,), layout)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(len(positions), channels, layout.dim, generator=gen)
    w = torch.randn(len(receivers), 1, channels, generator=gen)
    graph = ConvGraph.build(positions, receivers, senders, shifts)
    policy = conv.plan(graph, x.dtype, cutoff).aggregation.group_size
    n_edges = len(receivers)
    before = max(1, min(channels, max(aggregation.MIN_GROUP, aggregation.GROUP_ENTRIES // n_edges)))
    plans = {g: plan_with_group(conv, graph, x.dtype, cutoff, g) for g in sorted(set(groups) | {policy, before})}

    def step(plan):
        g = ConvGraph.build(positions.clone().requires_grad_(True), receivers, senders, shifts, graph.images)
        xg = x.detach().requires_grad_(True)
        out = conv(xg, g, w, plan)
        torch.autograd.grad(out.pow(2).sum(), (g.positions, xg))

    times = {g: [] for g in plans}
    for plan in plans.values():  # warm-up
        step(plan)
    for _ in range(repeats):
        for g, plan in plans.items():
            start = time.perf_counter()
            step(plan)
            times[g].append(time.perf_counter() - start)
    return {"K": k, "lmax": lmax, "filter_degree": f, "channels": channels, "n_atoms": n_atoms, "n_edges": n_edges,
            "policy_group": policy, "before_group": before,
            "seconds": {str(g): statistics.median(t) for g, t in times.items()},
            "index_bytes_per_edge": {str(g): plan.aggregation.index_bytes() / n_edges for g, plan in plans.items()}}


def table(records, machine) -> str:
    lines = [f"Machine: {machine['cpu']} ({machine['threads']} threads), {machine['device']}, float32; torch "
             f"{machine['torch']}. Median of the repeats, interleaved; 'before': the group size without MAX_GROUPS.", "",
             "| K | L_max | f | C | G | products | fwd+bwd (ms) | vs before | index bytes per edge | |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        base = r["seconds"][str(r["before_group"])]
        for g, seconds in sorted(r["seconds"].items(), key=lambda kv: int(kv[0])):
            mark = ", ".join(m for m, ok in (("now", int(g) == r["policy_group"]), ("before", int(g) == r["before_group"]))
                             if ok)
            lines.append(f"| {r['K']} | {r['lmax']} | {r['filter_degree']} | {r['channels']} | {g} | "
                         f"{-(-r['channels'] // int(g))} | {seconds * 1e3:.0f} | {seconds / base:.2f} | "
                         f"{r['index_bytes_per_edge'][g]:.0f} | {mark} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--neighbours", type=int, default=80, help="K, neighbours per atom")
    parser.add_argument("--lmax", type=int, default=2)
    parser.add_argument("--filter-degrees", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--atoms", type=int, default=1728)
    parser.add_argument("--groups", type=int, nargs="+", default=[8, 16, 32, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS / "conv_groups", help="writes OUTPUT.md and OUTPUT.json")
    args = parser.parse_args(argv)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_description("cpu")
    records = []
    for f in args.filter_degrees:
        records.append(run(args.neighbours, args.lmax, f, args.channels, args.atoms, args.groups, args.repeats))
        print(table(records, machine), flush=True)
    args.output.with_suffix(".json").write_text(json.dumps({"machine": machine, "records": records}, indent=1) + "\n")
    args.output.with_suffix(".md").write_text(table(records, machine))


if __name__ == "__main__":
    main()

"""Float32 precision of the Wigner 6j convolution against the float64 edge-wise reference.

For several block sides (the local origins), on a periodic jittered lattice at 0.1 atoms/Å^3
of at least 100,000 atoms, at the origin and moved by 1,000 Å along every axis:

    error = max |factorised_float32 - reference_float64| / rms(reference_float64)

with the number of source entries (source tensor products) per atom, and the forward time of
each choice at C = 128 on a 1,728-atom box. Float32 features throughout; the three stages run
in float32 with blocks of several sides (in units of the cutoff), or in float64 (the simple
alternative) with one global origin or with 100 Å blocks.

    python benchmarks/conv_precision.py              # 103,823 atoms
    python benchmarks/conv_precision.py --quick      # 13,824 atoms, for a look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    cutoff_for_neighbours,
    jittered_lattice,
    machine_description,
    median_seconds,
    periodic_edges,
)

from e2former_calc.conv import FLOAT64_BLOCK_SIDE, ConvGraph, EdgeWiseConvolution, Wigner6jConvolution  # noqa: E402
from e2former_calc.so3 import FeatureLayout  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LAYOUT = FeatureLayout.spherical(2)


def reference(graph, x, w, filters, chunk=400_000):
    """Float64 edge-wise convolution, summed over chunks of edges to bound memory."""
    conv = EdgeWiseConvolution(LAYOUT, x.shape[1], filters, LAYOUT).double()
    out = 0
    for start in range(0, graph.n_edges, chunk):
        part = slice(start, start + chunk)
        sub = ConvGraph.build(graph.positions, graph.receivers[part], graph.senders[part], graph.shifts[part])
        out = out + conv(x, sub, w[part])
    return out


def variants(cutoff, factors):
    """(label, block side in Å or None, stage dtype) of every choice measured."""
    out = [(f"float32, blocks {factor:g} x cutoff", factor * cutoff, torch.float32) for factor in factors]
    out.append(("float32, global origin", None, torch.float32))
    out.append((f"float64, blocks {FLOAT64_BLOCK_SIDE:g} Å", FLOAT64_BLOCK_SIDE, torch.float64))
    out.append(("float64, global origin", None, torch.float64))
    return out


def precision_rows(n_atoms, cutoff, filters, factors, offsets, channels, log):
    positions, cell = jittered_lattice(n_atoms)
    receivers, senders, shifts = periodic_edges(positions, cell, cutoff)
    gen = torch.Generator().manual_seed(0)
    n = len(positions)
    x = torch.randn(n, channels, LAYOUT.dim, generator=gen, dtype=torch.float64)
    w = torch.randn(len(receivers), len(filters), channels, generator=gen, dtype=torch.float64)
    rows = []
    for offset in offsets:
        graph = ConvGraph.build(torch.from_numpy(positions + offset), receivers, senders, shifts)
        expected = reference(graph, x, w, filters)
        rms = float(expected.pow(2).mean().sqrt())
        for label, side, stage in variants(cutoff, factors):
            conv = Wigner6jConvolution(LAYOUT, channels, filters, LAYOUT, block_side=side, stage_dtype=stage)
            plan = conv.plan(graph, torch.float32)
            got = conv(x.float(), graph, w.float(), plan).double()
            row = {
                "variant": label,
                "n_atoms": n,
                "cutoff": cutoff,
                "neighbours_per_atom": len(receivers) / n,
                "filter_degrees": list(filters),
                "offset": offset,
                "block_side": side,
                "source_entries_per_atom": plan.n_sources / n,
                "float32_error": float((got - expected).abs().max()) / rms,
            }
            rows.append(row)
            log(
                f"atoms={n} cutoff={cutoff:.2f} f={filters} offset={offset:6.0f} "
                f"{label:28s} sources/atom={row['source_entries_per_atom']:5.2f}"
                f"  error={row['float32_error']:.2e}"
            )
            del got
        del expected
    return rows


def timing_rows(cutoff, filters, factors, repeats, log):
    positions, cell = jittered_lattice(1728)
    receivers, senders, shifts = periodic_edges(positions, cell, cutoff)
    graph = ConvGraph.build(torch.from_numpy(positions), receivers, senders, shifts)
    x = torch.randn(len(positions), 128, LAYOUT.dim)
    w = torch.randn(len(receivers), len(filters), 128)
    rows = []
    for label, side, stage in variants(cutoff, factors):
        conv = Wigner6jConvolution(LAYOUT, 128, filters, LAYOUT, block_side=side, stage_dtype=stage)
        plan = conv.plan(graph, x.dtype)

        def step():
            with torch.no_grad():
                conv(x, ConvGraph.build(graph.positions, receivers, senders, shifts, graph.images), w, plan)

        seconds = median_seconds(step, repeats)
        rows.append({"variant": label, "cutoff": cutoff, "filter_degrees": list(filters), "block_side": side,
                     "forward_seconds": seconds, "n_atoms": len(positions)})
        log(f"timing cutoff={cutoff:.2f} f={filters} {label:28s}: {seconds * 1e3:.1f} ms")
    return rows


def markdown_table(rows, timings) -> str:
    lines = [
        "| K | cutoff (Å) | f | stages and origins | source entries / atom | error, box at origin "
        "| error, box moved 1,000 Å | forward at C=128, 1,728 atoms (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    time_of = {(t["cutoff"], tuple(t["filter_degrees"]), t["variant"]): t["forward_seconds"] for t in timings}
    keys = []
    for r in rows:
        key = (r["cutoff"], tuple(r["filter_degrees"]), r["variant"])
        if key not in keys:
            keys.append(key)
    for cutoff, filters, variant in keys:
        near = next(r for r in rows if (r["cutoff"], tuple(r["filter_degrees"]), r["variant"]) == (cutoff, filters, variant) and r["offset"] == 0)
        far = next(r for r in rows if (r["cutoff"], tuple(r["filter_degrees"]), r["variant"]) == (cutoff, filters, variant) and r["offset"] != 0)
        seconds = time_of.get((cutoff, filters, variant))
        lines.append(
            f"| {near['neighbours_per_atom']:.0f} | {cutoff:.2f} | {','.join(map(str, filters))} | {variant} "
            f"| {far['source_entries_per_atom']:.1f} | {near['float32_error']:.1e} | {far['float32_error']:.1e} "
            f"| {'' if seconds is None else f'{seconds * 1e3:.0f}'} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="13,824 atoms instead of 103,823")
    parser.add_argument("--channels", type=int, default=2, help="channels of the precision runs (errors do not depend on it)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    n_atoms = 24**3 if args.quick else 47**3
    factors = [4.0, 2.0, 1.0, 0.5]
    started = time.time()

    def log(line):
        print(f"[{time.time() - started:6.0f}s] {line}", flush=True)

    machine = machine_description("cpu")
    log(f"machine: {machine}")
    rows, timings = [], []
    for k, filters in ((20, (1,)), (20, (2,)), (50, (1,)), (50, (2,)), (80, (2,))):
        cutoff = cutoff_for_neighbours(k)
        rows += precision_rows(n_atoms, cutoff, filters, factors, (0.0, 1000.0), args.channels, log)
        timings += timing_rows(cutoff, filters, factors, args.repeats, log)
    path = args.json or RESULTS / ("conv_precision_quick.json" if args.quick else "conv_precision.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine, "precision": rows, "timing": timings}, indent=1))
    table = path.with_suffix(".md")
    table.write_text(
        f"Machine: {machine['cpu']} ({machine['threads']} threads), torch {machine['torch']}; "
        f"{rows[0]['n_atoms']} atoms at 0.1 atoms/Å^3, error = max |float32 - float64 reference| / rms(reference).\n\n"
        f"{markdown_table(rows, timings)}\n"
    )
    log(f"wrote {path} and {table}")


if __name__ == "__main__":
    main()

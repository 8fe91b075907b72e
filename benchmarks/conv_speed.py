"""Speed of three forms of one equivariant convolution (with channel mixing), side by side.

    factorised        Wigner 6j convolution (tensor products on nodes), then PathMixing on nodes
    edge_uvw          e3nn "uvw" tensor product with channel mixing on every edge (the paper's baseline)
    edge_channelwise  e3nn "uvu" tensor product on every edge, then PathMixing on nodes (MACE/NequIP style)

All three compute the same function; each record says how far apart their outputs are. The
structure is a periodic jittered cubic lattice at 0.1 atoms/Å^3 whose cutoff is set to give K
neighbours per atom on average. Timed: ``forward`` (no autograd) and ``forward_backward``
(gradients with respect to positions and node features), medians over interleaved repeats,
float32. Edge vectors and local coordinates are computed inside the timed region; the discrete
structure made once per neighbour list (block assignment, sparse pattern of the edge stage) is
not, like the neighbour list itself: it is timed on its own (``topology_seconds``).

Memory comes from glibc's ``malloc`` as the package's own runners set it (``--allocator package``,
the default: :func:`e2former_calc.allocator.keep_freed_memory`, freed blocks reused instead of
fresh pages mapped at every call, as the ASE calculator, ``Predictor``, torch-sim and the
``e2former`` command do); ``--allocator system`` leaves glibc's defaults (every large tensor a
new mapping, its pages zero-filled by the kernel). Both forms run under the same policy; the
table's first line says which.

    python benchmarks/conv_speed.py --quick            # L_max 2, f 2, C 128, K 20 and 80
    python benchmarks/conv_speed.py                    # the full sweep
    python benchmarks/conv_speed.py --device cuda      # on a GPU
    python benchmarks/conv_speed.py --quick --allocator system   # glibc's default malloc
    python benchmarks/conv_speed.py --quick --filter-degrees 1 2 --table T.md --json T.json --plot T.png
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    cutoff_for_neighbours,
    jittered_lattice,
    machine_description,
    periodic_edges,
)

from e2former_calc.allocator import keep_freed_memory  # noqa: E402
from e2former_calc.conv import (  # noqa: E402
    ConvGraph,
    EdgeUVWConvolution,
    EdgeWiseConvolution,
    PathMixing,
    Wigner6jConvolution,
)
from e2former_calc.so3 import FeatureLayout  # noqa: E402

FORMS = ("factorised", "edge_uvw", "edge_channelwise")
RESULTS = Path(__file__).resolve().parent / "results"


def make_forms(lmax, f, channels, block_side, device):
    layout = FeatureLayout.spherical(lmax)
    factorised = Wigner6jConvolution(layout, channels, (f,), layout, block_side=block_side or "auto")
    edgewise = EdgeWiseConvolution(layout, channels, (f,), layout)
    mixing = PathMixing(factorised.paths, layout, channels, channels)
    uvw = EdgeUVWConvolution(edgewise, mixing)
    for module in (factorised, edgewise, mixing, uvw):
        module.to(device)
    return {
        "factorised": lambda x, g, w, plan=None: mixing(factorised(x, g, w, plan)),
        "edge_uvw": uvw,
        "edge_channelwise": lambda x, g, w: mixing(edgewise(x, g, w)),
    }, factorised


def run_config(k, lmax, f, channels, n_atoms, repeats, device, block_side, log):
    positions, cell = jittered_lattice(n_atoms)
    cutoff = cutoff_for_neighbours(k)
    receivers, senders, shifts = periodic_edges(positions, cell, cutoff)
    positions = torch.from_numpy(positions).to(device)
    receivers, senders, shifts = receivers.to(device), senders.to(device), shifts.to(device)
    forms, factorised = make_forms(lmax, f, channels, block_side, device)
    gen = torch.Generator().manual_seed(0)
    layout = FeatureLayout.spherical(lmax)
    x = torch.randn(len(positions), channels, layout.dim, generator=gen).to(device)
    w = torch.randn(len(receivers), 1, channels, generator=gen).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    graph = ConvGraph.build(positions, receivers, senders, shifts)
    stage_dtype, block_side = factorised.resolve(x.dtype, cutoff)
    start = time.perf_counter()
    plan = factorised.plan(graph, x.dtype, cutoff)
    topology_seconds = time.perf_counter() - start
    sources_per_atom = plan.n_sources / len(positions)
    forms["factorised"] = functools.partial(forms["factorised"], plan=plan)
    with torch.no_grad():
        outputs = {name: form(x, graph, w) for name, form in forms.items()}
    reference = outputs["edge_channelwise"]
    max_rel_diff = max(
        float((outputs[name] - reference).abs().max() / reference.abs().max()) for name in ("factorised", "edge_uvw")
    )
    probe = torch.randn(reference.shape, generator=gen).to(device)
    del outputs, reference

    def forward(form):
        with torch.no_grad():
            form(x, ConvGraph.build(positions, receivers, senders, shifts, graph.images), w)

    def forward_backward(form):
        g = ConvGraph.build(positions.detach().requires_grad_(True), receivers, senders, shifts, graph.images)
        xg = x.detach().requires_grad_(True)
        out = form(xg, g, w)
        torch.autograd.grad((out * probe).sum(), (g.positions, xg))

    records = []
    for mode, step in (("forward", forward), ("forward_backward", forward_backward)):
        for form in forms.values():  # warm-up
            step(form)
        times = {name: [] for name in forms}
        for _ in range(repeats):  # interleaved, so that drifts of the machine hit all forms alike
            for name, form in forms.items():
                sync()
                start = time.perf_counter()
                step(form)
                sync()
                times[name].append(time.perf_counter() - start)
        seconds = {name: statistics.median(t) for name, t in times.items()}
        record = {
            "K": k,
            "lmax": lmax,
            "filter_degree": f,
            "channels": channels,
            "n_atoms": len(positions),
            "mode": mode,
            "seconds": seconds,
            "max_rel_diff": max_rel_diff,
            "neighbours_per_atom": len(receivers) / len(positions),
            "cutoff": cutoff,
            "block_side": block_side,
            "stage_dtype": str(stage_dtype).replace("torch.", ""),
            "source_entries_per_atom": sources_per_atom,
            "topology_seconds": topology_seconds,
        }
        records.append(record)
        log(
            f"K={k:3d} lmax={lmax} f={f} C={channels:3d} {mode:16s} "
            + " ".join(f"{name}={seconds[name] * 1e3:9.1f}ms" for name in FORMS)
            + f"  x{seconds['edge_uvw'] / seconds['factorised']:6.1f} vs uvw"
            + f"  x{seconds['edge_channelwise'] / seconds['factorised']:5.2f} vs channelwise"
            + f"  diff {max_rel_diff:.1e}"
        )
    return records


def markdown_table(records) -> str:
    lines = [
        "| K | L_max | f | C | mode | factorised (ms) | edge_uvw (ms) | edge_channelwise (ms) "
        "| speed-up vs uvw | speed-up vs channelwise | max rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        s = r["seconds"]
        lines.append(
            f"| {r['K']} | {r['lmax']} | {r['filter_degree']} | {r['channels']} | {r['mode']} "
            f"| {s['factorised'] * 1e3:.1f} | {s['edge_uvw'] * 1e3:.1f} | {s['edge_channelwise'] * 1e3:.1f} "
            f"| {s['edge_uvw'] / s['factorised']:.1f} | {s['edge_channelwise'] / s['factorised']:.2f} "
            f"| {r['max_rel_diff']:.1e} |"
        )
    return "\n".join(lines)


def plot(records, path: Path, title: str) -> None:
    """Speed-up against K: a panel per (mode, L_max), a colour per (f, C), solid against
    edge_uvw and dashed against edge_channelwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ("forward", "forward_backward")
    lmaxes = sorted({r["lmax"] for r in records})
    fig, axes = plt.subplots(len(modes), len(lmaxes), figsize=(4.2 * len(lmaxes) + 2.2, 7), sharey=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    variants = sorted({(r["filter_degree"], r["channels"]) for r in records})
    for row, mode in enumerate(modes):
        for col, lmax in enumerate(lmaxes):
            ax = axes[row][col]
            for n, (f, c) in enumerate(variants):
                rows = sorted((r for r in records if (r["mode"], r["lmax"], r["filter_degree"], r["channels"]) == (mode, lmax, f, c)),
                              key=lambda r: r["K"])
                if not rows:
                    continue
                ks = [r["K"] for r in rows]
                for baseline, style in (("edge_uvw", "-o"), ("edge_channelwise", "--s")):
                    ratios = [r["seconds"][baseline] / r["seconds"]["factorised"] for r in rows]
                    ax.plot(ks, ratios, style, color=colours[n % len(colours)],
                            label=f"f={f} C={c} vs {baseline}" if row == 0 and col == 0 else None)
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{mode}, L_max={lmax}", fontsize=9)
            if row == len(modes) - 1:
                ax.set_xlabel("neighbours per atom K")
        axes[row][0].set_ylabel("speed-up of factorised")
    fig.legend(loc="center right", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="L_max 2, f 2, C 128, K 20 and 80 only")
    parser.add_argument("--filter-degrees", type=int, nargs="+", help="with --quick: these f instead of 2")
    parser.add_argument("--atoms", type=int, default=1728, help="atoms in the periodic box (default 1728)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--block-side", type=float, default=None, help="Å (default: the convolution's automatic choice)")
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--plot", type=Path, help="write the PNG plot here (default: beside --table or --json)")
    parser.add_argument("--table", type=Path, help="write a Markdown table here")
    parser.add_argument("--replot", type=Path, help="only redraw the plot of an existing JSON file")
    parser.add_argument("--allocator", choices=("package", "system"), default="package",
                        help="glibc malloc as the package's runners set it (default) or glibc's defaults")
    args = parser.parse_args(argv)
    if args.replot:
        records = json.loads(args.replot.read_text())
        table = args.replot.with_suffix(".md")
        title = table.read_text().splitlines()[0].removeprefix("Machine: ") if table.is_file() else args.replot.name
        plot(records, args.plot or args.replot.with_suffix(".png"), title)
        return

    if args.quick:
        sweep = list(itertools.product([20, 80], [2], args.filter_degrees or [2], [128]))
    else:
        sweep = list(itertools.product([10, 20, 40, 80], [1, 2, 3], [1, 2], [32, 128]))
    tag = "conv_speed" + ("_quick" if args.quick else "") + ("" if args.device == "cpu" else "_" + args.device.split(":")[0])
    # the files not named go beside the first one named (never over another run's results)
    stem = next((p for p in (args.table, args.json, args.plot) if p is not None), RESULTS / tag)
    json_path = args.json or stem.with_suffix(".json")
    table_path = args.table or stem.with_suffix(".md")
    plot_path = args.plot or stem.with_suffix(".png")
    machine = machine_description(args.device)
    if args.allocator == "package" and args.device == "cpu" and not keep_freed_memory():
        raise SystemExit("--allocator package: glibc's thresholds could not be set (not glibc, or "
                         "MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ set); use --allocator system")
    print(f"machine: {machine}, allocator: {args.allocator}", flush=True)

    records, started = [], time.time()
    for n, (k, lmax, f, c) in enumerate(sweep, 1):
        new = run_config(k, lmax, f, c, args.atoms, args.repeats, args.device, args.block_side,
                         lambda line: print(f"[{n}/{len(sweep)} {time.time() - started:6.0f}s] {line}", flush=True))
        records += [{**record, "allocator": args.allocator} for record in new]
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(records, indent=1))  # after every config: a stopped run keeps its numbers

    title = (f"{machine['cpu']} ({machine['threads']} threads), {args.device}, float32, {records[0]['n_atoms']} atoms"
             + (f", allocator: {args.allocator}" if args.device == "cpu" else ""))
    table_path.write_text(f"Machine: {title}; torch {machine['torch']}.\n\n{markdown_table(records)}\n")
    plot(records, plot_path, title)
    print(f"wrote {json_path}, {table_path}, {plot_path}")


if __name__ == "__main__":
    main()

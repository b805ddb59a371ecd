"""Benchmark every registered teacher/student: parameters, GFLOPs at 224², CPU latency, tap points.

Writes ``docs/benchmarks/networks.json`` and the table of ``docs/networks.md`` (between the markers), e.g.::

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/networks.py

Latency: batch 1, 1×224×224 input (``--size``), ``--classes`` output channels (default 9, the Synapse label set), eval
mode under ``torch.inference_mode()``, ``--threads`` CPU threads, the median of ``--repeats`` runs after ``--warmup``
runs. The networks of an ``mskd experiment`` are timed here, not in its report (its runs share the cores): pass
``--networks``, ``--size``, ``--threads`` and ``--classes`` as the report's header names them, and ``--out``/``--doc``
elsewhere to keep the 224² results. FLOPs: ``torch.utils.flop_counter`` (one multiply-add = 2 FLOPs; convolutions,
matrix products and attention only, as that counter does).

``--dims 3`` measures the 3D networks instead, on one 1×96×96×96 patch (``--size``) with 1 thread, the median of 3
runs after 1 warm-up run; it writes ``docs/benchmarks/networks_3d.json`` and the 3D table of ``docs/networks.md``::

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/networks.py --dims 3

(the 2D results keep their format: without ``--dims`` nothing changes).
"""

from __future__ import annotations

import argparse

import common  # benchmarks/common.py (the scripts run from this folder)
import torch

from mskd.networks import count_parameters, get_network, tap_points

NETWORKS = ["transunet", "transunet_small", "unet", "enet", "erfnet", "espnet", "mobilenetv2_unet", "tiny_unet"]
# Published parameter counts, and what the reference implementations measured on this kind of machine gave
# (DESIGN §4: 2 threads, batch 1, 224²).
REFERENCE = {
    "transunet": ("105.3 M (R50-ViT-B/16, 9 classes)", "105,277,081 / 311 ms"),
    "enet": ("0.37 M", "354 k / 12 ms"),
    "erfnet": ("2.07 M", "2.06 M / 22 ms"),
    "espnet": ("0.36 M", "189 k / 9 ms"),
    "mobilenetv2_unet": ("2–4 M (MobileNetV2 encoder without its 1280-channel head: 1.81 M)", "2.25 M / 35 ms"),
}
BEGIN, END = "<!-- networks-table:begin -->", "<!-- networks-table:end -->"

# 3D: teachers first, then students (the role each plays in a distillation run)
ROLES_3D = {
    "unet_3d": "teacher",
    "segresnet_3d": "teacher",
    "dynunet_3d": "teacher",
    "swin_unetr_3d": "teacher",
    "tiny_unet_3d": "student",
    "segresnet_3d_small": "student",
    "espnet_3d": "student",
}
NETWORKS_3D = list(ROLES_3D)
BEGIN_3D, END_3D = "<!-- networks-3d-table:begin -->", "<!-- networks-3d-table:end -->"


def measure(name: str, size: int, warmup: int, repeats: int, classes: int = 9, dims: int = 2) -> dict:
    """Parameters, GFLOPs, latency and taps of one network at ``size``² (``size``³ when ``dims`` is 3; ``classes``
    outputs, 1 input channel)."""
    torch.manual_seed(0)
    net = get_network(name, in_channels=1, out_channels=classes).eval()
    x = torch.rand(1, 1, *[size] * dims)

    def forward() -> None:
        with torch.inference_mode():
            net(x)

    latency = common.timed_rounds({"forward": forward}, warmup, repeats)["forward"]
    return {
        "name": name,
        "params": count_parameters(net),
        "gflops": common.gflops(net, x),
        "latency_ms": 1000 * latency["wall_s"],
        "taps": {k: {"module": p, "stride": s} for k, (p, s) in tap_points(net).items()},
    }


def markdown(rows: list[dict], meta: dict) -> str:
    """The table written into docs/networks.md."""
    lines = [
        common.provenance("networks.py", meta),
        "",
        f"Batch 1, 1×{meta['size']}×{meta['size']}, {meta['classes']} classes, wall-clock latency.",
        "",
        "| network | params | GFLOPs | CPU latency (ms) | published params | reference (params / latency) "
        "| taps (stride) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        published, reference = REFERENCE.get(r["name"], ("—", "—"))
        taps = ", ".join(f"`{k}` {v['module']} ({v['stride']})" for k, v in r["taps"].items())
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['gflops']:.2f} | {r['latency_ms']:.1f} | {published} | "
            f"{reference} | {taps} |"
        )
    return "\n".join(lines)


def markdown_3d(rows: list[dict], meta: dict) -> str:
    """The 3D table written into docs/networks.md: the role of each network, and its latency against the fastest
    teacher of the run (the ratio to read on a shared machine)."""
    teachers = [r["latency_ms"] for r in rows if ROLES_3D.get(r["name"]) == "teacher"]
    fastest = min(teachers, default=None)
    size = meta["size"]
    lines = [
        common.provenance("networks.py --dims 3", meta),
        "",
        f"Batch 1, 1×{size}×{size}×{size}, {meta['classes']} classes, wall-clock latency; the last but one column "
        "is the latency over the fastest teacher's.",
        "",
        "| network | role | params | GFLOPs | CPU latency (ms) | latency / fastest teacher | taps (stride) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['latency_ms'] / fastest:.2f}" if fastest else "—"
        taps = ", ".join(f"`{k}` {v['module']} ({v['stride']})" for k, v in r["taps"].items())
        lines.append(
            f"| {r['name']} | {ROLES_3D.get(r['name'], '—')} | {r['params']:,} | {r['gflops']:.2f} | "
            f"{r['latency_ms']:.1f} | {ratio} | {taps} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark with the command line ``argv`` (default ``sys.argv[1:]``)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dims", type=int, choices=(2, 3), default=2)
    dims = pre.parse_known_args(argv)[0].dims
    if dims == 2:
        p = common.parser(__doc__.splitlines()[0], NETWORKS, "networks", "docs/networks.md", repeats=10)
        quick, table, markers, extra = {"networks": ["tiny_unet"], "size": 64}, markdown, (BEGIN, END), {}
    else:
        p = common.parser(
            __doc__.splitlines()[0], NETWORKS_3D, "networks_3d", "docs/networks.md", repeats=3, size=96, threads=1
        )
        p.set_defaults(warmup=1)
        quick = {"networks": ["tiny_unet_3d", "espnet_3d"], "size": 32}
        table, markers, extra = markdown_3d, (BEGIN_3D, END_3D), {"spatial_dims": 3}
    p.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2: the 2D networks (default); 3: the 3D ones")
    p.add_argument("--classes", type=int, default=9, help="output channels of every network (default 9, Synapse)")
    args = common.parse_args(p, quick=quick, argv=argv)

    meta = common.machine(args, classes=args.classes, **extra)
    rows = []
    for name in args.networks:
        rows.append(measure(name, args.size, args.warmup, args.repeats, args.classes, dims))
        print(
            f"{name:18s} {rows[-1]['params']:>12,} params {rows[-1]['gflops']:8.2f} GFLOPs "
            f"{rows[-1]['latency_ms']:8.1f} ms"
        )
    common.record(args, meta, rows, table, markers)


if __name__ == "__main__":
    main()

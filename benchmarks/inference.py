"""Benchmark inference: teacher against every student, per slice batch and per whole CT volume.

Writes ``docs/benchmarks/inference.json`` and its section of ``docs/performance.md`` (between the markers), e.g.::

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/inference.py

Per network (random weights: time does not depend on them; 9 classes, 1×size×size slices): parameters, GFLOPs of one
slice (``common.gflops``), latency at batch 1 and at batch ``--batch`` (eval, ``torch.inference_mode()``) and the
throughput at that batch. All networks and both batches are timed side by side in the same rounds
(``common.timed_rounds``), so the latency ratios between networks are comparable.

Whole volume: one synthetic CT (``mskd.data.phantom.make_phantom_case``, ``--volume`` voxels, int16 HU, written as
NIfTI) segmented by the bundle's own ``inference.json`` evaluator (``mskd.bundle.Bundle.parser``: load, window,
resize to size² slices, ``SliceInferer`` with ``slice_batch`` slices per call, softmax, argmax, inverse resize,
NIfTI writing) with the network's random weights instead of a checkpoint; and the ``SliceInferer`` call alone on the
preprocessed volume (the network's share). ``--volume-repeats`` rounds, all networks side by side; the networks are
already warm from the latency runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import common  # benchmarks/common.py (the scripts run from this folder)
import nibabel as nib
import torch
from monai.bundle import ConfigParser

from mskd.bundle import INFERENCE, Bundle
from mskd.data.phantom import make_phantom_case
from mskd.networks import count_parameters, get_network

NETWORKS = ["transunet", "unet", "enet", "erfnet", "espnet", "mobilenetv2_unet", "tiny_unet"]
BUNDLE = common.ROOT / "bundles" / "mskd_synapse"
BEGIN, END = "<!-- inference:begin -->", "<!-- inference:end -->"


def volume_evaluator(
    name: str, network: torch.nn.Module, input_dir: Path, output_dir: Path, size: int
) -> tuple[Any, ConfigParser]:
    """The bundle's inference evaluator for ``name`` at ``size`` running ``network`` (no checkpoint, no handlers),
    and the config it was parsed from."""
    parser = Bundle(BUNDLE).parser(
        (INFERENCE,),
        input=str(input_dir),
        output_dir=str(output_dir),
        student=name,
        image_size=size,
        device=torch.device("cpu"),
        amp=False,
        network=network,
        handlers=[],
    )
    return parser.get_parsed_content("evaluator"), parser


def measure(args: Any, workdir: Path) -> list[dict]:
    """Every network's size, cost and latencies, and its whole-volume times, all timed side by side."""
    size, batch = args.size, args.batch
    one, many = torch.rand(1, 1, size, size), torch.rand(batch, 1, size, size)
    networks = {}
    for name in args.networks:
        torch.manual_seed(0)
        networks[name] = get_network(name, 1, 9).eval()

    def forward(network: torch.nn.Module, x: torch.Tensor) -> Any:
        def run() -> None:
            with torch.inference_mode():
                network(x)

        return run

    variants = {}
    for name, network in networks.items():
        variants[f"{name} batch 1"] = forward(network, one)
        variants[f"{name} batch {batch}"] = forward(network, many)
    latency = common.timed_rounds(variants, args.warmup, args.repeats)

    image, _, affine = make_phantom_case(0, size=tuple(args.volume))
    input_dir = workdir / "input"
    input_dir.mkdir()
    nib.save(nib.Nifti1Image(image, affine), str(input_dir / "ct.nii.gz"))
    volumes = {}
    for name, network in networks.items():
        evaluator, parser = volume_evaluator(name, network, input_dir, workdir / name, size)
        preprocessed = parser.get_parsed_content("preprocessing")(parser.get_parsed_content("datalist")[0])["image"]
        inferer = parser.get_parsed_content("inferer")
        volumes[f"{name} pipeline"] = evaluator.run
        volumes[f"{name} network"] = forward_volume(inferer, network, preprocessed[None])
    volume = common.timed_rounds(volumes, 0, args.volume_repeats)

    rows = []
    for name, network in networks.items():
        rows.append(
            {
                "name": name,
                "params": count_parameters(network),
                "gflops_per_slice": common.gflops(network, one),
                "batch_1_s": latency[f"{name} batch 1"],
                f"batch_{batch}_s": latency[f"{name} batch {batch}"],
                "throughput_slices_per_s": batch / latency[f"{name} batch {batch}"]["wall_s"],
                "volume_pipeline_s": volume[f"{name} pipeline"],
                "volume_network_s": volume[f"{name} network"],
            }
        )
    teacher = rows[0]
    for row in rows:
        row["teacher_over_batch_1"] = {k: teacher["batch_1_s"][k] / row["batch_1_s"][k] for k in ("cpu_s", "wall_s")}
    return rows


def forward_volume(inferer: Any, network: torch.nn.Module, volume: torch.Tensor) -> Any:
    """The bundle's ``SliceInferer`` over a preprocessed ``1, 1, H, W, D`` volume, as the evaluator calls it."""

    def run() -> None:
        with torch.inference_mode():
            inferer(volume, network)

    return run


def markdown(rows: list[dict], meta: dict) -> str:
    """The section written into docs/performance.md."""
    batch, (x, y, z) = meta["batch"], meta["volume"]
    lines = [
        common.provenance("inference.py", meta),
        "",
        f"Slices 1×{meta['size']}×{meta['size']}; latency in ms (wall-clock); **teacher ÷ network** = the first "
        f"network's batch-1 latency over this one's (CPU time / wall-clock). Whole volume: a {x}×{y}×{z} CT through "
        f"the bundle's `inference.json` (load, window, resize, `SliceInferer`, invert, write NIfTI) and the "
        "`SliceInferer` call alone, seconds (wall-clock).",
        "",
        f"| network | params | GFLOPs / slice | batch 1 (ms) | **teacher ÷ network** | batch {batch} (ms) "
        "| slices/s | volume, pipeline (s) | volume, network (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["teacher_over_batch_1"]
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['gflops_per_slice']:.2f} | {1000 * r['batch_1_s']['wall_s']:.1f} | "
            f"**{ratio['cpu_s']:.1f}** / {ratio['wall_s']:.1f} | {1000 * r[f'batch_{batch}_s']['wall_s']:.0f} | "
            f"{r['throughput_slices_per_s']:.1f} | {r['volume_pipeline_s']['wall_s']:.1f} | "
            f"{r['volume_network_s']['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark with the command line ``argv`` (default ``sys.argv[1:]``)."""
    p = common.parser(__doc__.splitlines()[0], NETWORKS, "inference", "docs/performance.md", 5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--volume", type=int, nargs=3, default=[512, 512, 150], metavar=("X", "Y", "Z"))
    p.add_argument("--volume-repeats", type=int, default=2)
    args = common.parse_args(
        p,
        quick={"networks": ["tiny_unet", "enet"], "size": 32, "batch": 2, "volume": [48, 48, 16], "volume_repeats": 1},
        argv=argv,
    )
    meta = common.machine(args, batch=args.batch, volume=args.volume, volume_repeats=args.volume_repeats)
    with tempfile.TemporaryDirectory() as workdir:
        rows = measure(args, Path(workdir))
    for r in rows:
        print(
            f"{r['name']:18s} batch 1 {1000 * r['batch_1_s']['wall_s']:8.1f} ms  teacher/this "
            f"{r['teacher_over_batch_1']['cpu_s']:6.1f}  volume {r['volume_pipeline_s']['wall_s']:6.1f} s"
        )
    common.record(args, meta, rows, markdown, (BEGIN, END), key="networks")


if __name__ == "__main__":
    main()

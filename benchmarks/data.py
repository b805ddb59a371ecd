"""Benchmark the training data pipeline: slices/s it delivers against slices/s a distillation step consumes.

Writes ``docs/benchmarks/data.json`` and its section of ``docs/performance.md`` (between the markers), e.g.::

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/data.py

A phantom dataset (``mskd.data.phantom.generate_phantom_dataset``: ``--cases`` volumes of ``--volume`` voxels) is
written to a temporary folder, and the bundle's training loader is built from ``train_teacher.json`` with
``monai.bundle.ConfigParser`` as a run builds it: memory cache of the preprocessed volumes, then per access slice
sampling (``slices_per_volume`` slices by label class) and augmentation; ``batch_size`` volumes per batch. Its
``num_workers`` is set to each of ``--workers``. One pass over the training cases (an epoch, worker start-up
included, as the bundle's ``DataLoader`` has no persistent workers) gives slices/s.

Consumption: the distillation step that ``train_teacher.json`` + ``distill.json`` build for each ``--pairs``
teacher:student (random teacher weights instead of a checkpoint, no handlers), run on a batch of that loader:
slices per batch ÷ seconds per step. Both are timed side by side (``common.timed_rounds``, wall-clock, since loader
workers are other processes). Reported: pipeline slices/s ÷ step slices/s (≥ 1: the pipeline keeps up when it runs
beside the step; with 0 workers it runs between steps instead, taking its share of every iteration).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import common  # benchmarks/common.py (the scripts run from this folder)
import torch
from monai.bundle import ConfigParser

from mskd.data.phantom import generate_phantom_dataset

BUNDLE = common.ROOT / "bundles" / "mskd_synapse"
PAIRS = ["transunet:tiny_unet", "unet:tiny_unet"]
BEGIN, END = "<!-- data:begin -->", "<!-- data:end -->"


def bundle_config(dataset_dir: Path, args: Any, distill: bool, **overrides: Any) -> ConfigParser:
    """The bundle's training config (``train_teacher.json``, plus ``distill.json`` if ``distill``) on the phantoms."""
    parser = ConfigParser()
    files = ["train_teacher.json", *(["distill.json"] if distill else [])]
    parser.read_config([str(BUNDLE / "configs" / f) for f in files])
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "dataset_dir": str(dataset_dir),
            "image_size": args.size,
            "num_val_cases": args.val_cases,
            "device": torch.device("cpu"),
            "amp": False,
            "mlflow": False,
            "resume": False,
            "train#handlers": {},
            **overrides,
        }
    )
    return parser


def epoch(loader: Any) -> Any:
    """One pass over ``loader``, counting the slices it delivers."""

    def run() -> int:
        return sum(batch["image"].shape[0] for batch in loader)

    return run


def measure(args: Any, dataset_dir: Path) -> dict:
    """Pipeline slices/s per worker count and step slices/s per pair, side by side."""
    loaders = {
        workers: bundle_config(dataset_dir, args, False, num_workers=workers).get_parsed_content("train#dataloader")
        for workers in args.workers
    }
    slices_per_epoch = epoch(next(iter(loaders.values())))()
    batch = next(iter(next(iter(loaders.values()))))
    variants: dict[str, Any] = {f"{w} workers": epoch(loader) for w, loader in loaders.items()}
    for pair in args.pairs:
        teacher, student = pair.split(":")
        trainer = bundle_config(
            dataset_dir,
            args,
            True,
            teacher=teacher,
            student=student,
            teacher_network="$@teacher_def.to(@device)",
            **{"train#dataloader": []},  # the step is fed the batch below
        ).get_parsed_content("train#trainer")
        variants[f"step {pair}"] = lambda t=trainer: t._iteration(t, batch)
    seconds = common.timed_rounds(variants, args.warmup, args.repeats)
    batch_slices = batch["image"].shape[0]
    pipeline = {w: slices_per_epoch / seconds[f"{w} workers"]["wall_s"] for w in args.workers}
    steps = {pair: batch_slices / seconds[f"step {pair}"]["wall_s"] for pair in args.pairs}
    return {
        "slices_per_epoch": slices_per_epoch,
        "slices_per_batch": batch_slices,
        "seconds": seconds,
        "pipeline_slices_per_s": pipeline,
        "step_slices_per_s": steps,
        "pipeline_over_step": {f"{w} workers, {p}": pipeline[w] / steps[p] for w in args.workers for p in args.pairs},
    }


def markdown(rows: list[dict], meta: dict) -> str:
    """The section written into docs/performance.md."""
    r = rows[0]
    x, y, z = meta["volume"]
    lines = [
        common.provenance("data.py", meta),
        "",
        f"{meta['cases']} phantom volumes of {x}×{y}×{z} voxels ({meta['val_cases']} held out for validation), the "
        f"bundle's training loader at {meta['size']}² ({r['slices_per_batch']} slices per batch, "
        f"{r['slices_per_epoch']} per epoch); steps of `distill.json` on its batches. Wall-clock.",
        "",
        "| pipeline | slices/s | " + " | ".join(f"÷ step {p}" for p in meta["pairs"]) + " |",
        "|---|---|" + "---|" * len(meta["pairs"]),
    ]
    for w, rate in r["pipeline_slices_per_s"].items():
        cells = [f"**{r['pipeline_over_step'][f'{w} workers, {p}']:.1f}**" for p in meta["pairs"]]
        lines.append(f"| {w} workers | {rate:.1f} | " + " | ".join(cells) + " |")
    lines.append(
        "| *step consumes* | | " + " | ".join(f"{r['step_slices_per_s'][p]:.1f} slices/s" for p in meta["pairs"]) + " |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark with the command line ``argv`` (default ``sys.argv[1:]``)."""
    p = common.parser(__doc__.splitlines()[0], None, "data", "docs/performance.md", 3)
    p.add_argument("--pairs", nargs="+", default=PAIRS, help="teacher:student of the distillation step")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--val-cases", type=int, default=2)
    p.add_argument("--volume", type=int, nargs=3, default=[128, 128, 96], metavar=("X", "Y", "Z"))
    args = common.parse_args(
        p,
        quick={"pairs": ["tiny_unet:tiny_unet"], "size": 32, "cases": 3, "val_cases": 1, "volume": [16, 16, 16]},
        argv=argv,
    )
    meta = common.machine(
        args, pairs=args.pairs, workers=args.workers, cases=args.cases, val_cases=args.val_cases, volume=args.volume
    )
    with tempfile.TemporaryDirectory() as workdir:
        dataset_dir = Path(workdir) / "phantom"
        generate_phantom_dataset(dataset_dir, cases=args.cases, size=tuple(args.volume), test_cases=0)
        result = measure(args, dataset_dir)
    print(
        ", ".join(f"{w} workers {v:.1f} slices/s" for w, v in result["pipeline_slices_per_s"].items())
        + "; "
        + ", ".join(f"step {p} {v:.1f} slices/s" for p, v in result["step_slices_per_s"].items())
    )
    common.record(args, meta, [result], markdown, (BEGIN, END), key="results")


if __name__ == "__main__":
    main()

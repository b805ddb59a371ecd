"""Benchmark a distillation step with the teacher's outputs cached against the student's own step.

Writes ``docs/benchmarks/teacher_cache.json`` and its section of ``docs/performance.md`` (between the markers), e.g.::

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/teacher_cache.py

For each teacher→student pair at its size (``--pairs teacher:student@size``; batch ``--batch``, default 64: the
experiments' 8 volumes × 8 slices; 1×size×size inputs, 9 classes, labels in blocks so that every class is present),
side by side in the same rounds (``common.timed_rounds``):

- **student step**: ``SupervisedTrainer._iteration`` with the bundle's segmentation loss (0.5 CE + 0.5 Dice) and
  Adam, i.e. what ``train_student.json`` runs;
- **cached step** per loss: ``DistillationTrainer._iteration`` with ``teacher_cache=True`` on a batch whose teacher
  outputs are all stored (filled once before timing; every timed lookup hits, which the JSON records): a step on
  slices seen before, with deterministic inputs (``augment: false``);
- **live step** per loss: the same trainer without the cache (the teacher runs every step), and the **teacher
  forward** alone (``DistillationTrainer.teacher_forward``), for reference.

Losses: ``KD+CWD`` = class-balanced logit KD (weight 0.1, T = 4) + CWD on the logits (weight 1.0, T = 4); ``MSKD`` =
the same KD + FFD (0.9, band radius 4) + RGD (0.9, order 2) on the taps ``low`` and ``high``. Both networks and the
batch are channels-last, as ``distill.json`` runs them (``channels_last: true``), and the student step's network and
batch too (``--no-channels-last`` turns it off everywhere), so that the ratios compare like with like.

Reported: cached step ÷ student step (target ≤ 1.15), live step ÷ student step, cached step ÷ live step, in CPU time
of the process and wall-clock time.
"""

from __future__ import annotations

import argparse
from typing import Any

import common  # benchmarks/common.py (the scripts run from this folder)
import torch
from monai.engines import SupervisedTrainer

from mskd.losses import (
    ChannelWiseDistillationLoss,
    FeatureFilteringDistillationLoss,
    LogitDistillationLoss,
    RegionGraphDistillationLoss,
)
from mskd.networks import count_parameters, get_network

PAIRS = ["unet:mobilenetv2_unet@96", "unet:enet@96"]
TARGET = 1.15  # cached step ÷ student step
BEGIN, END = "<!-- teacher-cache:begin -->", "<!-- teacher-cache:end -->"


def loss_configs() -> dict[str, dict[str, dict]]:
    """Loss configuration -> ``DistillationLoss`` terms: the default logit pair and MSKD."""
    stages = list(common.STAGES)

    def kd(weight: float, class_balanced: bool) -> dict:
        return {"loss": LogitDistillationLoss(temperature=4.0, class_balanced=class_balanced), "weight": weight}

    return {  # the bundles' default, and MSKD as reconstructed (pixel-wise KD + FFD + RGD)
        "KD+CWD": {"kd": kd(0.5, True), "cwd": {"loss": ChannelWiseDistillationLoss(temperature=4.0), "weight": 1.0}},
        "MSKD": {
            "kd": kd(0.1, False),
            "ffd": {"loss": FeatureFilteringDistillationLoss(band_radius=4), "weight": 0.9, "stages": stages},
            "rgd": {"loss": RegionGraphDistillationLoss(order=2), "weight": 0.9, "stages": stages},
        },
    }


def measure(
    pair: str, batch_size: int, configs: dict, channels_last: bool, warmup: int, repeats: int
) -> dict[str, Any]:
    """Time the variants of one pair ``teacher:student@size`` side by side and derive the ratios."""
    names, size = pair.split("@")
    teacher_name, student_name = names.split(":")
    size = int(size)
    batch = common.synthetic_batch(batch_size, size)
    torch.manual_seed(0)
    teacher = get_network(teacher_name, 1, common.NUM_CLASSES)
    cached = {
        name: common.distillation_trainer(
            teacher, student_name, batch, t, channels_last=channels_last, teacher_cache=True
        )
        for name, t in configs.items()
    }
    live = {
        name: common.distillation_trainer(teacher, student_name, batch, t, channels_last=channels_last)
        for name, t in configs.items()
    }
    for trainer in cached.values():  # store the batch's teacher outputs: every timed lookup hits
        trainer.cached_teacher_forward(batch["image"], trainer._network_input(batch["image"]))
    student = common.student_network(student_name, channels_last)
    student_batch = dict(batch)
    if channels_last:
        student_batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    supervised = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[student_batch],
        network=student,
        optimizer=torch.optim.Adam(student.parameters(), lr=1e-3),
        loss_function=common.seg_loss(),
        decollate=False,
    )
    reference = next(iter(live.values()))
    inputs = reference._network_input(batch["image"])
    variants = {
        "student step": lambda: supervised._iteration(supervised, student_batch),
        "teacher forward": lambda: reference.teacher_forward(inputs),
    }
    for name in configs:
        variants[f"cached step {name}"] = lambda t=cached[name]: t._iteration(t, batch)
        variants[f"live step {name}"] = lambda t=live[name]: t._iteration(t, batch)
    seconds = common.timed_rounds(variants, warmup, repeats)

    def ratio(a: str, b: str) -> dict[str, float]:
        return {k: seconds[a][k] / seconds[b][k] for k in ("cpu_s", "wall_s")}

    lookups = {name: {"hits": t.teacher_cache.hits, "misses": t.teacher_cache.misses} for name, t in cached.items()}
    if any(count["misses"] != batch_size for count in lookups.values()):  # the fill only
        raise RuntimeError(f"a timed cached step ran the teacher: {lookups}")
    return {
        "pair": pair,
        "teacher": teacher_name,
        "student": student_name,
        "size": size,
        "batch": batch_size,
        "channels_last": channels_last,
        "params": {"teacher": count_parameters(teacher), "student": count_parameters(student)},
        "cache": {name: {**lookups[name], "bytes": t.teacher_cache.nbytes} for name, t in cached.items()},
        "seconds": seconds,
        "cached_over_student": {name: ratio(f"cached step {name}", "student step") for name in configs},
        "live_over_student": {name: ratio(f"live step {name}", "student step") for name in configs},
        "cached_over_live": {name: ratio(f"cached step {name}", f"live step {name}") for name in configs},
    }


def markdown(rows: list[dict], meta: dict) -> str:
    """The section written into docs/performance.md."""
    lines = [
        common.provenance("teacher_cache.py", meta),
        "",
        "Cached step = `DistillationTrainer._iteration` with `teacher_cache=True`, every sample a hit; student step = "
        "`SupervisedTrainer._iteration` (DiceCE, Adam), same student; "
        + ("all channels-last" if meta["channels_last"] else "contiguous (NCHW) memory")
        + f". Each ratio is given as CPU time / wall-clock time; target: cached ÷ student ≤ {TARGET:.2f}.",
        "",
        "| pair | size | batch | student step (s) | teacher fwd (s) | loss | cached step (s) | **cached ÷ student** "
        "| live ÷ student | cached ÷ live | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["seconds"]
        for i, name in enumerate(r["cached_over_student"]):
            head = (
                f"| {r['teacher']} → {r['student']} | {r['size']}² | {r['batch']} | "
                f"{s['student step']['wall_s']:.3f} | {s['teacher forward']['wall_s']:.3f} "
                if i == 0
                else "| | | | | "
            )
            over, live, saved = (
                r["cached_over_student"][name],
                r["live_over_student"][name],
                r["cached_over_live"][name],
            )
            met = "met" if over["cpu_s"] <= TARGET else "**missed**"
            lines.append(
                f"{head}| {name} | {s[f'cached step {name}']['wall_s']:.3f} | "
                f"**{over['cpu_s']:.2f}** / {over['wall_s']:.2f} | {live['cpu_s']:.2f} / {live['wall_s']:.2f} | "
                f"{saved['cpu_s']:.2f} / {saved['wall_s']:.2f} | {met} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark with the command line ``argv`` (default ``sys.argv[1:]``)."""
    p = common.parser(__doc__.splitlines()[0], None, "teacher_cache", "docs/performance.md", 9, size=None)
    p.add_argument("--pairs", nargs="+", default=PAIRS, help="teacher:student@size, e.g. unet:enet@96")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--losses", nargs="*", default=None, choices=list(loss_configs()), help="(default: all)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(warmup=1)  # a step's one-time costs (optimiser state, first allocations) come with its first run
    args = common.parse_args(p, quick={"pairs": ["tiny_unet:tiny_unet@16"], "batch": 4}, argv=argv)
    configs = loss_configs()
    if args.losses:
        configs = {name: configs[name] for name in args.losses}
    meta = common.machine(
        args, batch=args.batch, pairs=args.pairs, losses=list(configs), channels_last=args.channels_last
    )
    rows = []
    for pair in args.pairs:
        rows.append(measure(pair, args.batch, configs, args.channels_last, args.warmup, args.repeats))
        r = rows[-1]
        print(
            f"{pair}: student step {r['seconds']['student step']['wall_s']:.3f} s; cached ÷ student (CPU / wall) "
            + ", ".join(f"{k} {v['cpu_s']:.2f} / {v['wall_s']:.2f}" for k, v in r["cached_over_student"].items()),
            flush=True,
        )
    common.record(args, meta, rows, markdown, (BEGIN, END), key="pairs")


if __name__ == "__main__":
    main()

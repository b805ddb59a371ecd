"""What every benchmark shares: its command line, the machine record, the timing loop, and how results are recorded.

Every script takes ``--quick`` (tiny sizes, one repeat, results to a temporary folder unless ``--out``/``--doc`` are
given): that is what ``mskd bench --quick`` and tests/benchmarks run to check that the scripts work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]


def parser(
    description: str,
    networks: list[str] | None,
    name: str,
    doc: str,
    repeats: int,
    size: int | None = 224,
    threads: int = 2,
) -> argparse.ArgumentParser:
    """The shared options; results go to ``docs/benchmarks/<name>.json`` and the table into ``doc``.

    ``--networks`` and ``--size`` exist unless ``networks``/``size`` are ``None`` (a script that sets them otherwise).
    Parse with :func:`parse_args`, which fills in ``--out``/``--doc`` and applies ``--quick``.
    """
    p = argparse.ArgumentParser(description=description)
    if networks is not None:
        p.add_argument("--networks", nargs="*", default=networks)
    if size is not None:
        p.add_argument("--size", type=int, default=size)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--out", type=Path, default=None, help=f"JSON results (default docs/benchmarks/{name}.json)")
    p.add_argument("--doc", type=Path, default=None, help=f"markdown whose table is replaced (default {doc})")
    p.add_argument("--quick", action="store_true", help="tiny sizes and one repeat, to check that the script runs")
    p.set_defaults(bench_name=name, bench_doc=doc)
    return p


def parse_args(
    p: argparse.ArgumentParser, quick: Mapping[str, Any], argv: list[str] | None = None
) -> argparse.Namespace:
    """Parse the command line; with ``--quick``, every option in ``quick`` still at its default takes that value.

    Without ``--quick`` results go to ``docs/benchmarks/<name>.json`` and the doc of :func:`parser`; with it, to a
    temporary folder and no doc, unless ``--out``/``--doc`` are given (so a check never overwrites the results).
    """
    args = p.parse_args(argv)
    if args.quick:
        for key, value in {"warmup": 1, "repeats": 1, "threads": 1, **quick}.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    if args.out is None:
        folder = Path(tempfile.mkdtemp(prefix="mskd-bench-")) if args.quick else ROOT / "docs" / "benchmarks"
        args.out = folder / f"{args.bench_name}.json"
    if args.doc is None and not args.quick:
        args.doc = ROOT / args.bench_doc
    torch.set_num_threads(args.threads)
    return args


def machine(args: argparse.Namespace, **extra: object) -> dict:
    """Machine, threads, versions and sizes of a run (benchmarks on shared machines are only read with these)."""
    return {
        "machine": f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cores)".replace("  ", " "),
        "threads": args.threads,
        "torch": torch.__version__,
        **extra,
        **({"size": args.size} if "size" in args else {}),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "quick": args.quick,
        "load_average_at_start": os.getloadavg()[0],
    }


def timed_rounds(
    variants: Mapping[str, Callable[[], object]], warmup: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Time several ways of doing something side by side.

    Each variant runs ``warmup`` times, then ``repeats`` rounds run every variant once, in reversed order every other
    round, so that load from other processes and its drift hit all variants alike.

    Args:
        variants: name -> function to time.
        warmup: untimed runs of each variant first.
        repeats: timed rounds.

    Returns:
        name -> ``{"wall_s": median wall-clock seconds, "cpu_s": median CPU seconds of this process,
        "warmup_wall_s": wall-clock seconds of the warm-up runs}``. CPU time (all threads of the process) is what a
        variant costs; on a busy machine the wall-clock time also holds the time spent waiting for a core. The
        warm-up time shows one-off costs (e.g. ``torch.compile``).
    """
    warmup_wall = {}
    for key, run in variants.items():
        start = time.perf_counter()
        for _ in range(warmup):
            run()
        warmup_wall[key] = time.perf_counter() - start
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for round_ in range(repeats):
        order = list(variants.items())
        for key, run in reversed(order) if round_ % 2 else order:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            run()
            cpu[key].append(time.process_time() - start_cpu)
            wall[key].append(time.perf_counter() - start_wall)
    return {
        k: {"wall_s": statistics.median(wall[k]), "cpu_s": statistics.median(cpu[k]), "warmup_wall_s": warmup_wall[k]}
        for k in variants
    }


def gflops(network: torch.nn.Module, *inputs: torch.Tensor) -> float:
    """GFLOPs of one forward pass (``torch.utils.flop_counter``: a multiply-add is 2 FLOPs; convolutions, matrix
    products and attention only, as that counter does)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        network(*inputs)
    return counter.get_total_flops() / 1e9


# Terms that compare logits (equal channel counts); every other distillation term is applied to tapped features.
LOGIT_TERMS = ("LogitDistillationLoss", "ChannelWiseDistillationLoss")
STAGES = ("low", "high")  # the bundles' distill_stages
SHORT_NAMES = {  # how docs/method.md names the terms; a class not listed here shows under its class name
    "LogitDistillationLoss": "KD",
    "FeatureFilteringDistillationLoss": "FFD",
    "RegionGraphDistillationLoss": "RGD",
    "ImportanceMapDistillationLoss": "IMD",
    "RegionAffinityDistillationLoss": "RAD",
    "ChannelWiseDistillationLoss": "CWD",
    "IntraClassFeatureVariationLoss": "IFVD",
    "PairwiseSimilarityDistillationLoss": "SKD",
}


def distillation_terms() -> dict[str, type]:
    """Every distillation term class that ``mskd.losses`` exports, by short name (:data:`SHORT_NAMES`, in its order)."""
    import mskd.losses

    classes = [
        cls
        for name in mskd.losses.__all__
        if isinstance(cls := getattr(mskd.losses, name), type)
        and issubclass(cls, mskd.losses.DistillationTermLoss)
        and cls is not mskd.losses.DistillationTermLoss
    ]
    order = list(SHORT_NAMES)
    classes.sort(key=lambda cls: order.index(cls.__name__) if cls.__name__ in order else len(order))
    return {SHORT_NAMES.get(cls.__name__, cls.__name__): cls for cls in classes}


def term_spec(cls: type, weight: float = 1.0, **kwargs: Any) -> dict:
    """A ``DistillationLoss`` term of class ``cls`` with default arguments: on the logits or on :data:`STAGES`."""
    spec = {"loss": cls(**kwargs), "weight": weight}
    return spec if cls.__name__ in LOGIT_TERMS else {**spec, "stages": list(STAGES)}


NUM_CLASSES = 9  # the Synapse label set


def seg_loss() -> Any:
    """The bundles' segmentation loss (0.5 CE + 0.5 Dice)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.5, lambda_ce=0.5)


def synthetic_batch(batch: int, size: int) -> dict[str, torch.Tensor]:
    """Random images and labels in 8×8 blocks of random classes (every class present, as in abdominal CT slices)."""
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, NUM_CLASSES, (batch, 1, 8, 8), generator=generator).float()
    label = torch.nn.functional.interpolate(blocks, size=(size, size), mode="nearest")
    return {"image": torch.rand(batch, 1, size, size, generator=generator), "label": label}


def student_network(name: str, channels_last: bool = False) -> torch.nn.Module:
    """The student, with the same initial weights in every trainer (channels-last if asked)."""
    from mskd.networks import get_network

    torch.manual_seed(1)
    network = get_network(name, 1, NUM_CLASSES)
    return network.to(memory_format=torch.channels_last) if channels_last else network


def distillation_trainer(teacher: torch.nn.Module, student: str, batch: dict, terms: dict, **options: Any) -> Any:
    """A ``DistillationTrainer`` as ``distill.json`` builds it (Adam, taps :data:`STAGES`) with ``terms``.

    ``options`` are further trainer arguments (``channels_last``, ``teacher_autocast``, ``teacher_cache``, ...).
    """
    import copy

    from mskd.engines import DistillationTrainer
    from mskd.losses import DistillationLoss
    from mskd.networks import default_taps

    network = student_network(student)
    if options.get("channels_last"):  # the option converts the teacher in place: give it its own copy
        teacher = copy.deepcopy(teacher)
    return DistillationTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[batch],
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=1e-3),
        loss_function=DistillationLoss(seg_loss(), terms),
        teacher=teacher,
        student_taps=default_taps(network, STAGES),
        teacher_taps=default_taps(teacher, STAGES),
        decollate=False,
        **options,
    )


def provenance(script: str, meta: dict) -> str:
    """The sentence under every table: what ran where, with which repeats, on how busy a machine."""
    return (
        f"Measured by `benchmarks/{script}` on {meta['machine']}, {meta['threads']} threads, torch {meta['torch']}; "
        f"median of {meta['repeats']} rounds after {meta['warmup']} warm-up runs. The machine was shared with other "
        f"jobs (1-minute load average {meta['load_average_at_start']:.1f} at the start, "
        f"{meta['load_average_at_end']:.1f} at the end): read the ratios, measured side by side in one run, rather "
        "than the seconds." + (" **Quick run (tiny sizes): not a result.**" if meta.get("quick") else "")
    )


def record(
    args: argparse.Namespace,
    meta: dict,
    rows: list[dict],
    table: Callable[[list, dict], str],
    markers: tuple[str, str],
    key: str = "networks",
) -> None:
    """Write the JSON (atomically) and replace the text between ``markers`` in the doc with ``table(rows, meta)``.

    The rows are stored under ``key``; the doc is left alone when ``args.doc`` is ``None`` or not a file.
    """
    meta["load_average_at_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, key: rows}, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    if args.doc is not None and args.doc.is_file():
        begin, end = markers
        text = args.doc.read_text()
        start, stop = text.index(begin) + len(begin), text.index(end)
        args.doc.write_text(text[:start] + "\n" + table(rows, meta) + "\n" + text[stop:])
        print(f"updated {args.doc}")

"""Benchmark every distillation loss: forward + backward time and peak memory against feature size, channels, classes.

Writes ``docs/benchmarks/losses.json`` and its section of ``docs/performance.md`` (between the markers), e.g.::

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/losses.py

Every term that ``mskd.losses`` exports (the MSKD terms and the baselines, found by class; default arguments, KD at
T = 4) is called as ``DistillationLoss`` calls it, on batch ``--batch`` with student features ``B, C_s, H, W``
(``requires_grad``), teacher features ``B, C_t, H, W``, labels and teacher logits at ``H × W`` (logit terms get
``B, K, H, W`` logits for both networks). Three sweeps from a base point (``--base``: H = W = 64, C_s = 32,
C_t = 64, K = 9): H = W over ``--sizes``; C_s = C_t over ``--channels``; K over ``--classes``. At each point all
terms are timed side by side (``common.timed_rounds``, CPU time of the process), forward + backward, on one thread
by default (a scaling law, not a latency: see ``main``).

Peak memory: the most tensor memory allocated during one forward + backward and alive at once, inputs excluded,
read from the allocation timeline of ``torch.profiler`` (``profile_memory=True``; a CPU has no
``max_memory_allocated``). Scaling exponent: least-squares slope of log(time) and log(memory) against log(H·W) over
the size sweep (1 = linear in pixels, 2 = quadratic); fixed per-call costs pull small sizes up, so the fit uses
sizes from ``--fit-from`` on.
"""

from __future__ import annotations

from typing import Any

import common  # benchmarks/common.py (the scripts run from this folder)
import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import Action

BEGIN, END = "<!-- losses:begin -->", "<!-- losses:end -->"
SETTINGS = {"KD": {"temperature": 4.0}}  # bundle settings where they differ from the class defaults


def inputs(batch: int, size: int, student_channels: int, teacher_channels: int, classes: int) -> dict:
    """Random student/teacher features and logits, and labels with every class present, at ``size``²."""
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, classes, (batch, 1, 8, 8), generator=generator).float()

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return {
        "student": rand(batch, student_channels, size, size),
        "teacher": rand(batch, teacher_channels, size, size),
        "student_logits": rand(batch, classes, size, size),
        "teacher_logits": rand(batch, classes, size, size),
        "target": torch.nn.functional.interpolate(blocks, size=(size, size), mode="nearest"),
    }


def forward_backward(loss: torch.nn.Module, logit_term: bool, data: dict) -> Any:
    """One forward + backward of a term, called as ``DistillationLoss`` calls it (logits or features)."""
    student = data["student_logits" if logit_term else "student"]
    teacher = data["teacher_logits" if logit_term else "teacher"]

    def run() -> None:
        loss(student.detach().requires_grad_(True), teacher, data["target"], data["teacher_logits"]).backward()

    return run


def peak_memory(run: Any) -> int:
    """Bytes of tensor memory allocated by ``run()`` and alive at once at the peak (torch.profiler timeline)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as p:
        run()
    live = peak = 0
    for _, action, _, size in sorted(p._memory_profile().timeline, key=lambda event: event[0]):
        live += size if action == Action.CREATE else -size if action == Action.DESTROY else 0
        peak = max(peak, live)
    return peak


def measure_point(terms: dict[str, type], point: dict[str, int], warmup: int, repeats: int) -> dict[str, dict]:
    """Time and peak memory of every term at one point (``batch``, ``size``, channels, ``classes``)."""
    data = inputs(**point)
    runs = {
        name: forward_backward(cls(**SETTINGS.get(name, {})), cls.__name__ in common.LOGIT_TERMS, data)
        for name, cls in terms.items()
    }
    seconds = common.timed_rounds(runs, warmup, repeats)
    return {name: {**seconds[name], "peak_bytes": peak_memory(run)} for name, run in runs.items()}


def exponent(pixels: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(pixels)."""
    return float(np.polyfit(np.log(pixels), np.log(values), 1)[0])


def markdown(rows: list[dict], meta: dict) -> str:
    """The section written into docs/performance.md."""
    base = meta["base"]
    terms = list(rows[0]["exponent_time"])
    lines = [
        common.provenance("losses.py", meta),
        "",
        f"Forward + backward of each term alone, batch {base['batch']}; base point H = W = {base['size']}, "
        f"C_s = {base['student_channels']}, C_t = {base['teacher_channels']}, K = {base['classes']}. "
        "Time: CPU ms; memory: peak MiB of tensors allocated by the term (torch.profiler). Exponent: slope of "
        f"log(time) and log(memory) against log(H·W), fitted over H = W ≥ {meta['fit_from']} (1 = linear in pixels, "
        "2 = quadratic).",
        "",
        "| sweep | value | " + " | ".join(terms) + " |",
        "|---|---|" + "---|" * len(terms),
    ]
    for row in rows[0]["sweeps"]:
        cells = [
            f"{1000 * row['terms'][t]['cpu_s']:.1f} ms / {row['terms'][t]['peak_bytes'] / 2**20:.1f} MiB" for t in terms
        ]
        lines.append(f"| {row['sweep']} | {row['value']} | " + " | ".join(cells) + " |")
    lines.append(
        "| **exponent in H·W** | time / memory | "
        + " | ".join(f"**{rows[0]['exponent_time'][t]:.2f}** / {rows[0]['exponent_memory'][t]:.2f}" for t in terms)
        + " |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark with the command line ``argv`` (default ``sys.argv[1:]``)."""
    # One thread by default: on a shared machine, two threads' OpenMP barrier waits swamp the small sizes (CPU time
    # 3-10x the one-thread time, varying from round to round), which would bend the fitted exponents.
    p = common.parser(__doc__.splitlines()[0], None, "losses", "docs/performance.md", 7, size=None, threads=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--base", type=int, nargs=4, default=[64, 32, 64, 9], metavar=("SIZE", "C_S", "C_T", "K"))
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--channels", type=int, nargs="*", default=[16, 64, 256])
    p.add_argument("--classes", type=int, nargs="*", default=[2, 9, 14])
    p.add_argument("--fit-from", type=int, default=64, help="smallest H = W in the fit of the exponents")
    args = common.parse_args(
        p,
        quick={"batch": 2, "base": [16, 4, 8, 3], "sizes": [8, 16], "channels": [4], "classes": [3], "fit_from": 8},
        argv=argv,
    )
    size, student_channels, teacher_channels, classes = args.base
    base = {
        "batch": args.batch,
        "size": size,
        "student_channels": student_channels,
        "teacher_channels": teacher_channels,
        "classes": classes,
    }
    terms = common.distillation_terms()
    sweeps = [("H = W", "size", v) for v in args.sizes]
    sweeps += [("C_s = C_t", ("student_channels", "teacher_channels"), v) for v in args.channels]
    sweeps += [("K", "classes", v) for v in args.classes]
    rows = []
    for sweep, keys, value in sweeps:
        point = {**base, **dict.fromkeys((keys,) if isinstance(keys, str) else keys, value)}
        rows.append({"sweep": sweep, "value": value, "point": point})
        rows[-1]["terms"] = measure_point(terms, point, args.warmup, args.repeats)
        print(
            f"{sweep} = {value}: " + ", ".join(f"{t} {1000 * v['cpu_s']:.1f} ms" for t, v in rows[-1]["terms"].items()),
            flush=True,
        )
    fit = [r for r in rows if r["sweep"] == "H = W" and r["value"] >= args.fit_from]
    pixels = [r["value"] ** 2 for r in fit]
    result = {
        "sweeps": rows,
        "exponent_time": {t: exponent(pixels, [r["terms"][t]["cpu_s"] for r in fit]) for t in terms},
        "exponent_memory": {t: exponent(pixels, [r["terms"][t]["peak_bytes"] for r in fit]) for t in terms},
    }
    meta = common.machine(args, base=base, fit_from=args.fit_from, terms={t: c.__name__ for t, c in terms.items()})
    common.record(args, meta, [result], markdown, (BEGIN, END), key="results")


if __name__ == "__main__":
    main()

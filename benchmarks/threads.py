"""Benchmark a training step's threads: 1 or 2 OpenMP threads, waiting actively (spinning) or passively.

Writes ``docs/benchmarks/threads.json`` and its section of ``docs/performance.md`` (between the markers), e.g.::

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/threads.py

OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads it, so every configuration (policy x threads) runs in its own
worker process: the network's training step (the bundle's segmentation loss, Adam) on a synthetic batch, ``--steps``
steps after ``--warmup``, median step time. The workers run in rounds, each round every configuration once, in
reversed order every other round, so that the machine's load hits all alike. Reported per network: each
configuration's step time ÷ the one-thread step time. Run it on an idle machine and on a busy one (another job on
the cores): the choice ``mskd`` makes (``OMP_WAIT_POLICY=PASSIVE``, torch's default thread count) must be fast on
the first and never catastrophic on the second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import common  # benchmarks/common.py (the scripts run from this folder)

CONFIGS = [("PASSIVE", 1), ("ACTIVE", 2), ("PASSIVE", 2)]  # one thread waits for nobody: its policy does not matter
BEGIN, END = "<!-- threads:begin -->", "<!-- threads:end -->"


def _worker(network: str, size: int, batch: int, warmup: int, steps: int) -> None:
    """One configuration's median step time, printed as JSON (the environment holds its policy and threads)."""
    import torch

    model = common.student_network(network)
    loss_fn, data = common.seg_loss(), common.synthetic_batch(batch, size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(data["image"]), data["label"]).backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    print(json.dumps({"step_s": statistics.median(times), "threads": torch.get_num_threads()}))


def _run(policy: str, threads: int, network: str, args) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "--worker", network, "--size", str(args.size), "--batch", str(args.batch)]
    command += ["--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(threads)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["step_s"]


def _table(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Training step ({meta['size']}², batch {meta['batch']}), step time ÷ one thread's, median of "
        f"{meta['repeats']} worker processes per configuration:",
        "",
        "| network | 1 thread (ms) | 2 threads, spinning (ACTIVE) | 2 threads, passive (PASSIVE, mskd's default) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        ms = row["step_ms"]
        one = ms["PASSIVE-1"]
        lines.append(f"| {row['network']} | {one:.0f} | {ms['ACTIVE-2'] / one:.2f} | {ms['PASSIVE-2'] / one:.2f} |")
    lines += ["", common.provenance("threads.py", meta)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__.splitlines()[0], ["unet", "tiny_unet"], "threads", "docs/performance.md", 3, size=96)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one configuration, this process
    args = common.parse_args(p, {"size": 32, "batch": 2, "steps": 2, "networks": ["tiny_unet"]}, argv)
    if args.worker is not None:
        _worker(args.worker, args.size, args.batch, args.warmup, args.steps)
        return
    meta = common.machine(args, batch=args.batch, steps=args.steps, cores=os.cpu_count())
    meta["threads"] = max(threads for _, threads in CONFIGS)
    rows = []
    for network in args.networks:
        times: dict[str, list[float]] = {f"{policy}-{threads}": [] for policy, threads in CONFIGS}
        for round_ in range(args.repeats):
            for policy, threads in reversed(CONFIGS) if round_ % 2 else CONFIGS:
                times[f"{policy}-{threads}"].append(_run(policy, threads, network, args))
        rows.append({"network": network, "step_ms": {k: 1000 * statistics.median(v) for k, v in times.items()}})
        print(rows[-1])
    common.record(args, meta, rows, _table, (BEGIN, END))


if __name__ == "__main__":
    main()

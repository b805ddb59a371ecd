"""What every benchmark shares: its command line, the machine it ran on, and how results are recorded."""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def parser(description: str, networks: list[str], name: str, doc: str, repeats: int) -> argparse.ArgumentParser:
    """The shared options; results go to ``docs/benchmarks/<name>.json`` and the table into ``doc``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--networks", nargs="*", default=networks)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / f"{name}.json")
    p.add_argument("--doc", type=Path, default=ROOT / doc)
    return p


def machine(args: argparse.Namespace, **extra: object) -> dict:
    """Machine, threads, versions and sizes of a run (benchmarks on shared machines are only read with these)."""
    return {
        "machine": f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cores)".replace("  ", " "),
        "threads": args.threads,
        "torch": torch.__version__,
        **extra,
        "size": args.size,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "load_average_at_start": os.getloadavg()[0],
    }


def record(
    args: argparse.Namespace, meta: dict, rows: list[dict], table: Callable[[list, dict], str], markers: tuple[str, str]
) -> None:
    """Write the JSON (atomically) and replace the text between ``markers`` in the doc with ``table(rows, meta)``."""
    meta["load_average_at_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "networks": rows}, indent=2))
    tmp.replace(args.out)
    if args.doc.is_file():
        begin, end = markers
        text = args.doc.read_text()
        start, stop = text.index(begin) + len(begin), text.index(end)
        args.doc.write_text(text[:start] + "\n" + table(rows, meta) + "\n" + text[stop:])
        print(f"updated {args.doc}")

"""`mskd` console entry point: thin wrappers over importable functions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _phantom(args: argparse.Namespace) -> None:
    from mskd.data.phantom import generate_phantom_dataset

    path = generate_phantom_dataset(
        args.out,
        task=args.task,
        cases=args.cases,
        seed=args.seed,
        size=tuple(args.size),
        difficulty=args.difficulty,
        fov_jitter=args.fov_jitter,
        test_cases=args.test_cases,
        progress=True,
    )
    print(f"wrote {path}")


def _demo(args: argparse.Namespace) -> None:
    from mskd.demo import run_demo

    run_demo(args.workdir, bundle=args.bundle, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mskd`` (one sub-command per use case)."""
    parser = argparse.ArgumentParser(prog="mskd", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    phantom = commands.add_parser(
        "phantom",
        help="write synthetic abdominal CT phantoms (NIfTI + dataset.json)",
        epilog="example: mskd phantom --task synapse --out data/phantom --cases 16 --seed 0 --size 96 96 48",
    )
    phantom.add_argument("--task", default="synapse", choices=["synapse", "kits"], help="label set")
    phantom.add_argument("--out", required=True, help="output folder (created)")
    phantom.add_argument("--cases", type=int, default=16, help="number of volumes")
    phantom.add_argument("--test-cases", type=int, default=None, help="held-out cases (default: a quarter)")
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--size", type=int, nargs=3, default=[96, 96, 48], metavar=("X", "Y", "Z"))
    phantom.add_argument("--difficulty", type=float, default=1.0, help="noise, deformation and intensity overlap")
    phantom.add_argument(
        "--fov-jitter", type=float, default=0.15, help="per-case field of view varies by up to this fraction"
    )
    phantom.set_defaults(func=_phantom)

    demo = commands.add_parser(
        "demo",
        help="phantoms -> teacher -> student baseline -> distilled student -> evaluation table",
        epilog="example: mskd demo --workdir demo",
    )
    demo.add_argument("--workdir", default="demo", help="where data, checkpoints and the MLflow store go")
    demo.add_argument("--bundle", default="bundles/mskd_synapse", help="bundle folder")
    demo.add_argument("--quick", action="store_true", help="tiny sizes and one epoch (a smoke test, not results)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mskd``; returns the exit status (1 with a one-line message on a known error)."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"mskd {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

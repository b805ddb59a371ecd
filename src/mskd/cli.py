"""`mskd` console entry point: thin wrappers over importable functions."""

from __future__ import annotations

import argparse
import os
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


def _predict(args: argparse.Namespace) -> None:
    from mskd.predict import predict

    written = predict(args.bundle, args.input, args.output, args.checkpoint, args.student, args.image_size)
    for path in written:
        print(f"wrote {path}")


def _export(args: argparse.Namespace) -> None:
    from mskd.export import bundle_export

    report = bundle_export(args.bundle, args.checkpoint, args.out, args.format, args.student, args.image_size)
    print(
        f"wrote {report['path']} ({report['format']}, {report['size_bytes'] / 1e6:.1f} MB); "
        f"max |export - eager| = {report['max_abs_diff']:.2e} <= {report['tolerance']:.0e}"
    )


def _add_student_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", default="bundles/mskd_synapse", help="bundle folder")
    parser.add_argument("--checkpoint", default=None, help="student weights (default: BUNDLE/models/model.pt)")
    parser.add_argument("--student", default=None, help="student network name, if not the bundle's default")
    parser.add_argument("--image-size", type=int, default=None, help="in-plane size the student was trained at")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mskd`` (one sub-command per use case)."""
    debug_help = "show full tracebacks instead of one-line errors (the same as MSKD_DEBUG=1)"
    parser = argparse.ArgumentParser(prog="mskd", description=__doc__)
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # --debug is also accepted after the sub-command (SUPPRESS: the sub-command does not reset the top-level value)
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    commands = parser.add_subparsers(dest="command", required=True)

    phantom = commands.add_parser(
        "phantom",
        parents=[debug],
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
        parents=[debug],
        help="phantoms -> teacher -> student baseline -> distilled student -> evaluation table",
        epilog="example: mskd demo --workdir demo",
    )
    demo.add_argument("--workdir", default="demo", help="where data, checkpoints and the MLflow store go")
    demo.add_argument("--bundle", default="bundles/mskd_synapse", help="bundle folder")
    demo.add_argument("--quick", action="store_true", help="tiny sizes and one epoch (a smoke test, not results)")
    demo.set_defaults(func=_demo)

    predict = commands.add_parser(
        "predict",
        parents=[debug],
        help="segment NIfTI files or DICOM series with a bundle's student (labels on the input's grid)",
        epilog="example: mskd predict --bundle bundles/mskd_synapse --input CT.nii.gz --output predictions",
    )
    predict.add_argument("--input", required=True, help="a NIfTI file, a folder of them, or DICOM series folder(s)")
    predict.add_argument("--output", required=True, help="folder for the <name>_seg.nii.gz label maps")
    _add_student_args(predict)
    predict.set_defaults(func=_predict)

    export = commands.add_parser(
        "export",
        parents=[debug],
        help="export a bundle's student to ONNX or TorchScript, checked against the eager network",
        epilog="example: mskd export --format onnx --bundle bundles/mskd_synapse --out student.onnx",
    )
    export.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    export.add_argument("--out", default=None, help="output file (default: BUNDLE/models/model.onnx or model.ts)")
    _add_student_args(export)
    export.set_defaults(func=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mskd``; returns the exit status (1 with a one-line message on a known error).

    Problems found by the up-front checks (:mod:`mskd.validation`) are listed, one line each, and exit with status
    2. ``--debug`` (or ``MSKD_DEBUG=1``) raises every error with its traceback instead.
    """
    from mskd.validation import DEBUG_ENV, debug_enabled

    args = build_parser().parse_args(argv)
    debug = args.debug or debug_enabled()
    previous = os.environ.get(DEBUG_ENV)
    if debug:
        os.environ[DEBUG_ENV] = "1"  # seen by the checks of the bundles run in this process
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
        if debug:
            raise
        print(f"mskd {args.command}: error: {e}", file=sys.stderr)
        return 1
    finally:
        if previous is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = previous
    return 0


if __name__ == "__main__":
    sys.exit(main())

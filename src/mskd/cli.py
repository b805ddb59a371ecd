"""`mskd` console entry point: thin wrappers over importable functions."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BENCHMARKS", "build_parser", "main"]

OMP_WAIT_POLICY = "OMP_WAIT_POLICY"  # read by OpenMP once, when torch loads it

# benchmarks/<name>.py
BENCHMARKS = ("networks", "export", "training_step", "losses", "inference", "data", "teacher_cache", "threads")


# config id -> the workflow flag that sets it (every other override comes from --set)
_FLAGS = {
    "dataset_dir": "--dataset-dir",
    "data_format": "--data-format",
    "teacher": "--teacher",
    "student": "--student",
    "max_epochs": "--epochs",
    "seed": "--seed",
    "output_dir": "--output-dir",
    "ckpt_dir": "--output-dir",  # its models/ folder
}
_INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)


class UsageError(Exception):
    """A command line that cannot be run as given (exit status 2, as argparse's own usage errors); one line each."""


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


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The bundle overrides of a workflow command: its flags that were given, then every ``--set`` (which wins)."""
    values = {
        "dataset_dir": args.dataset_dir,
        "data_format": args.data_format,
        "teacher": args.teacher,
        "student": args.student,
        "max_epochs": getattr(args, "epochs", None),
        "seed": args.seed,
    }
    if args.output_dir is not None:
        values.update(output_dir=args.output_dir, ckpt_dir=os.path.join(args.output_dir, "models"))
    return {**{k: v for k, v in values.items() if v is not None}, **dict(args.set)}


def _checked_overrides(args: argparse.Namespace, files: Sequence[str]) -> dict[str, Any]:
    """:func:`_overrides`, checked before anything runs against the bundle's config stack ``files``.

    Raises:
        UsageError: one line per override that runs Python code (without ``--allow-code``) and per ``--set`` key
            that the stack does not have (naming the nearest existing key).
        FileNotFoundError: when ``--bundle`` is not an mskd bundle.
    """
    from mskd.overrides import code_in_overrides, unknown_keys
    from mskd.workflows import bundle_folder

    overrides = _overrides(args)
    sets = dict(args.set)
    code = [] if args.allow_code else code_in_overrides(overrides)
    sources = dict.fromkeys(f"--set {key}" if key in sets else _FLAGS[key] for key in code)  # --output-dir once
    problems = [
        f"{source}: would run Python code (a $ expression, a _target_ or a % file macro); pass --allow-code if you "
        "trust it"
        for source in sources
    ]
    keys = [key for key in sets if key not in code]
    if keys:
        bundle_folder(args.bundle)  # not a bundle: its message says to pass --bundle
        configs = Path(args.bundle) / "configs"  # as given, for the messages
        unknown = unknown_keys([configs / f for f in files], keys, configs / "metadata.json")
        problems += [f"--set {line}" for line in unknown]
    if problems:
        raise UsageError("\n".join(problems))
    return overrides


def _train(args: argparse.Namespace) -> None:
    from mskd.workflows import STACKS, train

    overrides = _checked_overrides(args, STACKS[args.method])
    print(train(args.bundle, args.method, **overrides).table())


def _evaluate(args: argparse.Namespace) -> None:
    from mskd.workflows import EVALUATE, STACKS, evaluate

    overrides = _checked_overrides(args, (*STACKS[args.method], EVALUATE))
    print(evaluate(args.bundle, args.method, **overrides).table())


def _experiment(args: argparse.Namespace) -> None:
    from mskd.experiment import run_experiment

    run_experiment(args.config, workdir=args.workdir, dry_run=args.dry_run, allow_code=args.allow_code)


def _bench(args: argparse.Namespace) -> None:
    root = Path(__file__).resolve().parents[2]  # src/mskd/cli.py -> the repository
    folder = root / "benchmarks"
    if not folder.is_dir():
        raise UsageError(
            f"no benchmarks folder at {folder}: the benchmarks come with the repository, not with an installed "
            "package; run `mskd bench` from a clone (git clone, then pip install -e .)"
        )
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        raise UsageError(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    missing = [n for n in names if not (folder / f"{n}.py").is_file()]
    if missing:
        raise UsageError(f"no benchmark script {', '.join(f'benchmarks/{n}.py' for n in missing)} in {root}")
    for name in names:
        command = [sys.executable, str(folder / f"{name}.py"), *(["--quick"] if args.quick else [])]
        print(f"$ {' '.join(command)}", flush=True)
        code = subprocess.call(command, cwd=root)
        if code != 0:
            raise RuntimeError(f"benchmarks/{name}.py failed with exit status {code} (its output is above)")


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
    parser.add_argument(
        "--student", default=None, help="student network name (default: the checkpoint's, else the bundle's)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="in-plane slice size (default: the checkpoint's, else the bundle's)",
    )


def _assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set``: the value read as JSON (numbers, true/false/null, lists, objects), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. learning_rate=0.002), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_workflow_args(parser: argparse.ArgumentParser) -> None:
    """The flags every bundle workflow command shares (each one a bundle override; ``--set`` for any other)."""
    parser.add_argument("--bundle", default="bundles/mskd_synapse", help="bundle folder")
    parser.add_argument("--dataset-dir", default=None, help="the data (default: the bundle's dataset_dir)")
    parser.add_argument(
        "--data-format", default=None, help="layout of --dataset-dir: msd (default), synapse_npz, btcv, kits19"
    )
    parser.add_argument("--teacher", default=None, help="teacher network name (the bundle's default: transunet)")
    parser.add_argument("--student", default=None, help="student network name (the bundle's default: tiny_unet)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (part of the run name)")
    parser.add_argument(
        "--output-dir",
        default=None,
        help="MLflow store, artefacts and executed configs; checkpoints in its models/ (default: the bundle's "
        "output/ and models/)",
    )
    parser.add_argument(
        "--set",
        type=_assignment,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other bundle override, repeatable; VALUE is read as JSON, else as a string "
        '(--set image_size=96 --set mlflow=false --set \'tracking_tags_extra={"experiment": "a"}\'); '
        "KEY must be in the bundle's config",
    )
    parser.add_argument(
        "--allow-code",
        action="store_true",
        help="let override values run Python code: $ expressions, _target_ components, %% macros naming a file "
        "(refused otherwise; only for overrides you trust)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mskd`` (one sub-command per use case, each ``--help`` ending with an example)."""
    from mskd.workflows import STACKS

    debug_help = "show full tracebacks instead of one-line errors (the same as MSKD_DEBUG=1)"
    parser = argparse.ArgumentParser(prog="mskd", description=__doc__)
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # --debug is also accepted after the sub-command (SUPPRESS: the sub-command does not reset the top-level value)
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Any, summary: str, example: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=[debug],
            help=summary,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,  # the example stays one line, to copy
        )
        sub.set_defaults(func=func)
        return sub

    phantom = command(
        "phantom",
        _phantom,
        "write synthetic abdominal CT phantoms (NIfTI + dataset.json)",
        "mskd phantom --task synapse --out data/phantom --cases 16 --seed 0 --size 96 96 48",
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

    cpu = "--dataset-dir data/phantom --teacher unet --student tiny_unet --set image_size=96"
    for name, method, what in (
        ("train-teacher", "teacher", "train the teacher"),
        ("train-student", "baseline", "train the student alone (the baseline)"),
        ("distill", "mskd", "distil the trained teacher into the student (KD + FFD + RGD)"),
    ):
        train = command(
            name, _train, f"{what}: the bundle's {' + '.join(STACKS[method])}", f"mskd {name} {cpu} --epochs 40"
        )
        _add_workflow_args(train)
        train.add_argument("--epochs", type=int, default=None, help="training epochs (the bundle's max_epochs)")
        train.set_defaults(method=method)

    evaluate = command(
        "evaluate",
        _evaluate,
        "score a trained model on the test cases, per organ (its training stack + evaluate.json)",
        f"mskd evaluate --method mskd {cpu}",
    )
    evaluate.add_argument(
        "--method",
        default="mskd",
        choices=list(STACKS),
        help="the teacher, the student trained alone (baseline), or the distilled student (mskd, the default)",
    )
    _add_workflow_args(evaluate)

    experiment = command(
        "experiment",
        _experiment,
        "run (or resume) a matrix of teacher/student/method/seed runs from a YAML file, then tabulate it",
        "mskd experiment configs/experiments/phantom_cpu.yaml --dry-run",
    )
    experiment.add_argument("config", help="the experiment YAML file")
    experiment.add_argument("--workdir", default=None, help="data, checkpoints, logs and the MLflow store")
    experiment.add_argument("--dry-run", action="store_true", help="list the planned runs; train nothing")
    experiment.add_argument(
        "--allow-code",
        action="store_true",
        help="let the file's overrides run Python code ($ expressions, _target_, %% file macros; refused otherwise)",
    )

    bench = command(
        "bench",
        _bench,
        "run the performance benchmarks of a repository clone (benchmarks/<name>.py; results go to docs/)",
        "mskd bench networks losses --quick",
    )
    bench.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHMARKS)} (default: all)")
    bench.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a smoke test, not results)")

    demo = command(
        "demo",
        _demo,
        "phantoms -> teacher -> student baseline -> distilled student -> evaluation table",
        "mskd demo --workdir demo",
    )
    demo.add_argument("--workdir", default="demo", help="where data, checkpoints and the MLflow store go")
    demo.add_argument("--bundle", default="bundles/mskd_synapse", help="bundle folder")
    demo.add_argument("--quick", action="store_true", help="tiny sizes and one epoch (a smoke test, not results)")

    predict = command(
        "predict",
        _predict,
        "segment NIfTI files or DICOM series with a bundle's student (labels on the input's grid)",
        "mskd predict --bundle bundles/mskd_synapse --input CT.nii.gz --output predictions",
    )
    predict.add_argument("--input", required=True, help="a NIfTI file, a folder of them, or DICOM series folder(s)")
    predict.add_argument("--output", required=True, help="folder for the <name>_seg.nii.gz label maps")
    _add_student_args(predict)

    export = command(
        "export",
        _export,
        "export a bundle's student to ONNX or TorchScript, checked against the eager network",
        "mskd export --format onnx --bundle bundles/mskd_synapse --out student.onnx",
    )
    export.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    export.add_argument("--out", default=None, help="output file (default: BUNDLE/models/model.onnx or model.ts)")
    _add_student_args(export)
    return parser


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from (``__cause__``, else an unsuppressed ``__context__``)."""
    chain = [error]
    while True:
        last = chain[-1]
        inner = last.__cause__ if last.__cause__ is not None or last.__suppress_context__ else last.__context__
        if inner is None or any(inner is e for e in chain):
            return chain
        chain.append(inner)


def _raised_by_mskd(error: BaseException) -> bool:
    """Whether ``error`` was raised in mskd's own code (the last frame of its traceback is in the package)."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    name = tb.tb_frame.f_globals.get("__name__", "")
    return name == "mskd" or name.startswith("mskd.")


def _one_line(error: BaseException) -> str:
    """The message that reports ``error`` in one line.

    It is that of the outermost exception of the chain raised by mskd's own code (a message written to say what to
    fix, which MONAI's "Failed to instantiate component" and "Failed to evaluate ConfigExpression" wrap), else that
    of the innermost (the root cause); its first line, after the type name when the message alone says too little.
    """
    chain = _chain(error)
    reported = next((e for e in chain if _raised_by_mskd(e)), chain[-1])
    text = next((line.strip() for line in str(reported).splitlines() if line.strip()), "")
    if text and not isinstance(reported, KeyError):  # a KeyError's message is the bare key
        return text
    return f"{type(reported).__name__}: {text}" if text else type(reported).__name__


@contextlib.contextmanager
def _log_without_tracebacks() -> Iterator[None]:
    """Inside, log records carry no traceback: MONAI's StatsHandler logs one for any error in an engine, which
    :func:`main` reports in one line. The records are made bare, as the bundle's logging config replaces the handlers
    and a logger's filter misses the records of its children."""
    make = logging.getLogRecordFactory()

    def bare(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.exc_info = record.exc_text = None
        return record

    logging.setLogRecordFactory(bare)
    try:
        yield
    finally:
        logging.setLogRecordFactory(make)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mskd``; returns the exit status: 0, 1 on an error, 2 on a refused command line, 130 on Ctrl-C.

    An error is reported in one line, with the project's own message from its exception chain (see
    :func:`_one_line`). Problems found by the up-front checks (:mod:`mskd.validation`) are listed, one line each,
    and exit with status 2, as do command lines that cannot be run (argparse's usage errors, an unknown ``--set``
    key, an override that runs code without ``--allow-code``, and ``mskd bench`` outside a clone). Ctrl-C prints one
    line. ``--debug`` (or ``MSKD_DEBUG=1``) raises every error, and the interrupt, with its traceback instead.

    Sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already set) before torch loads: OpenMP threads that spin while they
    wait made a training step 3-6x slower on a busy 2-core machine, while passive ones cost nothing on an idle one.
    """
    os.environ.setdefault(OMP_WAIT_POLICY, "PASSIVE")
    from mskd.validation import DEBUG_ENV, debug_enabled

    args = build_parser().parse_args(argv)
    debug = args.debug or debug_enabled()
    previous = os.environ.get(DEBUG_ENV)
    if debug:
        os.environ[DEBUG_ENV] = "1"  # seen by the checks of the bundles run in this process
    try:
        with contextlib.nullcontext() if debug else _log_without_tracebacks():
            args.func(args)
    except UsageError as e:
        for line in str(e).splitlines():
            print(f"mskd {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        resume = "; run the same command again to resume" if args.func is _train else ""
        print(f"mskd {args.command}: interrupted{resume}", file=sys.stderr)
        return _INTERRUPTED
    except Exception as e:
        if debug:
            raise
        print(f"mskd {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    finally:
        if previous is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = previous
    return 0


if __name__ == "__main__":
    sys.exit(main())

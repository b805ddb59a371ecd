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


# The flags that set a bundle value: config id -> (type, help) of its flag, spelled `--` + the id with `-` for `_`
# (`--dataset-dir` sets `dataset_dir`; the bundle's own spelling, `--dataset_dir`, is accepted too). Every other
# value comes from `--set`. The workflow commands (train-*, distill, evaluate) take these ...
_WORKFLOW_FLAGS: dict[str, tuple[type, str]] = {
    "dataset_dir": (str, "the data (default: the bundle's dataset_dir)"),
    "data_format": (str, "layout of --dataset-dir: msd (default), synapse_npz, btcv, kits19"),
    "teacher": (str, "teacher network name (the bundle's default: transunet)"),
    "student": (str, "student network name (the bundle's default: tiny_unet)"),
    "image_size": (int, "in-plane slice size (the bundle's default: 224); the same for every command of a run"),
    "seed": (int, "random seed (part of the run name)"),
    "output_dir": (
        str,
        "MLflow store, artefacts and executed configs; checkpoints in its models/ (sets ckpt_dir too; default: the "
        "bundle's output/ and models/)",
    ),
}
# ... and the training ones (train-*, distill) also this
_TRAINING_FLAGS: dict[str, tuple[type, str]] = {"max_epochs": (int, "training epochs (the bundle's default: 150)")}
# ... and predict and export, which run a trained student (inference.json's ids), these
_STUDENT_FLAGS: dict[str, tuple[type, str]] = {
    "ckpt_path": (str, "student weights (default: BUNDLE/models/model.pt)"),
    "student": (str, "student network name (default: the checkpoint's, else the bundle's)"),
    "image_size": (int, "in-plane slice size (default: the checkpoint's, else the bundle's)"),
}
# Flags renamed to the spelling above (mskd 0.x renames outright): command -> {old: new}; the old one is refused
# with a line that names the new one.
_RENAMED: dict[str, dict[str, str]] = {
    "phantom": {"--out": "--output-dir"},
    **{name: {"--epochs": "--max-epochs"} for name in ("train-teacher", "train-student", "distill")},
    "predict": {"--output": "--output-dir", "--checkpoint": "--ckpt-path"},
    "export": {"--out": "--output-file", "--checkpoint": "--ckpt-path"},
}
_INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)


class UsageError(Exception):
    """A command line that cannot be run as given (exit status 2, as argparse's own usage errors); one line each."""


def _flag(key: str) -> str:
    """The flag that sets bundle id ``key``: ``--`` and ``key`` with ``-`` for ``_`` (``ckpt_dir``: --output-dir)."""
    return "--output-dir" if key == "ckpt_dir" else "--" + key.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    """An argument parser that also takes its flags in the bundle's spelling and names the new spelling of an old one.

    ``--dataset_dir`` is read as ``--dataset-dir`` (any ``--a_b`` whose ``--a-b`` is a flag of this parser, also in
    ``--a_b=value``), so a ``monai.bundle run`` override works after ``mskd`` too; a flag in ``renamed`` (old -> new)
    is a usage error that names the new flag. Every other word goes to argparse unchanged (an unknown flag gets its
    usual error). Sub-commands are parsed by their own parser, of this class, with their own flags.

    Args:
        renamed: old flag -> the flag that replaced it.
    """

    def __init__(self, *args: Any, renamed: dict[str, str] | None = None, **kwargs: Any) -> None:
        self.renamed = dict(renamed or {})
        self.flags: set[str] = set()  # filled by add_argument, which ArgumentParser.__init__ calls for --help
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.flags.update(s for s in action.option_strings if s.startswith("--"))
        return action

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        words = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self._spelled(words), namespace)

    def _spelled(self, words: list[str]) -> list[str]:
        """``words`` with this parser's flags in their ``-`` spelling; exits (status 2) on a renamed flag."""
        spelled = []
        for i, word in enumerate(words):
            if word == "--":  # the rest are values
                return spelled + words[i:]
            name, sep, value = word.partition("=")
            if name.startswith("--"):
                if name in self.renamed:
                    self.error(f"{name} was renamed: use {self.renamed[name]}")
                if name.replace("_", "-") in self.flags:
                    word = name.replace("_", "-") + sep + value
            spelled.append(word)
        return spelled


def _phantom(args: argparse.Namespace) -> None:
    from mskd.data.phantom import generate_phantom_dataset

    path = generate_phantom_dataset(
        args.output_dir,
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
    values = {key: getattr(args, key, None) for key in (*_WORKFLOW_FLAGS, *_TRAINING_FLAGS)}  # evaluate: no epochs
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
    from mskd.bundle import Bundle
    from mskd.overrides import code_in_overrides, unknown_keys

    overrides = _overrides(args)
    sets = dict(args.set)
    code = [] if args.allow_code else code_in_overrides(overrides)
    sources = dict.fromkeys(f"--set {key}" if key in sets else _flag(key) for key in code)  # --output-dir once
    problems = [
        f"{source}: would run Python code (a $ expression, a _target_ or a % file macro); pass --allow-code if you "
        "trust it"
        for source in sources
    ]
    keys = [key for key in sets if key not in code]
    if keys:
        Bundle(args.bundle)  # not a bundle: its message says to pass --bundle
        configs = Path(args.bundle) / "configs"  # as given, for the messages
        unknown = unknown_keys([configs / f for f in files], keys, configs / "metadata.json")
        problems += [f"--set {line}" for line in unknown]
    if problems:
        raise UsageError("\n".join(problems))
    return overrides


def _train(args: argparse.Namespace) -> None:
    from mskd.bundle import Bundle
    from mskd.workflows import train

    overrides = _checked_overrides(args, Bundle.stack(args.method))
    print(train(args.bundle, args.method, **overrides).table())


def _evaluate(args: argparse.Namespace) -> None:
    from mskd.bundle import Bundle
    from mskd.workflows import evaluate

    overrides = _checked_overrides(args, Bundle.stack(args.method, evaluate=True))
    print(evaluate(args.bundle, args.method, **overrides).table())


def _experiment(args: argparse.Namespace) -> None:
    from mskd.experiment import run_experiment

    run_experiment(
        args.config,
        workdir=args.workdir,
        dry_run=args.dry_run,
        allow_code=args.allow_code,
        report_only=args.report_only,
    )


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

    written = predict(args.bundle, args.input, args.output_dir, args.ckpt_path, args.student, args.image_size)
    for path in written:
        print(f"wrote {path}")


def _export(args: argparse.Namespace) -> None:
    from mskd.export import bundle_export

    report = bundle_export(args.bundle, args.ckpt_path, args.output_file, args.format, args.student, args.image_size)
    print(
        f"wrote {report['path']} ({report['format']}, {report['size_bytes'] / 1e6:.1f} MB); "
        f"max |export - eager| = {report['max_abs_diff']:.2e} <= {report['tolerance']:.0e}"
    )


def _ui(args: argparse.Namespace) -> None:
    import subprocess

    from mskd.tracking.ui import experiment_pages, mlflow_server

    base = f"http://{args.host}:{args.port}"
    pages = experiment_pages(args.store, base)
    print(f"MLflow UI of {args.store} at {base} (Ctrl-C stops it). The runs tables, with the bundle's columns:")
    for name, runs, url in pages:
        print(f"  {name} ({runs} runs): {url}")
    if not pages:
        print("  (no run in the store yet: refresh the UI once a training has started)")
    sys.stdout.flush()
    subprocess.run(mlflow_server(args.store, args.port, args.host), check=True)


def _add_student_args(parser: argparse.ArgumentParser) -> None:
    """The flags of the commands that run a trained student (predict, export)."""
    parser.add_argument("--bundle", default="bundles/mskd_synapse", help="bundle folder")
    _add_flags(parser, _STUDENT_FLAGS)


def _assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set``: the value read as JSON (numbers, true/false/null, lists, objects), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. learning_rate=0.002), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_flags(parser: argparse.ArgumentParser, flags: dict[str, tuple[type, str]]) -> None:
    """The flags of ``flags`` (bundle id -> type, help), each spelled as :func:`_flag` says, read into that id."""
    for key, (kind, text) in flags.items():
        parser.add_argument(_flag(key), dest=key, type=kind, default=None, help=text)


def _add_workflow_args(parser: argparse.ArgumentParser) -> None:
    """The flags every bundle workflow command shares (each one a bundle override; ``--set`` for any other)."""
    parser.add_argument("--bundle", default="bundles/mskd_synapse", help="bundle folder")
    _add_flags(parser, _WORKFLOW_FLAGS)
    parser.add_argument(
        "--set",
        type=_assignment,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other bundle override, repeatable; VALUE is read as JSON, else as a string "
        '(--set learning_rate=0.002 --set mlflow=false --set \'tracking_tags_extra={"experiment": "a"}\'); '
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
    from mskd.bundle import STACKS

    debug_help = "show full tracebacks instead of one-line errors (the same as MSKD_DEBUG=1)"
    parser = _Parser(
        prog="mskd",
        description=__doc__,
        epilog="A flag that sets a bundle value is its config id with - for _ (--dataset-dir sets dataset_dir); the "
        "bundle's spelling (--dataset_dir) works too.",
    )
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # --debug is also accepted after the sub-command (SUPPRESS: the sub-command does not reset the top-level value)
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Any, summary: str, example: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            renamed=_RENAMED.get(name),
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
        "mskd phantom --task synapse --output-dir data/phantom --cases 16 --seed 0 --size 96 96 48",
    )
    phantom.add_argument("--task", default="synapse", choices=["synapse", "kits"], help="label set")
    phantom.add_argument("--output-dir", required=True, help="output folder (created); --dataset-dir of the others")
    phantom.add_argument("--cases", type=int, default=16, help="number of volumes")
    phantom.add_argument("--test-cases", type=int, default=None, help="held-out cases (default: a quarter)")
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--size", type=int, nargs=3, default=[96, 96, 48], metavar=("X", "Y", "Z"))
    phantom.add_argument("--difficulty", type=float, default=1.0, help="noise, deformation and intensity overlap")
    phantom.add_argument(
        "--fov-jitter", type=float, default=0.15, help="per-case field of view varies by up to this fraction"
    )

    cpu = "--dataset-dir data/phantom --teacher unet --student tiny_unet --image-size 96"
    for name, method, what in (
        ("train-teacher", "teacher", "train the teacher"),
        ("train-student", "baseline", "train the student alone (the baseline)"),
        ("distill", "mskd", "distil the trained teacher into the student (KD + FFD + RGD)"),
    ):
        train = command(
            name, _train, f"{what}: the bundle's {' + '.join(STACKS[method])}", f"mskd {name} {cpu} --max-epochs 40"
        )
        _add_workflow_args(train)
        _add_flags(train, _TRAINING_FLAGS)
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
        "--report-only",
        action="store_true",
        help="train nothing; rewrite the tables and figure from the runs finished so far",
    )
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
        "mskd predict --bundle bundles/mskd_synapse --input CT.nii.gz --output-dir predictions",
    )
    predict.add_argument("--input", required=True, help="a NIfTI file, a folder of them, or DICOM series folder(s)")
    predict.add_argument(
        "--output-dir",
        required=True,
        help="folder for the <name>_seg.nii.gz label maps (and <name>_seg.dcm DICOM-SEG for DICOM series)",
    )
    _add_student_args(predict)

    export = command(
        "export",
        _export,
        "export a bundle's student to ONNX or TorchScript, checked against the eager network",
        "mskd export --format onnx --bundle bundles/mskd_synapse --output-file student.onnx",
    )
    export.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    export.add_argument(
        "--output-file", default=None, help="the file written (default: BUNDLE/models/model.onnx or model.ts)"
    )
    _add_student_args(export)

    ui = command(
        "ui",
        _ui,
        "serve the MLflow UI of a store and print the address of each experiment's runs table",
        "mskd ui --store demo/output/mlruns.db --port 5000",
    )
    ui.add_argument("--store", default="demo/output/mlruns.db", help="the SQLite MLflow store (OUTPUT_DIR/mlruns.db)")
    ui.add_argument("--host", default="127.0.0.1", help="address to serve on")
    ui.add_argument("--port", type=int, default=5000, help="port to serve on")
    return parser


def _bundle_flags() -> dict[str, Any]:
    """Config id -> the flag of the workflow commands that sets it, for their problem lines (``--dataset-dir: ...``);
    a config id without a flag (set with ``--set``) is shown as it is."""
    from mskd.validation import Flag

    return {key: Flag(_flag(key)) for key in (*_WORKFLOW_FLAGS, *_TRAINING_FLAGS, "ckpt_dir")}


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
    :func:`mskd.validation.describe`). Problems found by the up-front checks (:mod:`mskd.validation`) are listed,
    one line each on the command's flags (``--dataset-dir: ...``), and exit with status 2, as do an MLflow store
    that cannot be used (one line) and command lines that cannot be run (argparse's usage errors, an unknown
    ``--set`` key, an override that runs code without ``--allow-code``, and ``mskd bench`` outside a clone). Ctrl-C
    prints one line. ``--debug`` (or ``MSKD_DEBUG=1``) raises every error, and the interrupt, with its traceback
    instead.

    Sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already set) before torch loads: OpenMP threads that spin while they
    wait made a training step 3-6x slower on a busy 2-core machine, while passive ones cost nothing on an idle one.
    """
    os.environ.setdefault(OMP_WAIT_POLICY, "PASSIVE")
    from mskd.validation import DEBUG_ENV, debug_enabled, describe, format_problems, reported_error, validation_error

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
        refused = validation_error(e)
        if refused is not None:
            flags = refused.flags or (_bundle_flags() if args.func in (_train, _evaluate) else {})
            print(format_problems(refused.problems, flags), file=sys.stderr)
            return 2
        from mskd.tracking import TrackingError

        print(f"mskd {args.command}: error: {describe(e)}", file=sys.stderr)
        return 2 if isinstance(reported_error(e), TrackingError) else 1
    finally:
        if previous is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = previous
    return 0


if __name__ == "__main__":
    sys.exit(main())

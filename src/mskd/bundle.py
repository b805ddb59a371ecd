"""One way into a bundle: its folder, its stacks of config files, and the parser, workflow or command line of a stack.

Every caller that runs or reads a bundle (``mskd`` train/evaluate, ``mskd predict``, ``mskd export``, the experiment
runner's subprocesses, ``make demo``) goes through :class:`Bundle`, so that the stack names, the files MONAI is handed
(``metadata.json``, ``logging.conf``, ``bundle_root``) and the way a workflow is built live in one place. A run in
this process is what ``python -m monai.bundle run`` does with the same files and overrides
(``monai.bundle.create_workflow``, ``run``, ``finalize``).

The bundle's config ids that the pre-flight (:func:`mskd.validation.preflight`) builds and reads are named here too
(:data:`PREFLIGHT`, :data:`CHECKPOINTS`, :data:`NETWORKS`, :data:`DATALISTS`): which components a run uses, and the
config id each one's failure is reported under.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKPOINTS",
    "DATALISTS",
    "EVALUATE",
    "INFERENCE",
    "LOADER",
    "NETWORKS",
    "OUTPUT_DIRS",
    "PREFLIGHT",
    "STACKS",
    "USED_FROM",
    "Bundle",
    "CheckpointInput",
    "Component",
]

# method (the bundle's `method` value) -> the config files that train it, as a user stacks them
STACKS: dict[str, tuple[str, ...]] = {
    "teacher": ("train_teacher.json",),
    "baseline": ("train_teacher.json", "train_student.json"),
    "mskd": ("train_teacher.json", "distill.json"),
}
EVALUATE = "evaluate.json"  # stacked on a training stack, it evaluates that stack's model on the test cases
INFERENCE = "inference.json"  # a stack of its own: segment new volumes with the bundle's student
_TRUSTED: set[Path] = set()  # bundles whose "configs run code" warning this process has shown


# --- what the pre-flight (mskd.validation.preflight) builds and reads, by config id ---------------------------------
# It looks only at what the stack's run uses: the ids that `initialize` and `run` reference, directly or through
# other ids (a distillation builds the teacher, an evaluation reads the test cases, inference the input).
USED_FROM = ("initialize", "run")


@dataclass(frozen=True)
class Component:
    """A component the pre-flight builds from the config, in :data:`PREFLIGHT` order; its constructor holds its
    constraints, and an exception it raises is reported as a problem of one config id.

    Attributes:
        id: the config id built.
        reported_as: the config ids a failure may be reported under: the first that ``id`` is or uses (directly or
            through other ids); a stack whose ``id`` uses none of them does not build it here (``network`` is the
            evaluated checkpoint's loader only where it uses ``ckpt_path``).
        exclusive: a failure means the reported value is wrong: later components that use it are not built (a bad
            ``teacher`` is reported once, not again by the taps); ``False`` where several components check one value
            each for their own network (``distill_stages``).
        context: what the component is, put before its message where the message does not say; ``{id}`` is the
            value of a config id (``{teacher}, teacher_kwargs {teacher_kwargs}``); ``None`` for none.
    """

    id: str
    reported_as: tuple[str, ...]
    exclusive: bool = True
    context: str | None = None


PREFLIGHT: tuple[Component, ...] = (
    Component("organs", ("task",)),
    Component("num_classes", ("task",)),
    Component("data_format", ("input",)),  # inference: the input's format
    Component("hu_window", ("data_format",)),
    Component("datalist", ("input", "dataset_dir")),
    Component("split", ("num_val_cases",)),
    Component("validate#datalist", ("dataset_dir",)),
    Component("seg_loss", ("seg_loss",)),
    Component("loss", ("loss",)),
    Component("teacher_def", ("teacher",), context="{teacher}, teacher_kwargs {teacher_kwargs}"),
    Component("student_def", ("student",), context="{student}, student_kwargs {student_kwargs}"),
    # inference builds its student here
    Component("network_def", ("student",), context="{student}, student_kwargs {student_kwargs}"),
    Component("teacher_outputs_in_force", ("teacher_outputs",)),
    Component("teacher_taps", ("distill_stages",), exclusive=False, context="the teacher's taps"),
    Component("student_taps", ("distill_stages",), exclusive=False, context="the student's taps"),
    Component("teacher_network", ("teacher_ckpt",)),
    Component("network", ("ckpt_path",)),
)


@dataclass(frozen=True)
class CheckpointInput:
    """A checkpoint a stack reads: checked against its own metadata (network, kwargs, classes, image size, run)
    before the component that loads it is built.

    Attributes:
        path: the config id of the file.
        loader: the component that loads it (one of :data:`PREFLIGHT`).
        role: the network it holds, ``teacher`` or ``student`` (the config ids ``<role>`` and ``<role>_kwargs``
            name it and its constructor arguments) ...
        role_id: ... or the config id that holds the role, when the stack has it (``role``: an evaluation).
        run_name: the config id of the run that must have written it, when the stack has it.
    """

    path: str
    loader: str
    role: str
    role_id: str | None = None
    run_name: str | None = None


CHECKPOINTS: tuple[CheckpointInput, ...] = (
    CheckpointInput("teacher_ckpt", "teacher_network", "teacher"),
    CheckpointInput("ckpt_path", "network", "student", role_id="role", run_name="model_run_name"),
)
# the networks built, by config id -> the role whose config id names it; each must take `image_size` slices
NETWORKS = {"teacher_def": "teacher", "student_def": "student", "network_def": "student"}
# the cases the run reads: the first of these datalists it uses (the training cases, else the test cases or inputs)
DATALISTS = ("datalist", "validate#datalist")
LOADER = "mskd.data.LoadCased"  # the `_target_` of the loading transform the cases are read with
OUTPUT_DIRS = ("output_dir", "ckpt_dir")  # folders the run writes to


class Bundle:
    """An mskd bundle folder.

    Args:
        root: the bundle folder (``configs/`` holds its config files).

    Raises:
        FileNotFoundError: when ``root`` has no ``configs/train_teacher.json``.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        if not (self.root / "configs" / STACKS["teacher"][0]).is_file():
            raise FileNotFoundError(
                f"{self.root} is not an mskd bundle (no configs/{STACKS['teacher'][0]}); pass --bundle"
            )
        self.configs = self.root / "configs"

    def __repr__(self) -> str:
        return f"Bundle({str(self.root)!r})"

    @staticmethod
    def stack(method: str, evaluate: bool = False) -> tuple[str, ...]:
        """The config files that train ``method`` (:data:`STACKS`), plus ``evaluate.json`` to test what it trained.

        Raises:
            ValueError: for an unknown ``method``.
        """
        if method not in STACKS:
            raise ValueError(f"unknown method {method!r}; choose one of {list(STACKS)}")
        return (*STACKS[method], EVALUATE) if evaluate else STACKS[method]

    def paths(self, files: Sequence[str]) -> list[str]:
        """The stack's files as absolute paths (names are looked up in ``configs/``; paths are kept)."""
        return [str(self.configs / f) if os.path.basename(f) == f else str(Path(f).resolve()) for f in files]

    @contextlib.contextmanager
    def _code_warning_once(self) -> Iterator[None]:
        """MONAI warns at every config it parses that configs run code; say it once per bundle and process instead
        (``mskd demo`` parses six stacks of one bundle)."""
        if self.root not in _TRUSTED:
            _TRUSTED.add(self.root)
            warnings.warn(
                f"the configs of {self.root} run Python code (`$` expressions, `_target_`): run only bundles you trust "
                "(MONAI advisory GHSA-873f-pvrv-4x83)",
                UserWarning,
                stacklevel=3,
            )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"parsing config_file", category=UserWarning)
            yield

    def _files(self) -> dict[str, str]:
        return {
            "meta_file": str(self.configs / "metadata.json"),
            "logging_file": str(self.configs / "logging.conf"),
            "bundle_root": str(self.root),
        }

    def parser(self, files: Sequence[str], **overrides: Any) -> Any:
        """The stack's merged config with ``overrides`` applied, read but not run (nothing is built or written).

        Returns:
            a ``monai.bundle.ConfigParser``.
        """
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        with self._code_warning_once():
            parser.read_config(self.paths(files))
        parser.read_meta(self._files()["meta_file"])
        parser.update({"bundle_root": str(self.root), **overrides})
        return parser

    def workflow(self, files: Sequence[str], **overrides: Any) -> Any:
        """The stack as an initialised ``monai.bundle.ConfigWorkflow`` (its ``initialize`` has run: the up-front
        checks, the MLflow run opened)."""
        from monai.bundle import create_workflow

        files_ = self._files()
        with self._code_warning_once():
            return create_workflow(
                config_file=self.paths(files),
                meta_file=files_["meta_file"],
                logging_file=files_["logging_file"],
                bundle_root=files_["bundle_root"],
                **overrides,
            )

    def run(self, files: Sequence[str], **overrides: Any) -> Any:
        """Run the stack in this process, as ``python -m monai.bundle run`` would; returns the finished workflow
        (its ``parser`` holds the objects the run used)."""
        workflow = self.workflow(files, **overrides)
        workflow.run()
        workflow.finalize()
        return workflow

    def command(self, files: Sequence[str]) -> list[str]:
        """The ``python -m monai.bundle run`` command line of the stack, for a subprocess (overrides follow it, or
        come as a last config file in ``files``)."""
        command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(self.paths(files))]
        for key, value in self._files().items():
            command += [f"--{key}", value]
        return command

    @cached_property
    def defaults(self) -> Any:
        """The base training config as shipped (no overrides): the bundle's task, experiment name, data folder."""
        return self.parser(STACKS["teacher"])

    @property
    def task(self) -> str:
        """The label set: ``synapse`` or ``kits``."""
        return str(self.defaults["task"])

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment the bundle's runs log to."""
        return str(self.defaults["experiment_name"])

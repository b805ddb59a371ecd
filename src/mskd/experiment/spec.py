"""The experiment file: its schema, loading it with defaults filled in, the override checks, and one planned run.

An experiment file (YAML) names a bundle, the data, a teacher, the students, the methods (each a set of overrides of
the bundle's ``distill.json``, or the plain student) and the seeds; :func:`load_experiment` refuses a malformed file
with an :class:`ExperimentError` that names the file and the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ExperimentError", "RunSpec", "load_experiment"]

_TOP_KEYS = {
    "name",
    "description",
    "bundle",
    "output",
    "workdir",
    "jobs",
    "threads",
    "data",
    "overrides",
    "teacher",
    "students",
    "methods",
    "seeds",
    "short_epochs",
}
_METHOD_KEYS = {"distill", "overrides", "seeds", "candidates", "students"}
_PHANTOM_KEYS = {"task", "cases", "test_cases", "size", "seed", "difficulty", "fov_jitter"}


class ExperimentError(ValueError):
    """An experiment file that cannot be run (the message names the file and the key)."""


@dataclass(frozen=True)
class RunSpec:
    """One bundle run of the matrix.

    Attributes:
        name: the bundle's run name, ``<model>-<method>-s<seed>`` (MLflow run name and checkpoint stem).
        label: the row this run belongs to in the results table (the method name, ``teacher`` for the teacher).
        student: the student network (``None`` for the teacher run).
        method: the bundle's ``method`` value (the method name, with ``-c<i>`` for a weight candidate).
        seed: random seed.
        stack: config files of the bundle, in order.
        overrides: values stacked last (as a JSON file).
        candidate: index of the weight candidate, or ``None``.
    """

    name: str
    label: str
    student: str | None
    method: str
    seed: int
    stack: tuple[str, ...]
    overrides: dict[str, Any] = field(default_factory=dict)
    candidate: int | None = None


def _fail(path: Path, message: str) -> ExperimentError:
    return ExperimentError(f"{path}: {message}")


def _check_keys(path: Path, where: str, value: Any, allowed: set[str]) -> dict:
    if not isinstance(value, Mapping):
        raise _fail(path, f"{where} must be a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _fail(path, f"{where} has unknown keys {unknown}; allowed: {sorted(allowed)}")
    return dict(value)


def _check_seeds(path: Path, where: str, seeds: Any) -> list[int]:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise _fail(path, f"{where} must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise _fail(path, f"{where} repeats a seed: {seeds!r}")
    return seeds


def load_experiment(path: str | os.PathLike, allow_code: bool = False) -> dict[str, Any]:
    """Read and check an experiment file; returns it with defaults filled in.

    Args:
        path: the YAML file.
        allow_code: accept overrides whose values run Python code (``$`` expressions, ``_target_``, ``%`` file
            macros); without it such a file is refused.

    Returns:
        the experiment as a dict (``bundle``, ``output`` and ``workdir`` resolved against the current folder).

    Raises:
        FileNotFoundError: when the file or its bundle does not exist.
        ExperimentError: (a ``ValueError``) for a malformed file, naming the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise _fail(path, f"not valid YAML ({str(e).splitlines()[0]})") from e
    cfg = _check_keys(path, "the experiment", raw, _TOP_KEYS)
    for key in ("name", "teacher", "students", "methods", "data"):
        if key not in cfg:
            raise _fail(path, f"missing required key {key!r}")
    if not isinstance(cfg["name"], str) or not cfg["name"].replace("_", "").isalnum():
        raise _fail(path, f"name must be letters, digits and '_', got {cfg['name']!r}")
    cfg["bundle"] = Path(cfg.get("bundle", "bundles/mskd_synapse")).resolve()
    if not (cfg["bundle"] / "configs" / "train_teacher.json").is_file():
        raise FileNotFoundError(f"{path}: bundle {cfg['bundle']} has no configs/train_teacher.json")
    cfg["output"] = Path(cfg.get("output", f"docs/results/{cfg['name']}")).resolve()
    cfg["workdir"] = Path(cfg.get("workdir", f"experiments/{cfg['name']}")).resolve()
    cfg["jobs"] = int(cfg.get("jobs", 1))
    cfg["threads"] = int(cfg.get("threads", max(1, (os.cpu_count() or 1) // cfg["jobs"])))
    if cfg["jobs"] < 1 or cfg["threads"] < 1:
        raise _fail(path, f"jobs and threads must be >= 1, got jobs={cfg['jobs']} threads={cfg['threads']}")
    cfg["overrides"] = dict(_check_keys(path, "overrides", cfg.get("overrides", {}), set(cfg.get("overrides", {}))))
    cfg["seeds"] = _check_seeds(path, "seeds", cfg.get("seeds", [0]))
    short = cfg.setdefault("short_epochs", None)
    if short is not None and (isinstance(short, bool) or not isinstance(short, int) or short < 1):
        raise _fail(path, f"short_epochs must be an integer >= 1 (epochs of the matched short budget), got {short!r}")

    data = _check_keys(path, "data", cfg["data"], {"phantom", "dataset_dir", "data_format"})
    if ("phantom" in data) == ("dataset_dir" in data):
        raise _fail(path, "data needs exactly one of 'phantom' (generated) or 'dataset_dir' (existing data)")
    if "phantom" in data:
        data["phantom"] = _check_keys(path, "data.phantom", data["phantom"], _PHANTOM_KEYS)
    cfg["data"] = data

    teacher = _check_keys(path, "teacher", cfg["teacher"], {"network", "overrides"})
    if "network" not in teacher:
        raise _fail(path, "teacher needs a 'network'")
    cfg["teacher"] = {"network": teacher["network"], "overrides": dict(teacher.get("overrides") or {})}

    students = cfg["students"]
    if not isinstance(students, Mapping) or not students:
        raise _fail(path, "students must be a non-empty mapping of network name to its overrides")
    cfg["students"] = {name: dict(v or {}) for name, v in students.items()}

    methods = cfg["methods"]
    if not isinstance(methods, Mapping) or not methods:
        raise _fail(path, "methods must be a non-empty mapping of method name to its settings")
    parsed = {}
    for name, spec in methods.items():
        if not isinstance(name, str) or not name.replace("_", "").isalnum() or name == "teacher":
            raise _fail(path, f"method names must be letters, digits and '_' (not 'teacher'), got {name!r}")
        spec = _check_keys(path, f"methods.{name}", spec or {}, _METHOD_KEYS)
        candidates = spec.get("candidates")
        if candidates is not None and (
            not isinstance(candidates, list)
            or len(candidates) < 2
            or not all(isinstance(c, Mapping) for c in candidates)
        ):
            raise _fail(path, f"methods.{name}.candidates must be a list of at least two override mappings")
        if candidates is not None and not spec.get("distill", True):
            raise _fail(path, f"methods.{name}: candidates are loss-weight choices; a non-distilling method has none")
        only = spec.get("students", list(cfg["students"]))
        if not isinstance(only, list) or not only or not set(only) <= set(cfg["students"]):
            raise _fail(path, f"methods.{name}.students must be a non-empty list of the students, got {only!r}")
        parsed[name] = {
            "distill": bool(spec.get("distill", True)),
            "students": only,
            "overrides": dict(spec.get("overrides") or {}),
            "seeds": _check_seeds(path, f"methods.{name}.seeds", spec.get("seeds", cfg["seeds"])),
            "candidates": [dict(c) for c in candidates] if candidates else None,
        }
    cfg["methods"] = parsed
    cfg["path"] = path.resolve()
    _check_overrides(path, cfg, allow_code)
    return cfg


def _check_overrides(path: Path, cfg: Mapping[str, Any], allow_code: bool) -> None:
    """Every override must name a key of the stack it is stacked on (a typo would otherwise change nothing), and
    none may run Python code (``$``, ``_target_``, a ``%`` file macro) unless ``allow_code``."""
    from mskd.overrides import code_in_overrides, unknown_keys

    configs = cfg["bundle"] / "configs"
    student = [configs / "train_teacher.json", configs / "train_student.json"]
    distill = [configs / "train_teacher.json", configs / "distill.json"]
    checks = [("overrides", cfg["overrides"], (student, distill))]
    checks.append(("teacher.overrides", cfg["teacher"]["overrides"], (student,)))
    checks += [(f"students.{s}", o, (student, distill)) for s, o in cfg["students"].items()]
    for name, spec in cfg["methods"].items():
        stack = distill if spec["distill"] else student
        checks.append((f"methods.{name}.overrides", spec["overrides"], (stack,)))
        checks += [(f"methods.{name}.candidates[{i}]", c, (stack,)) for i, c in enumerate(spec["candidates"] or [])]
    for where, overrides, stacks in checks:
        if not allow_code and (code := code_in_overrides(overrides)):
            raise _fail(
                path,
                f"{where} sets {code} to values that run Python code ($ expressions, _target_ or % file macros); "
                "if you trust this file, run it with --allow-code",
            )
        keys = [k.lstrip("+") for k in overrides]
        for stack in stacks:
            if unknown := unknown_keys(stack, keys):
                raise _fail(path, f"{where}: {unknown[0]}")

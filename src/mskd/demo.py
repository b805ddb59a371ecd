"""`make demo`: phantoms -> teacher -> student baseline -> distilled student -> test table, through the bundle."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from mskd.bundle import STACKS, Bundle

__all__ = ["DemoSettings", "DEMO", "QUICK", "run_demo", "format_table"]


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and budgets of the demo (chosen so that the full demo runs in minutes on 2 CPU cores)."""

    cases: int
    test_cases: int
    size: tuple[int, int, int]
    image_size: int
    teacher_epochs: int
    student_epochs: int
    val_interval: int
    batch_size: int
    slices_per_volume: int
    learning_rate: float = 0.001
    difficulty: float = 1.0
    teacher: str = "unet"
    student: str = "tiny_unet"
    seed: int = 0


# The phantoms of benchmark v2 (configs/experiments/phantom_v2.yaml) at their native 96x96, with shorter budgets: the
# teacher gets 576 steps of 16 slices, the students 216, where distillation's head start is
# largest (docs/results/ has the converged comparison).
DEMO = DemoSettings(
    cases=24,
    test_cases=4,
    size=(96, 96, 48),
    image_size=96,
    teacher_epochs=64,
    student_epochs=24,
    val_interval=8,
    batch_size=2,
    slices_per_volume=8,
    learning_rate=0.003,
    difficulty=0.6,
)
QUICK = DemoSettings(
    cases=5,
    test_cases=1,
    size=(32, 32, 16),
    image_size=32,
    teacher_epochs=1,
    student_epochs=1,
    val_interval=1,
    batch_size=2,
    slices_per_volume=2,
)


def format_table(rows: dict[str, dict[str, float]], organs: list[str]) -> str:
    """Markdown table: one row per model with mean HD95 (mm) and mean and per-organ test Dice (in %)."""
    header = ["model", "params", "mean HD95 (mm)", "mean Dice", *organs]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in rows.items():
        cells = [name, f"{int(m['network_params']):,}", f"{m['test_mean_hd95']:.1f}"]
        cells += [f"{100 * m['test_mean_dice']:.1f}"]
        cells += [f"{100 * m[f'test_dice_{o}']:.1f}" for o in organs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _test_metrics(tracking_uri: str, experiment_name: str) -> dict[str, dict[str, float]]:
    """Metrics of the latest finished test run of each method, read back from the MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    rows = {}
    for method in STACKS:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"params.method = '{method}' and attributes.run_name LIKE '%-test' "
            "and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            raise RuntimeError(f"no finished MLflow test run for method '{method}' in {tracking_uri}")
        rows[runs[0].info.run_name] = {
            **runs[0].data.metrics,
            "network_params": float(runs[0].data.params["network_params"]),
        }
    return rows


def run_demo(
    workdir: str | os.PathLike = "demo", bundle: str | os.PathLike = "bundles/mskd_synapse", quick: bool = False
):
    """Run the whole demo and print the test table; returns the table's rows.

    Args:
        workdir: folder for the phantom data (``data/``), checkpoints (``models/``) and the MLflow store
            (``output/mlruns.db``); re-running starts the runs anew (new MLflow runs, overwritten checkpoints).
        bundle: the bundle folder.
        quick: tiny sizes and one epoch each (a smoke test of the plumbing, not results).

    Returns:
        model label -> MLflow metrics of its test run.

    Raises:
        FileNotFoundError: when ``bundle`` is not a bundle folder.
    """
    from mskd.data import organ_names
    from mskd.data.phantom import generate_phantom_dataset
    from mskd.io import atomic_open
    from mskd.tracking import tracking_uri
    from mskd.workflows import evaluate, train

    settings = QUICK if quick else DEMO
    workdir, bundle = Path(workdir).resolve(), Bundle(bundle)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    data_dir = workdir / "data"
    t0 = time.perf_counter()
    generate_phantom_dataset(
        data_dir,
        task=bundle.task,
        cases=settings.cases,
        seed=settings.seed,
        size=settings.size,
        test_cases=settings.test_cases,
        difficulty=settings.difficulty,
        progress=True,
    )
    timings["phantom"] = time.perf_counter() - t0

    common = {
        "teacher": settings.teacher,
        "student": settings.student,
        "dataset_dir": str(data_dir),
        "output_dir": str(workdir / "output"),
        "ckpt_dir": str(workdir / "models"),
        "seed": settings.seed,
        "image_size": settings.image_size,
        "val_interval": settings.val_interval,
        "batch_size": settings.batch_size,
        "slices_per_volume": settings.slices_per_volume,
        "learning_rate": settings.learning_rate,
    }
    for label in STACKS:
        epochs = settings.teacher_epochs if label == "teacher" else settings.student_epochs
        t0 = time.perf_counter()
        train(bundle.root, label, max_epochs=epochs, **common)
        timings[f"train {label}"] = time.perf_counter() - t0
    for label in STACKS:
        t0 = time.perf_counter()
        evaluate(bundle.root, label, **common)
        timings[f"evaluate {label}"] = time.perf_counter() - t0

    organs = organ_names(bundle.task)
    rows = _test_metrics(tracking_uri(workdir / "output"), bundle.experiment_name)
    table = format_table(rows, organs)
    total = time.perf_counter() - started
    report = (
        f"## mskd demo: test Dice (%) and HD95 (mm) on {settings.test_cases} held-out phantom volumes\n\n{table}\n\n"
        + "\n".join(f"- {k}: {v:.0f} s" for k, v in timings.items())
        + f"\n- total: {total / 60:.1f} min\n\nMLflow store: {tracking_uri(workdir / 'output')} (`make mlflow-ui`)\n"
    )
    with atomic_open(workdir / "results.md", "w", encoding="utf-8") as f:
        f.write(report)
    print("\n" + report)
    return rows

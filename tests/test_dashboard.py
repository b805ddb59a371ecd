"""The MLflow dashboard in a real browser: a tiny bundle run, ``make mlflow-ui`` on its store, pages read in Chromium.

The run is ``train_teacher.json`` as it ships, so the dashboard handlers are checked as the bundle wires them.
Rendering and serving are ``tools/dashboard.py``'s (the same code pictures the README's dashboard); screenshots are
kept in ``tmp_path``.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from mskd.data.phantom import generate_phantom_dataset
from mskd.tracking.ui import runs_url
from tests.bundles.runner import BUNDLES, CPU_NETWORKS, TINY, mlflow_runs, output_dirs, run_bundle
from tests.mlflow_store import copy_store
from tools.dashboard import chromium, free_port, render, serve, wait_until_up

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = BUNDLES / "mskd_synapse"
RUN = "unet-teacher-s0"
# what an experiment runner adds to every run's tags (a dict override on the command line)
EXTRA_TAGS = "{'experiment': 'dashboard', 'mlflow.note.content': 'a tiny run'}"


def _chromium() -> str:
    try:
        return chromium()
    except FileNotFoundError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory, empty_store):
    """A tiny teacher run and its evaluation in a fresh store, served by ``make mlflow-ui``; yields (base URL, store
    root)."""
    _chromium()  # fail first, before minutes of set-up, when the browser is missing
    root = tmp_path_factory.mktemp("dashboard")
    generate_phantom_dataset(root / "data", task="synapse", cases=3, seed=0, size=(32, 32, 16), test_cases=1)
    copy_store(empty_store, root / "output")  # an initialised store: the server and the run can start together
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # the Makefile's own command; `-o install` skips the (already done) installation step
    make = ["make", "--no-print-directory", "-o", "install", "mlflow-ui"]
    make += [
        f"MLFLOW_STORE={root / 'output' / 'mlruns.db'}",
        f"MLFLOW_PORT={port}",
        f"BIN={Path(sys.executable).parent}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    args = ["--dataset_dir", str(root / "data"), *TINY, *CPU_NETWORKS, *output_dirs(root)]
    with serve(make, root / "server.log", cwd=ROOT, env=env) as server:
        run_bundle(BUNDLE, "train_teacher.json", args=[*args, "--tracking_tags_extra", EXTRA_TAGS])  # while it starts
        run_bundle(BUNDLE, "train_teacher.json", "evaluate.json", args=args)
        wait_until_up(url, server, root / "server.log")
        yield url, root


def test_runs_table_and_run_page_in_chromium(dashboard, tmp_path):
    url, root = dashboard
    client, runs = mlflow_runs(root, "mskd_synapse")
    run = runs[RUN]
    experiment, run_id = run.info.experiment_id, run.info.run_id
    profile = tmp_path / "profile"

    table = render(runs_url(url, experiment), tmp_path / "experiment.png", profile)
    assert "mskd_synapse" in table and RUN in table, table[:2000]
    # the runs table with the metric and tag columns of the view the bundle stores in the experiment
    view = render(runs_url(url, experiment, view="mskd"), tmp_path / "experiment_view.png", profile)
    assert RUN in view and "val_mean_dice" in view and "params_total" in view and "method" in view, view[:2000]

    page = render(runs_url(url, experiment, run_id), tmp_path / "run.png", profile)
    assert RUN in page and "val_mean_dice" in page and "network_params" in page, page[:3000]
    shown = re.search(r"val_mean_dice ([-+0-9.eE]+)", page)
    assert shown and float(shown.group(1)) == pytest.approx(run.data.metrics["val_mean_dice"], rel=1e-6), page[:3000]
    assert "params_total" in page  # the model summary, logged as metrics

    overlay = runs_url(url, experiment, run_id, path="artifacts/overlays/epoch_001.png")
    artifacts = render(overlay, tmp_path / "artifacts.png", profile)
    assert {"overlays", "curves", "model_summary.txt"} <= set(artifacts.split()), artifacts[:2000]
    tags = client.get_run(run_id).data.tags
    assert {k: tags.get(k) for k in ("task", "method", "network", "teacher", "seed", "experiment")} == {
        "task": "synapse",
        "method": "teacher",
        "network": "unet",
        "teacher": "unet",
        "seed": "0",
        "experiment": "dashboard",  # tracking_tags_extra, given on the command line
    }
    assert "student" not in tags and tags["mlflow.note.content"] == "a tiny run"  # the run's description in the UI
    for name in ("experiment.png", "experiment_view.png", "run.png", "artifacts.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dashboard_figures_of_a_store(dashboard, tmp_path, capsys):
    """``python tools/dashboard.py``: the runs table of the bundle's view as a PNG, and an evaluation's test overlay."""
    from tools.dashboard import main

    _, root = dashboard
    out, overlay = tmp_path / "figures" / "dashboard.png", tmp_path / "figures" / "overlay.png"
    argv = ["--store", str(root / "output" / "mlruns.db"), "--out", str(out)]
    assert main([*argv, "--overlay-run", f"{RUN}-test", "--overlay-out", str(overlay)]) == 0
    assert capsys.readouterr().out.split() == ["wrote", str(out), "wrote", str(overlay)]
    assert out.read_bytes()[:8] == overlay.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["dashboard.png", "overlay.png"]  # nothing else left


def test_comparison_view_of_a_store(dashboard, tmp_path, capsys):
    """``python tools/dashboard.py --comparison-run``: the comparison logged to the summary run, its page pictured."""
    from mlflow import MlflowClient

    from tools.dashboard import main

    _, root = dashboard
    store = tmp_path / "mlruns.db"
    store.write_bytes((root / "output" / "mlruns.db").read_bytes())  # the fixture's store stays as it is
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    teacher = client.search_runs(
        [client.get_experiment_by_name("mskd_synapse").experiment_id],
        filter_string=f"attributes.run_name = '{RUN}-test'",
    )[0]
    # the student alone's evaluation, on the teacher's test set: the same params, its own metrics
    alone = client.create_run(
        teacher.info.experiment_id,
        run_name="tiny_unet-baseline-s0-test",
        tags={"role": "student", "network": "tiny_unet", "teacher": "unet", "student": "tiny_unet", "task": "synapse"},
    ).info.run_id
    for key in ("dataset_dir", "data_format", "image_size"):
        client.log_param(alone, key, teacher.data.params[key])
    for key, value in teacher.data.metrics.items():
        if key.startswith("test_"):
            client.log_metric(alone, key, value / 2)
    client.set_terminated(alone)
    shot = tmp_path / "comparison.png"
    argv = ["--store", str(store), "--out", str(tmp_path / "runs.png")]
    assert main([*argv, "--comparison-run", "tiny_unet-baseline-s0-test", "--comparison-out", str(shot)]) == 0
    out = capsys.readouterr().out
    assert "| organ | teacher unet (1) | tiny_unet alone (1) |" in out and out.endswith(f"wrote {shot}\n")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (summary,) = client.search_runs([teacher.info.experiment_id], filter_string="tags.role = 'summary'")
    assert summary.info.run_name == "compare-tiny_unet-from-unet"
    assert sorted(a.path for a in client.list_artifacts(summary.info.run_id)) == [
        "comparison-tiny_unet.md",
        "comparison-tiny_unet.png",
    ]
    with pytest.raises(SystemExit):  # a teacher no student was distilled from has nothing to compare with
        main([*argv, "--comparison-run", f"{RUN}-test", "--comparison-out", str(shot)])

"""The MLflow dashboard in a real browser: a tiny bundle run, ``make mlflow-ui`` on its store, pages read in Chromium.

Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it) renders the MLflow UI, a React app, headless:
``--dump-dom`` gives the page after its scripts ran and ``--screenshot`` a PNG, both in one call, with
``--virtual-time-budget`` letting the app fetch and render before the capture. Screenshots are kept in ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mskd.data.phantom import generate_phantom_dataset
from tests.bundles.runner import BUNDLES, CPU_NETWORKS, TINY, mlflow_runs, output_dirs, run_bundle
from tests.mlflow_store import copy_store

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = BUNDLES / "mskd_synapse"
RUN = "unet-teacher-s0"
SERVER_START_S = 90.0
PAGE_BUDGET_MS = 15000

# how the dashboard handlers find the MLflow run: the run the bundle opened (off when tracking is off, and on ranks > 0)
_MLFLOW = {
    "_disabled_": "$@tracking_run_id is None",
    "tracking_uri": "@tracking_uri",
    "run_name": "@run_name",
    "run_id": "@tracking_run_id",
}
# The dashboard handlers as the bundle wires them (appended after its own handlers), stacked on train_teacher.json
# while its handler lists do not have them yet.
DASHBOARD_WIRING = {
    "+imports": ["$import mskd.handlers"],
    "artefacts_dir": "$os.path.join(@output_dir, 'artefacts', @run_name)",
    "overlay_cases": 3,
    "overlay_teacher": None,
    "tracking_tags": {
        "task": "@task",
        "role": "@role",
        "method": "@method",
        "teacher": "@teacher",
        "student": None,
        "network": "@model_name",
        "seed": "@seed",
        "image_size": "@image_size",
    },
    "dashboard_view": (
        "$mskd.handlers.runs_table_view(metrics=['test_mean_dice', 'test_mean_hd95', 'val_mean_dice', "
        "'params_total'], tags=['method', 'teacher', 'student', 'seed'])"
    ),
    "+train#handlers": [
        {
            "_target_": "mskd.handlers.RunTagsHandler",
            "tags": "@tracking_tags",
            "experiment_tags": {"mlflow.sharedViewState.mskd": "@dashboard_view"},
            **_MLFLOW,
        },
        {
            "_target_": "mskd.handlers.ModelSummaryHandler",
            "network": "@network",
            "input_shape": [1, 1, "@image_size", "@image_size"],
            "output_dir": "@artefacts_dir",
            **_MLFLOW,
        },
        {
            "_target_": "mskd.handlers.LearningCurvesHandler",
            "output_dir": "@artefacts_dir",
            "class_names": "@organs",
            **_MLFLOW,
        },
    ],
    "+validate#handlers": [
        {
            "_target_": "mskd.handlers.OverlayHandler",
            "class_names": "@organs",
            "output_dir": "$os.path.join(@artefacts_dir, 'overlays')",
            "window": "@hu_window",
            "num_cases": "@overlay_cases",
            "teacher": "@overlay_teacher",
            **_MLFLOW,
        }
    ],
}


class _Text(HTMLParser):
    """The visible text of an HTML document (script and style contents left out), whitespace collapsed."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)

    @classmethod
    def of(cls, html: str) -> str:
        parser = cls()
        parser.feed(html)
        return re.sub(r"\s+", " ", " ".join(parser.parts))


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "Chromium is not installed, so the MLflow dashboard cannot be checked in a browser: run "
            "`apt-get install chromium` (Debian's package, as .ci/run does)"
        )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _open(url: str, screenshot: Path, profile: Path) -> str:
    """Render ``url`` in headless Chromium; save a screenshot and return the page's visible text."""
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={PAGE_BUDGET_MS}",
        "--window-size=1400,900",
        f"--screenshot={screenshot}",
        "--dump-dom",
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=90)
    if proc.returncode != 0 or not screenshot.is_file():
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return _Text.of(proc.stdout)


def _stop(server: subprocess.Popen) -> None:
    """Stop ``make mlflow-ui`` and everything it started (its own process group): SIGTERM, then SIGKILL to what is
    left of the group."""
    for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 15)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return  # nothing of the group is left
        try:
            server.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory, empty_store):
    """A tiny teacher run in a fresh store, served by ``make mlflow-ui``; yields (base URL, store root)."""
    _chromium()  # fail first, before minutes of set-up, when the browser is missing
    root = tmp_path_factory.mktemp("dashboard")
    generate_phantom_dataset(root / "data", task="synapse", cases=3, seed=0, size=(32, 32, 16), test_cases=1)
    copy_store(empty_store, root / "output")  # an initialised store: the server and the run can start together
    port = _free_port()
    log = root / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with open(log, "wb") as out:
        server = subprocess.Popen(
            # the Makefile's own command; `-o install` skips the (already done) installation step
            ["make", "--no-print-directory", "-o", "install", "mlflow-ui"]
            + [
                f"MLFLOW_STORE={root / 'output' / 'mlruns.db'}",
                f"MLFLOW_PORT={port}",
                f"BIN={Path(sys.executable).parent}",
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        files = ["train_teacher.json"]
        if "mskd.handlers.OverlayHandler" not in (BUNDLE / "configs" / "train_teacher.json").read_text():
            wiring = root / "dashboard_wiring.json"
            wiring.write_text(json.dumps(DASHBOARD_WIRING, indent=4))
            files.append(str(wiring))
        run_bundle(BUNDLE, *files, args=["--dataset_dir", str(root / "data"), *TINY, *CPU_NETWORKS, *output_dirs(root)])
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"`make mlflow-ui` did not answer on {url}:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, root
    finally:
        _stop(server)


def test_runs_table_and_run_page_in_chromium(dashboard, tmp_path):
    url, root = dashboard
    client, runs = mlflow_runs(root, "mskd_synapse")
    run = runs[RUN]
    experiment = run.info.experiment_id
    profile = tmp_path / "profile"
    # ?workflowType=machine_learning: the UI's "Model training" view (MLflow 3 opens on its GenAI view otherwise)
    query = "?workflowType=machine_learning"

    table = _open(f"{url}/#/experiments/{experiment}/runs{query}", tmp_path / "experiment.png", profile)
    assert "mskd_synapse" in table and RUN in table, table[:2000]
    # the runs table with the metric and tag columns of the view the bundle stores in the experiment
    view_url = f"{url}/#/experiments/{experiment}/runs{query}&viewStateShareKey=mskd"
    view = _open(view_url, tmp_path / "experiment_view.png", profile)
    assert RUN in view and "val_mean_dice" in view and "params_total" in view and "method" in view, view[:2000]

    page = _open(f"{url}/#/experiments/{experiment}/runs/{run.info.run_id}{query}", tmp_path / "run.png", profile)
    assert RUN in page and "val_mean_dice" in page and "network_params" in page, page[:3000]
    shown = re.search(r"val_mean_dice ([-+0-9.eE]+)", page)
    assert shown and float(shown.group(1)) == pytest.approx(run.data.metrics["val_mean_dice"], rel=1e-6), page[:3000]
    assert "params_total" in page  # the model summary, logged as metrics

    artifacts = _open(
        f"{url}/#/experiments/{experiment}/runs/{run.info.run_id}/artifacts/overlays/epoch_001.png{query}",
        tmp_path / "artifacts.png",
        profile,
    )
    assert {"overlays", "curves", "model_summary.txt"} <= set(artifacts.split()), artifacts[:2000]
    assert client.get_run(run.info.run_id).data.tags["task"] == "synapse"
    for name in ("experiment.png", "experiment_view.png", "run.png", "artifacts.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

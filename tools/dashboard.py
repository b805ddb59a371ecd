"""The MLflow dashboard in a headless browser: serve a store, render its pages in Chromium, picture them.

Chromium (Debian's ``chromium`` package; ``make browser`` installs it) renders the MLflow UI, a React app, headless:
``--dump-dom`` gives the page after its scripts ran and ``--screenshot`` a PNG, both in one call, with
``--virtual-time-budget`` letting the app fetch and render before the capture. ``tests/test_dashboard.py`` checks the
pages of a tiny run with it; the command line pictures a store's dashboard for the README::

    python tools/dashboard.py --store demo/output/mlruns.db --out docs/figures/dashboard.png \\
        --overlay-run tiny_unet_from_unet-mskd-s0-test --overlay-out docs/figures/overlay.png

and the comparison view of an evaluation (teacher, student alone and distilled side by side, logged to the
experiment's summary run as the bundles' ``ComparisonHandler`` does after every evaluation), pictured on that run's
page::

    python tools/dashboard.py --store experiments/phantom_v2/output/mlruns.db --experiment mskd_phantom_v2 \\
        --out /tmp/runs.png --comparison-run espnet_from_unet-default-c1-s0-test \\
        --comparison-out docs/figures/comparison.png

A tool, not part of the ``mskd`` package (it needs Chromium, which the package does not).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from html.parser import HTMLParser
from pathlib import Path

from mskd.tracking.ui import mlflow_server, runs_url

__all__ = ["chromium", "free_port", "main", "page_text", "render", "serve", "wait_until_up"]

SERVER_START_S = 90.0  # the MLflow server's first start (database migrations) takes tens of seconds on a slow CPU
PAGE_BUDGET_MS = 15000  # virtual time the UI gets to fetch and draw before the capture


class _Text(HTMLParser):
    """The visible text of an HTML document (script and style contents left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def page_text(html: str) -> str:
    """The visible text of ``html`` (scripts and styles left out), whitespace collapsed to single spaces."""
    parser = _Text()
    parser.feed(html)
    return re.sub(r"\s+", " ", " ".join(parser.parts))


def chromium() -> str:
    """The Chromium executable.

    Raises:
        FileNotFoundError: when it is not installed (the message says how to install it).
    """
    path = shutil.which("chromium")
    if path is None:
        raise FileNotFoundError(
            "Chromium is not installed, so the MLflow dashboard cannot be rendered: run `make browser` "
            "(`apt-get install chromium`, Debian's package)"
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(
    command: Sequence[str],
    log: str | os.PathLike,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen]:
    """Run a server ``command`` until the block ends (:func:`wait_until_up` waits for it to answer).

    The server runs in its own process group (``make`` starts ``mlflow``, which starts its workers), so that all of
    it is stopped at the end: SIGTERM, then SIGKILL to what is left. Its output goes to ``log``.
    """
    with open(log, "wb") as out:
        server = subprocess.Popen(
            list(command), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield server
    finally:
        for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 15)):
            try:
                os.killpg(server.pid, sig)
            except ProcessLookupError:
                break  # nothing of the group is left
            try:
                server.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                pass


def wait_until_up(
    url: str, server: subprocess.Popen, log: str | os.PathLike, timeout_s: float = SERVER_START_S
) -> None:
    """Wait until ``<url>/health`` answers.

    Raises:
        RuntimeError: when the server exits or does not answer within ``timeout_s`` (with the end of its log).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            tail = Path(log).read_text(encoding="utf-8", errors="replace")[-3000:]
            raise RuntimeError(f"`{' '.join(server.args)}` did not answer on {url}:\n{tail}")
        time.sleep(0.5)


def render(
    url: str,
    screenshot: str | os.PathLike,
    profile: str | os.PathLike,
    budget_ms: int = PAGE_BUDGET_MS,
    size: tuple[int, int] = (1400, 900),
) -> str:
    """Render ``url`` in headless Chromium; save a PNG screenshot and return the page's visible text.

    Args:
        url: the page.
        screenshot: the PNG to write.
        profile: a Chromium profile folder (created; reuse it across calls to keep the browser's cache).
        budget_ms: virtual time the page gets before the capture.
        size: the window's width and height in pixels.

    Raises:
        FileNotFoundError: when Chromium is not installed.
        RuntimeError: when Chromium fails or writes no screenshot.
    """
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        f"--window-size={size[0]},{size[1]}",
        f"--screenshot={screenshot}",
        "--dump-dom",
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    if proc.returncode != 0 or not Path(screenshot).is_file():
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return page_text(proc.stdout)


def _log_comparison(client: object, experiment_id: str, run_name: str, work: Path) -> tuple[str, str] | None:
    """Log the comparison view of the evaluation run ``run_name`` (``mskd.tracking.comparison.log_comparison``) and
    return its summary run's id and figure; ``None`` without such a run, or with nothing to compare it with (a
    teacher no student was distilled from)."""
    from mskd.data.labels import organ_names
    from mskd.tracking.comparison import log_comparison, summary_run_name

    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.run_name = '{run_name}' and metrics.test_mean_dice >= 0",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    tags = runs[0].data.tags
    teacher, student = tags["teacher"], (tags.get("student") if tags.get("role") == "student" else None)
    tables = log_comparison(client, runs[0], teacher, student, organ_names(tags.get("task", "synapse")), work)
    if not tables:
        return None
    for table in tables.values():
        print(table, end="\n\n")
    name = next(iter(tables))
    (summary,) = client.search_runs(
        [experiment_id], filter_string=f"attributes.run_name = '{summary_run_name(teacher, name)}'"
    )
    return summary.info.run_id, f"comparison-{name}.png"


def main(argv: Sequence[str] | None = None) -> int:
    """``python tools/dashboard.py --store DB --out PNG [--overlay-run RUN --overlay-out PNG]`` (see the module doc)."""
    from mlflow import MlflowClient

    parser = argparse.ArgumentParser(
        prog="python tools/dashboard.py",
        description="Picture an MLflow store's dashboard (the runs table of the bundle's shared view) in Chromium.",
        epilog="example: python tools/dashboard.py --store demo/output/mlruns.db --out docs/figures/dashboard.png",
    )
    parser.add_argument("--store", required=True, help="the SQLite MLflow store, e.g. demo/output/mlruns.db")
    parser.add_argument("--out", required=True, help="PNG of the runs table, e.g. docs/figures/dashboard.png")
    parser.add_argument("--experiment", default="mskd_synapse", help="the experiment (default mskd_synapse)")
    parser.add_argument("--view", default="mskd", help="the shared runs-table view the bundle stores (default mskd)")
    parser.add_argument("--overlay-run", default=None, help="an evaluation run whose test overlay to copy")
    parser.add_argument("--overlay-out", default=None, help="where to copy it, e.g. docs/figures/overlay.png")
    parser.add_argument("--comparison-run", default=None, help="an evaluation run whose comparison view to picture")
    parser.add_argument("--comparison-out", default=None, help="its screenshot, e.g. docs/figures/comparison.png")
    args = parser.parse_args(argv)
    store = Path(args.store)
    if not store.is_file():
        parser.error(f"no MLflow store at {store}; run `make demo` first, or pass --store")
    if (args.overlay_run is None) != (args.overlay_out is None):
        parser.error("--overlay-run and --overlay-out go together")
    if (args.comparison_run is None) != (args.comparison_out is None):
        parser.error("--comparison-run and --comparison-out go together")
    client = MlflowClient(tracking_uri=f"sqlite:///{store.resolve()}")
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        parser.error(f"no experiment {args.experiment!r} in {store}; pass --experiment")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    work = out.parent / f".{out.stem}-chromium"  # profile and server log, removed afterwards
    work.mkdir(exist_ok=True)
    summary = None
    if args.comparison_run is not None:
        summary = _log_comparison(client, experiment.experiment_id, args.comparison_run, work)
        if summary is None:
            parser.error(
                f"no evaluation run {args.comparison_run!r} with test metrics in experiment {args.experiment!r}"
            )
    try:
        with serve(mlflow_server(store, port), work / "server.log") as server:
            wait_until_up(base, server, work / "server.log")
            url = runs_url(base, experiment.experiment_id, view=args.view)
            render(url, out, work / "profile", size=(2200, 720))  # wide: the view's columns and the UI's side panel
            if summary is not None:
                run_id, artifact = summary
                page = runs_url(base, experiment.experiment_id, run_id, path=f"artifacts/{artifact}")
                render(page, args.comparison_out, work / "profile", size=(2000, 1250))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")
    if summary is not None:
        print(f"wrote {args.comparison_out}")
    if args.overlay_run is not None:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"attributes.run_name = '{args.overlay_run}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            parser.error(f"no run {args.overlay_run!r} in experiment {args.experiment!r} of {store}")
        with tempfile.TemporaryDirectory() as tmp:
            overlay = client.download_artifacts(runs[0].info.run_id, "overlays/test_cases.png", tmp)
            shutil.copyfile(overlay, args.overlay_out)
        print(f"wrote {args.overlay_out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Smoke test of every benchmark script: ``--quick`` runs it at tiny sizes; its JSON and doc section get written."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
DOCS = {  # script -> the doc holding its section (markers included)
    "networks": "networks.md",
    "export": "export.md",
    "training_step": "performance.md",
    "losses": "performance.md",
    "inference": "performance.md",
    "data": "performance.md",
    "teacher_cache": "performance.md",
    "threads": "performance.md",
}


@pytest.fixture(autouse=True)
def _keep_threads():
    """The scripts set torch's thread count (``--threads``; 1 under ``--quick``): give the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _load(name: str, monkeypatch: pytest.MonkeyPatch):
    """Import ``benchmarks/<name>.py`` as the scripts run (their folder first on ``sys.path``, for ``common``)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(DOCS))
def test_quick_run_writes_results_and_doc_section(name, tmp_path, monkeypatch):
    if name == "export":
        pytest.importorskip("onnxruntime")
    doc = tmp_path / DOCS[name]
    shutil.copy(ROOT / "docs" / DOCS[name], doc)
    before = doc.read_text()
    module = _load(name, monkeypatch)
    module.main(["--quick", "--out", str(tmp_path / f"{name}.json"), "--doc", str(doc)])

    results = json.loads((tmp_path / f"{name}.json").read_text())
    meta = results["meta"]
    assert meta["quick"] and meta["threads"] >= 1 and meta["repeats"] == 1
    assert {"load_average_at_start", "load_average_at_end", "machine", "torch"} <= set(meta)
    begin, end = module.BEGIN, module.END
    after = doc.read_text()
    assert "Quick run (tiny sizes): not a result." in after.split(begin)[1].split(end)[0]
    assert after.split(begin)[0] == before.split(begin)[0] and after.split(end)[1] == before.split(end)[1]


def test_quick_run_without_out_leaves_the_docs_alone(monkeypatch):
    common = _load("common", monkeypatch)
    parser = common.parser("x", ["a"], "networks", "docs/networks.md", repeats=10)
    args = common.parse_args(parser, quick={"networks": ["b"], "size": 16}, argv=["--quick", "--size", "32"])
    assert args.doc is None and not args.out.is_relative_to(ROOT)
    assert (args.networks, args.size, args.repeats, args.warmup, args.threads) == (["b"], 32, 1, 1, 1)
    args = common.parse_args(parser, quick={}, argv=[])
    assert args.out == ROOT / "docs" / "benchmarks" / "networks.json" and args.doc == ROOT / "docs" / "networks.md"


def test_networks_times_each_network_at_the_size_threads_and_classes_asked(tmp_path, monkeypatch):
    """Where an experiment's networks are timed (its report counts their parameters only): batch 1 at its inputs."""
    from mskd.networks import count_parameters, get_network

    networks = _load("networks", monkeypatch)
    argv = ["--quick", "--networks", "tiny_unet", "--size", "32", "--classes", "3", "--out", str(tmp_path / "n.json")]
    networks.main(argv)
    results = json.loads((tmp_path / "n.json").read_text())
    meta, (row,) = results["meta"], results["networks"]
    assert (meta["size"], meta["classes"], meta["threads"]) == (32, 3, 1)
    assert row["name"] == "tiny_unet" and row["latency_ms"] > 0
    assert row["params"] == count_parameters(get_network("tiny_unet", 1, 3))
    assert "Batch 1, 1×32×32, 3 classes, wall-clock latency." in networks.markdown(results["networks"], meta)

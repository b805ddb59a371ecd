"""ModelSummaryHandler: parameters and FLOPs as metrics and a text artifact; model_summary leaves no trace."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

from mskd.networks import count_parameters
from mskd.tracking import MlflowRun
from mskd.tracking.model_summary import ModelSummaryHandler, model_summary


def test_metrics_and_text_are_logged(tracked):
    client = MlflowClient(tracking_uri=tracked.uri)
    metrics = client.get_run(tracked.run_id).data.metrics
    # Conv2d(1, 4, 3): 4 * 9 weights + 4 biases; 2 FLOPs per multiply-add, 9 per output pixel, 4 x 32 x 32 outputs
    assert metrics["params_total"] == metrics["params_trainable"] == count_parameters(tracked.network) == 40
    assert metrics["gflops"] == pytest.approx(2 * 9 * 4 * 32 * 32 / 1e9)
    assert "model_summary.txt" in {a.path for a in client.list_artifacts(tracked.run_id)}
    text = (tracked.root / "summary" / "model_summary.txt").read_text()
    assert "parameters: 40 total, 40 trainable" in text and "output: (1, 4, 32, 32)" in text
    # logged once per run, not at every epoch
    assert len(client.get_metric_history(tracked.run_id, "params_total")) == 1


def test_metrics_are_logged_once_per_run(mlflow_uri, tmp_path):
    """A resumed training logs to the same run: the summary's metrics are not repeated, the file is rewritten."""
    client = MlflowClient(tracking_uri=mlflow_uri)
    run_id = client.create_run(client.create_experiment("e"), run_name="r").info.run_id
    handler = ModelSummaryHandler(
        torch.nn.Conv2d(1, 4, 3), [1, 1, 8, 8], tmp_path, MlflowRun(mlflow_uri, run_id=run_id)
    )
    handler.log_once()
    handler.log_once()
    assert [m.value for m in client.get_metric_history(run_id, "params_total")] == [40.0]
    assert [a.path for a in client.list_artifacts(run_id)] == ["model_summary.txt"]


@pytest.mark.parametrize(
    "shape, flops",
    [
        ((1, 1, 8, 8), 2 * 9 * 4 * 8 * 8),
        ((2, 1, 8, 8), 2 * 2 * 9 * 4 * 8 * 8),
        ((1, 1, 16, 8), 2 * 9 * 4 * 16 * 8),
    ],
)
def test_flops_follow_the_input_size(shape, flops):
    net = torch.nn.Conv2d(1, 4, 3, padding=1)
    assert model_summary(net, shape)["flops"] == flops


def test_summary_changes_no_state():
    """Eval mode during the pass, every module's mode restored, BatchNorm statistics and the RNG untouched."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Dropout(0.5))
    net.train()
    net[1].eval()  # a frozen BatchNorm stays frozen
    stats = net[1].running_mean.clone()
    rng = torch.get_rng_state()
    summary = model_summary(net, (1, 1, 8, 8))
    assert [m.training for m in net.modules()] == [True, True, False, True]
    assert torch.equal(net[1].running_mean, stats) and torch.equal(torch.get_rng_state(), rng)
    assert summary["per_module"] == {"0": (20, 2 * 9 * 2 * 6 * 6), "1": (4, 0), "2": (0, 0)}
    assert summary["params_trainable"] == 24


def test_per_module_looks_through_single_child_wrappers():
    inner = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.Conv2d(2, 1, 1))
    summary = model_summary(torch.nn.Sequential(torch.nn.Sequential(inner)), (1, 1, 4, 4))
    assert summary["per_module"] == {"0.0.0": (4, 2 * 2 * 16), "0.0.1": (3, 2 * 2 * 16)}


def test_frozen_parameters_are_not_trainable():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    net[0].requires_grad_(False)
    summary = model_summary(net, (1, 3))
    assert (summary["params_total"], summary["params_trainable"]) == (11, 3)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"sizes >= 1, e\.g\. \(1, 1, 224, 224\), got \(1, 0, 8, 8\)"):
        model_summary(torch.nn.Conv2d(1, 1, 1), (1, 0, 8, 8))

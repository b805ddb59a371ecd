"""MetricBarsHandler: per-organ Dice and HD95 bars of a VolumeMetricsHandler summary, logged at COMPLETED."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import MLFlowHandler
from monai.inferers import SimpleInferer
from monai.networks.utils import one_hot
from monai.transforms import AsDiscreted

from mskd.handlers import VolumeMetricsHandler
from mskd.tracking import MetricBarsHandler, MlflowRun
from mskd.tracking.metric_bars import metric_bars_figure

ORGANS = ["spleen", "right_kidney"]


class LabelEcho(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return one_hot(x.long(), num_classes=len(ORGANS) + 1, dim=1)


def test_bars_are_logged_to_the_closed_evaluation_run(tmp_path, mlflow_uri):
    uri = mlflow_uri
    volume = np.zeros((1, 8, 8, 4), np.float32)
    volume[0, 1:4, 1:4, 1:3] = 1
    volume[0, 5:7, 5:7, 1:3] = 2
    data = [{"image": torch.as_tensor(volume), "label": torch.as_tensor(volume)} for _ in range(2)]
    volume_metrics = VolumeMetricsHandler(ORGANS, tmp_path, prefix="test")
    common = {"tracking_uri": uri, "experiment_name": "e", "run_name": "r-test"}
    bars = MetricBarsHandler(volume_metrics, tmp_path / "charts", run=MlflowRun(**common))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(data), batch_size=1),
        network=LabelEcho(),
        inferer=SimpleInferer(),
        postprocessing=AsDiscreted(keys="pred", argmax=True),
        # the bars first: they still find the run after the MLFlowHandler closed it
        val_handlers=[bars, volume_metrics, MLFlowHandler(iteration_log=False, close_on_complete=True, **common)],
    )
    evaluator.run()
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "evaluation")] == ["evaluation/test_metrics.png"]
    assert bars.last_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _summary():
    nan = math.nan
    keys = ("organ", "n", "n_hd95", "dice_mean", "dice_std", "hd95_mm_mean", "hd95_mm_std")
    rows = [
        ("spleen", 3, 3, 0.8, 0.1, 4.0, 1.0),
        ("liver", 3, 0, 0.0, 0.0, nan, nan),  # missed in every case: Dice 0, no HD95
        ("mean", 3, 3, 0.4, 0.4, 4.0, nan),
    ]
    return [dict(zip(keys, row, strict=True)) for row in rows]


def test_figure_bars_colours_and_labels():
    fig = metric_bars_figure(_summary(), title="t")
    dice_ax, hd_ax = fig.axes
    assert [round(p.get_height(), 3) for p in dice_ax.patches] == [0.8, 0.0, 0.4]
    assert [p.get_height() for p in hd_ax.patches] == [4.0, 0.0, 4.0]  # NaN: no bar ...
    texts = [t.get_text() for t in hd_ax.texts]
    assert texts == ["4.0\nn=3", "n/a\nn=0", "4.0\nn=3"]  # ... and "n/a"
    assert [t.get_text() for t in dice_ax.get_xticklabels()] == ["spleen", "liver", "mean"]
    colours = [p.get_facecolor() for p in dice_ax.patches]
    assert colours[0] != colours[1] and colours[2][:3] == pytest.approx((1 / 3, 1 / 3, 1 / 3), abs=0.01)


@pytest.mark.parametrize("summary, match", [([], "at least one summary row"), ([{"n": 1}], "'organ' entry")])
def test_figure_bad_summary(summary, match):
    with pytest.raises(ValueError, match=match):
        metric_bars_figure(summary)


def test_handler_needs_a_volume_metrics_handler(tmp_path):
    with pytest.raises(TypeError, match="must be a VolumeMetricsHandler, got dict"):
        MetricBarsHandler({}, tmp_path)

"""LearningCurvesHandler: the run's metric histories read back and drawn at the trainer's COMPLETED."""

from __future__ import annotations

from mlflow import MlflowClient

from mskd.tracking.learning_curves import learning_curves_figure

PNG = b"\x89PNG\r\n\x1a\n"


def test_curves_png_is_logged(tracked):
    client = MlflowClient(tracking_uri=tracked.uri)
    assert [a.path for a in client.list_artifacts(tracked.run_id, "curves")] == ["curves/learning_curves.png"]
    assert tracked.curves.last_path.read_bytes()[:8] == PNG


def test_histories_are_the_logged_metrics(tracked):
    losses, validation = tracked.curves.histories()
    assert set(losses) == {"loss", "loss_seg"}  # lr_group_0 and the validation metrics are not losses
    assert [step for step, _ in losses["loss"]] == list(range(1, 7))  # 3 iterations per epoch, 2 epochs
    assert set(validation) == {"val_mean_dice", "val_dice_spleen", "val_dice_right_kidney", "val_dice_left_kidney"}
    assert [step for step, _ in validation["val_mean_dice"]] == [1, 2]
    client = MlflowClient(tracking_uri=tracked.uri)
    assert validation["val_mean_dice"][-1][1] == client.get_run(tracked.run_id).data.metrics["val_mean_dice"]


def test_epoch_means_are_read_as_losses(mlflow_uri, tmp_path):
    from mskd.tracking import LearningCurvesHandler, MlflowRun, open_run

    run_id = open_run(mlflow_uri, "e", "r")
    client = MlflowClient(tracking_uri=mlflow_uri)
    for key, value, step in [("epoch_mean_loss", 2.0, 3), ("epoch_mean_loss_kd", 0.5, 3), ("lr_group_0", 0.1, 3)]:
        client.log_metric(run_id, key, value, step=step)
    handler = LearningCurvesHandler(tmp_path, MlflowRun(mlflow_uri, "e", "r", run_id=run_id))
    losses, validation = handler.histories()
    assert losses == {"epoch_mean_loss": [(3, 2.0)], "epoch_mean_loss_kd": [(3, 0.5)]} and validation == {}


def test_figure_axes_and_scales():
    fig = learning_curves_figure(
        {"loss": [(1, 1.0), (2, 0.5)], "loss_kd": [(1, 0.01), (2, 0.02)]},
        {"val_mean_dice": [(1, 0.2), (2, 0.6)], "val_dice_spleen": [(1, 0.1), (2, 0.9)]},
        class_names=["spleen"],
    )
    loss_ax, val_ax = fig.axes
    assert loss_ax.get_yscale() == "log"  # every loss positive, spanning a factor 100
    assert [line.get_label() for line in loss_ax.get_lines()] == ["loss", "loss_kd"]
    assert [line.get_label() for line in val_ax.get_lines()][:2] == ["spleen", "val_mean_dice"]
    assert val_ax.get_lines()[0].get_color() == "#56B4E9"  # the spleen's colour
    assert "best 0.600 (epoch 2)" in [t.get_text() for t in val_ax.texts]


def test_epoch_means_share_their_term_colour_and_stand_alone_in_a_short_run():
    fig = learning_curves_figure(
        {"loss_kd": [(1, 0.4), (2, 0.2)], "epoch_mean_loss_kd": [(2, 0.3)], "epoch_mean_loss": [(2, 1.0)]}, {}
    )
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines) == ["loss (epoch mean)", "loss_kd", "loss_kd (epoch mean)"]  # the total first
    assert lines["loss_kd (epoch mean)"].get_color() == lines["loss_kd"].get_color()
    assert lines["loss (epoch mean)"].get_color() == "black"
    assert list(lines["loss (epoch mean)"].get_xdata()) == [2]
    assert [t.get_text() for t in fig.axes[0].texts] == []  # curves, not "no loss logged"


def test_linear_scale_for_a_narrow_range():
    fig = learning_curves_figure({"loss": [(1, 2.5), (2, 2.3)]}, {})
    assert fig.axes[0].get_yscale() == "linear"


def test_figure_without_metrics_says_so():
    fig = learning_curves_figure({}, {})
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["no loss logged", "no validation metric logged"]

"""A tiny tracked training, as the bundle wires it, for the tests of the MLflow artefact handlers.

Three synthetic cases (32 x 32 x 8, three organs), a one-layer 2D network, a ``SupervisedTrainer`` validating every
epoch through a ``SupervisedEvaluator`` with ``SliceInferer``, MONAI's ``MLFlowHandler`` on both engines (one run),
and the dashboard handlers attached: overlays on the evaluator; learning curves, model summary and tags on the
trainer. The store is SQLite under a temporary folder, as in the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import MeanDice, MLFlowHandler, ValidationHandler, from_engine
from monai.inferers import SimpleInferer, SliceInferer
from monai.losses import DiceCELoss
from monai.transforms import Activationsd, AsDiscreted, Compose

from mskd.engines import loss_terms
from mskd.handlers import PerClassMetricHandler
from mskd.tracking import LearningCurvesHandler, MlflowRun, ModelSummaryHandler, OverlayHandler, RunTagsHandler
from mskd.tracking.run_tags import runs_table_view

ORGANS = ["spleen", "right_kidney", "left_kidney"]  # Synapse ids 1-3, so the Synapse colours apply
EXPERIMENT, RUN = "handlers", "conv-teacher-s0"
SIZE = (32, 32, 8)
TAGS = {"task": "synapse", "teacher": "conv", "student": None, "method": "teacher", "seed": 0}
VIEW = runs_table_view(metrics=["val_mean_dice", "params_total"], tags=["method"], order_by="val_mean_dice")
# organs per axial slice of case 0: z=1..6 organ 1; z=3..4 organ 2; z=4 organ 3 -> z=4 shows all three
EXPECTED_SLICES = {0: 4, 1: 2, 2: 0}


def case_volumes(case: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image, label)`` of shape ``(1, 32, 32, 8)``: image in [0, 1], organs as bright squares."""
    label = np.zeros(SIZE, np.uint8)
    if case == 0:
        label[4:14, 4:14, 1:7] = 1
        label[18:26, 4:12, 3:5] = 2
        label[20:28, 18:28, 4] = 3
    elif case == 1:  # z=2 and z=5 both show two organs; z=2 has more foreground voxels
        label[2:20, 2:20, 2] = 1
        label[24:30, 24:30, 2] = 2
        label[2:8, 2:8, 5] = 1
        label[24:28, 24:28, 5] = 3
    else:  # one organ of the same size on every slice: the tie goes to the lowest index
        label[10:20, 10:20, :] = 1
    rng = np.random.default_rng(case)
    image = 0.2 + 0.2 * label + 0.05 * rng.standard_normal(SIZE)
    return image[None].astype(np.float32), label[None].astype(np.float32)


def conv_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, len(ORGANS) + 1, 3, padding=1))


@dataclass
class Tracked:
    root: Path
    uri: str
    run_id: str
    overlay: OverlayHandler
    curves: LearningCurvesHandler
    summary: ModelSummaryHandler
    network: torch.nn.Module
    slices_after_first_validation: dict[int, int]


def build_engines(root: Path, uri: str, teacher: torch.nn.Module | None = None, max_epochs: int = 2):
    """Trainer and evaluator wired like the bundle; returns ``(trainer, evaluator, handlers)``."""
    volumes = [case_volumes(i) for i in range(3)]
    train_items = [
        {"image": torch.as_tensor(im[..., z]), "label": torch.as_tensor(lb[..., z])}
        for im, lb in volumes
        for z in range(0, SIZE[2], 2)
    ]
    val_items = [{"image": torch.as_tensor(im), "label": torch.as_tensor(lb)} for im, lb in volumes]
    network = conv_net()
    pred_label = from_engine(["pred", "label"])
    monai_run = {"tracking_uri": uri, "experiment_name": EXPERIMENT, "run_name": RUN}
    common = {"run": MlflowRun(uri, EXPERIMENT, RUN)}  # follows MONAI's handler by name
    overlay = OverlayHandler(ORGANS, root / "overlays", num_cases=3, teacher=teacher, **common)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(val_items), batch_size=1, shuffle=False),
        network=network,
        inferer=SliceInferer(roi_size=(32, 32), sw_batch_size=8, spatial_dim=2),
        postprocessing=Compose(
            [
                Activationsd(keys="pred", softmax=True),
                AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=len(ORGANS) + 1),
            ]
        ),
        key_val_metric={"val_mean_dice": MeanDice(include_background=False, output_transform=pred_label)},
        additional_metrics={
            "val_dice": MeanDice(include_background=False, reduction="mean_batch", output_transform=pred_label)
        },
        val_handlers=[
            PerClassMetricHandler("val_dice", ORGANS),
            MLFlowHandler(iteration_log=False, close_on_complete=False, **monai_run),
            overlay,
        ],
    )
    curves = LearningCurvesHandler(root / "curves", class_names=ORGANS, **common)
    summary = ModelSummaryHandler(network, [1, 1, 32, 32], root / "summary", **common)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=DataLoader(Dataset(train_items), batch_size=4, shuffle=True),
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), 1e-2),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        inferer=SimpleInferer(),
        decollate=False,
        train_handlers=[
            ValidationHandler(validator=evaluator, interval=1, epoch_level=True),
            # the dashboard handlers before the MLFlowHandler: their place in the list must not matter
            summary,
            RunTagsHandler(TAGS, experiment_tags={"mlflow.sharedViewState.mskd": VIEW, "unset": None}, **common),
            curves,
            MLFlowHandler(output_transform=loss_terms, close_on_complete=True, **monai_run),
        ],
    )
    return trainer, evaluator, {"overlay": overlay, "curves": curves, "summary": summary, "network": network}

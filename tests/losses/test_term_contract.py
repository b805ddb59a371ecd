"""The contract every distillation term keeps (DESIGN §5), checked on the baselines and the new FFD/RGD/KD options.

Gradients reach the student only; ``reduction`` none/mean/sum; finite values and gradients with absent classes, a
background-only sample and all-zero student features; classes absent from every sample change nothing (the value
with ``K = 14`` equals the value with ``K = 3``, so absent classes are masked, not looped over).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mskd.losses import (
    ChannelWiseDistillationLoss,
    DistillationTermLoss,
    FeatureFilteringDistillationLoss,
    ImportanceMapDistillationLoss,
    IntraClassFeatureVariationLoss,
    LogitDistillationLoss,
    PairwiseSimilarityDistillationLoss,
    RegionAffinityDistillationLoss,
    RegionGraphDistillationLoss,
)
from tests.losses.inputs import random_inputs

# (id, factory, input kind): "features" = channel counts and sizes differ, "equal" = equal channel counts,
# "logits" = student and teacher logits with K channels at input resolution
TERMS: list[tuple[str, Callable[..., DistillationTermLoss], str]] = [
    ("imd", ImportanceMapDistillationLoss, "features"),
    ("rad", RegionAffinityDistillationLoss, "features"),
    ("cwd-features", ChannelWiseDistillationLoss, "equal"),
    ("cwd-logits", ChannelWiseDistillationLoss, "logits"),
    ("ifvd", IntraClassFeatureVariationLoss, "features"),
    ("skd", PairwiseSimilarityDistillationLoss, "features"),
    ("skd-max", lambda **kw: PairwiseSimilarityDistillationLoss(pooling="max", **kw), "features"),
    ("ffd-prototypes", lambda **kw: FeatureFilteringDistillationLoss(prototype_weight=0.5, **kw), "equal"),
    ("rgd-subregions", lambda **kw: RegionGraphDistillationLoss(subregions=2, **kw), "features"),
    (
        "kd-filtered",
        lambda **kw: LogitDistillationLoss(filter_band_radius=1, filter_teacher_errors=True, **kw),
        "logits",
    ),
    (
        "kd-balanced-filtered",
        lambda **kw: LogitDistillationLoss(class_balanced=True, filter_band_radius=2, **kw),
        "logits",
    ),
]
IDS = [t[0] for t in TERMS]
FEATURE_TERMS = [t for t in TERMS if t[2] != "logits"]


def _inputs(kind: str, batch: int = 2, classes: int = 3) -> tuple[torch.Tensor, ...]:
    student, teacher, target, teacher_logits = random_inputs(batch=batch, classes=classes)
    if kind == "equal":
        student = torch.randn(batch, 6, 4, 4)
    elif kind == "logits":
        student, teacher = torch.randn_like(teacher_logits), teacher_logits.clone()
    return student, teacher, target, teacher_logits


@pytest.mark.parametrize(("name", "factory", "kind"), TERMS, ids=IDS)
def test_gradients_reach_student_only(name: str, factory: Callable, kind: str) -> None:
    torch.manual_seed(6)
    student, teacher, target, teacher_logits = _inputs(kind)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    teacher_logits.requires_grad_(True)
    factory()(student, teacher, target, teacher_logits).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None and teacher_logits.grad is None


@pytest.mark.parametrize(("name", "factory", "kind"), TERMS, ids=IDS)
def test_reductions(name: str, factory: Callable, kind: str) -> None:
    torch.manual_seed(7)
    args = _inputs(kind, batch=3)
    none = factory(reduction="none")(*args)
    assert none.shape == (3,) and (none >= 0).all()
    torch.testing.assert_close(factory(reduction="sum")(*args), none.sum())
    torch.testing.assert_close(factory(reduction="mean")(*args), none.mean())
    torch.testing.assert_close(factory()(*args), none.mean())


@pytest.mark.parametrize(("name", "factory", "kind"), TERMS, ids=IDS)
def test_finite_with_absent_classes_background_only_and_zero_features(name: str, factory: Callable, kind: str) -> None:
    torch.manual_seed(5)
    student, teacher, target, teacher_logits = _inputs(kind, batch=3, classes=4)
    target = target.clamp(max=1)  # classes 2 and 3 absent everywhere
    target[1] = 0  # background only
    student[2] = 0.0  # dead student features / flat logits
    student.requires_grad_(True)
    value = factory(reduction="none")(student, teacher, target, teacher_logits)
    assert value.shape == (3,) and torch.isfinite(value).all()
    value.sum().backward()
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize(("name", "factory", "kind"), FEATURE_TERMS, ids=[t[0] for t in FEATURE_TERMS])
def test_absent_classes_change_nothing(name: str, factory: Callable, kind: str) -> None:
    # the same labels (values 0..2) with K = 3 and with K = 14; extra teacher classes never win the argmax
    torch.manual_seed(8)
    student, teacher, target, logits_3 = _inputs(kind)
    logits_14 = torch.cat([logits_3, torch.full((2, 11, 8, 8), -1e4)], dim=1)
    loss = factory(reduction="none")
    torch.testing.assert_close(loss(student, teacher, target, logits_14), loss(student, teacher, target, logits_3))

"""The contract every distillation term keeps (DESIGN §5), checked on the baselines and the FFD/RGD/KD options.

Gradients reach the student only; ``reduction`` none/mean/sum; finite values and gradients with absent classes, a
background-only sample and all-zero student features; classes absent from every sample change nothing (the value
with ``K = 14`` equals the value with ``K = 3``, so absent classes are masked, not looped over); a sample with
nothing to distil (a background-only slice for FFD, RGD and RAD) scores 0 and is left out of the batch mean, a batch
without such a sample gives 0, not NaN; labels larger than the feature maps (area fractions) keep every class.
Every check runs on images (``B, C, H, W``, "2d") and on volumes (``B, C, D, H, W``, "3d", with depths that differ
from the heights and widths, so that an axis mix-up shows).
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
from mskd.losses.regions import one_hot_labels
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
    ("ffd", FeatureFilteringDistillationLoss, "features"),
    ("ffd-prototypes", lambda **kw: FeatureFilteringDistillationLoss(prototype_weight=0.5, **kw), "equal"),
    (
        "ffd-floor-no-error-filter",
        lambda **kw: FeatureFilteringDistillationLoss(filter_teacher_errors=False, min_region_fraction=0.1, **kw),
        "features",
    ),
    ("rgd", RegionGraphDistillationLoss, "features"),
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
    (
        "kd-balanced-floor",
        lambda **kw: LogitDistillationLoss(class_balanced=True, min_region_fraction=0.1, **kw),
        "logits",
    ),
]
IDS = [t[0] for t in TERMS]
FEATURE_TERMS = [t for t in TERMS if t[2] != "logits"]
# terms for which a background-only slice has nothing to distil (FFD: no organ pixel in M; RGD: a single node;
# RAD: no background/organ pair); "rgd-subregions" splits the background into several nodes, so it counts, and
# the other terms' value on such a slice is meaningful
SKIP_BACKGROUND_ONLY = {"ffd", "ffd-prototypes", "ffd-floor-no-error-filter", "rgd", "rad"}


# spatial dims of the inputs: images, and volumes with depths (student, teacher, labels) = (2, 4, 4)
DIMS = pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
DEPTHS = {2: None, 3: (2, 4, 4)}


def _inputs(kind: str, batch: int = 2, classes: int = 3, dims: int = 2) -> tuple[torch.Tensor, ...]:
    student, teacher, target, teacher_logits = random_inputs(batch=batch, classes=classes, depths=DEPTHS[dims])
    if kind == "equal":
        student = torch.randn(batch, 6, *student.shape[2:-2], 4, 4)
    elif kind == "logits":
        student, teacher = torch.randn_like(teacher_logits), teacher_logits.clone()
    return student, teacher, target, teacher_logits


@DIMS
@pytest.mark.parametrize(("name", "factory", "kind"), TERMS, ids=IDS)
def test_gradients_reach_student_only(name: str, factory: Callable, kind: str, dims: int) -> None:
    torch.manual_seed(6)
    student, teacher, target, teacher_logits = _inputs(kind, dims=dims)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    teacher_logits.requires_grad_(True)
    factory()(student, teacher, target, teacher_logits).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None and teacher_logits.grad is None


@DIMS
@pytest.mark.parametrize(("name", "factory", "kind"), TERMS, ids=IDS)
def test_reductions(name: str, factory: Callable, kind: str, dims: int) -> None:
    torch.manual_seed(7)
    args = _inputs(kind, batch=3, dims=dims)
    none = factory(reduction="none")(*args)
    assert none.shape == (3,) and (none >= 0).all()
    torch.testing.assert_close(factory(reduction="sum")(*args), none.sum())
    torch.testing.assert_close(factory(reduction="mean")(*args), none.mean())
    torch.testing.assert_close(factory()(*args), none.mean())


@DIMS
@pytest.mark.parametrize(("name", "factory", "kind"), TERMS, ids=IDS)
def test_finite_with_absent_classes_background_only_and_zero_features(
    name: str, factory: Callable, kind: str, dims: int
) -> None:
    torch.manual_seed(5)
    student, teacher, target, teacher_logits = _inputs(kind, batch=3, classes=4, dims=dims)
    target = target.clamp(max=1)  # classes 2 and 3 absent everywhere
    target[1] = 0  # background only
    student[2] = 0.0  # dead student features / flat logits
    student.requires_grad_(True)
    value = factory(reduction="none")(student, teacher, target, teacher_logits)
    assert value.shape == (3,) and torch.isfinite(value).all()
    value.sum().backward()
    assert torch.isfinite(student.grad).all()


@DIMS
@pytest.mark.parametrize(("name", "factory", "kind"), FEATURE_TERMS, ids=[t[0] for t in FEATURE_TERMS])
def test_absent_classes_change_nothing(name: str, factory: Callable, kind: str, dims: int) -> None:
    # the same labels (values 0..2) with K = 3 and with K = 14; extra teacher classes never win the argmax
    torch.manual_seed(8)
    student, teacher, target, logits_3 = _inputs(kind, dims=dims)
    logits_14 = torch.cat([logits_3, torch.full((2, 11, *logits_3.shape[2:]), -1e4)], dim=1)
    loss = factory(reduction="none")
    torch.testing.assert_close(loss(student, teacher, target, logits_14), loss(student, teacher, target, logits_3))


@DIMS
@pytest.mark.parametrize(("name", "factory", "kind"), TERMS, ids=IDS)
def test_background_only_sample_in_the_batch_mean(name: str, factory: Callable, kind: str, dims: int) -> None:
    torch.manual_seed(9)
    student, teacher, target, teacher_logits = _inputs(kind, dims=dims)
    target[1] = 0  # background only
    student.requires_grad_(True)
    none = factory(reduction="none")(student, teacher, target, teacher_logits)
    mean = factory()(student, teacher, target, teacher_logits)
    alone = factory()(student[:1], teacher[:1], target[:1], teacher_logits[:1])
    torch.testing.assert_close(none[0], alone)
    torch.testing.assert_close(factory(reduction="sum")(student, teacher, target, teacher_logits), none.sum())
    if name in SKIP_BACKGROUND_ONLY:
        assert none[1].item() == 0.0
        torch.testing.assert_close(mean, alone)
    else:
        torch.testing.assert_close(mean, none.mean())
    mean.backward()
    assert torch.isfinite(student.grad).all()


@DIMS
@pytest.mark.parametrize(("name", "factory", "kind"), TERMS, ids=IDS)
def test_finite_when_no_sample_has_foreground(name: str, factory: Callable, kind: str, dims: int) -> None:
    torch.manual_seed(10)
    student, teacher, target, teacher_logits = _inputs(kind, dims=dims)
    target = torch.zeros_like(target)
    student.requires_grad_(True)
    value = factory()(student, teacher, target, teacher_logits)
    assert torch.isfinite(value)
    if name in SKIP_BACKGROUND_ONLY:
        assert value.item() == 0.0
    value.backward()
    assert torch.isfinite(student.grad).all()


@DIMS
@pytest.mark.parametrize(("name", "factory", "kind"), FEATURE_TERMS, ids=[t[0] for t in FEATURE_TERMS])
def test_labels_larger_than_the_features(name: str, factory: Callable, kind: str, dims: int) -> None:
    # labels at 32x32 for 8x8 / 4x4 features: finite values and gradients, and a class that only covers single
    # pixels between the nearest-sampled ones still changes the value (it is present as an area fraction); volumes:
    # labels 8x32x32 for 4x8x8 / 2x4x4 features
    torch.manual_seed(11)
    student, teacher, _, _ = _inputs(kind, dims=dims)
    target = torch.randint(0, 2, (2, 1, *(8,) * (dims - 2), 32, 32))
    target[(..., *(slice(1, None, 4),) * dims)] = 2  # class 2 only off the nearest grid (rows/cols 0, 4, 8, ...)
    teacher_logits = one_hot_labels(target, 3) * 4.0  # the teacher is right everywhere
    student.requires_grad_(True)
    value = factory(reduction="none")(student, teacher, target, teacher_logits)
    assert value.shape == (2,) and torch.isfinite(value).all() and (value >= 0).all()
    value.sum().backward()
    assert torch.isfinite(student.grad).all()
    without = factory(reduction="none")(student, teacher, target.clamp(max=1), one_hot_labels(target.clamp(max=1), 3))
    if name not in {"imd", "cwd-features", "skd", "skd-max"}:  # label-free terms
        assert not torch.allclose(value, without)

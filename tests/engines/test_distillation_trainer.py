import pytest
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from mskd.engines import LOSS_TERMS, TEACHER_CACHE_HIT_RATE, DistillationTrainer, TeacherCache, loss_terms
from mskd.losses import (
    DistillationLoss,
    FeatureFilteringDistillationLoss,
    LogitDistillationLoss,
    RegionGraphDistillationLoss,
)

TAPS = {"low": "model.0", "high": "model.1.submodule"}


def _net(channels):
    torch.manual_seed(len(channels) * channels[0])
    return UNet(2, 1, 3, channels=channels, strides=(2, 2), num_res_units=1)


def _loader(n=2):
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 1, 16, 16)).float()
    return [{"image": torch.rand(2, 1, 16, 16), "label": label} for _ in range(n)]


def _loss():
    return DistillationLoss(
        seg_loss=DiceCELoss(to_onehot_y=True, softmax=True),
        terms={
            "kd": {"loss": LogitDistillationLoss(temperature=2.0), "weight": 0.5},
            "ffd": {"loss": FeatureFilteringDistillationLoss(band_radius=1), "weight": 0.9, "stages": ["low", "high"]},
        },
    )


def _trainer(teacher, student, loss=None, **kwargs):
    return DistillationTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_loader(),
        network=student,
        optimizer=torch.optim.SGD(student.parameters(), lr=0.1),
        loss_function=loss or _loss(),
        teacher=teacher,
        student_taps=kwargs.pop("student_taps", TAPS),
        teacher_taps=kwargs.pop("teacher_taps", TAPS),
        decollate=False,
        **kwargs,
    )


def test_iteration_trains_student_only_and_reports_every_term():
    teacher, student = _net((8, 16, 32)), _net((4, 8, 16))
    teacher.train()  # the trainer must put it in eval mode itself
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = _trainer(teacher, student)
    fired = []
    for event in (
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ):
        trainer.add_event_handler(event, lambda _e, ev=event: fired.append(ev))
    trainer.run()

    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, teacher_before[k], rtol=0, atol=0)
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())
    assert fired.count(IterationEvents.BACKWARD_COMPLETED) == 2 and len(fired) == 8

    out = trainer.state.output
    assert set(out[LOSS_TERMS]) == {"seg", "kd", "ffd"}
    assert all(not t.requires_grad for t in out[LOSS_TERMS].values())
    expected = out[LOSS_TERMS]["seg"] + 0.5 * out[LOSS_TERMS]["kd"] + 0.9 * out[LOSS_TERMS]["ffd"]
    torch.testing.assert_close(out["loss"].detach(), expected)
    logged = loss_terms(out)
    assert set(logged) == {"loss", "loss_seg", "loss_kd", "loss_ffd"}


def test_loss_terms_of_plain_supervised_output():
    assert loss_terms([{"loss": torch.tensor(0.25)}]) == {"loss": 0.25, "loss_seg": 0.25}


def test_tap_names_must_match():
    with pytest.raises(ValueError, match="same names"):
        _trainer(_net((8, 16, 32)), _net((4, 8, 16)), teacher_taps={"low": "model.0"})


def test_loss_stage_must_be_tapped():
    taps = {"low": "model.0"}
    with pytest.raises(ValueError, match=r"needs stages \['high'\]"):
        _trainer(_net((8, 16, 32)), _net((4, 8, 16)), student_taps=taps, teacher_taps=taps)


def test_tap_path_checked_up_front():
    with pytest.raises(ValueError, match="'model.7' is not a sub-module"):
        _trainer(
            _net((8, 16, 32)),
            _net((4, 8, 16)),
            student_taps={"low": "model.0", "high": "model.7"},
            teacher_taps=TAPS,
        )


def test_autocast_path_runs_on_cpu_in_bfloat16():
    # The CUDA path (autocast + GradScaler) exercised on CPU with bf16: the scaler is disabled without CUDA.
    teacher, student = _net((8, 16, 32)), _net((4, 8, 16))
    with pytest.warns(UserWarning):  # torch warns that the CUDA GradScaler is disabled on a CPU-only machine
        trainer = _trainer(teacher, student, amp=True, amp_kwargs={"dtype": torch.bfloat16})
        trainer.run()
    terms = trainer.state.output[LOSS_TERMS]
    assert all(torch.isfinite(v) for v in terms.values())
    assert trainer.state.output["pred"].dtype == torch.bfloat16


def _mskd_loss():
    return DistillationLoss(
        seg_loss=DiceCELoss(to_onehot_y=True, softmax=True),
        terms={
            "kd": {"loss": LogitDistillationLoss(temperature=4.0), "weight": 0.1},
            "ffd": {"loss": FeatureFilteringDistillationLoss(band_radius=1), "weight": 0.9, "stages": ["low", "high"]},
            "rgd": {"loss": RegionGraphDistillationLoss(), "weight": 0.9, "stages": ["low", "high"]},
        },
    )


def _one_step(**options):
    """One iteration of a fresh trainer (same seeds every time): its loss terms and the student's gradients."""
    teacher, student = _net((8, 16, 32)), _net((4, 8, 16))
    trainer = _trainer(teacher, student, loss=_mskd_loss(), **options)
    trainer.run()
    grads = {name: p.grad.clone() for name, p in student.named_parameters()}
    return trainer, trainer.state.output[LOSS_TERMS], grads


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bfloat16_teacher_targets_stay_within_tolerance_of_float32(seed):
    # The tolerance that docs/performance.md states for teacher_autocast="bfloat16": teacher logits and features
    # within 3 % of their largest magnitude, >= 98 % of pixels with the same argmax, the loss within 1 %.
    torch.manual_seed(seed)
    images, labels = torch.rand(2, 1, 32, 32), torch.randint(0, 3, (2, 1, 32, 32)).float()
    teacher, student = _net((8, 16, 32)), _net((4, 8, 16))
    full = _trainer(teacher, student, loss=_mskd_loss())
    half = _trainer(teacher, student, loss=_mskd_loss(), teacher_autocast="bfloat16")
    logits, features = full.teacher_forward(images)
    logits_bf16, features_bf16 = half.teacher_forward(images)
    assert logits_bf16.dtype == torch.bfloat16 and all(f.dtype == torch.bfloat16 for f in features_bf16.values())
    for reference, value in [(logits, logits_bf16), *((features[k], features_bf16[k]) for k in features)]:
        assert (value.float() - reference).abs().max() <= 0.03 * reference.abs().max()
    assert (logits_bf16.argmax(1) == logits.argmax(1)).float().mean() >= 0.98
    with full.student_feature_taps as taps:
        student_logits = student(images)
    loss = full.loss_function(student_logits, logits, labels, taps.features, features)["loss"]
    loss_bf16 = full.loss_function(student_logits, logits_bf16, labels, taps.features, features_bf16)["loss"]
    torch.testing.assert_close(loss_bf16, loss, rtol=0.01, atol=0)


@pytest.mark.parametrize(
    "options", [{"channels_last": True}, {"compile": True, "compile_kwargs": {"backend": "eager"}}]
)
def test_speed_options_give_the_default_step(options):
    # compile: the eager backend traces both networks and their taps with TorchDynamo as inductor would, without
    # inductor's code generation (tens of seconds per network on a CPU; benchmarks/training_step.py measures it).
    _, terms, grads = _one_step()
    trainer, terms_option, grads_option = _one_step(**options)
    torch.testing.assert_close(terms_option, terms, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads_option, grads, rtol=1e-3, atol=1e-5)
    if options.get("channels_last"):
        assert all(
            p.is_contiguous(memory_format=torch.channels_last) for p in trainer.teacher.parameters() if p.ndim == 4
        )
    if options.get("compile"):
        assert isinstance(trainer.teacher, torch._dynamo.eval_frame.OptimizedModule)
        assert isinstance(trainer.network, torch._dynamo.eval_frame.OptimizedModule)


def test_loss_gets_the_iteration_when_it_takes_one():
    seen = []

    def with_iteration(student_logits, teacher_logits, target, student_features, teacher_features, *, iteration):
        seen.append(iteration)
        return {"loss": student_logits.mean()}

    def without(student_logits, teacher_logits, target, student_features, teacher_features):
        return {"loss": student_logits.mean()}

    _trainer(_net((8, 16, 32)), _net((4, 8, 16)), loss=with_iteration).run()
    assert seen == [1, 2]  # ignite counts iterations from 1
    _trainer(_net((8, 16, 32)), _net((4, 8, 16)), loss=without).run()  # called without the keyword
    assert _trainer(_net((8, 16, 32)), _net((4, 8, 16))).loss_takes_iteration  # DistillationLoss(..., iteration=)


@pytest.mark.parametrize("value", ["float32", torch.float32, "half"])
def test_teacher_autocast_must_be_a_half_precision_dtype(value):
    with pytest.raises(ValueError, match="float16|bfloat16"):
        _trainer(_net((8, 16, 32)), _net((4, 8, 16)), teacher_autocast=value)


def test_float16_teacher_on_cpu_warns():
    with pytest.warns(UserWarning, match="use 'bfloat16'"):
        _trainer(_net((8, 16, 32)), _net((4, 8, 16)), teacher_autocast=torch.float16)


def _distinct_loader():
    """Two batches of two distinct images each (the same every epoch, as without random augmentation)."""
    generator = torch.Generator().manual_seed(0)
    return [
        {"image": torch.rand(2, 1, 16, 16, generator=generator), "label": torch.randint(0, 3, (2, 1, 16, 16)).float()}
        for _ in range(2)
    ]


def _record_run(trainer):
    """Run ``trainer``; its loss terms per iteration, the batch sizes its teacher ran on, the epochs' hit rates."""
    terms, teacher_batches, hit_rates = [], [], []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: terms.append(dict(e.state.output[LOSS_TERMS])))
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: hit_rates.append(e.state.metrics.get(TEACHER_CACHE_HIT_RATE))
    )
    teacher = getattr(trainer.teacher, "_orig_mod", trainer.teacher)
    handle = teacher.register_forward_hook(lambda _m, args, _out: teacher_batches.append(args[0].shape[0]))
    trainer.run()
    handle.remove()
    return terms, teacher_batches, hit_rates


@pytest.mark.parametrize(
    "options", [{}, {"channels_last": True}, {"compile": True, "compile_kwargs": {"backend": "eager"}}]
)
def test_cached_teacher_gives_the_live_step_and_runs_only_on_new_inputs(options):
    # epoch 1: every sample new (the teacher runs on each whole batch); epoch 2: every sample a hit (it never runs)
    runs = {}
    for cached in (False, True):
        teacher, student = _net((8, 16, 32)), _net((4, 8, 16))
        trainer = _trainer(teacher, student, loss=_mskd_loss(), teacher_cache=cached, **options)
        trainer.data_loader, trainer.state.max_epochs, trainer.state.epoch_length = _distinct_loader(), 2, 2
        runs[cached] = _record_run(trainer)
    (live_terms, live_batches, live_rates), (terms, batches, rates) = runs[False], runs[True]
    assert len(terms) == len(live_terms) == 4
    for step, live in zip(terms, live_terms, strict=True):
        torch.testing.assert_close(step, live, rtol=1e-5, atol=1e-7)
    assert live_batches == [2, 2, 2, 2] and live_rates == [None, None]
    assert batches == [2, 2] and rates == [0.0, 1.0]
    assert trainer.teacher_cache.hits == trainer.teacher_cache.misses == 4


def test_a_batch_of_seen_and_new_samples_runs_the_teacher_on_the_new_ones_only():
    seen, new = _distinct_loader()
    mixed = {key: torch.cat([seen[key][:1], new[key][:1]]) for key in ("image", "label")}
    teacher, student = _net((8, 16, 32)), _net((4, 8, 16))
    trainer = _trainer(teacher, student, teacher_cache=True)
    trainer.data_loader, trainer.state.epoch_length = [seen, mixed], 2
    _, batches, rates = _record_run(trainer)
    assert batches == [2, 1] and rates == [0.25]
    reference = _trainer(_net((8, 16, 32)), _net((4, 8, 16)))
    logits, features = trainer.cached_teacher_forward(mixed["image"], mixed["image"])
    expected_logits, expected_features = reference.teacher_forward(mixed["image"])
    # a sub-batch forward rounds differently from the full batch's: equal up to the last float bits
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features, expected_features, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "value, error, match",
    [
        ("yes", TypeError, "teacher_cache must be a bool, None or a mskd.engines.TeacherCache, got str"),
        (4, TypeError, "got int"),
    ],
)
def test_teacher_cache_argument_is_checked(value, error, match):
    with pytest.raises(error, match=match):
        _trainer(_net((8, 16, 32)), _net((4, 8, 16)), teacher_cache=value)


def test_one_cache_serves_one_teacher():
    cache = TeacherCache()
    trainer = _trainer(_net((8, 16, 32)), _net((4, 8, 16)), teacher_cache=cache)
    assert trainer.teacher_cache is cache
    with pytest.raises(ValueError, match="another teacher"):
        _trainer(_net((8, 16, 32)), _net((4, 8, 16)), teacher_cache=cache)
    assert _trainer(_net((8, 16, 32)), _net((4, 8, 16)), teacher_cache=False).teacher_cache is None


def test_cached_teacher_forward_refuses_what_does_not_key_the_cache():
    images = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"extra inferer arguments \(1 positional, keywords \['mode'\]\)"):
        _trainer(_net((8, 16, 32)), _net((4, 8, 16)), teacher_cache=True).cached_teacher_forward(
            images, images, 1, mode="x"
        )
    with pytest.raises(ValueError, match="needs a teacher_cache"):
        _trainer(_net((8, 16, 32)), _net((4, 8, 16))).cached_teacher_forward(images, images)


def _net3d(channels):
    torch.manual_seed(len(channels) * channels[0])
    return UNet(3, 1, 3, channels=channels, strides=(2, 2), num_res_units=1)


def _one_3d_step(**options):
    """One MSKD iteration (KD + FFD + RGD) of 3D networks on 8x16x16 patches: the loss terms and the gradients."""
    teacher, student = _net3d((8, 16, 32)), _net3d((4, 8, 16))
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 1, 8, 16, 16)).float()
    loader = [{"image": torch.rand(2, 1, 8, 16, 16), "label": label}]
    trainer = DistillationTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=student,
        optimizer=torch.optim.SGD(student.parameters(), lr=0.1),
        loss_function=_mskd_loss(),
        teacher=teacher,
        student_taps=TAPS,
        teacher_taps=TAPS,
        decollate=False,
        **options,
    )
    trainer.run()
    return trainer, trainer.state.output[LOSS_TERMS], {n: p.grad.clone() for n, p in student.named_parameters()}


def test_3d_networks_distil_on_patches_and_channels_last_3d_gives_the_same_step():
    trainer, terms, grads = _one_3d_step()
    assert set(terms) == {"seg", "kd", "ffd", "rgd"} and all(torch.isfinite(v) for v in terms.values())
    assert any(g.abs().sum() > 0 for g in grads.values())
    fast, terms_cl, grads_cl = _one_3d_step(channels_last=True)
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in fast.teacher.parameters() if p.ndim == 5)
    torch.testing.assert_close(terms_cl, terms, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads_cl, grads, rtol=1e-3, atol=1e-5)

import pytest
import torch
from monai.engines.utils import IterationEvents
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from mskd.engines import LOSS_TERMS, DistillationTrainer, loss_terms
from mskd.losses import DistillationLoss, FeatureFilteringDistillationLoss, LogitDistillationLoss

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

"""End-to-end: the bundle's commands exactly as a user types them, on a tiny phantom, then the MLflow store."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from monai.bundle import ConfigParser

from mskd.data.phantom import generate_phantom_dataset
from mskd.networks import get_network, load_weights
from tests.bundles.runner import BUNDLES, CPU_NETWORKS, SCHEMA, TINY, mlflow_runs, output_dirs, run_bundle, run_module
from tests.data.fixtures import write_btcv, write_dicom_series, write_synapse_npz

BUNDLE = BUNDLES / "mskd_synapse"
CONFIGS = BUNDLE / "configs"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny phantom set; returns its root and the bundle arguments every run shares."""
    root = tmp_path_factory.mktemp("e2e")
    generate_phantom_dataset(root / "data", task="synapse", cases=5, seed=3, size=(32, 32, 16), test_cases=1)
    return root, ["--dataset_dir", str(root / "data"), *TINY]


@pytest.fixture(scope="module")
def trained(workspace):
    root, common = workspace
    args = [*common, *CPU_NETWORKS, *output_dirs(root)]
    run_bundle(BUNDLE, "train_teacher.json", args=args)
    run_bundle(BUNDLE, "train_teacher.json", "distill.json", args=args)
    run_bundle(BUNDLE, "train_teacher.json", "distill.json", "evaluate.json", args=args)
    return root, args


def test_teacher_and_distillation_runs_are_tracked(trained):
    root, _ = trained
    client, runs = mlflow_runs(root, "mskd_synapse")
    assert {"unet-teacher-s0", "tiny_unet_from_unet-mskd-s0", "tiny_unet_from_unet-mskd-s0-test"} <= set(runs)
    assert all(r.info.status == "FINISHED" for r in runs.values())

    teacher = runs["unet-teacher-s0"]
    assert teacher.data.params["method"] == "teacher" and teacher.data.params["network_params"] == "1607640"
    assert {"loss", "loss_seg", "val_mean_dice", "val_dice_liver", "val_dice_gallbladder"} <= set(teacher.data.metrics)

    student = runs["tiny_unet_from_unet-mskd-s0"]
    params = student.data.params
    assert params["method"] == "mskd" and params["teacher"] == "unet"
    # the default method: class-balanced KD + CWD on the logits (FFD and RGD off)
    assert (params["kd_weight"], params["kd_class_balanced"], params["cwd_weight"]) == ("0.5", "True", "1.0")
    assert not {"ffd_weight", "rgd_weight", "ffd_band_radius"} & set(params)  # the loss logs what is in force
    assert {"loss_seg", "loss_kd", "loss_cwd", "val_mean_dice"} <= set(student.data.metrics)
    assert not {"loss_ffd", "loss_rgd"} & set(student.data.metrics)
    history = client.get_metric_history(student.info.run_id, "loss_cwd")
    assert len(history) >= 1 and all(np.isfinite(m.value) for m in history)

    artifacts = {a.path for a in client.list_artifacts(student.info.run_id)}
    assert {"tiny_unet_from_unet-mskd-s0.pt", "tiny_unet_from_unet-mskd-s0.config.json"} <= artifacts
    executed = json.loads(Path(root / "output" / "tiny_unet_from_unet-mskd-s0.config.json").read_text())
    assert executed["max_epochs"] == 1 and executed["method"] == "mskd"  # overrides and the stacked file applied

    test = runs["tiny_unet_from_unet-mskd-s0-test"]
    assert 0.0 <= test.data.metrics["test_mean_dice"] <= 1.0
    organs = ("spleen", "liver", "aorta", "pancreas")
    assert {f"test_dice_{o}" for o in organs} | {f"test_hd95_{o}" for o in organs} <= set(test.data.metrics)
    assert {"test_transunet_mean_dice", "test_transunet_mean_hd95", "test_mean_hd95"} <= set(test.data.metrics)
    csvs = {"tiny_unet_from_unet-mskd-s0-test_metrics.csv", "tiny_unet_from_unet-mskd-s0-test_metrics_summary.csv"}
    assert csvs <= {a.path for a in client.list_artifacts(test.info.run_id)}
    # an evaluation logs which run it scores, not this config's default training budget (max_epochs 150)
    assert test.data.params["trained_run"] == "tiny_unet_from_unet-mskd-s0" and test.data.params["max_epochs"] == "None"
    assert test.data.params["ckpt_path"] == str(root / "models" / "tiny_unet_from_unet-mskd-s0.pt")
    assert (root / "models" / "model.pt").is_file()


def test_dashboard_artefacts_and_tags_are_logged(trained):
    """The dashboard handlers as the configs wire them: training and evaluation artefacts, tags, the shared view."""
    root, _ = trained
    client, runs = mlflow_runs(root, "mskd_synapse")
    student, test = runs["tiny_unet_from_unet-mskd-s0"], runs["tiny_unet_from_unet-mskd-s0-test"]
    artifacts = {a.path for a in client.list_artifacts(student.info.run_id)}
    assert {"overlays", "curves", "model_summary.txt"} <= artifacts
    assert [a.path for a in client.list_artifacts(student.info.run_id, "overlays")] == ["overlays/epoch_001.png"]
    assert {"params_total", "params_trainable", "gflops"} <= set(student.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(test.info.run_id)}
    assert {"evaluation", "overlays"} <= artifacts
    assert [a.path for a in client.list_artifacts(test.info.run_id, "evaluation")] == ["evaluation/test_metrics.png"]
    expected = {"task": "synapse", "method": "mskd", "teacher": "unet", "student": "tiny_unet", "seed": "0"}
    for run in (student, test):
        assert {k: run.data.tags.get(k) for k in expected} == expected
    assert runs["unet-teacher-s0"].data.tags["role"] == "teacher" and "student" not in runs["unet-teacher-s0"].data.tags
    view = json.loads(client.get_experiment_by_name("mskd_synapse").tags["mlflow.sharedViewState.mskd"])
    assert "metrics.`test_mean_dice`" in view["selectedColumns"] and "tags.`method`" in view["selectedColumns"]
    overlay = root / "output" / "artefacts" / "tiny_unet_from_unet-mskd-s0-test" / "test_cases.png"
    assert overlay.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


DASHBOARD = {
    "train#handlers": {
        "mskd.tracking.RunTagsHandler",
        "mskd.tracking.ModelSummaryHandler",
        "mskd.tracking.LearningCurvesHandler",
    },
    "validate#handlers": {"mskd.tracking.OverlayHandler"},
}


@pytest.mark.parametrize(
    "stack",
    [("train_teacher.json",), ("train_teacher.json", "train_student.json"), ("train_teacher.json", "distill.json")],
)
def test_training_handlers_are_named_and_follow_the_run(stack):
    """Handlers are named, not numbered: ``TrainingCheckpoint`` comes last (its epoch-end save follows validation and
    the LR step) and refers to the best-model saver as ``validate#handlers#best_model``; every tracking handler takes
    the bundle's one run object, and MONAI's MLflow handler (which makes a store when built) is off without tracking."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in stack])
    for key, targets in DASHBOARD.items():
        handlers = {h["_target_"]: h for h in parser[key].values()}
        assert targets <= set(handlers)
        for target in targets:
            assert handlers[target]["run"] == "@mlflow_run" and "_disabled_" not in handlers[target]
        assert parser[f"{key}#mlflow#_disabled_"] == "$not @mlflow_run.enabled"
    train = parser["train#handlers"]
    # last of the epoch-end handlers (the registered model acts once, when the training has completed)
    assert [k for k in train if k != "registered_model"][-1] == "checkpoint"
    assert train["checkpoint"]["_target_"] == "mskd.handlers.TrainingCheckpoint"
    assert train["checkpoint"]["save_dict"]["best_checkpoint"] == "@validate#handlers#best_model"
    assert parser["validate#handlers#best_model#_target_"] == "mskd.handlers.CheckpointSaver"
    assert list(parser["validate#handlers"].values())[-1]["_target_"] == "mskd.tracking.OverlayHandler"
    assert parser["overlay_teacher"] == ("@teacher_network" if "distill.json" in stack else None)
    assert (parser["tracking_tags#teacher"] is None) == ("train_student.json" in stack)  # the baseline has none


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({}, (True, None, False)),
        ({"channels_last": "false", "teacher_autocast": "bfloat16", "compile": True}, (False, "bfloat16", True)),
    ],
)
def test_distillation_speed_options_reach_the_trainer(overrides, expected):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in ("train_teacher.json", "distill.json")])
    parser.update(overrides)
    keys = ("channels_last", "teacher_autocast", "compile")
    assert tuple(parser.get_parsed_content(f"train#trainer#{key}") for key in keys) == expected


@pytest.mark.parametrize(
    "overrides, in_force, max_bytes",
    [
        ({}, "live", None),  # the bundle augments by default: every slice is new
        ({"augment": False}, "cached", 4 * 2**30),
        ({"augment": "false", "teacher_cache_gib": 0.5}, "cached", 2**29),  # the command line passes strings
        ({"augment": "false", "teacher_outputs": "live"}, "live", None),
        ({"augment": False, "teacher_outputs": "cached"}, "cached", 4 * 2**30),
        ({"teacher_outputs": "live"}, "live", None),
    ],
)
def test_teacher_outputs_follow_augment_to_the_trainer_and_the_run_params(overrides, in_force, max_bytes):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in ("train_teacher.json", "distill.json")])
    parser.update(overrides)
    assert parser.get_parsed_content("tracking_params#teacher_outputs") == in_force
    cache = parser.get_parsed_content("train#trainer#teacher_cache")
    assert cache is None if max_bytes is None else (cache.max_bytes == max_bytes and len(cache) == 0)


def test_cached_teacher_outputs_with_augmentation_are_refused_in_one_line(workspace, tmp_path):
    _, common = workspace
    args = [*common, *CPU_NETWORKS, *output_dirs(tmp_path), "--teacher_outputs", "cached", "--augment", "true"]
    proc = run_bundle(BUNDLE, "train_teacher.json", "distill.json", args=args, check=False)
    assert proc.returncode == 2
    expected = (
        "  - teacher_outputs: 'cached' needs augment false (random augmentation makes every input new, so the cache "
        "would never hit and only cost memory); set teacher_outputs to 'auto' or 'live', or augment to false"
    )
    assert expected in proc.stderr.splitlines()
    assert "teacher outputs:" not in proc.stdout and not (tmp_path / "output" / "mlruns.db").exists()


def test_evaluation_handlers_draw_and_tag_the_test_run():
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in ("train_teacher.json", "distill.json", "evaluate.json")])
    handlers = parser["validate#handlers"]
    for name in ("metric_bars", "run_tags", "overlays"):
        assert handlers[name]["run"] == "@mlflow_run" and "_disabled_" not in handlers[name]
    assert handlers["metric_bars"]["volume_metrics"] == "@validate#handlers#volume_metrics"
    assert handlers["overlays"]["teacher"] == "@overlay_teacher"
    artifacts = handlers["mlflow"]["artifacts"]
    assert "@validate#handlers#volume_metrics.csv_path" in artifacts
    assert "@validate#handlers#volume_metrics.summary_path" in artifacts


def test_inference_writes_labels_on_the_input_grid(trained, tmp_path):
    root, _ = trained
    dataset = json.loads((root / "data" / "dataset.json").read_text())
    image = root / "data" / dataset["test"][0]["image"]
    run_bundle(
        BUNDLE,
        "inference.json",
        args=["--input", str(image), "--output_dir", str(tmp_path), "--ckpt_path", str(root / "models" / "model.pt")]
        + ["--image_size", "32"],
    )
    [out] = list(tmp_path.glob("*.nii.gz"))
    src, seg = nib.load(image), nib.load(out)
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(9))


def test_inference_reads_a_dicom_series_and_writes_labels_on_its_grid(trained, tmp_path):
    import SimpleITK as sitk

    root, _ = trained
    volume = np.random.default_rng(1).integers(-200, 300, (8, 24, 20)).astype(np.int16)  # (slices, rows, cols)
    volume[:, :2] = -1000  # air, as around every body CT (inputs without any are refused as not HU)
    write_dicom_series(tmp_path / "dicom" / "series1", volume, spacing=(0.9, 0.8, 3.0))
    out = tmp_path / "pred"
    run_bundle(
        BUNDLE,
        "inference.json",
        args=[
            "--input",
            str(tmp_path / "dicom"),
            "--output_dir",
            str(out),
            "--ckpt_path",
            str(root / "models" / "model.pt"),
        ]
        + ["--image_size", "32"],
    )
    [seg_path] = list(out.glob("*.nii.gz"))
    assert seg_path.name == "series1_seg.nii.gz"
    seg = nib.load(seg_path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dicom" / "series1")))
    series = reader.Execute()
    # SimpleITK's LPS geometry as a RAS affine: the grid the labels must lie on
    lps = np.eye(4)
    lps[:3, :3] = np.array(series.GetDirection()).reshape(3, 3) @ np.diag(series.GetSpacing())
    lps[:3, 3] = series.GetOrigin()
    assert seg.shape == series.GetSize()  # (columns, rows, slices)
    np.testing.assert_allclose(seg.affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-4)


def test_distill_without_teacher_checkpoint_fails_clearly(workspace, tmp_path):
    _, common = workspace
    proc = run_bundle(
        BUNDLE, "train_teacher.json", "distill.json", args=[*common, *CPU_NETWORKS, *output_dirs(tmp_path)], check=False
    )
    assert proc.returncode != 0
    assert "teacher checkpoint not found" in proc.stderr and "Train the teacher first" in proc.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_metadata_is_valid_offline():
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))


def test_inference_network_is_the_trained_student():
    train = json.loads((CONFIGS / "train_teacher.json").read_text())
    inference = json.loads((CONFIGS / "inference.json").read_text())
    assert inference["student"] == train["student"] and inference["student_kwargs"] == train["student_kwargs"]
    assert inference["network_def"] == train["student_def"]
    assert inference["hu_window"] == train["hu_window"] and inference["image_size"] == train["image_size"]


@pytest.mark.parametrize("teacher, student", [("transunet_small", "enet")])
def test_teacher_and_student_are_chosen_by_name(workspace, tmp_path, teacher, student):
    _, common = workspace
    args = [*common, *output_dirs(tmp_path), "--teacher", teacher, "--student", student]
    run_bundle(BUNDLE, "train_teacher.json", args=args)
    # MSKD's feature terms on, so that both networks' taps are exercised through the bundle
    run_bundle(BUNDLE, "train_teacher.json", "distill.json", args=[*args, "--ffd_weight", "0.9", "--rgd_weight", "0.9"])
    _, runs = mlflow_runs(tmp_path, "mskd_synapse")
    distilled = runs[f"{student}_from_{teacher}-mskd-s0"]
    assert distilled.info.status == "FINISHED"
    assert (
        distilled.data.params["teacher"] == teacher and distilled.data.params["network"] == f"{student}_from_{teacher}"
    )
    assert {"loss_kd", "loss_ffd", "loss_rgd"} <= set(distilled.data.metrics)
    assert (tmp_path / "models" / f"{teacher}-teacher-s0.pt").is_file()


def test_model_zoo_checks_verify_net_in_out_and_ckpt_export(trained, tmp_path):
    root, _ = trained
    meta, inference = str(CONFIGS / "metadata.json"), str(CONFIGS / "inference.json")
    common = ["--meta_file", meta, "--config_file", inference, "--bundle_root", str(BUNDLE)]
    assert "verified with no error" in run_module("verify_net_in_out", "network_def", *common)
    exported = tmp_path / "student.ts"
    ckpt = str(root / "models" / "model.pt")
    run_module(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        ckpt,
        "--key_in_ckpt",
        "model",
        *common,
        "--image_size",
        "32",
    )

    eager = load_weights(get_network("tiny_unet"), root / "models" / "model.pt").eval()
    scripted = torch.jit.load(str(exported))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("data_format", ["synapse_npz", "btcv"])
def test_one_override_switches_the_dataset_format(data_format, tmp_path):
    data = tmp_path / "data"
    if data_format == "synapse_npz":  # TransUNet's files: slices to train on, h5 volumes to test on
        write_synapse_npz(data, train_cases={"0005": 6, "0006": 6}, test_cases={"0001": 6}, size=32)
    else:  # raw BTCV, 13 labels; case 0001 is in the standard test split
        write_btcv(data, cases=(1, 5, 6), shape=(24, 24, 6))
    args = ["--dataset_dir", str(data), "--data_format", data_format, *TINY, *CPU_NETWORKS, *output_dirs(tmp_path)]
    run_bundle(BUNDLE, "train_teacher.json", args=args)
    run_bundle(BUNDLE, "train_teacher.json", "evaluate.json", args=args)
    _, runs = mlflow_runs(tmp_path, "mskd_synapse")
    assert runs["unet-teacher-s0"].data.params["data_format"] == data_format
    assert runs["unet-teacher-s0-test"].info.status == "FINISHED"
    rows = (tmp_path / "output" / "unet-teacher-s0-test_metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 and all(r.startswith("case0001,") for r in rows[1:])  # 8 organs of the test case


def test_cli_predict_and_export_wrap_the_bundle(trained, tmp_path, capsys):
    from mskd.cli import main

    root, _ = trained
    model = str(root / "models" / "model.pt")
    dataset = json.loads((root / "data" / "dataset.json").read_text())
    image = root / "data" / dataset["test"][0]["image"]
    argv = ["--bundle", str(BUNDLE), "--ckpt-path", model, "--image-size", "32"]
    assert main(["predict", "--input", str(image), "--output-dir", str(tmp_path / "pred"), *argv]) == 0
    [written] = list((tmp_path / "pred").glob("*_seg.nii.gz"))
    assert f"wrote {written}" in capsys.readouterr().out
    assert nib.load(written).shape == nib.load(image).shape
    assert main(["export", "--format", "onnx", "--output-file", str(tmp_path / "student.onnx"), *argv]) == 0
    assert "max |export - eager|" in capsys.readouterr().out and (tmp_path / "student.onnx").is_file()


def test_cli_trains_distils_and_evaluates_through_the_bundle(workspace, tmp_path, capsys, monkeypatch):
    """``mskd train-teacher``, ``distill`` and ``evaluate``: the bundle's stacks in-process, a summary table each."""
    from mskd.cli import main

    root, _ = workspace
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tiny = dict(zip(TINY[::2], TINY[1::2], strict=True))
    epochs = tiny.pop("--max_epochs")
    argv = ["--dataset-dir", str(root / "data"), "--output-dir", str(tmp_path), "--teacher", "unet", "--seed", "0"]
    argv += [arg for key, value in tiny.items() for arg in ("--set", f"{key[2:]}={value}")]
    assert main(["train-teacher", *argv, "--max-epochs", epochs]) == 0
    out = capsys.readouterr().out
    assert "unet-teacher-s0:" in out and "best val_mean_dice" in out and "(epoch 1)" in out
    assert f"checkpoint            {tmp_path / 'models' / 'unet-teacher-s0.pt'}" in out
    assert main(["distill", *argv, "--max-epochs", epochs, "--set", 'tracking_tags_extra={"experiment": "cli"}']) == 0
    assert "final loss (epoch 1)  loss " in capsys.readouterr().out
    assert main(["evaluate", "--method", "mskd", *argv]) == 0
    table = capsys.readouterr().out
    assert "tiny_unet_from_unet-mskd-s0-test on 1 test case(s):" in table
    assert all(organ in table for organ in ("spleen", "pancreas", "mean", "per-case CSV", "MLflow run"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    [distilled] = client.search_runs(
        [client.get_experiment_by_name("mskd_synapse").experiment_id],
        filter_string="attributes.run_name = 'tiny_unet_from_unet-mskd-s0'",
    )
    assert distilled.data.tags["experiment"] == "cli" and distilled.data.params["max_epochs"] == "1"
    assert (tmp_path / "models" / "model.pt").is_file()


@pytest.mark.parametrize("debug", [False, True])
def test_cli_refuses_bad_input_before_training(debug, tmp_path, capsys, monkeypatch):
    """Bad input: the problems, one line each on the command's flags, exit status 2; with ``--debug`` the exception
    (on the config ids) and its traceback."""
    from mskd.cli import main
    from mskd.validation import ValidationError

    monkeypatch.delenv("MSKD_DEBUG", raising=False)
    argv = ["train-teacher", "--dataset-dir", str(tmp_path / "none"), "--output-dir", str(tmp_path / "out")]
    message = f"dataset folder not found: {tmp_path / 'none'}"
    if debug:  # MONAI wraps what a config expression raises: the problems are the cause
        with pytest.raises(RuntimeError) as raised:
            main(["--debug", *argv])
        assert isinstance(raised.value.__cause__, ValidationError)
        assert f"dataset_dir: {message}" in str(raised.value.__cause__)
    else:
        assert main(argv) == 2
        assert any(line.startswith(f"  - --dataset-dir: {message}") for line in capsys.readouterr().err.splitlines())
    assert not (tmp_path / "out").exists()


def test_cli_predict_refuses_a_missing_checkpoint_and_input_before_running(tmp_path, capsys, monkeypatch):
    from mskd.cli import main

    monkeypatch.delenv("MSKD_DEBUG", raising=False)
    argv = ["predict", "--bundle", str(BUNDLE), "--input", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    assert main([*argv, "--ckpt-path", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "mskd: 2 problem(s) found before starting:",
        f"  - --input: no .nii/.nii.gz file and no DICOM series in {tmp_path}",
        f"  - --ckpt-path: student checkpoint not found: {tmp_path / 'none.pt'}. Train the student first (see the "
        "bundle's docs/README.md) or point the config at an existing file.",
    ]
    assert not (tmp_path / "out").exists()

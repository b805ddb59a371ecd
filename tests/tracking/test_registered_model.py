"""RegisteredModelHandler: the best checkpoint of a distillation as a new version in the MLflow model registry, loaded
back with the checkpoint's logits; nothing with tracking off; a refusing store never stops the training."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from monai.bundle import ConfigParser

import mskd.tracking.store
from mskd.data import organ_names
from mskd.networks import checkpoint_metadata, get_network, save_weights
from mskd.tracking import MlflowRun, RegisteredModelHandler
from mskd.tracking.registered_model import _fluent_tracking_uri, model_input_example, model_metadata
from tests.bundles.runner import BUNDLES, CPU_NETWORKS, TINY, mlflow_runs, output_dirs, run_bundle
from tools.dashboard import free_port, serve, wait_until_up

ORGANS = ["spleen", "liver", "aorta"]
SIZE = 32
KWARGS = {"channels": [4, 8], "strides": [2], "num_res_units": 0}  # a two-level MONAI UNet: quick to export
RUN = "tiny_unet_from_unet-mskd-s0"
LABELS = {"0": "background", "1": "spleen", "2": "liver", "3": "aorta"}


@pytest.fixture
def checkpoint(tmp_path) -> tuple[Path, torch.nn.Module]:
    """A self-describing checkpoint of a tiny student, and its network in eval mode."""
    torch.manual_seed(0)
    network = get_network("tiny_unet", 1, len(ORGANS) + 1, **KWARGS)
    meta = checkpoint_metadata(
        "tiny_unet", len(ORGANS) + 1, SIZE, KWARGS, organs=ORGANS, hu_window=[-125, 275], run_name=RUN
    )
    path = save_weights(network, tmp_path / "models" / f"{RUN}.pt", meta)
    return path, network.eval()


@pytest.fixture
def run(mlflow_uri) -> MlflowRun:
    """The distillation's run (opened, as a bundle's initialize opens it) in experiment ``mskd_synapse``."""
    client = MlflowClient(tracking_uri=mlflow_uri)
    run_id = client.create_run(client.create_experiment("mskd_synapse"), run_name=RUN).info.run_id
    return MlflowRun(mlflow_uri, "mskd_synapse", RUN, run_id=run_id)


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(mskd.tracking.store, "LOG_BACKOFF_S", 0.0)
    monkeypatch.setattr(mskd.tracking.store, "_REFUSING", set())
    monkeypatch.setattr(mskd.tracking.store, "_WARNED", set())


def _complete_training(handler: RegisteredModelHandler) -> Engine:
    """An engine run to ``COMPLETED`` with ``handler`` attached."""
    engine = Engine(lambda engine, batch: None)
    handler.attach(engine)
    engine.run([0])
    return engine


# --- a completed training registers its best checkpoint --------------------------------------------------------


@pytest.mark.parametrize(
    "serialization_format, batch, signature_batch",
    [("pt2", 1, 1), ("pickle", 3, -1)],  # a torch.export graph is traced on one slice; the pickled module takes any
)
def test_completed_training_registers_the_checkpoint_network(
    checkpoint, run, serialization_format, batch, signature_batch
):
    path, network = checkpoint
    validator = SimpleNamespace(state=SimpleNamespace(best_metric=0.8125))
    handler = RegisteredModelHandler(
        path,
        run,
        bundle="mskd_synapse",
        bundle_metadata={"version": "1.2.3"},
        validator=validator,
        serialization_format=serialization_format,
    )
    _complete_training(handler)

    client = MlflowClient(tracking_uri=run.tracking_uri)
    (version,) = client.search_model_versions("name = 'mskd_synapse'")
    assert (int(version.version), version.run_id, version.status) == (1, run.given_run_id, "READY")
    assert version.tags == {
        "val_mean_dice": "0.8125",
        "run_name": RUN,
        "run_id": run.given_run_id,
        "network": "tiny_unet",
        "bundle_version": "1.2.3",
    }
    assert "best val_mean_dice 0.8125" in version.description
    assert int(handler.version.version) == 1

    x = torch.rand(batch, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = network(x).numpy()
    import mlflow.pyfunc
    import mlflow.pytorch

    uri = "models:/mskd_synapse/1"
    with _fluent_tracking_uri(run.tracking_uri):
        loaded = mlflow.pytorch.load_model(uri)
        pyfunc = mlflow.pyfunc.load_model(uri)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pyfunc.predict(x.numpy()), expected, rtol=0, atol=1e-6)

    metadata = pyfunc.metadata.metadata
    assert metadata["organs"] == LABELS
    assert (metadata["image_size"], metadata["hu_window"], metadata["num_classes"]) == (SIZE, [-125.0, 275.0], 4)
    assert (metadata["network"], metadata["network_kwargs"]) == ("tiny_unet", KWARGS)
    assert (metadata["bundle"], metadata["bundle_version"], metadata["run_name"]) == ("mskd_synapse", "1.2.3", RUN)
    assert (metadata["run_id"], metadata["val_mean_dice"]) == (run.given_run_id, 0.8125)
    assert metadata["input"]["shape"] == [signature_batch, 1, SIZE, SIZE] and metadata["input"]["range"] == [0.0, 1.0]
    signature = pyfunc.metadata.signature
    assert signature.inputs.inputs[0].shape == (signature_batch, 1, SIZE, SIZE)
    assert signature.outputs.inputs[0].shape == (signature_batch, 4, SIZE, SIZE)
    assert str(signature.inputs.inputs[0].type) == "float32"
    np.testing.assert_array_equal(pyfunc.input_example, model_input_example(SIZE))


def test_each_training_adds_a_version_under_the_given_name(checkpoint, run):
    """A name of one's own; a model registered before (an earlier training) gets its next version."""
    client = MlflowClient(tracking_uri=run.tracking_uri)
    client.create_registered_model("students")
    client.create_model_version("students", source="file:///earlier/model", await_creation_for=0)
    handler = RegisteredModelHandler(checkpoint[0], run, name="students")
    version = handler.register()
    assert int(version.version) == 2
    assert sorted(int(v.version) for v in client.search_model_versions("name = 'students'")) == [1, 2]
    assert client.search_registered_models(filter_string="name = 'mskd_synapse'") == []
    assert "val_mean_dice" not in version.tags  # no validator, and the run logged none


def test_the_input_example_is_one_mid_grey_slice():
    example = model_input_example(SIZE)
    assert example.shape == (1, 1, SIZE, SIZE) and example.dtype == np.float32
    assert example.min() == example.max() == 0.5


@pytest.mark.parametrize("env", [None, "sqlite:///elsewhere.db"])
def test_the_process_tracking_uri_is_restored(monkeypatch, env):
    """The model is logged with MLflow's fluent API, pointed at the run's store only while it logs."""
    import mlflow

    if env is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    before = mlflow.get_tracking_uri()
    with _fluent_tracking_uri("sqlite:///run.db"):
        assert mlflow.get_tracking_uri() == "sqlite:///run.db"
    assert mlflow.get_tracking_uri() == before and os.environ.get("MLFLOW_TRACKING_URI") == env


# --- the version's metric ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "best, logged, expected",
    [
        (0.75, [0.3, 0.6], 0.75),  # the validator's best key metric: the checkpoint's
        (-1, [0.3, 0.6, 0.5], 0.6),  # a validator that never ran (MONAI starts at -1): the highest the run logged
        (None, [0.3, float("nan"), 0.5], 0.5),  # no validator; a NaN is not the best
        (None, [], None),  # neither
    ],
)
def test_the_version_metric_is_the_best_validation_dice(checkpoint, run, best, logged, expected):
    client = MlflowClient(tracking_uri=run.tracking_uri)
    for step, value in enumerate(logged, start=1):
        client.log_metric(run.given_run_id, "val_mean_dice", value, step=step)
    validator = None if best is None else SimpleNamespace(state=SimpleNamespace(best_metric=best))
    assert RegisteredModelHandler(checkpoint[0], run, validator=validator).best_metric() == expected


# --- nothing with tracking off; a refusing store never stops the training -------------------------------------


def test_tracking_off_logs_nothing(checkpoint, mlflow_uri, tmp_path):
    run = MlflowRun(mlflow_uri, "mskd_synapse", RUN, enabled=False)
    validator = SimpleNamespace(state=SimpleNamespace(best_metric=0.5))
    handler = RegisteredModelHandler(checkpoint[0], run, validator=validator)
    _complete_training(handler)
    assert handler.register() is None and handler.model_info is None
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert client.search_registered_models() == []
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    # no store is needed to build it with tracking off (a bundle's --mlflow false)
    assert RegisteredModelHandler(checkpoint[0], MlflowRun(None)).register() is None


@pytest.mark.parametrize("refused", ["log_model", "create_model_version"])
def test_a_refusing_store_warns_once_and_the_training_completes(checkpoint, run, quick_retries, monkeypatch, refused):
    import mlflow.pytorch

    def locked(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    target = mlflow.pytorch if refused == "log_model" else MlflowClient
    monkeypatch.setattr(target, refused, locked)
    handler = RegisteredModelHandler(checkpoint[0], run)
    with pytest.warns(UserWarning, match="refused a log call of run") as warned:
        engine = _complete_training(handler)
    assert engine.state.epoch == 1 and handler.version is None
    assert len([w for w in warned if "refused" in str(w.message)]) == 1
    assert MlflowClient(tracking_uri=run.tracking_uri).search_model_versions("name = 'mskd_synapse'") == []


def test_a_network_mlflow_cannot_save_warns_and_the_training_completes(checkpoint, run, monkeypatch):
    import mlflow.pytorch

    def export_fails(*args, **kwargs):
        raise RuntimeError("torch.export: data-dependent control flow\nmore")

    monkeypatch.setattr(mlflow.pytorch, "log_model", export_fails)
    handler = RegisteredModelHandler(checkpoint[0], run)
    with pytest.warns(UserWarning, match=r"could not save tiny_unet .* \(RuntimeError: torch.export: data-dependent "):
        _complete_training(handler)
    assert handler.version is None


def test_without_the_checkpoint_it_warns_and_registers_nothing(run, tmp_path):
    handler = RegisteredModelHandler(tmp_path / "missing.pt", run)
    with pytest.warns(UserWarning, match=r"no best checkpoint .*missing.pt to register .*validate#save_best"):
        assert handler.register() is None


# --- arguments and metadata ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"serialization_format": "onnx"}, "onnx"),
        ({"metric_name": ""}, "metric_name and artifact_name must be non-empty"),
        ({"artifact_name": ""}, "metric_name and artifact_name must be non-empty"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error):
    with pytest.raises(ValueError, match=error):
        RegisteredModelHandler("m.pt", MlflowRun(None), **kwargs)


def test_a_registered_model_needs_a_name(mlflow_uri):
    with pytest.raises(ValueError, match="name the registered model"):
        RegisteredModelHandler("m.pt", MlflowRun(mlflow_uri, run_id="0123"))


@pytest.mark.parametrize(
    "checkpoint_meta, labels, window",
    [
        ({"organs": ORGANS, "hu_window": [-125, 275]}, LABELS, [-125.0, 275.0]),
        (
            {"organs": None, "hu_window": None},
            {"0": "background", "1": "class_1", "2": "class_2", "3": "class_3"},
            None,
        ),
    ],
)
def test_model_metadata_names_every_label(checkpoint_meta, labels, window):
    meta = checkpoint_metadata("tiny_unet", 4, SIZE, KWARGS, **checkpoint_meta)
    metadata = model_metadata(meta, bundle="mskd_synapse", bundle_version="0.7.0", run_name=RUN, batch=-1)
    assert metadata["organs"] == labels and metadata["hu_window"] == window
    assert metadata["output"]["shape"] == [-1, 4, SIZE, SIZE]
    assert ("[-125, 275]" in metadata["input"]["description"]) == (window is not None)


def test_model_metadata_refuses_organs_that_do_not_fit_the_classes():
    meta = checkpoint_metadata("tiny_unet", 4, SIZE, KWARGS, organs=["spleen"])
    with pytest.raises(ValueError, match=r"names 1 organs \['spleen'\] for 4 classes; it needs num_classes - 1 = 3"):
        model_metadata(meta)


# --- the bundles' wiring -----------------------------------------------------------------------------------------


def _parser(bundle: str, *files: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / f) for f in files])
    parser["bundle_root"] = str(BUNDLES / bundle)
    return parser


@pytest.mark.parametrize("bundle", ["mskd_synapse", "mskd_kits"])
@pytest.mark.parametrize("switch, disabled", [(None, False), (False, True), ("false", True), ("true", False)])
def test_distillation_registers_its_student_unless_switched_off(bundle, switch, disabled):
    parser = _parser(bundle, "train_teacher.json", "distill.json")
    if switch is not None:
        parser["register_model"] = switch  # the command line passes strings: --register_model false
    handler = parser["train#handlers#registered_model"]
    assert handler["_target_"] == "mskd.tracking.RegisteredModelHandler"
    assert (handler["run"], handler["ckpt_path"], handler["validator"]) == (
        "@mlflow_run",
        "@ckpt_path",
        "@validate#evaluator",
    )
    assert parser.get_parsed_content("train#handlers#registered_model#_disabled_") is disabled
    assert parser.get_parsed_content("train#handlers#registered_model#name") == bundle  # the experiment's name
    assert parser.get_parsed_content("train#handlers#registered_model#bundle") == bundle
    assert Path(parser.get_parsed_content("train#handlers#registered_model#bundle_metadata")).is_file()


@pytest.mark.parametrize("stack", [("train_teacher.json",), ("train_teacher.json", "train_student.json")])
def test_only_the_distillation_registers_a_model(stack):
    parser = _parser("mskd_synapse", *stack)
    assert "registered_model" not in parser["train#handlers"] and "register_model" not in parser


def test_a_bad_switch_is_refused_by_name():
    parser = _parser("mskd_synapse", "train_teacher.json", "distill.json")
    parser["register_model"] = "maybe"
    with pytest.raises(RuntimeError, match="register_model") as raised:  # MONAI wraps the expression's error
        parser.get_parsed_content("train#handlers#registered_model#_disabled_")
    assert str(raised.value.__cause__) == "register_model must be true or false, got 'maybe'"


@pytest.mark.e2e
def test_a_bundle_distillation_registers_its_student(tmp_path):
    """Teacher (without MLflow) then distillation, tiny, through ``python -m monai.bundle run``: the student is a new
    version of ``mskd_synapse``, logged to the distillation's run and tagged with its best validation Dice."""
    from mskd.data.phantom import generate_phantom_dataset

    generate_phantom_dataset(tmp_path / "data", task="synapse", cases=5, seed=3, size=(32, 32, 16), test_cases=1)
    args = ["--dataset_dir", str(tmp_path / "data"), *TINY, *CPU_NETWORKS, *output_dirs(tmp_path)]
    bundle = BUNDLES / "mskd_synapse"
    run_bundle(bundle, "train_teacher.json", args=[*args, "--mlflow", "false"])
    run_bundle(bundle, "train_teacher.json", "distill.json", args=args)

    client, runs = mlflow_runs(tmp_path, "mskd_synapse")
    student = runs[RUN]
    (version,) = client.search_model_versions("name = 'mskd_synapse'")
    assert (int(version.version), version.run_id) == (1, student.info.run_id)
    dice = max(m.value for m in client.get_metric_history(student.info.run_id, "val_mean_dice"))
    assert float(version.tags["val_mean_dice"]) == pytest.approx(dice, abs=1e-6)
    import mlflow.pyfunc

    with _fluent_tracking_uri(client.tracking_uri):
        model = mlflow.pyfunc.load_model("models:/mskd_synapse/1")
    metadata = model.metadata.metadata
    assert list(metadata["organs"].values()) == ["background", *organ_names("synapse")]
    assert (metadata["image_size"], metadata["network"], metadata["run_name"]) == (32, "tiny_unet", RUN)
    assert metadata["bundle"] == "mskd_synapse" and metadata["bundle_version"]
    assert model.predict(model_input_example(32)).shape == (1, 9, 32, 32)


def _post(url: str, inputs: np.ndarray) -> np.ndarray:
    request = urllib.request.Request(
        url, data=json.dumps({"inputs": inputs.tolist()}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return np.asarray(json.load(response)["predictions"], dtype=np.float32)


@pytest.mark.e2e
def test_mlflow_serves_the_registered_version(checkpoint, run, tmp_path):
    """``mlflow models serve -m models:/mskd_synapse/1`` (as docs/bundles.md says) answers one slice with the
    checkpoint's logits, and refuses two."""
    path, network = checkpoint
    RegisteredModelHandler(path, run).register()
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": run.tracking_uri}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # uvicorn beside mlflow
    cmd = ["mlflow", "models", "serve", "-m", "models:/mskd_synapse/1", "--env-manager", "local", "--port", str(port)]
    with serve(cmd, tmp_path / "serve.log", env=env) as server:  # the server and its worker are stopped after
        wait_until_up(f"http://127.0.0.1:{port}", server, tmp_path / "serve.log")
        x = torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            expected = network(x).numpy()
        url = f"http://127.0.0.1:{port}/invocations"
        np.testing.assert_allclose(_post(url, x.numpy()), expected, rtol=0, atol=1e-6)
        with pytest.raises(urllib.error.HTTPError, match="400"):  # the pt2 graph takes one slice
            _post(url, np.concatenate([x.numpy()] * 2))

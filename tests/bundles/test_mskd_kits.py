"""The KiTS bundle: the Synapse recipe with the KiTS label set, end to end on kidney-tumour phantoms and KiTS19."""

import json

import pytest
import torch

from mskd.data.phantom import generate_phantom_dataset
from mskd.networks import get_network, load_weights
from tests.bundles.runner import BUNDLES, CPU_NETWORKS, SCHEMA, TINY, mlflow_runs, output_dirs, run_bundle, run_module
from tests.data.fixtures import write_kits19

KITS = BUNDLES / "mskd_kits"
SYNAPSE = BUNDLES / "mskd_synapse"
# The only values in which the two bundles' configs may differ (everything else is the same recipe).
TASK_VALUES = {
    "train_teacher.json": {"dataset_dir", "task", "experiment_name"},
    "inference.json": {"task"},
}

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "name",
    ["train_teacher.json", "train_student.json", "distill.json", "evaluate.json", "inference.json"]
    + ["multi_gpu_distill.json", "logging.conf"],
)
def test_kits_configs_are_the_synapse_recipe_with_the_kits_task(name):
    kits, synapse = (KITS / "configs" / name).read_text(), (SYNAPSE / "configs" / name).read_text()
    if name.endswith(".conf"):
        assert kits == synapse
        return
    kits, synapse = json.loads(kits), json.loads(synapse)
    assert set(kits) == set(synapse)
    assert {k for k in kits if kits[k] != synapse[k]} == TASK_VALUES.get(name, set())
    assert kits.get("task", "kits") == "kits"


def test_kits_metadata_is_valid_offline_and_names_the_kits_classes():
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(KITS / "configs" / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((KITS / "configs" / "metadata.json").read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 3 and pred["channel_def"] == {"0": "background", "1": "kidney", "2": "tumour"}
    assert meta["version"] in meta["changelog"]


@pytest.fixture(scope="module")
def kits_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kits")
    generate_phantom_dataset(root / "data", task="kits", cases=5, seed=1, size=(32, 32, 16), test_cases=1)
    args = ["--dataset_dir", str(root / "data"), *TINY, *CPU_NETWORKS, *output_dirs(root)]
    run_bundle(KITS, "train_teacher.json", args=args)
    run_bundle(KITS, "train_teacher.json", "distill.json", args=args)
    run_bundle(KITS, "train_teacher.json", "distill.json", "evaluate.json", args=args)
    return root


def test_kits_phantom_teacher_distillation_and_evaluation(kits_runs):
    _, runs = mlflow_runs(kits_runs, "mskd_kits")
    assert {"unet-teacher-s0", "tiny_unet_from_unet-mskd-s0", "tiny_unet_from_unet-mskd-s0-test"} <= set(runs)
    assert all(r.info.status == "FINISHED" for r in runs.values())
    test = runs["tiny_unet_from_unet-mskd-s0-test"].data.metrics
    assert {"test_dice_kidney", "test_dice_tumour", "test_hd95_kidney", "test_mean_dice"} <= set(test)
    assert not any(k.startswith("test_dice_liver") for k in test)
    student = load_weights(get_network("tiny_unet", 1, 3), kits_runs / "models" / "model.pt", role="student")
    assert student(torch.zeros(1, 1, 32, 32)).shape == (1, 3, 32, 32)


def test_kits_model_zoo_checks_verify_net_in_out_and_ckpt_export(kits_runs, tmp_path):
    meta, inference = str(KITS / "configs" / "metadata.json"), str(KITS / "configs" / "inference.json")
    common = ["--meta_file", meta, "--config_file", inference, "--bundle_root", str(KITS), "--image_size", "32"]
    assert "verified with no error" in run_module("verify_net_in_out", "network_def", *common)
    ts = tmp_path / "model.ts"
    run_module(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(ts),
        "--ckpt_file",
        str(kits_runs / "models" / "model.pt"),
        "--key_in_ckpt",
        "model",
        *common,
    )
    scripted = torch.jit.load(str(ts))
    student = load_weights(get_network("tiny_unet", 1, 3), kits_runs / "models" / "model.pt", role="student").eval()
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(scripted(x), student(x))


def test_kits19_case_folders_train_and_evaluate(tmp_path):
    data = tmp_path / "data"
    write_kits19(data, cases=(0, 1, 2, 3), shape=(6, 24, 24))  # case_00000 is the test hold-out (number % 5 == 0)
    args = ["--dataset_dir", str(data), "--data_format", "kits19", *TINY, *CPU_NETWORKS, *output_dirs(tmp_path)]
    run_bundle(KITS, "train_teacher.json", args=args)
    run_bundle(KITS, "train_teacher.json", "evaluate.json", args=args)
    rows = (tmp_path / "output" / "unet-teacher-s0-test_metrics.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [["case_00000", "kidney"], ["case_00000", "tumour"]]

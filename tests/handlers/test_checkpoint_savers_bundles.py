"""The bundles' checkpoints: every run keeps its own self-describing ``models/<run>.pt`` (a distillation also writes
the model-zoo default ``models/model.pt``), and evaluation reads the evaluated run's own file."""

import pytest
from monai.bundle import ConfigParser

from mskd.bundle import STACKS
from mskd.networks import checkpoint_metadata, get_network, save_weights
from mskd.validation import validation_error
from mskd.workflows import evaluate
from tests.bundles.runner import BUNDLES

SAVER = "validate#handlers#best_model"  # the best-model CheckpointSaver, where TrainingCheckpoint finds it


@pytest.mark.parametrize("bundle", ["mskd_synapse", "mskd_kits"])
@pytest.mark.parametrize(
    "method, run, copy",
    [
        ("teacher", "unet-teacher-s1", None),
        ("baseline", "tiny_unet-baseline-s1", None),
        ("mskd", "tiny_unet_from_unet-mskd-s1", "model.pt"),
    ],
)
def test_each_run_saves_its_own_self_describing_checkpoint(tmp_path, bundle, method, run, copy):
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / f) for f in STACKS[method]])
    parser.update({"bundle_root": str(BUNDLES / bundle), "output_dir": str(tmp_path), "ckpt_dir": str(tmp_path)})
    parser.update({"teacher": "unet", "seed": 1, "image_size": 48})
    assert parser.get_parsed_content("ckpt_path") == str(tmp_path / f"{run}.pt")
    saver = parser[SAVER]
    assert saver["_target_"] == "mskd.handlers.CheckpointSaver" and saver["key_metric_filename"] == "@ckpt_name"
    assert saver["metadata"] == "@checkpoint_metadata" and saver.get("key_metric_copy") == copy
    save_config = "$mskd.tracking.save_executed_config(@executed_config)"
    assert save_config in parser["initialize"]  # written before the run, hashed into the checkpoint
    parser["save_config"] = save_config
    assert parser.get_parsed_content("save_config") == str(tmp_path / f"{run}.config.json")
    metadata = parser.get_parsed_content("checkpoint_metadata")
    network = "unet" if method == "teacher" else "tiny_unet"
    assert {k: metadata[k] for k in ("network", "image_size", "run_name")} == {
        "network": network,
        "image_size": 48,
        "run_name": run,
    }
    assert len(metadata["config_sha256"]) == 64 and (tmp_path / f"{run}.config.json").is_file()


def test_evaluating_a_seed_that_was_not_distilled_names_its_missing_checkpoint(tmp_path, capsys, monkeypatch):
    """Seed 0 distilled (its own file and the model.pt copy); evaluating seed 1 must not score seed 0's weights."""
    monkeypatch.delenv("MSKD_DEBUG", raising=False)
    models = tmp_path / "models"
    metadata = checkpoint_metadata("tiny_unet", 9, 224, run_name="tiny_unet_from_unet-mskd-s0")
    for name in ("tiny_unet_from_unet-mskd-s0.pt", "model.pt"):
        save_weights(get_network("tiny_unet"), models / name, metadata)
    with pytest.raises(Exception) as raised:  # MONAI wraps what the bundle's check raises
        evaluate(
            BUNDLES / "mskd_synapse", "mskd", seed=1, teacher="unet", mlflow=False,
            dataset_dir=str(tmp_path / "data"), output_dir=str(tmp_path / "output"), ckpt_dir=str(models),
        )  # fmt: skip
    missing = models / "tiny_unet_from_unet-mskd-s1.pt"
    problems = validation_error(raised.value).lines
    assert any(
        p.startswith(f"ckpt_path: student checkpoint not found: {missing}. Train the student first") for p in problems
    )

"""The bundles as a model-zoo user gets them: a folder copied out of the repository, run with the installed ``mskd``.

A copy of ``bundles/mskd_synapse`` is trained and used from its own folder with ``python -m monai.bundle run``, as
the README's "Installing" section says (no ``--bundle_root``: it is ``.``), with the public ids only
(``dataset_dir``, ``max_epochs``, ...); MONAI reads the requirements of ``metadata.json`` (``mskd`` pinned at the
installed version) without a warning, and ``ckpt_export`` writes them into ``model.ts``.
"""

import configparser
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata

from mskd.data.phantom import generate_phantom_dataset
from tests.bundles.runner import BUNDLES, CPU_NETWORKS, SCHEMA, TINY

ROOT = BUNDLES.parent
DEPRECATED = "optional_packages_version"  # MONAI's alias of required_packages_version (see monai/bundle/utils.py)

pytestmark = pytest.mark.e2e


def _setup_cfg_version() -> str:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    return setup["metadata"]["version"]


@pytest.mark.parametrize("bundle", ["mskd_synapse", "mskd_kits"])
def test_monai_reads_the_pinned_requirements_without_a_warning(bundle):
    meta_file = BUNDLES / bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    parser = ConfigParser()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecated key warns and replaces the requirements with its own {}
        parser.read_meta(str(meta_file))
    assert DEPRECATED not in meta
    assert parser["_meta_#required_packages_version"] == meta["required_packages_version"]
    assert meta["required_packages_version"]["mskd"] == importlib.metadata.version("mskd") == _setup_cfg_version()
    verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA))


@pytest.mark.parametrize(
    "layout, given, expected",
    [
        ([], None, "{dataset_dir}"),  # a folder of NIfTI files or DICOM series: all of them
        (["imagesTs"], None, "{dataset_dir}/imagesTs"),  # an MSD-style dataset: its unlabelled test images
        (["imagesTs"], "ct.nii.gz", "{dataset_dir}/ct.nii.gz"),  # --input (what `mskd predict` sets) wins
    ],
)
def test_inference_lists_its_inputs_from_dataset_dir(tmp_path, layout, given, expected):
    for folder in layout:
        (tmp_path / folder).mkdir()
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "mskd_synapse" / "configs" / "inference.json"))
    parser.update({"dataset_dir": str(tmp_path)} | ({"input": str(tmp_path / given)} if given else {}))
    assert parser.get_parsed_content("input") == expected.format(dataset_dir=tmp_path)


def _snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _written(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """Files new or changed under the repository's bundles/, but for edits of their configs and docs (people edit
    those while the test runs)."""
    edited = {p for p in before.keys() & after.keys() if Path(p).parts[1:2] in (("configs",), ("docs",))}
    return sorted(p for p in after if p not in edited and after[p] != before.get(p))


def _run(copy: Path, *args: str) -> str:
    """``python -m monai.bundle <args>`` in the copied bundle's folder, with the environment's ``mskd`` only (no
    ``PYTHONPATH``); returns its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed in {copy}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr


def test_a_copied_bundle_trains_and_segments_with_the_installed_mskd(tmp_path):
    data, new_cases, copy = tmp_path / "data", tmp_path / "new_cases", tmp_path / "mskd_synapse"
    generate_phantom_dataset(data, task="synapse", cases=3, seed=3, size=(32, 32, 16), test_cases=1)
    [case] = json.loads((data / "dataset.json").read_text())["test"]
    new_cases.mkdir()
    image = shutil.copy(data / case["image"], new_cases)  # a new CT to segment: one phantom case
    before = _snapshot(BUNDLES)
    shutil.copytree(BUNDLES / "mskd_synapse", copy, ignore=shutil.ignore_patterns("*.pt", "output"))

    # the README's commands, from the copy's folder (CPU networks and tiny sizes as the other bundle tests); the
    # teacher segments, as any checkpoint of a run does with its network (`--student`) and `--ckpt_path`
    train = ["--config_file", "configs/train_teacher.json", "--dataset_dir", str(data), *CPU_NETWORKS, *TINY]
    segment = ["--config_file", "configs/inference.json", "--dataset_dir", str(new_cases), "--image_size", "32"]
    segment += ["--student", "unet", "--ckpt_path", "models/unet-teacher-s0.pt"]
    out = _run(copy, "run", *train) + _run(copy, "run", *segment)

    assert DEPRECATED not in out  # MONAI's warning on the deprecated key of metadata.json, once per command
    assert (copy / "models" / "unet-teacher-s0.pt").is_file() and (copy / "output" / "mlruns.db").is_file()
    [seg] = (copy / "predictions").glob("*.nii.gz")
    assert seg.name == Path(image).name.replace(".nii.gz", "_seg.nii.gz")
    assert nib.load(seg).shape == nib.load(image).shape
    assert set(np.unique(np.asarray(nib.load(seg).dataobj))) <= set(range(9))

    # `python -m monai.bundle ckpt_export` (in-process: the same function) carries the requirements into model.ts
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=f".*{DEPRECATED}")
        ckpt_export(
            "network_def",
            filepath=str(copy / "models" / "model.ts"),
            ckpt_file=str(copy / "models" / "unet-teacher-s0.pt"),
            key_in_ckpt="model",
            meta_file=str(copy / "configs" / "metadata.json"),
            config_file=str(copy / "configs" / "inference.json"),
            bundle_root=str(copy),
            student="unet",
        )
    extra = {"metadata.json": "", "inference.json": ""}
    torch.jit.load(str(copy / "models" / "model.ts"), _extra_files=extra)
    meta = json.loads((copy / "configs" / "metadata.json").read_text())
    assert json.loads(extra["metadata.json"])["required_packages_version"] == meta["required_packages_version"]
    assert "dataset_dir" in json.loads(extra["inference.json"])

    # the model-zoo's properties of an inference workflow, dataset_dir among them, all defined
    workflow = ConfigWorkflow(
        config_file=str(copy / "configs" / "inference.json"),
        workflow_type="infer",
        logging_file=False,
        bundle_root=str(copy),
        dataset_dir=str(new_cases),
        image_size=32,
        student="unet",
        ckpt_path=str(copy / "models" / "unet-teacher-s0.pt"),
    )
    workflow.initialize()
    try:
        assert workflow.check_properties() == []
    finally:
        workflow.finalize()

    assert _written(before, _snapshot(BUNDLES)) == []

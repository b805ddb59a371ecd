"""``mskd.bundle.Bundle``: the one way into a bundle (stacks, files handed to MONAI, parser, workflow, command line)."""

import json
from pathlib import Path

import pytest

from mskd.bundle import EVALUATE, INFERENCE, STACKS, Bundle

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def test_a_folder_that_is_not_a_bundle_is_refused(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"is not an mskd bundle \(no configs/train_teacher\.json\); pass --bundle"
    ):
        Bundle(tmp_path)


def test_stacks_name_their_files_base_first():
    assert Bundle.stack("teacher") == ("train_teacher.json",)
    assert Bundle.stack("mskd", evaluate=True) == ("train_teacher.json", "distill.json", EVALUATE)
    assert [files[0] for files in STACKS.values()] == ["train_teacher.json"] * 3
    with pytest.raises(ValueError, match=r"unknown method 'kd'; choose one of \['teacher', 'baseline', 'mskd'\]"):
        Bundle.stack("kd")


@pytest.mark.parametrize("name, task", [("mskd_synapse", "synapse"), ("mskd_kits", "kits")])
def test_each_bundle_says_its_task_and_experiment(name, task):
    bundle = Bundle(BUNDLES / name)
    assert bundle.root == (BUNDLES / name).resolve() and (bundle.task, bundle.experiment_name) == (task, name)
    for files in [*STACKS.values(), (INFERENCE,)]:
        assert all(Path(p).is_file() for p in bundle.paths(files))


def test_a_parsed_stack_has_the_overrides_and_builds_nothing(tmp_path):
    bundle = Bundle(BUNDLES / "mskd_synapse")
    parser = bundle.parser(STACKS["mskd"], output_dir=str(tmp_path / "out"), seed=3, teacher="unet")
    assert parser["bundle_root"] == str(bundle.root) and parser["_meta_#name"]
    assert parser.get_parsed_content("run_name") == "tiny_unet_from_unet-mskd-s3"
    run = parser.get_parsed_content("mlflow_run")  # the run object: nothing opened, no store made
    assert run.given_run_id is None and not (tmp_path / "out").exists()


def test_the_command_line_is_what_a_user_types(tmp_path):
    bundle = Bundle(BUNDLES / "mskd_kits")
    command = bundle.command([*STACKS["baseline"], str(tmp_path / "overrides.json")])
    assert command[1:4] == ["-m", "monai.bundle", "run"]
    assert json.loads(command[command.index("--config_file") + 1]) == [
        str(bundle.configs / "train_teacher.json"),
        str(bundle.configs / "train_student.json"),
        str(tmp_path / "overrides.json"),
    ]
    assert command[command.index("--bundle_root") + 1] == str(bundle.root)
    assert command[command.index("--meta_file") + 1] == str(bundle.configs / "metadata.json")


def test_the_configs_run_code_warning_is_said_once_per_bundle(monkeypatch):
    """MONAI warns at every parse that configs run code; ``mskd demo`` parses six stacks: one warning per bundle."""
    import warnings

    import mskd.bundle

    monkeypatch.setattr(mskd.bundle, "_TRUSTED", set())
    bundle = Bundle(BUNDLES / "mskd_kits")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle.parser(STACKS["teacher"])
        bundle.parser(STACKS["mskd"])
    messages = [str(w.message) for w in caught]
    assert [m for m in messages if "run Python code" in m] == [
        f"the configs of {bundle.root} run Python code (`$` expressions, `_target_`): run only bundles you trust "
        "(MONAI advisory GHSA-873f-pvrv-4x83)"
    ]
    assert not [m for m in messages if m.startswith("parsing config_file")]


# what each stack's pre-flight builds (mskd.validation.preflight): the ids of bundle.PREFLIGHT its run uses
BUILT = {
    "teacher": {"organs", "num_classes", "hu_window", "datalist", "split", "validate#datalist", "seg_loss", "loss"}
    | {"teacher_def"},
    "baseline": {"organs", "num_classes", "hu_window", "datalist", "split", "validate#datalist", "seg_loss", "loss"}
    | {"student_def", "network_def"},
    "mskd": {"organs", "num_classes", "hu_window", "datalist", "split", "validate#datalist", "seg_loss", "loss"}
    | {"teacher_def", "student_def", "network_def", "teacher_outputs_in_force", "teacher_taps", "student_taps"}
    | {"teacher_network"},
    "mskd+evaluate": {"organs", "num_classes", "hu_window", "validate#datalist", "seg_loss", "loss"}
    | {"teacher_def", "student_def", "network_def", "teacher_outputs_in_force", "teacher_taps", "student_taps"}
    | {"teacher_network", "network"},
    "inference": {"num_classes", "data_format", "hu_window", "datalist", "network_def", "network"},
}


@pytest.mark.parametrize("name", ["mskd_synapse", "mskd_kits"])
@pytest.mark.parametrize("stack", list(BUILT))
def test_the_pre_flight_tables_name_the_ids_each_stack_uses(name, stack):
    """``bundle.PREFLIGHT`` and its neighbours name config ids: a bundle that renames one must update them, or its
    pre-flight silently checks less. The evaluation of the distilled student also loads the teacher (its overlays)."""
    from mskd import bundle as tables
    from mskd.validation import _References

    files = {"mskd+evaluate": Bundle.stack("mskd", evaluate=True), "inference": (INFERENCE,)}.get(stack)
    parser = Bundle(BUNDLES / name).parser(files or Bundle.stack(stack))
    parser.parse()
    refs = _References(parser)
    used = refs.uses(*tables.USED_FROM)
    built = set()
    for step in tables.PREFLIGHT:
        if step.id in used and any(r == step.id or r in refs.uses(step.id) for r in step.reported_as):
            built.add(step.id)
    assert built == BUILT[stack]
    assert any(isinstance(parser[i], dict) and parser[i].get("_target_") == tables.LOADER for i in used)
    assert any(d in used for d in tables.DATALISTS) and {c.loader for c in tables.CHECKPOINTS} <= set(
        tables.NETWORKS
    ) | {s.id for s in tables.PREFLIGHT}

"""Every shell command of the documentation is checked: run here when it is cheap, else named with its test.

The commands are the lines of the fenced ``bash`` blocks of ``README.md`` and ``docs/*.md`` (continuation lines
joined, ``#`` comments dropped). Each one is either run by :func:`test_documented_command` (a variable assignment, a
``--help``, ``mskd phantom``, ``python -m monai.bundle verify_metadata``) or listed in :data:`COVERED` with the test
that runs it (checked to exist) or, where no test can (a GPU run, the installation), why not. A command in neither
fails the check, and so does an entry of :data:`COVERED` that no page documents any more.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^\s*```(\S*)\s*$")
_ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(\S+)$")


class Covered(NamedTuple):
    """Where a documented command is run: a test's node id (``None`` when no test can), and why this one."""

    test: str | None
    why: str


E2E = "tests/bundles/test_mskd_synapse.py::"
CLI_RUN = Covered(
    E2E + "test_cli_trains_distils_and_evaluates_through_the_bundle",
    "the same command through mskd.cli.main on a tiny phantom (32², 1 epoch)",
)
COVERED: dict[str, Covered] = {
    # set-up and the Makefile
    "make install": Covered(None, "the first step of `make test`, which CI (.ci/run) runs from a clean clone"),
    "make test": Covered(None, "this suite; CI (.ci/run) runs it from a clean clone"),
    "make demo": Covered(
        "tests/test_demo.py::test_quick_demo_runs_every_stage_and_reads_back_the_table",
        "the demo's code path with its QUICK settings (the full demo takes a quarter of an hour)",
    ),
    "make mlflow-ui": Covered(
        "tests/test_dashboard.py::test_runs_table_and_run_page_in_chromium",
        "serves a store with this make target and reads its pages in Chromium",
    ),
    "make mlflow-ui MLFLOW_STORE=runs/phantom/mlruns.db": Covered(
        "tests/test_dashboard.py::test_runs_table_and_run_page_in_chromium",
        "serves a store given by MLFLOW_STORE with this make target",
    ),
    "python tools/dashboard.py --store demo/output/mlruns.db --out docs/figures/dashboard.png --overlay-run "
    "tiny_unet_from_unet-mskd-s0-test --overlay-out docs/figures/overlay.png": Covered(
        "tests/test_dashboard.py::test_dashboard_figures_of_a_store",
        "the same command on the store of a tiny run (the demo's store exists after `make demo`)",
    ),
    "python tools/dashboard.py --store experiments/phantom_v2/output/mlruns.db --experiment mskd_phantom_v2 --out "
    "/tmp/runs.png --comparison-run espnet_from_unet-default-c1-s0-test --comparison-out "
    "docs/figures/comparison.png": Covered(
        "tests/test_dashboard.py::test_comparison_view_of_a_store",
        "the same options on the store of a tiny run (the benchmark's store exists after its experiment has run)",
    ),
    "make bench": Covered(
        "tests/benchmarks/test_benchmarks.py::test_quick_run_writes_results_and_doc_section",
        "the full measurement takes many minutes and rewrites docs/; every script is run at --quick",
    ),
    "mskd bench --quick": Covered(
        "tests/benchmarks/test_benchmarks.py::test_quick_run_writes_results_and_doc_section",
        "every script at --quick; that mskd bench runs them: tests/test_cli.py (subprocess calls recorded)",
    ),
    # the mskd commands of the README and the quickstart, CPU-sized
    "mskd train-teacher --dataset-dir data/phantom --output-dir runs/phantom --teacher unet --image-size 96 "
    "--max-epochs 40": CLI_RUN,
    "mskd distill --dataset-dir data/phantom --output-dir runs/phantom --teacher unet --student tiny_unet "
    "--image-size 96 --max-epochs 40": CLI_RUN,
    "mskd evaluate --method mskd --dataset-dir data/phantom --output-dir runs/phantom --teacher unet "
    "--student tiny_unet --image-size 96": CLI_RUN,
    "mskd predict --input data/phantom/imagesTr/synapse_phantom_0015.nii.gz --output-dir runs/phantom/predictions "
    "--ckpt-path runs/phantom/models/model.pt --image-size 96": Covered(
        E2E + "test_cli_predict_and_export_wrap_the_bundle", "the same flags on a distilled tiny student"
    ),
    # troubleshooting
    "mskd --debug train-teacher --dataset-dir data/phantom --teacher unet": Covered(
        E2E + "test_cli_refuses_bad_input_before_training", "--debug raises the problems with their traceback"
    ),
    "mskd train-teacher --dataset-dir data/phantom --teacher unet --set mlflow=false": Covered(
        "tests/bundles/test_tracking_failures.py::test_mlflow_false_trains_without_any_store",
        "mlflow=false through monai.bundle; --set passes it as false (tests/test_cli.py)",
    ),
    "mskd train-teacher --dataset-dir data/phantom --teacher unet --set resume=false": Covered(
        "tests/bundles/test_resume.py::test_killed_run_resumes_from_its_last_iteration_checkpoint",
        "the resume machinery; resume=false is its documented way out (tests/engines/test_checkpointing.py)",
    ),
    # real data: paper-scale (GPU) runs, smoke-tested on CPU with the same data_format on data in the same layout
    "mskd train-teacher --data-format synapse_npz --dataset-dir /data/Synapse": Covered(
        E2E + "test_one_override_switches_the_dataset_format",
        "GPU-scale on real data; the synapse_npz layout is trained and evaluated on tiny TransUNet-format files",
    ),
    "mskd train-teacher --data-format btcv --dataset-dir /data/RawData/Training": Covered(
        E2E + "test_one_override_switches_the_dataset_format",
        "GPU-scale on real data; the btcv layout is trained and evaluated on tiny raw-BTCV files",
    ),
    "mskd distill --data-format btcv --dataset-dir /data/RawData/Training": Covered(
        E2E + "test_teacher_and_distillation_runs_are_tracked",
        "GPU-scale on real data; distillation is smoke-tested on phantoms, the btcv reader by the test above",
    ),
    "mskd evaluate --method mskd --data-format btcv --dataset-dir /data/RawData/Training": Covered(
        E2E + "test_one_override_switches_the_dataset_format",
        "GPU-scale on real data; evaluation of btcv test cases is smoke-tested on tiny raw-BTCV files",
    ),
    "mskd train-teacher --bundle bundles/mskd_kits --data-format kits19 --dataset-dir kits19/data": Covered(
        "tests/bundles/test_mskd_kits.py::test_kits19_case_folders_train_and_evaluate",
        "GPU-scale on real data; the kits19 layout is trained and evaluated on tiny KiTS19-format case folders",
    ),
    # the monai.bundle commands (README, bundles.md)
    "python -m monai.bundle run --config_file \"['$B/configs/train_teacher.json']\" --bundle_root $B "
    "--data_format btcv --dataset_dir DATA": Covered(
        E2E + "test_one_override_switches_the_dataset_format", "this command on tiny raw-BTCV files"
    ),
    "python -m monai.bundle run --config_file \"['$B/configs/train_teacher.json','$B/configs/distill.json']\" "
    "--bundle_root $B --data_format btcv --dataset_dir DATA": Covered(
        E2E + "test_teacher_and_distillation_runs_are_tracked", "this stack on a tiny phantom"
    ),
    "python -m monai.bundle run --config_file \"['$B/configs/train_teacher.json','$B/configs/distill.json',"
    "'$B/configs/evaluate.json']\" --bundle_root $B --data_format btcv --dataset_dir DATA": Covered(
        E2E + "test_teacher_and_distillation_runs_are_tracked", "this stack on a tiny phantom"
    ),
    "python -m monai.bundle run --config_file $B/configs/inference.json --bundle_root $B --input CT.nii.gz "
    "--output_dir predictions": Covered(E2E + "test_inference_writes_labels_on_the_input_grid", "this command"),
    "python -m monai.bundle run --config_file \"['$B/configs/train_teacher.json']\" --bundle_root $B "
    "--dataset_dir DATA --teacher unet --image_size 96 --max_epochs 40": Covered(
        E2E + "test_teacher_and_distillation_runs_are_tracked", "this stack on a tiny phantom (32², 1 epoch)"
    ),
    "python -m monai.bundle run --config_file \"['$B/configs/train_teacher.json','$B/configs/distill.json']\" "
    "--bundle_root $B --dataset_dir DATA --teacher unet --image_size 96 --max_epochs 40": Covered(
        E2E + "test_teacher_and_distillation_runs_are_tracked", "this stack on a tiny phantom (32², 1 epoch)"
    ),
    "python -m monai.bundle run --config_file \"['$B/configs/train_teacher.json','$B/configs/distill.json',"
    "'$B/configs/evaluate.json']\" --bundle_root $B --dataset_dir DATA --teacher unet --image_size 96": Covered(
        E2E + "test_teacher_and_distillation_runs_are_tracked", "this stack on a tiny phantom (32²)"
    ),
    "python -m monai.bundle run --config_file $B/configs/inference.json --bundle_root $B --input CT.nii.gz "
    "--output_dir predictions --image_size 96": Covered(
        E2E + "test_inference_writes_labels_on_the_input_grid", "this command at the tiny run's image size"
    ),
    # experiment matrices
    "mskd experiment configs/experiments/phantom_cpu.yaml --dry-run": Covered(
        "tests/test_experiment.py::test_shipped_experiment_files_are_valid",
        "loads and plans every shipped experiment file, as --dry-run does",
    ),
    "mskd experiment configs/experiments/phantom_cpu.yaml": Covered(
        "tests/test_experiment.py::test_tiny_matrix_end_to_end_nested_and_resumable",
        "a two-student-row matrix on tiny phantoms, run twice (the second run resumes and skips)",
    ),
}


def documented() -> list[tuple[str, str]]:
    """``(page:line, command)`` of every command in a fenced ``bash`` block of the pages."""
    found = []
    for page in PAGES:
        block, pending, start = False, "", 0
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            fence = _FENCE.match(line)
            if fence:
                block = fence.group(1) == "bash" if not block else False
                continue
            if not block:
                continue
            text = line.strip()
            if not pending:
                start = number
                if not text or text.startswith("#"):
                    continue
            pending = f"{pending} {text}".strip()
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            # a trailing comment (`make demo   # sets up .venv, ...`) is not part of the command
            command = " ".join(shlex.split(pending, comments=True, posix=False))
            found.append((f"{page.relative_to(ROOT)}:{start}", command))
            pending = ""
    return found


def _resolves(node: str) -> bool:
    """Whether a node id ``path::[Class::]function[params]`` names a test function defined in that file."""
    path, *names = node.split("::")
    file = ROOT / path
    if not file.is_file() or not names:
        return False
    scope: list[ast.stmt] = ast.parse(file.read_text(encoding="utf-8")).body
    for name in names[:-1]:
        classes = [n for n in scope if isinstance(n, ast.ClassDef) and n.name == name]
        if not classes:
            return False
        scope = classes[0].body
    function = names[-1].split("[")[0]
    return any(isinstance(n, ast.FunctionDef) and n.name == function for n in scope)


_RAN: set[str] = set()  # commands run once already (README and quickstart share some)


def _run(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> bool:
    """Run ``command`` (once) if it is one this check runs itself; returns whether it is."""
    if command in _RAN:
        return True
    words = shlex.split(command)
    if _ASSIGNMENT.match(command):  # a variable the next commands use: it must name a folder of the repository
        assert (ROOT / _ASSIGNMENT.match(command).group(2)).is_dir(), command
        return True
    if words[:1] == ["mskd"] and (words[-1] == "--help" or words[1:2] == ["phantom"]):
        from mskd.cli import main

        monkeypatch.chdir(tmp_path)  # relative outputs land in tmp_path
        if words[-1] == "--help":
            with pytest.raises(SystemExit) as exit_info:
                main(words[1:])
            assert exit_info.value.code == 0
            assert "example:" in capsys.readouterr().out
        else:
            assert main(words[1:]) == 0
            out = words[words.index("--output-dir") + 1]
            assert json.loads((tmp_path / out / "dataset.json").read_text())["numTraining"] > 0
        return True
    if words[:4] == ["python", "-m", "monai.bundle", "verify_metadata"]:
        from monai.bundle import verify_metadata

        options = dict(zip(words[4::2], words[5::2], strict=True))
        verify_metadata(meta_file=str(ROOT / options["--meta_file"]), filepath=str(ROOT / options["--filepath"]))
        return True
    return False


@pytest.mark.parametrize("where, command", documented(), ids=[where for where, _ in documented()])
def test_documented_command(where, command, tmp_path, monkeypatch, capsys):
    if command.startswith("mskd "):  # parses as documented (a renamed or mistyped flag fails here), even if not run
        from mskd.cli import build_parser

        build_parser().parse_args(shlex.split(command)[1:])
    if _run(command, tmp_path, monkeypatch, capsys):
        _RAN.add(command)
        return
    covered = COVERED.get(command)
    assert covered is not None, (
        f"{where}: `{command}` is not checked: make it one the doc check runs, or add it to tests/test_docs.py's "
        "COVERED with the test that runs it (or why none can)"
    )
    assert covered.why, f"{where}: say why `{command}` is covered by {covered.test}"
    if covered.test is not None:
        assert _resolves(covered.test), f"{where}: the test {covered.test} of `{command}` does not exist"


def test_every_covered_command_is_still_documented():
    commands = {command for _, command in documented()}
    assert not set(COVERED) - commands, "COVERED names commands no page documents any more"


@pytest.mark.parametrize(
    "node, expected",
    [
        ("tests/test_docs.py::test_documented_command", True),
        ("tests/test_docs.py::test_documented_command[README.md:1]", True),
        ("tests/test_docs.py::test_nothing", False),
        ("tests/nothing.py::test_documented_command", False),
        ("tests/test_docs.py::Covered::test", False),  # a field, not a test function
    ],
)
def test_node_ids_resolve_only_to_test_functions(node, expected):
    assert _resolves(node) is expected

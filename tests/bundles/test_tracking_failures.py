"""An MLflow store that cannot be used stops a bundle at start-up, reported as one problem of ``tracking_uri``;
``--mlflow false`` trains without."""

import pytest

from mskd.data.phantom import generate_phantom_dataset
from tests.bundles.runner import BUNDLES, CPU_NETWORKS, TINY, output_dirs, run_bundle

BUNDLE = BUNDLES / "mskd_synapse"
FIX = "fix --tracking_uri (or MLFLOW_TRACKING_URI), or run without MLflow: --mlflow false"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    generate_phantom_dataset(root / "data", task="synapse", cases=4, seed=3, size=(32, 32, 16), test_cases=1)
    return ["--dataset_dir", str(root / "data"), *TINY, *CPU_NETWORKS]


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "sqlite:///{root}/a_file/mlruns.db"])
def test_an_unusable_tracking_store_stops_before_training_in_one_line(data, tmp_path, uri):
    (tmp_path / "a_file").write_text("a file where the store's folder should be")
    uri = uri.format(root=tmp_path)
    proc = run_bundle(
        BUNDLE, "train_teacher.json", args=[*data, *output_dirs(tmp_path), "--tracking_uri", uri], check=False
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    start = lines.index("mskd: 1 problem(s) found before starting:")  # the pre-flight's report, one problem
    line = lines[start + 1]
    assert line.startswith(f"  - tracking_uri: MLflow tracking store {uri!r} is unreachable or invalid (")
    assert line.endswith(FIX)
    assert "Traceback" not in proc.stderr
    assert "Epoch" not in proc.stdout + proc.stderr  # nothing trained
    written = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(written) == ["a_file", "output/checkpoints/unet-teacher-s0/run.lock"]  # the run's lock only
    assert (tmp_path / "output" / "checkpoints" / "unet-teacher-s0" / "run.lock").read_text() == ""  # released


def test_mlflow_false_trains_without_any_store(data, tmp_path):
    args = [*data, *output_dirs(tmp_path), "--mlflow", "false", "--tracking_uri", "http://127.0.0.1:9"]
    proc = run_bundle(BUNDLE, "train_teacher.json", args=args)
    assert "Epoch[1] Complete" in proc.stdout + proc.stderr
    assert not list((tmp_path / "output").glob("mlruns*"))
    assert (tmp_path / "models" / "unet-teacher-s0.pt").is_file()
    assert (tmp_path / "output" / "checkpoints" / "unet-teacher-s0" / "latest.pt").is_file()

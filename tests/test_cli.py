import json

import pytest

from mskd.cli import main


def test_phantom_command_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["phantom", "--out", str(out), "--cases", "3", "--size", "24", "24", "16", "--seed", "1"]) == 0
    content = json.loads((out / "dataset.json").read_text())
    assert content["numTraining"] + content["numTest"] == 3
    assert f"wrote {out / 'dataset.json'}" in capsys.readouterr().out


def test_known_errors_are_one_line_and_exit_1(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "x"), "--cases", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mskd phantom: error:") and "\n" not in err


def test_demo_refuses_a_folder_that_is_not_a_bundle(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path / "w"), "--bundle", str(tmp_path)]) == 1
    assert "is not an mskd bundle" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["phantom"], ["phantom", "--out", "x", "--task", "brain"], ["nope"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2

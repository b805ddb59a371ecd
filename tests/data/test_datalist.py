import json

import pytest

from mskd.data import image_datalist, msd_datalist, split_cases


def _dataset(tmp_path, content):
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    return tmp_path


def test_msd_datalist_resolves_paths(tmp_path):
    root = _dataset(tmp_path, {"training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]})
    [item] = msd_datalist(root)
    assert item == {"image": str(root / "imagesTr/a.nii.gz"), "label": str(root / "labelsTr/a.nii.gz")}


@pytest.mark.parametrize(
    "content, key, error, message",
    [
        (None, "training", FileNotFoundError, "no dataset.json in"),
        ({"training": []}, "training", ValueError, "the 'training' list of .* is empty"),
        (
            {"training": [{"image": "a", "label": "b"}]},
            "test",
            ValueError,
            r"has no 'test' list; it has \['training'\]",
        ),
    ],
)
def test_msd_datalist_errors(tmp_path, content, key, error, message):
    if content is not None:
        _dataset(tmp_path, content)
    with pytest.raises(error, match=message):
        msd_datalist(tmp_path, key)


def test_msd_datalist_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset folder not found: .*absent .*mskd phantom"):
        msd_datalist(tmp_path / "absent")


def test_split_cases_is_reproducible_and_disjoint():
    cases = [{"image": str(i)} for i in range(10)]
    train, val = split_cases(cases, 3, seed=1)
    assert len(train) == 7 and len(val) == 3
    assert {c["image"] for c in train}.isdisjoint({c["image"] for c in val})
    assert (train, val) == split_cases(cases, 3, seed=1)


@pytest.mark.parametrize("num_val", [0, 4, -1])
def test_split_cases_bad_count(num_val):
    with pytest.raises(ValueError, match=f"got {num_val}"):
        split_cases([{}] * 4, num_val)


def test_image_datalist(tmp_path):
    for name in ("b.nii.gz", "a.nii", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [d["image"] for d in image_datalist(tmp_path)] == [str(tmp_path / "a.nii"), str(tmp_path / "b.nii.gz")]
    assert image_datalist(tmp_path / "a.nii") == [{"image": str(tmp_path / "a.nii")}]
    with pytest.raises(FileNotFoundError, match="no .nii or .nii.gz file"):
        image_datalist(_empty(tmp_path))
    with pytest.raises(FileNotFoundError, match="inference input not found"):
        image_datalist(tmp_path / "missing")


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d

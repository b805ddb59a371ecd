"""Tests for the docs figure of tools/phantom_vs_real.py (``make figures``)."""

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from mskd.plotting import LABEL_COLOURS
from tools.phantom_vs_real import main, phantom_vs_real_figure

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_PHANTOM = (32, 32, 16)


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


@pytest.fixture
def real_stand_in(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny 'real CT' stored LPS (as DICOM-derived NIfTI often is), with BTCV-13 ids: body, liver, kidneys, ..."""
    shape, spacing = (40, 32, 24), 8.0
    x, y, z = np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in shape), indexing="ij")
    # RAS-thinking anatomy (x toward the patient's right), then flipped to LPS storage order
    ct = np.where((x / 18) ** 2 + (y / 13) ** 2 <= 1.0, 40, -1000).astype(np.int16)
    seg = np.zeros(shape, dtype=np.uint8)
    seg[(x > 2) & (x < 14) & (y > -4) & (y < 8) & (z > 0)] = 6  # liver, patient's right
    seg[(x > 4) & (x < 9) & (y < -5) & (y > -10) & (np.abs(z) < 5)] = 2  # right kidney
    seg[(x < -4) & (x > -9) & (y < -5) & (y > -10) & (np.abs(z) < 5)] = 3  # left kidney
    seg[(x < -10) & (x > -16) & (np.abs(y) < 5) & (z > 2)] = 1  # spleen
    seg[(np.abs(x) < 6) & (y > 2) & (y < 5) & (np.abs(z) < 2)] = 11  # pancreas
    seg[(x > -4) & (x < -1) & (y > -3) & (y < 0)] = 8  # aorta
    seg[(x > 1) & (x < 4) & (y > -3) & (y < 0)] = 9  # IVC: not a Synapse organ
    lps = np.diag([-spacing, -spacing, spacing, 1.0])
    lps[:3, 3] = [100.0, 120.0, -80.0]
    image_path, label_path = tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz"
    _write_nifti(image_path, ct[::-1, ::-1, :].copy(), lps)
    _write_nifti(label_path, seg[::-1, ::-1, :].copy(), lps)
    return image_path, label_path


def test_phantom_vs_real_figure_writes_png(tmp_path: Path, real_stand_in: tuple[Path, Path]) -> None:
    out = tmp_path / "figures" / "phantom_vs_real.png"
    path = phantom_vs_real_figure(out, *real_stand_in, seed=1, size=TINY_PHANTOM, dpi=40)
    assert path == out
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in out.parent.iterdir()] == ["phantom_vs_real.png"], "no temporary file may be left"
    with Image.open(out) as png:
        assert png.mode == "P", "an 8-bit indexed PNG"
        palette = np.asarray(png.getpalette()[:768]).reshape(-1, 3)
        assert png.width > 300 and png.height > 150
    for colour in LABEL_COLOURS["synapse"].values():
        rgb = np.round(np.asarray(to_rgb(colour)) * 255)
        assert (np.abs(palette - rgb).sum(axis=1) == 0).any(), f"{colour} must be kept exactly"


def test_phantom_vs_real_figure_errors(tmp_path: Path, real_stand_in: tuple[Path, Path]) -> None:
    image, label = real_stand_in
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        phantom_vs_real_figure(tmp_path / "a.png", tmp_path / "nope.nii.gz", label, size=TINY_PHANTOM)
    _write_nifti(tmp_path / "small.nii.gz", np.zeros((4, 4, 4), dtype=np.uint8), np.eye(4))
    with pytest.raises(ValueError, match=r"\(4, 4, 4\)"):
        phantom_vs_real_figure(tmp_path / "b.png", image, tmp_path / "small.nii.gz", size=TINY_PHANTOM)
    assert not list(tmp_path.glob("*.png"))


def test_cli(tmp_path: Path, real_stand_in: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    image, label = real_stand_in
    out = tmp_path / "cli.png"
    argv = ["--out", str(out), "--real-image", str(image), "--real-label", str(label)]
    assert main([*argv, "--size", "32,32,16", "--dpi", "30", "--seed", "2"]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC and "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--real-image", "nope.nii.gz", "--real-label", str(label)])
    assert "--real-image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(out)])


def test_runs_as_a_script() -> None:
    """``make figures`` runs the file itself (not a module of the package)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "phantom_vs_real.py"), "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "--real-image" in proc.stdout and "phantom_vs_real.py" in proc.stdout

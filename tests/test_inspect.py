"""ctsurv.io.inspect: summary numbers against numpy, display conventions of the montage, PNG written whole."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
from matplotlib.figure import Figure

from ctsurv.errors import CtsurvError
from ctsurv.io.inspect import axial, coronal, describe, sagittal, save_montage
from ctsurv.io.volumes import Volume, read_volume


def test_describe_counts_hu_bands_exactly() -> None:
    values = np.repeat([-1000.0, -800.0, 40.0, 500.0, -300.0], [100, 200, 300, 100, 300])  # 1000 voxels
    volume = Volume(values.reshape(10, 10, 10), np.diag([-0.5, -0.5, 2.0, 1.0]))
    info = describe(volume)
    assert info["shape"] == [10, 10, 10]
    assert info["spacing_mm"] == [0.5, 0.5, 2.0]
    assert info["orientation"] == "LPS" and info["dtype"] == "float32"
    assert (info["hu_min"], info["hu_max"], info["hu_p50"]) == (-1000.0, 500.0, -300.0)
    assert info["hu_mean"] == pytest.approx(values.mean())
    assert info["fraction_air"] == 0.1
    assert info["fraction_lung"] == 0.2
    assert info["fraction_soft_tissue"] == 0.3
    assert info["fraction_bone"] == 0.1
    json.dumps(info)  # plain Python types only


def test_describe_real_chest_ct(realdata: Path) -> None:
    path = realdata / "chest_cta_pulmonary_crop.nii.gz"
    info = describe(read_volume(path))
    a = np.asarray(nib.load(path).dataobj)  # int16 as stored, read independently
    assert info["shape"] == [122, 102, 112] and info["orientation"] == "LPS"
    assert (info["hu_min"], info["hu_max"]) == (-1064.0, 3343.0)
    assert info["hu_p1"] == np.percentile(a, 1) and info["hu_p99"] == np.percentile(a, 99)
    assert info["fraction_lung"] == pytest.approx(np.mean((a >= -950) & (a <= -500)))
    assert 0.25 < info["fraction_lung"] < 0.5 and 0.2 < info["fraction_soft_tissue"] < 0.4


def test_slices_follow_the_radiological_display_convention() -> None:
    """In a RAS array, a marker on the patient's left shows on the image right; anterior and superior show at the top."""
    ras = np.zeros((10, 12, 14), dtype=np.float32)  # (X, Y, Z): x -> right, y -> anterior, z -> superior
    ras[1, 6, 7] = 1.0  # left
    ras[5, 11, 7] = 2.0  # anterior
    ras[5, 6, 13] = 3.0  # superior
    ax, cor, sag = axial(ras, 7), coronal(ras, 6), sagittal(ras, 5)
    assert ax.shape == (12, 10) and cor.shape == (14, 10) and sag.shape == (14, 12)
    assert np.argwhere(ax == 1.0)[0][1] == 8  # left marker: column near the right edge
    assert np.argwhere(ax == 2.0)[0][0] == 0  # anterior: top row
    assert np.argwhere(cor == 1.0)[0][1] == 8  # coronal: patient's left on the image right
    assert np.argwhere(cor == 3.0)[0][0] == 0  # superior: top row
    assert np.argwhere(sag == 2.0)[0][1] == 0  # sagittal: anterior on the image left
    assert np.argwhere(sag == 3.0)[0][0] == 0


def test_montage_of_an_lps_file_puts_the_left_marker_on_the_image_right(tmp_path: Path) -> None:
    lps = np.full((40, 40, 20), -1000.0, dtype=np.float32)  # i -> patient's left
    lps[30:38, 16:24, :] = 400.0  # a bright column on the patient's left
    png = tmp_path / "out" / "montage.png"
    volume = Volume(lps, np.diag([-1.0, -1.0, 2.0, 1.0]), Path("lps.nii.gz"))
    save_montage(volume, png, window=(-1000.0, 1800.0), n_axial=3)  # the marker shows mid-grey
    assert [p.name for p in png.parent.iterdir()] == ["montage.png"]  # no temporary file left
    image = matplotlib.image.imread(png)  # (H, W, 4) RGBA in [0, 1]
    # the first panel (axial, left third of the figure): the bright marker sits right of its centre
    top_left = image[: image.shape[0] // 2, : image.shape[1] // 3, :3]  # (h, w, RGB)
    grey = np.argwhere((np.abs(top_left - 0.5) < 0.05).all(axis=-1))  # the marker
    air = np.argwhere((top_left < 0.05).all(axis=-1))  # the axial panel's black background
    assert len(grey) > 50 and len(air) > 1000
    assert grey[:, 1].mean() > air[:, 1].mean() + 20  # right of the panel's centre


def test_montage_of_a_real_file(realdata: Path, tmp_path: Path) -> None:
    png = tmp_path / "chest.png"
    save_montage(read_volume(realdata / "chest_cta_pulmonary_crop.nii.gz"), png)
    save_montage(read_volume(realdata / "abdomen_ct_small.nii.gz"), png)  # overwrites in place
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chest.png"]


def test_numpy_axial_slices_display_exactly_as_stored(tmp_path: Path) -> None:
    """The documented .npy convention: arr[z] is already the radiological axial view."""
    zyx = np.random.default_rng(0).integers(-1000, 1000, (4, 5, 6)).astype(np.float32)
    np.save(tmp_path / "a.npy", zyx)
    ras = read_volume(tmp_path / "a.npy", spacing_zyx=(2.0, 1.0, 1.0)).as_ras().array
    for z in range(4):
        np.testing.assert_array_equal(axial(ras, z), zyx[z])


def test_montage_refuses_a_folder_and_the_volume_itself(tmp_path: Path) -> None:
    array = np.zeros((6, 5, 4), np.float32)
    np.save(tmp_path / "a.npy", array)
    volume = Volume(array, np.eye(4), tmp_path / "a.npy")  # as read from that file
    before = (tmp_path / "a.npy").read_bytes()
    with pytest.raises(CtsurvError, match=f"--png {tmp_path} is a folder"):
        save_montage(volume, tmp_path)
    with pytest.raises(CtsurvError, match="is the input"):
        save_montage(volume, tmp_path / "." / "a.npy")
    assert (tmp_path / "a.npy").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]


def test_a_failed_montage_keeps_the_old_png_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    png = tmp_path / "m.png"
    volume = Volume(np.zeros((8, 8, 4), np.float32), np.eye(4), Path("v.nii.gz"))
    save_montage(volume, png, n_axial=2)
    old = png.read_bytes()

    def crash(self: Figure, fname: Path, **kwargs: object) -> None:
        Path(fname).write_bytes(b"\x89PNG half")
        raise RuntimeError("disk gone")

    monkeypatch.setattr(Figure, "savefig", crash)
    with pytest.raises(RuntimeError, match="disk gone"):
        save_montage(volume, png, n_axial=2)
    assert png.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["m.png"]

"""ctsurv.features.preprocess: shapes, RAS orientation, millimetre-true resampling, HU window, crops, on-disk cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ctsurv.config import DataConfig
from ctsurv.features import preprocess as transforms
from ctsurv.features.preprocess import Preprocessor, zyx_to_xyz
from ctsurv.io.volumes import Volume, read_volume

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def config(**kw: object) -> DataConfig:
    base = {"target_spacing_zyx": (4.0, 4.0, 4.0), "target_shape_zyx": (12, 16, 20), "hu_window": (-1000.0, 400.0)}
    return DataConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_zyx_to_xyz() -> None:
    assert zyx_to_xyz((48, 64, 80)) == (80, 64, 48)


@pytest.mark.parametrize("crop", ["center", "foreground"])
def test_real_volume_shape_and_range(realdata: Path, crop: str) -> None:
    out = Preprocessor(config(crop=crop)).load(realdata / "chest_cta_pulmonary_crop.nii.gz")
    assert out.shape == (1, 20, 16, 12) and out.dtype == torch.float32  # (1, X, Y, Z) = target_shape_zyx reversed
    assert float(out.min()) >= 0.0 and float(out.max()) == 1.0  # bone saturates the window


def test_at_native_spacing_the_pipeline_is_orientation_plus_window(realdata: Path) -> None:
    """Same spacing, same shape: the output is the RAS array windowed to [0, 1], voxel for voxel."""
    volume = read_volume(realdata / "chest_cta_aorta_crop.nii.gz")  # LPS, 1.5 mm
    ras = volume.as_ras()
    cfg = config(target_spacing_zyx=(1.5, 1.5, 1.5), target_shape_zyx=zyx_to_xyz(ras.shape), hu_window=(-1000.0, 400.0))
    out = Preprocessor(cfg)(volume)[0].numpy()  # (X, Y, Z)
    expected = np.clip((ras.array + 1000.0) / 1400.0, 0.0, 1.0)
    np.testing.assert_allclose(out, expected, atol=1e-4)


@pytest.mark.parametrize("crop", ["center", "foreground"])
def test_the_viewers_hu_grid_is_the_models_input_before_the_window(realdata: Path, crop: str) -> None:
    """with_hu / hu_on_grid: HU on the model's grid, voxel for voxel where its channel is (resampled, cropped and
    padded alike; padding is air): windowing it gives the model's channel; with_hu's tensor is __call__'s."""
    volume = read_volume(realdata / "chest_cta_pulmonary_crop.nii.gz")  # LPS: orientation must be followed
    pre = Preprocessor(config(crop=crop, target_shape_zyx=(40, 40, 48)))  # larger than the scan: padded in x
    image, hu = pre.with_hu(volume)
    np.testing.assert_array_equal(image.numpy(), pre(volume).numpy())
    np.testing.assert_array_equal(hu, pre.hu_on_grid(volume))
    assert hu.shape == image.shape[1:] and hu.min() == transforms.AIR_HU  # the air padding
    np.testing.assert_allclose(image[0].numpy(), np.clip((hu + 1000.0) / 1400.0, 0.0, 1.0), atol=1e-4)


def test_each_extra_window_is_one_more_channel(realdata: Path) -> None:
    """Channel k is the RAS array in window k, voxel for voxel; channel 0 is the single-window output."""
    volume = read_volume(realdata / "chest_cta_aorta_crop.nii.gz")
    ras = volume.as_ras()
    windows = ((-160.0, 240.0), (-200.0, 1300.0))
    base = config(target_spacing_zyx=(1.5, 1.5, 1.5), target_shape_zyx=zyx_to_xyz(ras.shape))
    out = Preprocessor(DataConfig(**{**base.__dict__, "extra_hu_windows": windows}))(volume).numpy()
    assert out.shape == (3, *ras.shape)
    np.testing.assert_allclose(out[0], Preprocessor(base)(volume)[0].numpy(), atol=0)
    for k, (lo, hi) in enumerate(windows, start=1):
        np.testing.assert_allclose(out[k], np.clip((ras.array - lo) / (hi - lo), 0.0, 1.0), atol=1e-4)


def lung_with_ball_and_tube(spacing_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, Y, Z) HU: -850 lung holding a 12 mm ball and a 12 mm-wide tube along Z, both 40 HU; their centres."""
    n = round(96 / spacing_mm)
    x, y, z = np.meshgrid(*[(np.arange(n) + 0.5) * spacing_mm] * 3, indexing="ij")
    ball, tube = np.array([30.0, 48.0, 48.0]), np.array([66.0, 48.0, 48.0])
    hu = np.full((n, n, n), -850.0, np.float32)
    hu[(x - ball[0]) ** 2 + (y - ball[1]) ** 2 + (z - ball[2]) ** 2 <= 36] = 40.0
    hu[(x - tube[0]) ** 2 + (y - tube[1]) ** 2 <= 36] = 40.0
    return hu, ball, tube


@pytest.mark.parametrize("spacing_mm", [2.0, 4.0])
def test_blobness_lights_up_a_ball_and_not_a_vessel_of_the_same_calibre(spacing_mm: float) -> None:
    hu, ball, tube = lung_with_ball_and_tube(spacing_mm)
    blob = transforms.blobness(torch.from_numpy(hu), (spacing_mm,) * 3, sigma_mm=4.0).numpy()
    assert blob.shape == hu.shape and blob.min() >= 0.0 and blob.max() <= 1.0
    peak = np.unravel_index(blob.argmax(), blob.shape)
    np.testing.assert_allclose((np.array(peak) + 0.5) * spacing_mm, ball, atol=spacing_mm)  # the peak is the ball's centre
    assert blob.max() > 0.3
    at_tube = blob[tuple(np.round(tube / spacing_mm - 0.5).astype(int))]
    assert at_tube < 0.05 * blob.max()  # a vessel of the same width and density stays dark


def test_blob_scales_are_more_channels_after_the_windows() -> None:
    hu, _, _ = lung_with_ball_and_tube(4.0)
    volume = Volume(hu, np.diag([4.0, 4.0, 4.0, 1.0]))  # already RAS
    cfg = config(target_spacing_zyx=(4.0, 4.0, 4.0), target_shape_zyx=(24, 24, 24), extra_hu_windows=((-160.0, 240.0),))
    two = Preprocessor(cfg)(volume)
    four = Preprocessor(DataConfig(**{**cfg.__dict__, "blob_sigmas_mm": (4.0, 6.0)}))(volume)
    assert four.shape == (4, 24, 24, 24) and cfg.in_channels == 2
    torch.testing.assert_close(four[:2], two, rtol=0, atol=0)  # the windows are unchanged
    for k, sigma in enumerate((4.0, 6.0), start=2):  # computed on the lung window, back in HU units
        torch.testing.assert_close(four[k], transforms.blobness(two[0] * 1400.0, (4.0, 4.0, 4.0), sigma), rtol=0, atol=1e-6)
    assert float(four[2].max()) > 0.3


def test_blob_windows_give_one_channel_per_window_and_scale() -> None:
    """data.blob_windows: blobness of each listed window's image (window-major, then scale), in HU units."""
    hu, _, _ = lung_with_ball_and_tube(4.0)
    volume = Volume(hu, np.diag([4.0, 4.0, 4.0, 1.0]))
    cfg = config(target_spacing_zyx=(4.0, 4.0, 4.0), target_shape_zyx=(24, 24, 24),
                 extra_hu_windows=((-160.0, 240.0), (-200.0, 1300.0)), blob_sigmas_mm=(4.0, 6.0), blob_windows=(0, 2))
    out = Preprocessor(cfg)(volume)
    assert out.shape == (7, 24, 24, 24) and cfg.in_channels == 7 and cfg.n_blob_channels == 4
    for k, (w, width, sigma) in enumerate([(0, 1400.0, 4.0), (0, 1400.0, 6.0), (2, 1500.0, 4.0), (2, 1500.0, 6.0)], start=3):
        torch.testing.assert_close(out[k], transforms.blobness(out[w] * width, (4.0, 4.0, 4.0), sigma), rtol=0, atol=1e-6)
    assert not torch.allclose(out[3], out[5])  # another window, another image


def test_the_default_blob_window_keeps_older_cache_keys(tmp_path: Path) -> None:
    """Entries cached before data.blob_windows (always the lung window) and data.resize_to_shape existed keep their key."""
    path = tmp_path / "v.npy"
    np.save(path, np.zeros((8, 8, 8), dtype=np.float32))
    cfg = config(cache_dir=str(tmp_path), blob_sigmas_mm=(4.0,))
    key = Preprocessor(cfg).cache_file(path, (1.0, 1.0, 1.0))
    assert key is not None and cfg.preprocessing()["blob_windows"] == (0,)
    other = Preprocessor(DataConfig(**{**cfg.__dict__, "extra_hu_windows": ((-200.0, 1300.0),), "blob_windows": (0, 1)}))
    assert other.cache_file(path, (1.0, 1.0, 1.0)) != key
    no_field = {k: v for k, v in cfg.preprocessing().items() if k not in ("blob_windows", "resize_to_shape")}  # later fields
    fingerprint = transforms._fingerprint(path)
    digest = hashlib.sha256(json.dumps({"version": transforms.CACHE_VERSION, "file": fingerprint, "spacing_zyx": [1.0, 1.0, 1.0],
                                        **{k: v for k, v in no_field.items() if v != ()}}, sort_keys=True).encode()).hexdigest()
    assert key.name == f"{digest}.npy"


def test_lps_markers_end_up_left_anterior_superior() -> None:
    """An LPS volume with one marker each on the patient's left, anterior and superior side."""
    a = np.full((30, 30, 30), -1000.0, dtype=np.float32)  # LPS: i -> left, j -> posterior, k -> superior
    a[25:28, 14:16, 14:16] = 100.0  # left
    a[14:16, 2:5, 14:16] = 200.0  # anterior
    a[14:16, 14:16, 25:28] = 300.0  # superior
    out = Preprocessor(config(target_spacing_zyx=(1.0, 1.0, 1.0), target_shape_zyx=(30, 30, 30)))(Volume(a, LPS))[0]

    def where(hu: float) -> np.ndarray:
        mask = (out - (hu + 1000.0) / 1400.0).abs() < 1e-3
        return np.argwhere(mask.numpy()).mean(axis=0)  # (3,) mean (x, y, z) index

    assert where(100.0)[0] < 5  # left: low x in RAS
    assert where(200.0)[1] > 25  # anterior: high y
    assert where(300.0)[2] > 25  # superior: high z


def test_resampling_keeps_millimetre_sizes() -> None:
    """A 30 x 20 x 24 mm bright box at 1 x 1 x 2 mm keeps its size at 3 mm, within one output voxel."""
    a = np.full((80, 70, 40), -1000.0, dtype=np.float32)  # (I, J, K) at 1 x 1 x 2 mm
    a[20:50, 25:45, 10:22] = 400.0  # 30 mm x 20 mm x 24 mm
    cfg = config(target_spacing_zyx=(3.0, 3.0, 3.0), target_shape_zyx=(32, 32, 32))
    out = Preprocessor(cfg)(Volume(a, np.diag([1.0, 1.0, 2.0, 1.0])))[0]  # (X, Y, Z) at 3 mm
    box = out > 0.5
    sizes_mm = [3.0 * box.any(dim=tuple(d for d in range(3) if d != axis)).sum().item() for axis in range(3)]
    np.testing.assert_allclose(sizes_mm, [30.0, 20.0, 24.0], atol=3.0)
    assert float(out.max()) == pytest.approx(1.0)  # the box interior keeps its HU


def test_block_average_removes_noise_when_downsampling() -> None:
    """0.5 mm white noise of 100 HU resampled to 5 mm: averaging ~1000 voxels leaves ~3 HU."""
    rng = np.random.default_rng(0)
    a = rng.normal(-300.0, 100.0, (100, 100, 100)).astype(np.float32)
    cfg = config(target_spacing_zyx=(5.0, 5.0, 5.0), target_shape_zyx=(10, 10, 10))
    out = Preprocessor(cfg)(Volume(a, np.diag([0.5, 0.5, 0.5, 1.0])))
    assert float(out.std()) * 1400.0 < 10.0  # plain bilinear sampling would keep ~70 HU
    assert float(out.mean()) * 1400.0 - 1000.0 == pytest.approx(-300.0, abs=5.0)


def test_foreground_crop_keeps_the_whole_body() -> None:
    """A body off the centre of a wide field of view, on a thin table: the centre crop cuts the
    body; the foreground crop keeps all of it and ignores the table (which would widen the box)."""
    a = np.full((100, 100, 10), -1000.0, dtype=np.float32)  # 5 mm voxels, RAS
    x, y = np.mgrid[:100, :100]
    body = (x - 75) ** 2 + (y - 70) ** 2 < 15**2
    a[body] = 40.0
    a[10:90, 40] = 200.0  # the table: one voxel thick, posterior to the body
    volume = Volume(a, np.diag([5.0, 5.0, 5.0, 1.0]))
    n_body = int(body.sum()) * 10
    for crop, kept in (("center", False), ("foreground", True)):
        cfg = config(target_spacing_zyx=(5.0, 5.0, 5.0), target_shape_zyx=(10, 40, 40), crop=crop)
        out = Preprocessor(cfg)(volume)
        assert out.shape == (1, 40, 40, 10)
        assert (int((out > 0.5).sum()) == n_body) is kept
    assert float(out[0, 0].max()) == 0.0  # margins outside the body are air


def test_padding_is_air() -> None:
    a = np.full((6, 6, 6), 40.0, dtype=np.float32)
    out = Preprocessor(config(target_spacing_zyx=(1.0, 1.0, 1.0), target_shape_zyx=(10, 10, 10)))(Volume(a, np.eye(4)))
    assert float(out.sum()) == pytest.approx(216 * 1040.0 / 1400.0, rel=1e-4)  # only the 6^3 input voxels are non-zero
    assert float(out[0, 0].max()) == 0.0


def test_cache_hits_and_misses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "scan.nii.gz"
    a = np.random.default_rng(0).integers(-1000, 1000, (20, 20, 20)).astype(np.int16)
    nib.save(nib.Nifti1Image(a, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    reads: list[Path] = []

    def counting_read(p: Path, spacing_zyx: tuple[float, float, float] | None = None,
                      rescale: tuple[float, float] | None = None, array_key: str | None = None) -> Volume:
        reads.append(Path(p))
        return read_volume(p, spacing_zyx, rescale, array_key)

    monkeypatch.setattr(transforms, "read_volume", counting_read)
    cache = tmp_path / "cache"
    pre = Preprocessor(config(cache_dir=str(cache)))
    first = pre.load(path)
    second = pre.load(path)
    assert len(reads) == 1  # the second load came from the cache
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, Preprocessor(config())(read_volume(path)), rtol=0, atol=0)
    assert [p.suffix for p in cache.iterdir()] == [".npy"]  # no temporary files left behind

    Preprocessor(config(cache_dir=str(cache), hu_window=(-900.0, 300.0))).load(path)
    assert len(reads) == 2  # another window: another entry
    Preprocessor(config(cache_dir=str(cache), crop="foreground")).load(path)
    assert len(reads) == 3
    three = Preprocessor(config(cache_dir=str(cache), extra_hu_windows=((-160.0, 240.0), (0.0, 1000.0))))
    assert three.load(path).shape == (3, 20, 16, 12) and len(reads) == 4  # more channels: another entry
    assert three.load(path).shape == (3, 20, 16, 12) and len(reads) == 4  # ... which is reused
    blob = Preprocessor(config(cache_dir=str(cache), blob_sigmas_mm=(4.0,)))
    assert blob.load(path).shape == (2, 20, 16, 12) and len(reads) == 5  # a blob channel: another entry
    assert blob.load(path).shape == (2, 20, 16, 12) and len(reads) == 5
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    pre.load(path)
    assert len(reads) == 6  # the file changed
    pre.load(path)
    assert len(reads) == 6
    assert pre.cache_file(path, rescale=(1.0, -1024.0)) != pre.cache_file(path)
    pre.load(path, rescale=(1.0, -1024.0))
    pre.load(path, rescale=(1.0, -1024.0))
    assert len(reads) == 7  # a rescale to HU: another entry, reused

    entry = pre.cache_file(path)
    assert entry is not None and entry.is_file()
    entry.write_bytes(b"half a file")
    torch.testing.assert_close(pre.load(path), first, rtol=0, atol=0)  # a damaged entry is recomputed
    assert len(reads) == 8


def test_cache_key_covers_folder_contents_and_array_spacing(tmp_path: Path) -> None:
    pre = Preprocessor(config(cache_dir=str(tmp_path / "cache")))
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "1.dcm").write_bytes(b"x")
    key = pre.cache_file(folder)
    (folder / "2.dcm").write_bytes(b"y")
    assert pre.cache_file(folder) != key
    np.save(tmp_path / "a.npy", np.zeros((2, 2, 2)))
    assert pre.cache_file(tmp_path / "a.npy", (1.0, 1.0, 1.0)) != pre.cache_file(tmp_path / "a.npy", (2.0, 1.0, 1.0))
    assert pre.cache_file(tmp_path / "missing.nii.gz") is None
    assert Preprocessor(config()).cache_file(tmp_path / "a.npy") is None  # caching off

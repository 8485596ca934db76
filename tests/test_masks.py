"""Region masks and multi-array .npz files: read, put on the CT's grid, preprocessed with the CT, cached.

The alignment tests paint a ball into a real CT at a world position and give the same ball as a mask: after
orientation, resampling and cropping, the painted voxels and the mask's must be the same voxels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from pydicom.dataset import FileMetaDataset

from ctsurv.config import DataConfig
from ctsurv.errors import CohortError, VolumeError
from ctsurv.features.preprocess import Preprocessor
from ctsurv.features.store import volume_store
from ctsurv.io.cohort import load_cohort
from ctsurv.io.volumes import Volume, is_empty, mask_on_grid, read_mask, read_volume

MARK_HU = -3000.0  # below anything a scanner gives (air is about -1000)
MARK_WINDOW = (-3100.0, -1100.0)  # the painted ball maps to 0.05, real HU to 1, padding to 0


def painted(image: torch.Tensor) -> torch.Tensor:
    """Where the mark window's channel shows at least half a voxel of the painted ball (below -1500 HU)."""
    return (image > 0.01) & (image < 0.8)


def ball(volume: Volume, centre_fraction: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """Bool (I, J, K): the voxels of ``volume`` within ``radius_mm`` of the world point at ``centre_fraction``
    of each array axis (off centre, so that a flip of one axis moves it)."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in volume.shape), indexing="ij"), -1).astype(np.float64)
    world = index @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    centre = volume.affine[:3, :3] @ (np.asarray(centre_fraction) * (np.asarray(volume.shape) - 1)) + volume.affine[:3, 3]
    return np.linalg.norm(world - centre, axis=-1) <= radius_mm


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def marked_config(crop: str) -> DataConfig:
    """``crop`` is a data.crop, or "resize": the foreground box resized to the shape (data.resize_to_shape)."""
    resize = crop == "resize"
    return DataConfig(crop="foreground" if resize else crop, resize_to_shape=resize, extra_hu_windows=(MARK_WINDOW,),
                      target_spacing_zyx=(3.0, 2.5, 2.0), target_shape_zyx=(40, 56, 64))


@pytest.mark.parametrize("crop", ["center", "foreground", "mask", "resize"])
@pytest.mark.parametrize("name", ["chest_cta_pulmonary_crop.nii.gz", "abdomen_ct_small.nii.gz", "chest_ct_dicom_series"])
def test_mask_stays_on_its_voxels_through_preprocessing(realdata, name, crop):
    volume = read_volume(realdata / name)  # LPS and RAS NIfTI, a DICOM series
    region = ball(volume, (0.42, 0.6, 0.5), radius_mm=15.0)  # inside the centre crop of every file
    marked = Volume(np.where(region, MARK_HU, volume.array), volume.affine, volume.path)
    image, mask = Preprocessor(marked_config(crop)).with_mask(marked, region)
    assert image.shape == (2, 64, 56, 40) and mask.shape == (64, 56, 40) and mask.dtype == torch.bool
    seen = painted(image[1])
    assert 0 < int(mask.sum()) < mask.numel()
    assert dice(seen, mask) > 0.85
    if crop == "resize":  # the body's box fills the field: body voxels on both faces of every axis
        body = image[0] > 0.05
        assert all(bool(body.select(axis, 0).any() and body.select(axis, -1).any()) for axis in range(3))
    if crop != "mask":  # (the mask crop centres the ball, which a flip then leaves in place)
        flipped = mask.flip(0)  # the patient's left-right: a mask that missed a flip would sit here
        assert dice(seen, flipped) < 0.3


def bbox_centre(mask: torch.Tensor) -> np.ndarray:
    where = np.argwhere(mask.numpy())
    return (where.min(0) + where.max(0)) / 2


@pytest.mark.parametrize("name", ["chest_cta_pulmonary_crop.nii.gz", "chest_ct_dicom_series"])
def test_mask_crop_centres_the_field_on_the_region_at_true_scale(realdata, name):
    volume = read_volume(realdata / name)
    region = ball(volume, (0.08, 0.5, 0.5), radius_mm=12.0)  # near one end of the first array axis
    marked = Volume(np.where(region, MARK_HU, volume.array), volume.affine, volume.path)
    centred, mask = Preprocessor(marked_config("mask")).with_mask(marked, region)
    _, centre_crop_mask = Preprocessor(marked_config("center")).with_mask(marked, region)
    assert dice(painted(centred[1]), mask) > 0.85
    assert np.abs(bbox_centre(mask) - (np.asarray(mask.shape) - 1) / 2).max() <= 1.0  # the region in the middle
    assert int(mask.sum()) >= int(centre_crop_mask.sum())  # nothing of it cut off that the centre crop kept
    # the same region at the same scale: its extent in voxels is the same as in the centre crop, where it is whole
    whole = Preprocessor(dataclasses.replace(marked_config("mask"), target_shape_zyx=(400, 400, 400))).with_mask(marked, region)[1]
    assert abs(int(mask.sum()) - int(whole.sum())) <= 0.02 * int(whole.sum())


def test_npz_scan_and_mask_are_read_as_the_ct_and_its_region(realdata, tmp_path):
    volume = read_volume(realdata / "chest_cta_pulmonary_crop.nii.gz").as_ras()
    region = ball(volume, (0.6, 0.4, 0.5), radius_mm=15.0)
    # stored as users' arrays are

    def zyx(a: np.ndarray) -> np.ndarray:  # RAS (X, Y, Z) -> (Z, Y, X) with index axes towards (S, P, L)
        return np.ascontiguousarray(a[::-1, ::-1, :].transpose(2, 1, 0))

    path = tmp_path / "patient.npz"
    np.savez(path, scan=zyx(np.where(region, MARK_HU, volume.array)).astype(np.int16), mask=zyx(region))
    spacing = tuple(float(s) for s in volume.spacing[::-1])
    ct, m = read_volume(path, spacing), read_mask(path, spacing)
    assert ct.array.min() == MARK_HU and set(np.unique(m.array)) == {0.0, 1.0}
    image, mask = Preprocessor(marked_config("center")).with_mask(ct, mask_on_grid(m, ct))
    assert dice(painted(image[1]), mask) > 0.85


def test_npz_array_choice(tmp_path):
    scan = np.full((8, 9, 10), -1000, np.int16)
    scan[2:6, 2:7, 2:8] = 40
    np.savez(tmp_path / "two.npz", scan=scan, mask=scan > 0)
    np.savez(tmp_path / "odd.npz", first=scan, second=scan)
    spacing = (2.0, 1.0, 1.0)
    assert read_volume(tmp_path / "two.npz", spacing).shape == (10, 9, 8)  # "scan" is the CT, "mask" is not
    assert read_volume(tmp_path / "odd.npz", spacing, array_key="second").array.max() == 40
    with pytest.raises(VolumeError, match=r"holds arrays \['first', 'second'\].*data.array_key"):
        read_volume(tmp_path / "odd.npz", spacing)
    with pytest.raises(VolumeError, match=r"no array 'ct'.*\['scan', 'mask'\]"):
        read_volume(tmp_path / "two.npz", spacing, array_key="ct")
    mask = read_mask(tmp_path / "two.npz", spacing)
    assert mask.array.sum() == 4 * 5 * 6
    np.savez(tmp_path / "empty.npz", scan=scan, mask=np.zeros_like(scan, dtype=bool))
    empty = read_mask(tmp_path / "empty.npz", spacing)  # a failed segmentation: read, and counted as no mask
    assert empty.shape == (10, 9, 8) and is_empty(empty) and not is_empty(mask) and is_empty(None)


def test_mask_on_another_grid_is_resampled_through_world_coordinates(tmp_path):
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    affine[:3, 3] = [30.0, 20.0, -10.0]
    ct = Volume(np.zeros((40, 30, 20), np.float32), affine)
    fine = np.zeros(ct.shape, bool)
    fine[10:20, 6:16, 4:10] = True  # whole 2 x 2 x 1 blocks of the coarse grid below
    coarse_affine = affine @ np.diag([2.0, 2.0, 1.0, 1.0])
    coarse_affine[:3, 3] = affine[:3, :3] @ [0.5, 0.5, 0.0] + affine[:3, 3]  # the centres of 2 x 2 blocks
    nib.save(nib.Nifti1Image(fine.reshape(20, 2, 15, 2, 20).any(axis=(1, 3)).astype(np.uint8), coarse_affine), tmp_path / "m.nii.gz")
    on_grid = mask_on_grid(read_mask(tmp_path / "m.nii.gz"), ct)
    assert on_grid.shape == ct.shape
    np.testing.assert_array_equal(on_grid, fine)
    far = coarse_affine.copy()
    far[:3, 3] += 500.0
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), far), tmp_path / "far.nii.gz")
    with pytest.raises(VolumeError, match="does not overlap"):
        mask_on_grid(read_mask(tmp_path / "far.nii.gz"), ct)


def write_seg(series: Path, region_of, out: Path) -> None:
    """A binary DICOM SEG (highdicom) of the real series ``series``: ``region_of(slices)`` gives the mask
    (frames, rows, columns) in the order of the given slice datasets."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    slices = [pydicom.dcmread(f) for f in sorted(series.iterdir())]
    for ds in slices:  # this anonymised series left SOPClassUID blank; its file meta still says CT Image Storage
        ds.SOPClassUID = ds.SOPClassUID or ds.file_meta.MediaStorageSOPClassUID
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="region", segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=slices, pixel_array=region_of(slices), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="ctsurv", manufacturer_model_name="test", software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(out)


def test_dicom_seg_is_read_on_its_ct_grid(realdata, tmp_path):
    series = realdata / "chest_ct_dicom_series"
    ct = read_volume(series)
    region = ball(ct, (0.3, 0.6, 0.5), radius_mm=20.0)  # off centre in every axis

    def region_of(slices):  # the ball, frame by frame: each slice's own position says which CT plane it is
        index = np.stack(np.meshgrid(*(np.arange(n) for n in ct.shape), indexing="ij"), -1).reshape(-1, 3)
        world = index @ ct.affine[:3, :3].T + ct.affine[:3, 3]  # RAS
        frames = []
        for ds in slices:
            position = np.asarray(ds.ImagePositionPatient, float) * [-1, -1, 1]  # LPS -> RAS
            on_plane = np.abs(world - position) @ np.abs(np.cross(*np.reshape(ds.ImageOrientationPatient, (2, 3)))) < 0.5
            plane = region.reshape(-1)[on_plane].reshape(int(ds.Columns), int(ds.Rows)).T  # (rows, columns)
            frames.append(plane)
        return np.stack(frames).astype(np.uint8)

    write_seg(series, region_of, tmp_path / "seg.dcm")
    mask = read_mask(tmp_path / "seg.dcm")
    on_grid = mask_on_grid(mask, ct)
    assert on_grid.sum() == region.sum() > 0
    np.testing.assert_array_equal(on_grid, region)
    assert dice(torch.from_numpy(on_grid), torch.from_numpy(np.flip(region, 0).copy())) < 0.3  # a missed LPS flip shows


def test_a_broken_dicom_seg_names_the_file(tmp_path):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta, ds.Modality = meta, "SEG"
    ds.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    with pytest.raises(VolumeError, match=r"seg.dcm cannot be read as a 3D DICOM SEG .*NIfTI"):
        read_mask(tmp_path / "seg.dcm")


def small_cohort(tmp_path, with_column: bool) -> DataConfig:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        scan = rng.integers(-1000, 200, size=(12, 16, 16)).astype(np.int16)
        region = np.zeros(scan.shape, bool)
        region[4:8, 5 + i : 10 + i, 6:11] = True
        if i == 1 and not with_column:
            region[:] = False  # an empty segmentation in the .npz: the study reads as one without a mask
        np.savez(tmp_path / f"p{i}.npz", scan=scan, mask=region)
        rows.append({"id": f"p{i}", "volume": f"p{i}.npz", "spacing_z": 2.0, "spacing_y": 1.0, "spacing_x": 1.0})
        if with_column:
            ras = np.diag([1.0, 1.0, 2.0, 1.0])
            ras[:2, 3] = [-15.0, -15.0]  # the .npz's voxel (15, 15, 0) (LPS index axes, origin 0) is this one's (0, 0, 0)
            nib.save(nib.Nifti1Image(region.transpose(2, 1, 0)[::-1, ::-1].astype(np.uint8), ras),
                     tmp_path / f"m{i}.nii.gz")  # the same region as a RAS NIfTI of the same place
            rows[-1]["mask"] = f"m{i}.nii.gz" if i < 2 else None  # the third study has no mask
    pd.DataFrame(rows).to_csv(tmp_path / "cohort.csv", index=False)
    return DataConfig(target_spacing_zyx=(2.0, 2.0, 2.0), target_shape_zyx=(12, 8, 8), cache_dir=str(tmp_path / "cache"), workers=1)


@pytest.mark.parametrize("with_column", [False, True])
def test_volume_store_carries_masks_and_caches_them(tmp_path, with_column):
    cfg = small_cohort(tmp_path, with_column)
    cohort = load_cohort(tmp_path / "cohort.csv", cfg)
    files = [True, True, not with_column]  # an .npz brings its own mask unless the column says otherwise
    assert [cohort.mask_path(i) is not None for i in range(3)] == files
    expected_masks = [True, with_column, not with_column]
    pre = Preprocessor(cfg)
    with volume_store(cohort, cfg) as store:
        assert store.has_masks
        for i in range(3):
            image, mask = pre.load_with_mask(cohort.volume_paths[i], cohort.spacing_zyx(i), None, cohort.mask_path(i))
            torch.testing.assert_close(store[i], image.half())
            if expected_masks[i]:
                assert torch.equal(store.mask(i), mask) and 0 < int(mask.sum()) < mask.numel()
            else:
                assert store.mask(i) is None and (mask is None or not mask.any())
        sub = store[[2, 0]]
        assert (sub.mask(1) is None) == (store.mask(0) is None)
    masks = sorted((tmp_path / "cache").glob("*.mask.npy"))
    assert len(masks) == sum(files)
    stamp = [m.stat().st_mtime_ns for m in masks]
    with volume_store(cohort, cfg):  # a second pass finds every entry complete and writes nothing
        pass
    assert [m.stat().st_mtime_ns for m in masks] == stamp
    masks[0].unlink()  # a lost mask entry is recomputed, not skipped
    with volume_store(cohort, cfg) as store:
        assert all((store.mask(i) is not None) == expected_masks[i] for i in range(3))


def test_a_missing_mask_file_is_named_at_load(tmp_path):
    cfg = small_cohort(tmp_path, with_column=True)
    (tmp_path / "m1.nii.gz").unlink()
    with pytest.raises(CohortError, match=r"masks do not exist for .*m1.nii.gz.*column 'mask'"):
        load_cohort(tmp_path / "cohort.csv", cfg)


def test_region_pool_weights_cells_by_their_share_of_the_region():
    from ctsurv.features.extract import region_pool, region_weights

    mask = torch.zeros(8, 8, 4, dtype=torch.bool)
    mask[0:4, 0:4, 0:2] = True  # exactly cell (0, 0, 0) of a 2 x 2 x 2 grid
    weights = region_weights(mask, (1.0, 1.0, 1.0), (2, 2, 2), ring_mm=1.0)  # face neighbours only
    assert weights.shape == (2, 2, 2, 2)
    assert weights[0, 0, 0, 0] == 1.0 and weights[0].sum() == 1.0  # inside: all of that cell, nothing else
    assert weights[1, 0, 0, 0] == 0.0 and weights[1, 1, 1, 1] == 0.0  # the ring: neighbours only, never the far corner
    assert weights[1, 1, 0, 0] > 0 and weights[1, 0, 0, 1] > 0
    grid = torch.arange(16.0).reshape(2, 2, 2, 2)  # Dv = 2
    pooled = region_pool(grid, weights)
    torch.testing.assert_close(pooled[0], grid[:, 0, 0, 0])
    ring = weights[1].flatten() / weights[1].sum()
    torch.testing.assert_close(pooled[1], grid.flatten(1) @ ring)
    everything = region_pool(grid, torch.zeros(1, 2, 2, 2))  # a region that covers nothing: the plain mean
    torch.testing.assert_close(everything[0], grid.flatten(1).mean(1))


def test_encoder_region_features_pool_inside_the_mask(tmp_path):
    from ctsurv.training.survival import encoder_region_features

    class Identity(torch.nn.Module):  # the volume itself as a 1-channel "grid" at full resolution
        def features(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1]

    cfg = small_cohort(tmp_path, with_column=True)
    cohort = load_cohort(tmp_path / "cohort.csv", cfg)
    with volume_store(cohort, cfg) as store:
        whole, inside, around = encoder_region_features(Identity(), store, (2.0, 2.0, 2.0), batch_size=2)
        for i in range(3):
            image, mask = store[i][0].float(), store.mask(i)
            assert whole[i, 0] == pytest.approx(float(image.mean()), rel=1e-5)
            if mask is None:  # no mask: the whole-volume pool stands in
                assert inside[i, 0] == around[i, 0] == whole[i, 0]
            else:
                assert inside[i, 0] == pytest.approx(float(image[mask].mean()), rel=1e-5)
                assert around[i, 0] != pytest.approx(inside[i, 0])


def test_mask_crop_keys_the_volume_cache_by_its_mask(tmp_path):
    cfg = small_cohort(tmp_path, with_column=True)
    cohort = load_cohort(tmp_path / "cohort.csv", cfg)
    path, spacing = cohort.volume_paths[0], cohort.spacing_zyx(0)
    m0, m1 = tmp_path / "m0.nii.gz", tmp_path / "m1.nii.gz"
    centre = Preprocessor(cfg)
    assert centre.cache_file(path, spacing, None, m0) == centre.cache_file(path, spacing, None, m1)
    by_mask = Preprocessor(dataclasses.replace(cfg, crop="mask"))
    assert by_mask.cache_file(path, spacing, None, m0) != by_mask.cache_file(path, spacing, None, m1)
    with volume_store(cohort, dataclasses.replace(cfg, crop="mask")) as store:
        for i in range(2):  # each field centred on its own region
            where = np.argwhere(store.mask(i).numpy())
            assert np.abs((where.min(0) + where.max(0)) / 2 - (np.asarray(store.shape[2:]) - 1) / 2).max() <= 1.0

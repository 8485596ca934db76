"""ctsurv.io.volumes: real CT files read as the MANIFEST says, in the right orientation; bad files refused clearly."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ctsurv.errors import VolumeError
from ctsurv.io.volumes import HUWarning, Volume, read_volume, to_hu

# file -> (shape as stored (I, J, K), spacing mm, orientation, HU min, HU max), from realdata/MANIFEST.md.
# The DICOM series is 20 x 512 x 512 (Z, Y, X) in the MANIFEST; a Volume indexes it (X, Y, Z).
MANIFEST = {
    "chest_cta_pulmonary_crop.nii.gz": ((122, 102, 112), (1.5, 1.5, 1.5), "LPS", -1064, 3343),
    "chest_cta_aorta_crop.nii.gz": ((120, 126, 164), (1.5, 1.5, 1.5), "LPS", -1078, 3343),
    "abdomen_ct_small.nii.gz": ((122, 101, 30), (3.0, 3.0, 3.0), "RAS", -1100, 1207),
    "chest_ct_dicom_series": ((512, 512, 20), (0.9765625, 0.9765625, 2.0), "LPS", -1024, 1839),
}


@pytest.fixture(scope="module")
def dicom_volume(realdata: Path) -> Volume:
    return read_volume(realdata / "chest_ct_dicom_series")


def world_to_index(volume: Volume, xyz_mm: tuple[float, float, float]) -> tuple[int, int, int]:
    ijk = np.linalg.solve(volume.affine, [*xyz_mm, 1.0])[:3]
    assert np.all(ijk > -0.5) and np.all(ijk < np.asarray(volume.shape) - 0.5), f"{xyz_mm} mm is outside the volume"
    return tuple(int(v) for v in np.round(ijk))  # type: ignore[return-value]


def patch_mean(volume: Volume, ijk: tuple[int, int, int], r: int = 1) -> float:
    i, j, k = ijk
    assert min(ijk) >= r and all(n - r > v for n, v in zip(volume.shape, ijk)), f"patch at {ijk} leaves the volume"
    return float(volume.array[i - r : i + r + 1, j - r : j + r + 1, k - r : k + r + 1].mean())


# --------------------------------------------------------------------------- real files


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_real_files_match_manifest(realdata: Path, name: str) -> None:
    shape, spacing, orientation, lo, hi = MANIFEST[name]
    volume = read_volume(realdata / name)
    assert volume.shape == shape
    np.testing.assert_allclose(volume.spacing, spacing, atol=1e-3)
    assert volume.orientation == orientation
    assert volume.array.dtype == np.float32
    assert (volume.array.min(), volume.array.max()) == (lo, hi)
    ras = volume.as_ras()
    assert ras.orientation == "RAS"
    np.testing.assert_allclose(sorted(ras.spacing), sorted(spacing), atol=1e-3)


def test_as_ras_is_the_flip_of_the_lps_array_and_matches_nibabel(realdata: Path) -> None:
    path = realdata / "chest_cta_pulmonary_crop.nii.gz"
    volume = read_volume(path)
    ras = volume.as_ras()
    np.testing.assert_array_equal(ras.array, volume.array[::-1, ::-1, :])  # LPS -> RAS: flip i and j
    canonical = nib.as_closest_canonical(nib.load(path))
    np.testing.assert_array_equal(ras.array, canonical.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(ras.affine, canonical.affine, atol=1e-4)
    # every voxel keeps its world position
    corner = volume.affine @ [volume.shape[0] - 1, volume.shape[1] - 1, 0, 1]
    np.testing.assert_allclose(ras.affine @ [0, 0, 0, 1], corner, atol=1e-4)


@pytest.mark.parametrize("name", ["chest_cta_pulmonary_crop.nii.gz", "chest_cta_aorta_crop.nii.gz"])
def test_descending_aorta_lies_left_of_the_spine(realdata: Path, name: str) -> None:
    """Both crops come from one contrast CT. At z = 690 mm (RAS world) the descending aorta,
    bright with contrast, sits posterior and left of the spinal canal (x = +3 mm; checked on
    the montage of ``save_montage``); mirrored across the canal there is right lung."""
    ras = read_volume(realdata / name).as_ras()
    aorta = world_to_index(ras, (-27.0, 111.0, 690.0))
    mirror = world_to_index(ras, (33.0, 111.0, 690.0))  # reflected about the canal
    assert 350 < patch_mean(ras, aorta) < 600  # contrast-enhanced blood
    assert patch_mean(ras, mirror) < -600  # lung
    assert aorta[0] < mirror[0]  # RAS array: x index grows towards the patient's right
    if name == "chest_cta_aorta_crop.nii.gz":  # the pulmonary crop ends just in front of the spine
        canal = world_to_index(ras, (3.0, 88.0, 690.0))
        assert -30 < patch_mean(ras, canal) < 80  # spinal fluid
        assert aorta[0] < canal[0] < mirror[0]


def test_dicom_stomach_gas_lies_on_the_patients_left(dicom_volume: Volume) -> None:
    """Upper-abdomen slices: gas inside the body is in the stomach and splenic flexure, on the
    patient's left (liver on the right); seen on the montage."""
    ras = dicom_volume.as_ras().array  # (X, Y, Z)
    body = np.stack([ndimage.binary_fill_holes(ras[:, :, k] > -500) for k in range(ras.shape[2])], axis=-1)
    labels, n = ndimage.label(body)
    body = labels == 1 + np.argmax(ndimage.sum(body, labels, range(1, n + 1)))  # drop the table
    x = np.arange(ras.shape[0])[:, None, None]
    centre = (x * body).sum() / body.sum()
    gas = (ras < -500) & body
    assert gas.sum() > 5000
    assert (gas & (x < centre)).sum() / gas.sum() > 0.9  # left = low x in RAS


def test_hounsfield_units_of_lung_soft_tissue_and_air(realdata: Path) -> None:
    for name in ("chest_cta_pulmonary_crop.nii.gz", "chest_cta_aorta_crop.nii.gz"):
        a = read_volume(realdata / name).array
        assert -900 < np.median(a[(a >= -1000) & (a <= -400)]) < -700  # lung parenchyma
        assert 20 < np.median(a[(a >= -100) & (a <= 150)]) < 70  # soft tissue
        assert np.count_nonzero(a < -950) > 1000  # air in the airways


def test_dicom_series_agrees_with_pydicom_and_roundtrips_through_nifti(
    realdata: Path, dicom_volume: Volume, tmp_path: Path
) -> None:
    # the GDCM-decoded slice equals pydicom's pylibjpeg decoding of the same JPEG 2000 file
    file = sorted((realdata / "chest_ct_dicom_series").iterdir())[5]
    ds = pydicom.dcmread(file)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)  # (rows, cols)
    lps_position = [float(v) for v in ds.ImagePositionPatient]
    i, j, k = world_to_index(dicom_volume, (-lps_position[0], -lps_position[1], lps_position[2]))
    assert (i, j) == (0, 0)  # the slice's first pixel is the volume's first voxel of slice k
    np.testing.assert_array_equal(dicom_volume.array[:, :, k], hu.T)  # DICOM columns run along i, rows along j
    # a NIfTI written from the DICOM volume reads back identical
    out = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(dicom_volume.array, dicom_volume.affine), out)
    back = read_volume(out)
    np.testing.assert_array_equal(back.array, dicom_volume.array)
    np.testing.assert_allclose(back.affine, dicom_volume.affine, atol=1e-4)


def test_single_dicom_slice_is_refused(realdata: Path) -> None:
    with pytest.raises(VolumeError, match="ct_single_slice.dcm is a single 2D DICOM slice"):
        read_volume(realdata / "ct_single_slice.dcm")
    one = min((realdata / "chest_ct_dicom_series").iterdir())  # no extension: found by its DICM preamble
    with pytest.raises(VolumeError, match="single 2D DICOM slice.*pass the folder"):
        read_volume(one)


# --------------------------------------------------------------------------- DICOM folders


def copy_slices(realdata: Path, folder: Path, indices: list[int]) -> list[Path]:
    folder.mkdir()
    files = sorted((realdata / "chest_ct_dicom_series").iterdir())
    return [Path(shutil.copy(files[i], folder / files[i].name)) for i in indices]


def test_folder_with_two_series_lists_them(realdata: Path, tmp_path: Path) -> None:
    copied = copy_slices(realdata, tmp_path / "mixed", [0, 1, 2, 3, 4])
    for n, file in enumerate(copied):
        ds = pydicom.dcmread(file)
        ds.SeriesInstanceUID = "1.2.826.0.1.1" if n < 2 else "1.2.826.0.1.2"  # pixel data stays JPEG 2000
        ds.save_as(file)
    with pytest.raises(VolumeError, match="mixed mixes 2 DICOM series") as err:
        read_volume(tmp_path / "mixed")
    assert "1.2.826.0.1.1 (2 slices)" in str(err.value) and "1.2.826.0.1.2 (3 slices)" in str(err.value)


def test_series_with_a_missing_slice_is_refused(realdata: Path, tmp_path: Path) -> None:
    copy_slices(realdata, tmp_path / "gap", [0, 1, 2, 4, 5])
    with pytest.raises(VolumeError, match="gap is unevenly spaced.*2.00 to 4.00 mm"):
        read_volume(tmp_path / "gap")


def test_empty_and_non_dicom_folders_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeError, match="empty is empty"):
        read_volume(tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not an image\n")
    with pytest.raises(VolumeError, match="notes holds 1 files but no DICOM series"):
        read_volume(tmp_path / "notes")


# --------------------------------------------------------------------------- bad files


def nifti(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0])), path)
    return path


def test_truncated_gzip(realdata: Path, tmp_path: Path) -> None:
    data = (realdata / "abdomen_ct_small.nii.gz").read_bytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VolumeError, match="cut.nii.gz cannot be read as NIfTI.*truncated"):
        read_volume(path)


@pytest.mark.parametrize("name", ["noise.nii.gz", "noise.nii", "noise.nrrd", "noise.mha", "noise.npy"])
def test_non_image_files(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is a text file, not an image\n" * 10 if "nrrd" in name else np.random.bytes(2000))
    with pytest.raises(VolumeError, match=name.replace(".", r"\.")):
        read_volume(path, spacing_zyx=(1.0, 1.0, 1.0))


def test_gzipped_text_named_nifti(tmp_path: Path) -> None:
    path = tmp_path / "text.nii.gz"
    path.write_bytes(gzip.compress(b"hello\n" * 100))
    with pytest.raises(VolumeError, match="text.nii.gz cannot be read as NIfTI"):
        read_volume(path)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((32, 32), "2D image"), ((32, 32, 1), "2D image"), ((16, 16, 8, 3), "4D image.*3 volumes")],
)
def test_wrong_dimensions(tmp_path: Path, shape: tuple[int, ...], message: str) -> None:
    path = nifti(tmp_path / "dims.nii.gz", np.full(shape, -1000, dtype=np.int16))
    with pytest.raises(VolumeError, match=f"dims.nii.gz is a {message}"):
        read_volume(path)


def test_trailing_singleton_fourth_axis_is_squeezed(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(-1000, 1000, (8, 9, 10, 1)).astype(np.int16)
    volume = read_volume(nifti(tmp_path / "t1.nii.gz", array))
    assert volume.shape == (8, 9, 10)
    np.testing.assert_array_equal(volume.array, array[..., 0])


def test_nan_voxels(tmp_path: Path) -> None:
    array = np.full((8, 8, 8), -1000.0, dtype=np.float32)
    array[0, 0, :3] = np.nan
    array[1, 1, 1] = np.inf
    with pytest.raises(VolumeError, match="nan.nii.gz has 4 NaN or infinite voxels out of 512"):
        read_volume(nifti(tmp_path / "nan.nii.gz", array))


def test_nifti_scaling_is_applied_and_odd_values_warn(tmp_path: Path) -> None:
    stored = np.arange(-1000, 1000, 2, dtype=np.int16)[: 8 * 8 * 8].reshape(8, 8, 8)
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(2.0, -24.0)
    nib.save(image, tmp_path / "scaled.nii.gz")
    np.testing.assert_array_equal(read_volume(tmp_path / "scaled.nii.gz").array, stored * 2.0 - 24.0)
    with pytest.warns(HUWarning, match="normalised"):
        read_volume(nifti(tmp_path / "unit.nii.gz", np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)))


def test_missing_path_unsupported_format_and_npy_without_spacing(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="nowhere.nii.gz does not exist"):
        read_volume(tmp_path / "nowhere.nii.gz")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    with pytest.raises(VolumeError, match="scan.png has an unsupported format; supported: NIfTI"):
        read_volume(tmp_path / "scan.png")
    np.save(tmp_path / "scan.npy", np.zeros((4, 5, 6), dtype=np.int16))
    with pytest.raises(VolumeError, match="scan.npy is a NumPy array.*data.array_spacing_zyx"):
        read_volume(tmp_path / "scan.npy")


# --------------------------------------------------------------------------- round trips


def test_numpy_arrays_follow_the_itk_convention(tmp_path: Path) -> None:
    """(Z, Y, X) arrays read as sitk.GetArrayFromImage of an image with identity (LPS) direction."""
    zyx = np.random.default_rng(0).integers(-1000, 1000, (5, 6, 7)).astype(np.int16)
    spacing_zyx = (2.5, 0.9, 0.8)
    np.save(tmp_path / "a.npy", zyx)
    np.savez_compressed(tmp_path / "b.npz", volume=zyx, extra=np.zeros(3))
    np.savez(tmp_path / "c.npz", zyx)
    image = sitk.GetImageFromArray(zyx)
    image.SetSpacing(spacing_zyx[::-1])
    sitk.WriteImage(image, str(tmp_path / "d.mha"))
    reference = read_volume(tmp_path / "d.mha")
    for name in ("a.npy", "b.npz", "c.npz"):
        volume = read_volume(tmp_path / name, spacing_zyx=spacing_zyx)
        assert volume.shape == (7, 6, 5) and volume.orientation == "LPS"
        np.testing.assert_array_equal(volume.array, zyx.transpose(2, 1, 0))
        np.testing.assert_allclose(volume.affine, np.diag([-0.8, -0.9, 2.5, 1.0]))
        np.testing.assert_array_equal(volume.array, reference.array)
        np.testing.assert_allclose(volume.affine, reference.affine)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii.gz"])
def test_itk_geometry_becomes_a_ras_affine(tmp_path: Path, suffix: str) -> None:
    """World positions from our affine equal ITK's own index->LPS mapping with x and y negated."""
    zyx = np.random.default_rng(1).integers(-1000, 1000, (4, 5, 6)).astype(np.int16)
    image = sitk.GetImageFromArray(zyx)
    image.SetSpacing((0.7, 0.8, 3.0))
    image.SetOrigin((-120.0, 80.0, -300.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))  # index i runs anterior, j runs left (LPS world)
    path = tmp_path / f"img{suffix}"
    sitk.WriteImage(image, str(path))
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, zyx.transpose(2, 1, 0))
    for index in [(0, 0, 0), (5, 0, 0), (0, 4, 0), (2, 3, 1), (5, 4, 3)]:
        lps = np.asarray(image.TransformIndexToPhysicalPoint(index))
        ras = volume.affine @ [*index, 1.0]
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)
    assert volume.orientation == "ALS"


def test_multiframe_3d_dicom_file_is_accepted(tmp_path: Path) -> None:
    zyx = np.random.default_rng(2).integers(0, 2000, (5, 20, 30)).astype(np.uint16)
    image = sitk.GetImageFromArray(zyx)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((10.0, 20.0, 30.0))
    sitk.WriteImage(image, str(tmp_path / "multi.dcm"))
    with pytest.warns(HUWarning, match="no voxel below 0 HU"):
        volume = read_volume(tmp_path / "multi.dcm")
    assert volume.shape == (30, 20, 5)
    np.testing.assert_allclose(volume.spacing, (0.8, 0.9, 2.5), atol=1e-4)
    np.testing.assert_allclose(volume.affine[:3, 3], (-10.0, -20.0, 30.0), atol=1e-4)
    np.testing.assert_array_equal(volume.array, zyx.transpose(2, 1, 0))


def test_to_hu_rescales_stored_values_and_leaves_hu_alone() -> None:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 1500, size=(20, 20, 10)).astype(np.float32)
    hu[:, :5] = -1000.0  # air, as every chest CT has
    stored = (hu + 1024.0) / 2.0  # a DICOM export with slope 2, intercept -1024
    np.testing.assert_allclose(to_hu(stored, 2.0, -1024.0), hu, atol=1e-3)
    assert to_hu(hu, 2.0, -1024.0) is hu  # holds HU already: a second rescale would shift it by -1024

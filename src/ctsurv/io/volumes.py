"""Read a CT volume from any common format into one type: a float32 HU array plus its affine.

Formats (``read_volume`` picks the reader from what the path is):

* NIfTI ``.nii`` / ``.nii.gz`` (nibabel; ``scl_slope``/``scl_inter`` applied, sform/qform affine);
* a folder holding one DICOM series (SimpleITK/GDCM, which decodes JPEG 2000 natively;
  RescaleSlope/Intercept applied), or a multi-frame 3D DICOM file;
* NRRD ``.nrrd``/``.nhdr`` and MetaImage ``.mha``/``.mhd`` (SimpleITK);
* NumPy ``.npy``/``.npz`` (an ``.npz``'s array ``array_key``, or its only array, or the first of
  :data:`VOLUME_KEYS` it holds: ``scan`` beside ``mask`` is read as the volume), which carry no geometry: HU ordered (Z, Y, X) with index axes growing towards (superior, posterior, left),
  as ``sitk.GetArrayFromImage`` or stacked axial DICOM slices give them, so that
  ``plt.imshow(arr[z])`` shows the usual radiological view. The spacing comes from the
  ``spacing_zyx`` argument (the cohort table or ``data.array_spacing_zyx``); origin is 0.

Everything is converted to the nibabel convention: ``array[i, j, k]`` in the file's own voxel
order, and ``affine`` (4, 4) mapping (i, j, k, 1) to RAS+ world millimetres (x grows to the
patient's Right, y to Anterior, z to Superior). ITK and DICOM use LPS+ world coordinates, so
their geometry is flipped in x and y on the way in. Reorientation is a separate, explicit
step (:meth:`Volume.as_ras`) so that "as stored" stays inspectable.

Every problem with a file raises :class:`~ctsurv.errors.VolumeError` naming the file, the
problem and the fix. Values that are finite but do not look like Hounsfield units (for
example a volume already normalised to [0, 1]) only raise :class:`HUWarning`: such files
exist in the wild and may be intended, but silently windowing them as HU would give blank
images.
"""

from __future__ import annotations

import contextlib
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from nibabel.orientations import (
    aff2axcodes,
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)
from scipy import ndimage

from ctsurv.errors import VolumeError

SUPPORTED_FORMATS = (
    "NIfTI (.nii, .nii.gz), a folder holding one DICOM series, a multi-frame 3D DICOM file (.dcm), "
    "NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), NumPy (.npy, .npz: HU ordered (Z, Y, X), spacing from the cohort table)"
)

VOLUME_KEYS = ("volume", "scan", "image", "ct", "arr_0")  # names an .npz may give its CT, in order of preference
MASK_KEYS = ("mask", "seg", "segmentation", "label", "labels")  # and its region mask
# LPS+ (ITK, DICOM) world coordinates -> RAS+ (nibabel, MONAI): negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class HUWarning(UserWarning):
    """The voxel values are finite but do not look like Hounsfield units."""


@dataclass(frozen=True)
class Volume:
    """A 3D CT volume: HU values, their geometry, and where they came from.

    ``array`` is float32 HU indexed (i, j, k) in the file's voxel order (see ``orientation``);
    ``affine`` maps voxel indices to RAS+ world mm, as in nibabel. Arrays of another dtype are
    converted to float32 on construction.
    """

    array: np.ndarray  # (I, J, K) float32 HU
    affine: np.ndarray  # (4, 4) voxel -> RAS+ mm
    path: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "array", np.asarray(self.array, dtype=np.float32))
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64))
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3D (I, J, K), got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume.affine must be (4, 4), got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (lengths of the affine's columns)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes: the world direction each array axis grows towards, e.g. "LPS" or "RAS"."""
        return "".join(aff2axcodes(self.affine))

    def as_ras(self) -> Volume:
        """The same volume with array axes growing towards (R, A, S): flips and transposes only.

        Voxel values are not resampled; the affine is updated so that every voxel keeps its
        world position. Oblique volumes are brought to the closest RAS axes.
        """
        start = io_orientation(self.affine)  # (3, 2): for each array axis, its world axis and sign
        transform = ornt_transform(start, axcodes2ornt(("R", "A", "S")))
        array = apply_orientation(self.array, transform)  # (X, Y, Z), a view where possible
        affine = self.affine @ inv_ornt_aff(transform, self.array.shape)
        return Volume(array, affine, self.path)


def read_volume(
    path: str | Path, spacing_zyx: tuple[float, float, float] | None = None, rescale: tuple[float, float] | None = None,
    array_key: str | None = None,
) -> Volume:
    """Read one CT volume, validated, in HU (see the module docstring for formats and conventions).

    ``spacing_zyx`` (mm, slice axis first) is used only for NumPy arrays, which carry no spacing;
    the cohort table's spacing columns or ``data.array_spacing_zyx`` supply it. ``rescale`` (slope,
    intercept), from the cohort table's rescale columns (CT-RATE's metadata), turns stored values into
    HU (:func:`to_hu`). ``array_key`` names the array of an ``.npz`` that holds several (``data.array_key``).
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path} does not exist; check the path in the cohort table or on the command line")
    array, affine = _read_arrays(path, spacing_zyx, array_key)
    if rescale is not None:
        array = to_hu(array, *rescale)
    return _validated(array, affine, path)


def to_hu(array: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """``array * slope + intercept``, unless the array holds HU already.

    A table's rescale columns say how the stored values of a DICOM export map to HU; some releases of a
    dataset ship the same volumes already converted (CT-RATE's metadata lists slope 1, intercept -1024 for
    volumes whose published scripts disagree on this). Every chest CT holds air (about -1000 HU), so an array
    whose 1st percentile is below -500 is taken as HU already and left as it is; applying the intercept
    again would shift it by -1024 HU and window every tissue wrongly.
    """
    sample = np.asarray(array).ravel()[:: max(1, array.size // 200_000)]
    if float(np.percentile(sample, 1)) < -500:
        return array
    return np.asarray(array, dtype=np.float32) * np.float32(slope) + np.float32(intercept)


def read_mask(path: str | Path, spacing_zyx: tuple[float, float, float] | None = None, array_key: str | None = None) -> Volume:
    """Read a region mask (a tumour, an organ) saved in any format :func:`read_volume` reads, as 0/1 float32.

    The region is every voxel whose value is at least 0.5: a boolean or 0/1 mask, every label of a label map
    together, a probability map cut at 0.5. NumPy masks follow the volumes' (Z, Y, X) convention and take the
    same ``spacing_zyx``; an ``.npz`` gives its array ``array_key`` (``data.mask_key``), else its only array,
    else the first of :data:`MASK_KEYS`, so one ``.npz`` may hold both the scan and its mask. A DICOM SEG object
    (binary or fractional, every segment together) is read with highdicom on the grid its frames span. A mask
    without a single voxel in its region (a failed or missing segmentation, as planning exports hold) is read as
    it is: an empty region, which the features that use masks treat as a study without one (:func:`is_empty`).
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"mask {path} does not exist; check the mask path in the cohort table")
    if path.is_file() and _dicom_modality(path) == "SEG":
        array, affine = _read_dicom_seg(path)
    else:
        array, affine = _read_arrays(path, spacing_zyx, array_key, MASK_KEYS, "mask")  # the CT's readers and errors
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise VolumeError(f"mask {path} has shape {tuple(array.shape)}; a mask is a 3D array like its CT")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise VolumeError(f"mask {path} has an invalid geometry (voxel-to-world matrix {affine[:3, :3].tolist()})")
    region = np.nan_to_num(np.asarray(array, dtype=np.float32)) >= 0.5
    return Volume(region.astype(np.float32), affine, path)


def is_empty(mask: Volume | np.ndarray | None) -> bool:
    """Whether a region mask is absent or marks no voxel: the study then counts as one without a mask."""
    if mask is None:
        return True
    array = mask.array if isinstance(mask, Volume) else mask
    return not bool((array >= 0.5).any())


def mask_on_grid(mask: Volume, volume: Volume) -> np.ndarray:
    """``mask`` on ``volume``'s voxel grid, bool (I, J, K): as it is when both share a grid, else resampled
    by nearest neighbour through world coordinates (a mask exported at another resolution or extent)."""
    if mask.shape == volume.shape and np.allclose(mask.affine, volume.affine, atol=1e-3):
        return mask.array >= 0.5
    to_mask = np.linalg.inv(mask.affine) @ volume.affine  # volume voxel -> mask voxel
    out = ndimage.affine_transform(
        mask.array, to_mask[:3, :3], offset=to_mask[:3, 3], output_shape=volume.shape, order=0, cval=0.0
    )
    if not (out >= 0.5).any() and not is_empty(mask):
        raise VolumeError(
            f"mask {mask.path} does not overlap its CT {volume.path} in world coordinates (mask grid "
            f"{mask.shape} at {np.round(mask.affine[:3, 3], 1).tolist()} mm, CT grid {volume.shape} at "
            f"{np.round(volume.affine[:3, 3], 1).tolist()} mm); check that the mask belongs to this scan"
        )
    return out >= 0.5


def _read_dicom_seg(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM SEG object (binary or fractional; every segment together) as (array, voxel -> RAS affine), read by
    highdicom on the regular 3D grid its frames span."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(path)
        volume = seg.get_volume(rescale_fractional=True)
    except Exception as e:  # noqa: BLE001 - highdicom raises many kinds; the user needs the file and the reason
        raise VolumeError(
            f"{path} cannot be read as a 3D DICOM SEG ({type(e).__name__}: {e}); its frames must tile a regular 3D "
            "grid: export the segmentation as NIfTI instead (e.g. dcmqi's segimage2itkimage) and give that file"
        ) from None
    array = np.asarray(volume.array, dtype=np.float32)  # (slices, rows, columns[, segments])
    if array.ndim == 4:
        array = array.max(axis=3)  # the region is every segment together
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM's patient coordinates are LPS
    return array, lps_to_ras @ np.asarray(volume.affine, dtype=np.float64)


def _dicom_modality(path: Path) -> str | None:
    if not (path.name.lower().endswith((".dcm", ".dicom")) or _has_dicom_preamble(path)):
        return None
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality", ""))
    except Exception:  # noqa: BLE001 - not readable as DICOM: the image readers will say what is wrong
        return None


# --------------------------------------------------------------------------- readers


def _read_arrays(
    path: Path, spacing_zyx: tuple[float, float, float] | None, array_key: str | None,
    preferred: tuple[str, ...] = VOLUME_KEYS, what: str = "CT volume",
) -> tuple[np.ndarray, np.ndarray]:
    """(array, affine) of an existing path, by the reader its name or content calls for, not yet validated."""
    name = path.name.lower()
    if path.is_dir():
        return _read_dicom_folder(path)
    if name.endswith((".nii", ".nii.gz")):
        return _read_nifti(path)
    if name.endswith((".npy", ".npz")):
        return _read_numpy(path, spacing_zyx, array_key, preferred, what)
    if name.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
        return _read_itk(path)
    if name.endswith((".dcm", ".dicom")) or _has_dicom_preamble(path):
        return _read_dicom_file(path)
    raise VolumeError(f"{path} has an unsupported format; supported: {SUPPORTED_FORMATS}")


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        image = nib.load(path)
        array = image.get_fdata(dtype=np.float32)  # applies scl_slope / scl_inter
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as e:
        raise VolumeError(
            f"{path} cannot be read as NIfTI ({type(e).__name__}: {e}); the file is truncated, corrupt or not "
            "NIfTI: copy or export it again"
        ) from None
    return array, np.asarray(image.affine, dtype=np.float64)  # sform if set, else qform


def _read_itk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with _quiet_itk():
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[-1].removeprefix("sitk::ERROR: ")
            raise VolumeError(
                f"{path} cannot be read as an image ({reason}); the file is corrupt or not in the format its "
                f"extension says; supported: {SUPPORTED_FORMATS}"
            ) from None
    return _from_itk(image, path)


def _read_dicom_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A single DICOM file: a multi-frame 3D volume is accepted, a single slice is refused."""
    array, affine = _read_itk(path)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
        raise VolumeError(
            f"{path} is a single 2D DICOM slice, not a 3D volume; pass the folder of the whole series instead"
        )
    return array, affine


def _read_dicom_folder(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A folder with exactly one DICOM series, slices sorted by position along the slice normal."""
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    files = [p for p in entries if p.is_file()]
    if not files:
        subfolders = sorted(p.name for p in entries if p.is_dir())
        hint = f" (it has subfolders {subfolders[:5]}: pass one series folder)" if subfolders else ""
        raise VolumeError(f"folder {path} is empty{hint}; a folder volume must hold the DICOM files of one series")
    reader = sitk.ImageSeriesReader()
    with _quiet_itk():
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise VolumeError(
                f"folder {path} holds {len(files)} files but no DICOM series; pass a folder of DICOM slices "
                f"or a volume file ({SUPPORTED_FORMATS})"
            )
        if len(series) > 1:
            counts = ", ".join(
                f"{uid or '<empty SeriesInstanceUID>'} ({len(reader.GetGDCMSeriesFileNames(str(path), uid))} slices)"
                for uid in series
            )
            raise VolumeError(
                f"folder {path} mixes {len(series)} DICOM series: {counts}; move each series into its own folder "
                "and list the one you want"
            )
        names = reader.GetGDCMSeriesFileNames(str(path), series[0])  # sorted along the slice normal
        if len(names) < 2:
            raise VolumeError(f"folder {path} holds a single 2D DICOM slice, not a 3D volume; add the whole series")
        reader.SetFileNames(names)
        reader.MetaDataDictionaryArrayUpdateOn()  # keep per-slice tags to check the slice positions
        try:
            image = reader.Execute()
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[-1].removeprefix("sitk::ERROR: ")
            raise VolumeError(f"the DICOM series in {path} cannot be decoded ({reason})") from None
    _check_slice_positions(reader, image, path)
    return _from_itk(image, path)


def _check_slice_positions(reader: sitk.ImageSeriesReader, image: sitk.Image, path: Path) -> None:
    """Refuse series with missing or duplicated slices: ITK would silently stretch them."""
    normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]  # slice normal (LPS)
    positions = []
    for i in range(len(reader.GetFileNames())):
        if not reader.HasMetaDataKey(i, "0020|0032"):  # ImagePositionPatient
            return  # no geometry per slice to check (ITK fell back to defaults)
        positions.append(float(np.dot([float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")], normal)))
    gaps = np.abs(np.diff(positions))  # (S - 1,) mm between neighbouring slices
    median = float(np.median(gaps))
    if median <= 1e-3 or gaps.min() < 1e-3:
        raise VolumeError(
            f"the DICOM series in {path} has slices at the same position (two acquisitions or a duplicate export "
            "share one SeriesInstanceUID); keep one slice per position"
        )
    if np.abs(gaps - median).max() > 0.1 * median + 0.01:
        raise VolumeError(
            f"the DICOM series in {path} is unevenly spaced (gaps between slices from {gaps.min():.2f} to "
            f"{gaps.max():.2f} mm: missing slices?); export the complete series"
        )


def npz_keys(path: str | Path) -> list[str]:
    """The names of the arrays in an ``.npz`` file (read from its zip directory, no array is loaded)."""
    try:
        with np.load(path, allow_pickle=False) as loaded:
            return list(loaded.files)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise VolumeError(f"{path} cannot be read as a NumPy .npz archive ({type(e).__name__}: {e}); save it again") from None


def _npz_key(path: Path, keys: list[str], wanted: str | None, preferred: tuple[str, ...], what: str) -> str:
    """The array of an .npz to read: ``wanted`` if given, else the only one, else the first of ``preferred``."""
    if wanted is not None:
        if wanted not in keys:
            raise VolumeError(f"{path} has no array {wanted!r} (it holds {keys}); set the key of the {what} to one of these")
        return wanted
    if len(keys) == 1:
        return keys[0]
    key = next((k for k in preferred if k in keys), None)
    if key is None:
        raise VolumeError(
            f"{path} holds arrays {keys} and none is named {' / '.join(preferred)}; say which one is the {what} "
            f"(data.array_key for the CT, data.mask_key for a mask)"
        )
    return key


def _read_numpy(
    path: Path, spacing_zyx: tuple[float, float, float] | None, array_key: str | None = None,
    preferred: tuple[str, ...] = VOLUME_KEYS, what: str = "CT volume",
) -> tuple[np.ndarray, np.ndarray]:
    """A NumPy array of HU ordered (Z, Y, X), as ``sitk.GetArrayFromImage`` or stacked DICOM slices give.

    Convention (documented because the file cannot say): ``arr[z]`` is an axial slice displayed
    the usual radiological way by ``plt.imshow`` (row 0 anterior, column 0 the patient's right),
    and z grows towards the head, i.e. index axes (X, Y, Z) grow towards L, P, S -- the DICOM
    and SimpleITK default. The returned array is transposed to (X, Y, Z) with affine
    ``diag(-sx, -sy, sz)`` (RAS+ world, origin 0). Returns the raw (array, affine) pair.
    """
    if spacing_zyx is None:
        raise VolumeError(
            f"{path} is a NumPy array, which stores no voxel spacing; add spacing columns (spacing_z, spacing_y, "
            "spacing_x in mm) to the cohort table or set data.array_spacing_zyx in the config"
        )
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise VolumeError(f"spacing for {path} must be three positive numbers in mm (Z, Y, X), got {spacing_zyx}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                loaded = loaded[_npz_key(path, list(loaded.files), array_key, preferred, what)]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise VolumeError(f"{path} cannot be read as a NumPy array ({type(e).__name__}: {e}); save it again") from None
    numbers = np.issubdtype(loaded.dtype, np.integer) or np.issubdtype(loaded.dtype, np.floating)
    if not (numbers or (loaded.dtype == bool and what == "mask")):
        raise VolumeError(f"{path} holds {loaded.dtype} values; a {what} must be numbers" + (" in HU" if what != "mask" else ""))
    if loaded.ndim != 3:
        # 2D and 4D arrays get the same messages as other formats; keep the axes as they are.
        return loaded, np.eye(4)
    sz, sy, sx = spacing
    array = loaded.transpose(2, 1, 0)  # (Z, Y, X) -> (X, Y, Z)
    return array, np.diag([-sx, -sy, sz, 1.0])  # index axes grow towards L, P, S


def _from_itk(image: sitk.Image, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """ITK image -> (array (X, Y, Z[, T]) in ITK index order, RAS affine from ITK's LPS geometry)."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} values per voxel (colour or vector image); "
            "a CT volume has one HU value per voxel"
        )
    dim = image.GetDimension()
    array = sitk.GetArrayViewFromImage(image).astype(np.float32)  # (..., Z, Y, X): ITK order reversed
    array = array.transpose(tuple(range(dim))[::-1])  # (X, Y, Z[, T])
    if dim < 3:
        return array, np.eye(4)  # rejected as 2D by the validation
    direction = np.asarray(image.GetDirection()).reshape(dim, dim)[:3, :3]  # columns: index axes in LPS
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing()[:3])  # scale each column by its spacing
    lps[:3, 3] = image.GetOrigin()[:3]
    return array, LPS_TO_RAS @ lps


# --------------------------------------------------------------------------- validation


def _validated(array: np.ndarray, affine: np.ndarray, path: Path) -> Volume:
    """Check that (array, affine) is one finite 3D volume; squeeze a trailing singleton 4th axis."""
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim == 2 or (array.ndim == 3 and min(array.shape) == 1):
        raise VolumeError(f"{path} is a 2D image (shape {tuple(array.shape)}), not a 3D volume; pass the whole 3D scan")
    if array.ndim == 4:
        raise VolumeError(
            f"{path} is a 4D image (shape {tuple(array.shape)}: {array.shape[3]} volumes); a CT volume is 3D, "
            "save the one you want on its own"
        )
    if array.ndim != 3:
        raise VolumeError(f"{path} has {array.ndim} dimensions (shape {tuple(array.shape)}); a CT volume is 3D")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise VolumeError(
            f"{path} has an invalid geometry (voxel-to-world matrix {affine[:3, :3].tolist()}); fix the spacing "
            "and orientation in its header"
        )
    array = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise VolumeError(
            f"{path} has {bad} NaN or infinite voxels out of {array.size}; a CT volume must hold finite HU "
            "values everywhere: replace them (air is -1000 HU) and save the file again"
        )
    _warn_if_not_hu(array, path)
    return Volume(array, affine, path)


def _warn_if_not_hu(array: np.ndarray, path: Path) -> None:
    """Warn (do not fail) when finite values look unlike a CT in Hounsfield units."""
    lo, hi = float(array.min()), float(array.max())
    if lo >= -1.0 and hi <= 1.0:
        problem = "looks normalised already (values within [-1, 1])"
    elif hi < -500:
        problem = "has no voxel above -500 HU (no tissue at all)"
    elif lo >= 0:
        problem = "has no voxel below 0 HU (no air); raw DICOM values without the rescale intercept (-1024)?"
    else:
        return
    warnings.warn(
        f"{path} {problem}: values range {lo:g} to {hi:g}, while a CT in Hounsfield units spans about "
        "-1000 (air) to +1000 (bone); the HU window will map it to a nearly uniform image",
        HUWarning,
        stacklevel=4,  # point at the caller of read_volume
    )


def _has_dicom_preamble(path: Path) -> bool:
    """DICOM Part 10 files carry b"DICM" after a 128-byte preamble, whatever their name."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """Silence ITK's stderr warnings (e.g. "No Series were found"): we raise our own errors instead."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)

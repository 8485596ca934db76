"""blobness: ITK's objectness measure redone in numpy gives SimpleITK's values, and means what it should."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ctsurv.features.preprocess import blobness


def simpleitk_blobness(image: np.ndarray, spacing_xyz: tuple[float, float, float], sigma_mm: float) -> np.ndarray:
    """The reference: SimpleITK's smoothing and ObjectnessMeasure, as blobness used to call them."""
    itk_image = sitk.GetImageFromArray(np.ascontiguousarray(image.astype(np.float32).transpose(2, 1, 0)))
    itk_image.SetSpacing(spacing_xyz)
    smoothed = sitk.SmoothingRecursiveGaussian(itk_image, sigma_mm)
    blob = sitk.ObjectnessMeasure(smoothed, alpha=0.5, beta=0.5, gamma=5.0, scaleObjectnessMeasure=False,
                                  objectDimension=0, brightObject=True)
    return sitk.GetArrayFromImage(blob).transpose(2, 1, 0)


def assert_same_as_simpleitk(image: np.ndarray, spacing_xyz: tuple[float, float, float], sigma_mm: float) -> np.ndarray:
    ours = blobness(torch.from_numpy(image.astype(np.float32)), spacing_xyz, sigma_mm)
    assert ours.dtype == torch.float32 and ours.shape == image.shape
    ref = simpleitk_blobness(image, spacing_xyz, sigma_mm)
    assert ref.max() > 0.2  # something lights up, so the comparison means something
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-5 * ref.max())
    return ours.numpy()


def test_random_smooth_volume_with_anisotropic_spacing() -> None:
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.normal(size=(40, 36, 28)), 1.5) * 3000.0
    # three different spacings: a swapped axis or a spacing left out changes the Hessian
    assert_same_as_simpleitk(image, (4.0, 5.0, 6.5), sigma_mm=4.0)


def blobs_tube_and_air(spacing_xyz: tuple[float, float, float]) -> tuple[np.ndarray, list, np.ndarray]:
    """Three bright balls, a tube along Y, a flat bright slab; the rest is 0 (air after windowing)."""
    shape = (48, 44, 36)
    mm = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing_xyz)], indexing="ij"), -1)
    image = np.zeros(shape)
    centres = [np.array([60.0, 60.0, 90.0]), np.array([150.0, 70.0, 110.0]), np.array([100.0, 160.0, 70.0])]
    for centre, radius in zip(centres, (9.0, 6.0, 12.0)):
        image[np.linalg.norm(mm - centre, axis=-1) < radius] = 1000.0
    axis = np.array([170.0, 0.0, 170.0])  # a vessel of the middle ball's calibre, along Y
    image[np.linalg.norm((mm - axis)[..., [0, 2]], axis=-1) < 6.0] = 1000.0
    image[:, :, :5] = 600.0  # a flat slab: zero Hessian inside, like the air around it
    return image, centres, axis


def test_blobs_tube_and_flat_regions() -> None:
    spacing = (4.5, 5.0, 6.0)
    image, centres, axis = blobs_tube_and_air(spacing)
    blob = assert_same_as_simpleitk(image, spacing, sigma_mm=4.0)
    far = ndimage.distance_transform_edt(image == 0, sampling=spacing) > 20.0  # mm from anything bright
    assert blob[far].max() < 1e-6  # flat air stays dark (not exactly 0: the recursive Gaussian's tails)
    for centre in centres:  # the ball's centre lights up
        assert blob[tuple((centre / spacing).astype(int))] > 0.3
    assert blob[int(axis[0] / spacing[0]), 12:32, int(axis[2] / spacing[2])].max() < 0.05 * blob.max()  # tube: dark


def test_real_chest_ct(realdata: Path) -> None:
    hu = np.asarray(nib.load(realdata / "chest_cta_pulmonary_crop.nii.gz").dataobj, dtype=np.float64)
    # 1.5 mm voxels averaged in 3 x 3 x 4 blocks, like the pipeline's resampling, then the lung window in HU units
    block = hu[:120, :96, :96].reshape(40, 3, 32, 3, 24, 4).mean(axis=(1, 3, 5))
    image = np.clip(block, -1000.0, 400.0) + 1000.0
    assert_same_as_simpleitk(image, (4.5, 4.5, 6.0), sigma_mm=4.0)

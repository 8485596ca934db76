"""Radiomics of a masked region (a tumour): shape and first-order intensity features for the ``radiomics_cox`` baseline.

The classical baseline of CT survival papers (Aerts et al. 2014 on NSCLC-Radiomics) is a Cox model on hand-crafted
features of the tumour. pyradiomics has no installable wheel here, so the features come from SimpleITK's label
statistics filters, computed on the CT at its own resolution (HU, not the model's windowed input) and the mask
on the CT's grid:

* shape (``LabelShapeStatisticsImageFilter``, physical units from the voxel spacing): log volume (mm³), log
  surface area (mm², ITK's perimeter of a 3D region), log maximum 3D diameter (Feret, mm), roundness (the
  sphericity: surface of the equal-volume sphere over the region's), elongation and flatness (ratios of the
  principal moments);
* intensity (``LabelIntensityStatisticsImageFilter``): mean, standard deviation, skewness, kurtosis of HU in the
  region; 10th, 50th and 90th percentiles (numpy, exact: ITK's median is read from a histogram).

Sizes enter on a log scale: a tumour's volume spans three orders of magnitude, and a Cox model is linear in
its inputs.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from rich.progress import track

from ctsurv.io.cohort import Cohort
from ctsurv.io.volumes import Volume, mask_on_grid, read_mask, read_volume

RADIOMICS_FEATURES = (
    "log_volume_mm3", "log_surface_mm2", "log_max_diameter_mm", "roundness", "elongation", "flatness",
    "mean_hu", "sd_hu", "skewness", "kurtosis", "p10_hu", "median_hu", "p90_hu",
)


def region_features(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """The :data:`RADIOMICS_FEATURES` (float64, in that order) of ``volume`` inside ``mask`` (bool, its grid)."""
    if mask.shape != volume.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the volume's {volume.shape}; put it on the grid first")
    if not mask.any():
        raise ValueError("the mask is empty: a region needs at least one voxel")
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))  # ITK's (Z, Y, X)
    image.SetSpacing([float(s) for s in volume.spacing])
    label = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(np.uint8))
    label.CopyInformation(image)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.SetComputePerimeter(True)
    shape.SetComputeFeretDiameter(True)
    shape.Execute(label)
    intensity = sitk.LabelIntensityStatisticsImageFilter()
    intensity.Execute(label, image)
    values = volume.array[mask].astype(np.float64)
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    one_voxel = float(np.prod(volume.spacing))
    return np.array([
        np.log(shape.GetPhysicalSize(1)),
        np.log(max(shape.GetPerimeter(1), one_voxel ** (2 / 3))),  # a single voxel's surface is not 0
        np.log(max(shape.GetFeretDiameter(1), min(volume.spacing))),
        shape.GetRoundness(1), shape.GetElongation(1), shape.GetFlatness(1),
        intensity.GetMean(1), intensity.GetStandardDeviation(1), intensity.GetSkewness(1), intensity.GetKurtosis(1),
        p10, p50, p90,
    ], dtype=np.float64)


def cohort_radiomics(cohort: Cohort, progress: bool = False) -> np.ndarray:
    """:func:`region_features` of every study, (n, F) float64: NaN rows for studies without a mask or with an
    empty one (the survival baseline imputes them from the training fold)."""
    c = cohort.config
    out = np.full((len(cohort), len(RADIOMICS_FEATURES)), np.nan)
    rows = [i for i in range(len(cohort)) if cohort.mask_path(i) is not None]
    for i in track(rows, description="radiomics of the masked regions", disable=not progress):
        spacing = cohort.spacing_zyx(i)
        volume = read_volume(cohort.volume_paths[i], spacing, cohort.rescale(i), c.array_key)
        mask = mask_on_grid(read_mask(cohort.mask_path(i), spacing, c.mask_key), volume)  # type: ignore[arg-type]
        if mask.any():
            out[i] = region_features(volume, mask)
    return out

"""Slices of a scan as a radiologist expects them, with an evidence map over them (`ctsurv serve`, `ctsurv predict`).

Volumes are (X, Y, Z) arrays in nibabel's RAS+ (x grows towards the patient's right, y anterior, z superior), and
each plane is flipped into the radiological convention: axial slices seen from the feet (the patient's right on
the viewer's left, anterior at the top), coronal slices seen from the front (right on the left, head at the top),
sagittal slices seen from the patient's left (anterior on the left, head at the top). Pixels are stretched to the
voxel spacing, so that a 6 mm slice thickness does not squash a coronal view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

# window presets, (low, high) HU: lung W1500/L-600, mediastinum W350/L50, bone W2000/L500
WINDOWS: dict[str, tuple[float, float]] = {"lung": (-1350.0, 150.0), "mediastinum": (-125.0, 225.0), "bone": (-500.0, 1500.0)}
PLANES = ("axial", "coronal", "sagittal")
AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}  # the array axis a plane's slider moves along


def plane_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2D slice (rows, columns) of an (X, Y, Z) RAS array in the radiological convention."""
    if plane == "axial":
        return volume[::-1, ::-1, index].T  # rows: anterior -> posterior; columns: right -> left
    if plane == "coronal":
        return volume[::-1, index, ::-1].T  # rows: superior -> inferior; columns: right -> left
    if plane == "sagittal":
        return volume[index, ::-1, ::-1].T  # rows: superior -> inferior; columns: anterior -> posterior
    raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")


def pixel_mm(spacing_xyz: tuple[float, float, float], plane: str) -> tuple[float, float]:
    """(row, column) spacing in mm of a plane's slices."""
    sx, sy, sz = spacing_xyz
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[plane]


def render(
    hu: np.ndarray, spacing_xyz: tuple[float, float, float], plane: str, index: int, window: str | tuple[float, float],
    overlay: np.ndarray | None = None, alpha: float = 0.45, min_size: int = 256,
) -> np.ndarray:
    """An RGB uint8 image of slice ``index`` of ``plane``, HU shown in ``window`` (a preset name or (low, high)),
    stretched to the voxel spacing and scaled to at least ``min_size`` pixels on its short side.

    ``overlay`` (X, Y, Z), e.g. an evidence map, is drawn in the "hot" colour map where it is positive, scaled
    by its largest absolute value over the whole volume (so slices compare), transparent where it is not.
    """
    low, high = WINDOWS[window] if isinstance(window, str) else window
    index = int(np.clip(index, 0, hu.shape[AXIS[plane]] - 1))
    gray = np.clip((plane_slice(hu, plane, index) - low) / (high - low), 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if overlay is not None:
        top = float(np.abs(overlay).max())
        if top > 0:
            level = np.clip(plane_slice(overlay, plane, index) / top, 0, 1)
            heat = colormaps["hot"](0.25 + 0.75 * level)[..., :3]
            a = (alpha * (level > 0.05))[..., None]
            rgb = (1 - a) * rgb + a * heat
    row_mm, col_mm = pixel_mm(spacing_xyz, plane)
    height, width = gray.shape[0] * row_mm, gray.shape[1] * col_mm
    zoom = max(1.0, min_size / min(height, width))
    size = (max(1, round(width * zoom)), max(1, round(height * zoom)))
    image = Image.fromarray(np.ascontiguousarray((rgb * 255).round().astype(np.uint8)))
    return np.asarray(image.resize(size, Image.Resampling.NEAREST))


def peak_index(values: np.ndarray) -> tuple[int, int, int]:
    """The (x, y, z) voxel of a map's largest value: where a viewer opens to show the strongest evidence."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(values)), values.shape))  # type: ignore[return-value]


def evidence_panel(
    hu: np.ndarray, spacing_xyz: tuple[float, float, float], maps: dict[str, np.ndarray], path: Path,
    window: str = "lung",
) -> None:
    """A PNG with, per map (title -> (X, Y, Z)), a row of the axial, coronal and sagittal slices through its
    peak with the map overlaid (`ctsurv predict --evidence`)."""
    fig = Figure(figsize=(9, 3 * len(maps)))
    axes = fig.subplots(len(maps), len(PLANES), squeeze=False)
    for row, (title, values) in zip(axes, maps.items()):
        peak = peak_index(values)
        for ax, plane in zip(row, PLANES):
            ax.imshow(render(hu, spacing_xyz, plane, peak[AXIS[plane]], window, values))
            ax.set_axis_off()
            ax.set_title(f"{title}: {plane}", fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")

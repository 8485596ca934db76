"""Look at a CT volume: summary numbers (``describe``) and an orthogonal-view picture (``save_montage``).

Used by ``ctsurv inspect VOLUME [--png FILE]`` to check a file before training on it: are the
spacing and orientation what the header should say, are the values Hounsfield units (air
below -950, lungs near -800, soft tissue near 40, bone above 300), and does the anatomy face
the right way (a mirrored volume looks normal slice by slice; only labels reveal it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend, no window, nothing to close

from ctsurv.io.volumes import Volume
from ctsurv.outputs import staged_file

# HU bands reported by describe(): (name, low, high), bounds inclusive.
HU_BANDS: tuple[tuple[str, float, float], ...] = (
    ("air", -np.inf, -950.0),
    ("lung", -950.0, -500.0),
    ("soft_tissue", -100.0, 100.0),
    ("bone", 300.0, np.inf),
)


def describe(volume: Volume) -> dict[str, Any]:
    """Plain-Python summary (JSON-ready) of geometry and HU distribution.

    Keys: path, shape, spacing_mm, orientation, dtype, hu_min, hu_max, hu_mean, hu_p1, hu_p50,
    hu_p99, and ``fraction_<band>`` for the bands in ``HU_BANDS`` (air < -950, lung
    [-950, -500], soft_tissue [-100, 100], bone > 300), each a fraction of all voxels.
    """
    a = volume.array
    p1, p50, p99 = np.percentile(a, [1, 50, 99])
    info: dict[str, Any] = {
        "path": str(volume.path) if volume.path is not None else None,
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 4) for s in volume.spacing],
        "orientation": volume.orientation,
        "dtype": str(a.dtype),
        "hu_min": float(a.min()),
        "hu_max": float(a.max()),
        "hu_mean": float(a.mean(dtype=np.float64)),
        "hu_p1": float(p1),
        "hu_p50": float(p50),
        "hu_p99": float(p99),
    }
    for name, lo, hi in HU_BANDS:
        info[f"fraction_{name}"] = float(np.count_nonzero((a >= lo) & (a <= hi)) / a.size)
    return info


# --------------------------------------------------------------------------- montage


def axial(ras: np.ndarray, z: int) -> np.ndarray:
    """Axial slice of a RAS array (X, Y, Z) as an image (rows, cols) in radiological display:
    patient's right on the image left, anterior at the top."""
    return np.flip(ras[:, :, z], (0, 1)).T  # (Y, X): row 0 = max y (anterior), col 0 = max x (right)


def coronal(ras: np.ndarray, y: int) -> np.ndarray:
    """Coronal slice: patient's right on the image left, superior at the top."""
    return np.flip(ras[:, y, :], (0, 1)).T  # (Z, X)


def sagittal(ras: np.ndarray, x: int) -> np.ndarray:
    """Sagittal slice: anterior on the image left, superior at the top."""
    return np.flip(ras[x, :, :], (0, 1)).T  # (Z, Y)


def save_montage(
    volume: Volume, png: Path | str, window: tuple[float, float] = (-1000.0, 400.0), n_axial: int = 6
) -> None:
    """Write a PNG: axial, coronal and sagittal slices through the centre, then ``n_axial``
    axial slices from bottom to top, in grayscale over ``window`` (HU), with aspect ratios from
    the voxel spacing and the patient directions (R/L, A/P, S/I) at the image edges.

    The volume is reoriented to RAS first, so the picture is the same whatever the file's voxel
    order: a left-right mirrored file shows its heart on the wrong side. ``png`` is replaced whole or not
    at all; a folder, or the volume's own file, is refused (CtsurvError).
    """
    png = Path(png)
    ras = volume.as_ras()
    a, (sx, sy, sz) = ras.array, ras.spacing  # (X, Y, Z)
    nx, ny, nz = a.shape
    gray = {"cmap": "gray", "vmin": window[0], "vmax": window[1], "interpolation": "nearest"}

    fig = Figure(figsize=(3.2 * max(3, n_axial) / 2, 7.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(1.6, 1))
    views = (
        ("axial", axial(a, nz // 2), sy / sx, ("R", "L", "A", "P")),
        ("coronal", coronal(a, ny // 2), sz / sx, ("R", "L", "S", "I")),
        ("sagittal", sagittal(a, nx // 2), sz / sy, ("A", "P", "S", "I")),
    )
    for ax, (title, image, aspect, labels) in zip(top.subplots(1, 3), views):
        ax.imshow(image, aspect=aspect, **gray)
        _label_edges(ax, *labels)
        ax.set_title(f"{title} (centre)", fontsize=9)
    zs = np.linspace(0.1 * (nz - 1), 0.9 * (nz - 1), n_axial).round().astype(int) if nz > 1 else [0] * n_axial
    for ax, z in zip(np.atleast_1d(bottom.subplots(1, n_axial)), zs):
        ax.imshow(axial(a, int(z)), aspect=sy / sx, **gray)
        _label_edges(ax, "R", "L", "A", "P", fontsize=6)
        ax.set_title(f"z={ras.affine[2, 2] * z + ras.affine[2, 3]:.0f} mm", fontsize=7)
    name = volume.path.name if volume.path is not None else "volume"
    fig.suptitle(
        f"{name}  stored {'x'.join(map(str, volume.shape))} {volume.orientation}, spacing "
        f"{' x '.join(f'{s:.3g}' for s in volume.spacing)} mm, window [{window[0]:g}, {window[1]:g}] HU",
        fontsize=9,
    )
    with staged_file(png, [volume.path], option="--png") as tmp:  # atomic: a reader never sees half a PNG
        fig.savefig(tmp, format="png", dpi=110)


def _label_edges(ax: Any, left: str, right: str, up: str, down: str, fontsize: int = 9) -> None:
    """Write patient directions at the middle of each image edge and hide the pixel ticks."""
    style = {"transform": ax.transAxes, "color": "yellow", "fontsize": fontsize, "fontweight": "bold"}
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, up, ha="center", va="top", **style)
    ax.text(0.5, 0.02, down, ha="center", va="bottom", **style)
    ax.set_xticks([])
    ax.set_yticks([])

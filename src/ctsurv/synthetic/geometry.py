"""World-millimetre geometry for the chest phantom: the voxel grid, soft-edged shapes, random points.

Nothing here knows any anatomy. These are the primitives :mod:`ctsurv.synthetic.anatomy` and
:mod:`ctsurv.synthetic.phantom` draw a chest with, kept in their own module so that those read as
anatomy and findings only.

Coordinates are RAS+ millimetres (+x toward the patient's right, +y anterior, +z superior) with the
origin at the centre of the field of view (:func:`affine_for`, :class:`Grid`). A shape is painted over
what is already there with a soft occupancy in [0, 1] computed from an approximate signed distance
(``soft``), which gives partial-volume edges without supersampling. Thin tubes (peripheral vessels)
use an area-preserving Gaussian profile, so a 1 mm vessel in a 5 mm voxel is a faint smudge, as on a
real thick-slice CT, while balls (nodules) are round and dense. Random points are drawn from masks on
the grid with the caller's generator, so a render stays a function of its seed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def affine_for(shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """(4, 4) voxel -> RAS+ mm for an (X, Y, Z) array of ``shape_zyx`` reversed, centred on the origin.

    Array index i grows toward the patient's right (+x), j anterior (+y), k superior (+z).
    """
    n = np.array(shape_zyx[::-1], dtype=np.float64)  # (X, Y, Z)
    s = np.array(spacing_zyx[::-1], dtype=np.float64)
    affine = np.diag([*s, 1.0])
    affine[:3, 3] = -(n - 1) / 2 * s
    return affine


@dataclass(frozen=True)
class Grid:
    """World coordinates (mm) of voxel centres as open (broadcastable) axes of an (X, Y, Z) array."""

    x: np.ndarray  # (X, 1, 1)
    y: np.ndarray  # (1, Y, 1)
    z: np.ndarray  # (1, 1, Z)
    spacing: np.ndarray  # (3,) x, y, z mm

    @classmethod
    def of(cls, shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float]) -> Grid:
        a = affine_for(shape_zyx, spacing_zyx)
        axes = [(np.arange(n) * a[i, i] + a[i, 3]).astype(np.float32) for i, n in enumerate(shape_zyx[::-1])]
        return cls(axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :], np.diag(a)[:3].copy())

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.x.shape[0], self.y.shape[1], self.z.shape[2])

    @property
    def h(self) -> float:
        """Typical voxel size (mm): the width of soft edges."""
        return float(np.prod(self.spacing) ** (1 / 3))

    def index(self, p: np.ndarray) -> np.ndarray:
        """Nearest voxel (..., 3) of points p (..., 3) mm, clipped to the array."""
        i = np.rint((np.asarray(p) - self.origin) / self.spacing).astype(np.int64)
        return np.clip(i, 0, np.array(self.shape) - 1)

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Slices of the voxels whose centres lie in the mm box [lo, hi], or None when it misses the array."""
        origin, n = self.origin, np.array(self.shape)
        i0 = np.clip(np.ceil((np.asarray(lo) - origin) / self.spacing), 0, n).astype(int)
        i1 = np.clip(np.floor((np.asarray(hi) - origin) / self.spacing) + 1, 0, n).astype(int)
        if np.any(i1 <= i0):
            return None
        return slice(i0[0], i1[0]), slice(i0[1], i1[1]), slice(i0[2], i1[2])

    @property
    def origin(self) -> np.ndarray:
        """World mm of voxel (0, 0, 0)."""
        return np.array([self.x[0, 0, 0], self.y[0, 0, 0], self.z[0, 0, 0]], dtype=np.float64)

    def sub(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x[sl[0]], self.y[:, sl[1]], self.z[:, :, sl[2]]


# ----------------------------------------------------------------------------- soft-edged shapes


def soft(sd: np.ndarray, h: float) -> np.ndarray:
    """Occupancy from a signed distance (mm, negative inside): a linear ramp one voxel wide."""
    return np.clip(0.5 - sd / h, 0.0, 1.0).astype(np.float32)


def paint(hu: np.ndarray, occ: np.ndarray, value: float | np.ndarray, sl: tuple[slice, ...] | None = None) -> None:
    """Composite ``value`` over ``hu`` (in place) with occupancy ``occ``, optionally inside box ``sl``."""
    target = hu if sl is None else hu[sl]
    target += occ * (value - target)

def union(*occ: np.ndarray) -> np.ndarray:
    """Pointwise max of occupancies (broadcast to a common shape)."""
    return functools.reduce(np.maximum, occ)


def smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0, 1)
    return t * t * (3 - 2 * t)


Semi = float | np.ndarray  # a semi-axis: a number, or an array broadcasting with the offsets


def ellipsoid_sd(dx: np.ndarray, dy: np.ndarray, dz: np.ndarray | None, a: Semi, b: Semi,
                 c: Semi | None = None) -> np.ndarray:
    """First-order signed distance (mm) to an axis-aligned ellipse(oid): (rho - 1) / |grad rho|.

    ``dz``/``c`` None gives an elliptic cylinder. Semi-axes may be arrays broadcasting with the offsets.
    """
    terms = [(dx, a), (dy, b)] + ([(dz, c)] if dz is not None else [])
    rho = np.sqrt(sum((d / s) ** 2 for d, s in terms)) + 1e-6
    grad = np.sqrt(sum((d / np.square(s)) ** 2 for d, s in terms)) + 1e-6 / np.max([np.max(s) for _, s in terms])
    return (rho - 1.0) * rho / grad


def tube_profile(d: np.ndarray, r: np.ndarray | float, h: float) -> np.ndarray:
    """Occupancy at distance d from the axis of a tube of radius r: a soft disk when r >= h, and an
    area-preserving Gaussian (peak r^2 / 2s^2, s^2 = h^2/12 + r^2/4) when thinner, so thin vessels fade."""
    s2 = h * h / 12 + np.square(r) / 4
    thin = np.minimum(1.0, np.square(r) / (2 * s2)) * np.exp(-np.square(d) / (2 * s2))
    w = np.clip(2 * r / h - 1, 0, 1)  # 0 for r <= h/2, 1 for r >= h
    return ((1 - w) * thin + w * np.clip(0.5 + (r - d) / h, 0, 1)).astype(np.float32)


def tube(g: Grid, pts: np.ndarray, radii: np.ndarray | float, grow: float = 0.0) -> np.ndarray:
    """Occupancy (X, Y, Z) of a tapering tube along polyline ``pts`` (P, 3) mm, radii (P,) mm (+ ``grow``).

    Exact point-to-segment distance, evaluated only in each segment's bounding box: for big vessels."""
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float32), (len(pts),)) + np.float32(grow)
    occ = np.zeros(g.shape, np.float32)
    for a, b, ra, rb in zip(pts[:-1], pts[1:], radii[:-1], radii[1:]):
        pad = max(ra, rb) + g.h
        sl = g.box(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
        if sl is None:
            continue
        x, y, z = g.sub(sl)
        ab = b - a
        t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / max(ab @ ab, 1e-9), 0, 1)
        d = np.sqrt((x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2)
        np.maximum(occ[sl], tube_profile(d, ra + t * (rb - ra), g.h), out=occ[sl])
    return occ


def splat(g: Grid, pts: np.ndarray, radii: np.ndarray, step: float) -> np.ndarray:
    """Occupancy (X, Y, Z) of tubes given as points (N, 3) mm sampled every ``step`` mm along their axes,
    with radii (N,) mm: vectorised, no per-segment loop (for vessel trees).

    Thick points (r >= h/2) get a soft disk over a voxel stencil (max over points); thin ones deposit
    their volume (pi r^2 step) trilinearly and are blurred, so a thin vessel's partial volume is right."""
    occ = np.zeros(int(np.prod(g.shape)), np.float32)
    thick = radii >= g.h / 2
    if thick.any():
        p, r = pts[thick].astype(np.float32), radii[thick].astype(np.float32)
        k = np.ceil((float(r.max()) + g.h / 2) / g.spacing - 0.5).astype(int)  # stencil half-width per axis
        offsets = np.stack(np.meshgrid(*[np.arange(-m, m + 1) for m in k], indexing="ij"), -1).reshape(-1, 3)  # (M, 3)
        vox = g.index(p)[:, None, :] + offsets[None]  # (N, M, 3)
        valid = np.all((vox >= 0) & (vox < np.array(g.shape)), axis=-1)
        centres = (vox * g.spacing + g.origin).astype(np.float32)  # (N, M, 3) mm
        d = np.sqrt(np.sum(np.square(centres - p[:, None, :]), -1))
        o = tube_profile(d, r[:, None], g.h)
        np.maximum.at(occ, np.ravel_multi_index(tuple(vox[valid].T), g.shape), o[valid])
    if (~thick).any():
        f = (pts[~thick] - g.origin) / g.spacing  # (N, 3) fractional voxel index
        i0, w = np.floor(f).astype(np.int64), f - np.floor(f)
        volume = np.pi * np.square(radii[~thick]) * step / np.prod(g.spacing)  # fraction of one voxel
        density = np.zeros_like(occ)
        for corner in np.ndindex(2, 2, 2):
            idx = i0 + corner
            weight = volume * np.prod(np.where(corner, w, 1 - w), axis=1)
            ok = np.all((idx >= 0) & (idx < np.array(g.shape)), axis=1)
            flat = np.ravel_multi_index(tuple(idx[ok].T), g.shape)
            density += np.bincount(flat, weight[ok], minlength=occ.size).astype(np.float32)
        density = ndimage.gaussian_filter(density.reshape(g.shape), 0.5).ravel()
        np.maximum(occ, np.minimum(density, 1), out=occ)
    return occ.reshape(g.shape)


def sphere(hu: np.ndarray, g: Grid, c: np.ndarray, r: float, value: float, rng: np.random.Generator | None = None,
           lobulation: float = 0.0, within: np.ndarray | None = None,
           scale: tuple[float, float, float] = (1, 1, 1)) -> None:
    """Paint a (lobulated, optionally stretched) ball of radius r mm at c, restricted to occupancy ``within``."""
    sl = g.box(c - r * 1.5 * np.max(scale) - g.h, c + r * 1.5 * np.max(scale) + g.h)
    if sl is None:
        return
    x, y, z = g.sub(sl)
    d = [(x - c[0]) / scale[0], (y - c[1]) / scale[1], (z - c[2]) / scale[2]]
    rho = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + 1e-6
    radius = r
    if lobulation > 0 and rng is not None:  # radius modulated by a few random low-order bumps
        v = rng.normal(size=(4, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        bumps = sum(np.maximum(0, (d[0] * a + d[1] * b + d[2] * cc) / rho) ** 3 for a, b, cc in v)
        radius = r * (1 + lobulation * (bumps - 0.5))
    occ = soft(rho - radius, g.h)
    paint(hu, occ if within is None else occ * within[sl], value, sl)


def low_freq_noise(shape: tuple[int, int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random field in [0, 1]: a (cells,)*3 random grid linearly interpolated to ``shape``."""
    field = rng.random((cells, cells, cells)).astype(np.float32)
    for n in shape[::-1]:  # separable: interpolate the last axis and move it to the front, three times
        pos = np.linspace(0, cells - 1, n)
        lo = np.minimum(np.floor(pos).astype(int), cells - 2)
        weights = np.zeros((n, cells), np.float32)
        weights[np.arange(n), lo], weights[np.arange(n), lo + 1] = 1 - (pos - lo), pos - lo
        field = np.tensordot(weights, field, axes=([1], [2]))
    return np.ascontiguousarray(field)


# ----------------------------------------------------------------------------- random points


def place_with_clearance(g: Grid, region: np.ndarray, space: np.ndarray, clearance: float,
                         rng: np.random.Generator) -> np.ndarray:
    """A random point of ``region`` (mm) whose surroundings within ``clearance`` mm are in ``space``, or the
    most surrounded of 200 random candidates when none fits (a mass bigger than its lobe)."""
    idx = np.flatnonzero(region)
    if len(idx) == 0:
        return np.zeros(3, np.float32)
    picked = rng.choice(idx, size=min(200, len(idx)), replace=False)
    cand = g.origin + np.stack(np.unravel_index(picked, g.shape), 1) * g.spacing  # (K, 3)
    dirs = np.array([d for d in np.ndindex(3, 3, 3) if d != (1, 1, 1)]) - 1  # (26, 3)
    probes = cand[:, None, :] + clearance * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)  # (K, 26, 3)
    inside = space[tuple(g.index(probes).transpose(2, 0, 1))].sum(axis=1)  # (K,)
    return cand[int(np.argmax(inside))].astype(np.float32)


def random_voxel(g: Grid, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """World mm (3,) of a random True voxel of ``mask`` (the volume centre if there is none)."""
    idx = np.flatnonzero(np.broadcast_to(mask, g.shape))
    if len(idx) == 0:
        return np.zeros(3, np.float32)
    return (g.origin + np.array(np.unravel_index(int(rng.choice(idx)), g.shape)) * g.spacing).astype(np.float32)


def random_direction(rng: np.random.Generator) -> np.ndarray:
    """A random unit vector (3,)."""
    v = rng.normal(size=3)
    return (v / (np.linalg.norm(v) + 1e-9)).astype(np.float32)

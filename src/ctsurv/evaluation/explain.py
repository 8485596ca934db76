"""Why the model said what it said, and whether it should be trusted on this scan.

Evidence maps (:func:`occlusion_maps`): the scan, as the model reads it (the preprocessed (C, X, Y, Z) tensor), is cut
into a grid of blocks; each block in turn is replaced by the scan's own mean (per channel), and the model reads the
occluded scan again. A block's evidence for an output (P(yes) of a finding, or the survival risk) is how much the
output drops when the block is hidden: positive where the block supported the output, negative where it argued
against it. Occlusion (Zeiler & Fergus 2014) measures exactly "what changed the output", through every path of the
model (encoder, pooled tokens, the findings head's own cells of the scan), with no gradients and no choice of layer;
its cost is one forward pass per block, batched. Why not gradient x input on the visual tokens: the demo encoder's
token grid is 4 x 4 x 2, so such a map could never be finer than that, and gradients of a saturated sigmoid say
little about what the output rests on. ``benchmarks/evidence_ood.md`` checks the maps against the phantom's truth
masks.

Out-of-distribution score (:class:`OutOfDistribution`): the Mahalanobis distance of a scan's pooled encoder features
(the token grid's mean per channel) from the training cohort's, with a Ledoit-Wolf shrunk covariance of the
standardised features (robust when features outnumber scans: an I3ResNet has 2,048 channels, a cohort may have 100
scans). A distance means little on its own, so it is calibrated on the training cohort: every training scan's
distance is computed by a model fitted without it (K-fold cross-fitting; in-sample distances are too small, the
more so the more features), and a scan is flagged when it lies further than ``quantile`` (0.99) of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from sklearn.covariance import LedoitWolf
from sklearn.model_selection import GroupKFold, KFold

from ctsurv.errors import CtsurvError

OOD_QUANTILE = 0.99  # a training-like scan is flagged about 1 time in 100
OOD_FOLDS = 5


# ----------------------------------------------------------------------------- evidence maps


def block_edges(size: int, blocks: int) -> np.ndarray:
    """``blocks + 1`` edges cutting ``size`` voxels into near-equal blocks (at most one block per voxel)."""
    return np.linspace(0, size, min(blocks, size) + 1).round().astype(int)


def block_boxes(shape_xyz: tuple[int, ...], blocks_xyz: tuple[int, int, int]) -> list[tuple[slice, slice, slice]]:
    """The blocks of a ``blocks_xyz`` grid over ``shape_xyz`` voxels, x-major (the order of a (bx, by, bz) array)."""
    ex, ey, ez = (block_edges(n, b) for n, b in zip(shape_xyz, blocks_xyz))
    return [
        (slice(x0, x1), slice(y0, y1), slice(z0, z1))
        for x0, x1 in itertools.pairwise(ex) for y0, y1 in itertools.pairwise(ey) for z0, z1 in itertools.pairwise(ez)
    ]


@torch.no_grad()
def occlusion_maps(
    score: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, blocks_xyz: tuple[int, int, int],
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores (K,) of ``image`` (C, X, Y, Z) and their evidence per block (K, bx, by, bz): the drop of every
    score when that block of a ``blocks_xyz`` grid is replaced by the image's per-channel mean.

    ``score`` maps a batch of images (B, C, X, Y, Z) to (B, K) outputs. :func:`to_voxels` spreads a block map
    over the image's voxels.
    """
    if image.dim() != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {tuple(image.shape)}")
    full = score(image[None]).reshape(-1).float()  # (K,)
    fill = image.mean(dim=(1, 2, 3))[:, None, None, None]  # (C, 1, 1, 1)
    boxes = block_boxes(tuple(image.shape[1:]), blocks_xyz)
    drops = torch.zeros(len(boxes), len(full))
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start : start + batch_size]
        batch = image[None].repeat(len(chunk), 1, 1, 1, 1)
        for b, (sx, sy, sz) in enumerate(chunk):
            batch[b, :, sx, sy, sz] = fill
        drops[start : start + len(chunk)] = full[None] - score(batch).reshape(len(chunk), -1).float()
    grid = [len(block_edges(n, b)) - 1 for n, b in zip(image.shape[1:], blocks_xyz)]
    return full, drops.T.reshape(len(full), *grid)


def to_voxels(blocks: np.ndarray | torch.Tensor, shape_xyz: tuple[int, int, int]) -> np.ndarray:
    """A block map (bx, by, bz) of :func:`occlusion_maps` spread over ``shape_xyz`` voxels (each block's value on
    all of its voxels)."""
    out = np.asarray(blocks, dtype=np.float32)
    for axis, n in enumerate(shape_xyz):
        out = np.repeat(out, np.diff(block_edges(n, out.shape[axis])), axis=axis)
    return out


def pointing_hit(blocks: np.ndarray, truth: np.ndarray) -> tuple[bool, float]:
    """The pointing game (Zhang et al. 2018) at the map's own resolution: whether the block of largest evidence
    (``blocks`` (bx, by, bz) of :func:`occlusion_maps`) touches the ``truth`` region (bool (X, Y, Z)), and the
    chance of that for a block drawn at random (the share of blocks that touch it)."""
    blocks = np.asarray(blocks)
    boxes = block_boxes(truth.shape, blocks.shape)
    touches = np.array([bool(truth[box].any()) for box in boxes])
    if len(touches) != blocks.size:
        raise ValueError(f"a {blocks.shape} block map does not fit a {truth.shape} region")
    return bool(touches[int(np.argmax(blocks.ravel()))]), float(touches.mean())


# ----------------------------------------------------------------------------- out-of-distribution score


def pooled_features(grids: torch.Tensor | np.ndarray) -> np.ndarray:
    """The scan-level features the OOD score reads: pooled encoder features (n, Dv, N tokens) averaged over the
    tokens, (n, Dv) float64."""
    grids = np.asarray(grids, dtype=np.float64)
    if grids.ndim != 3:
        raise ValueError(f"pooled encoder features must be (n, Dv, N), got shape {grids.shape}")
    return grids.mean(axis=2)


@dataclass(frozen=True)
class OutOfDistribution:
    """Mahalanobis distance from the training scans' pooled encoder features, calibrated by cross-fitting."""

    mean: np.ndarray  # (D,) of the training features
    scale: np.ndarray  # (D,) their SD (1 where constant)
    precision: np.ndarray  # (D, D) inverse of the shrunk covariance of the standardised features
    reference: np.ndarray  # (n,) sorted cross-fitted distances of the training scans
    quantile: float = OOD_QUANTILE

    @classmethod
    def fit(
        cls, features: np.ndarray, seed: int = 0, folds: int = OOD_FOLDS, quantile: float = OOD_QUANTILE,
        groups: np.ndarray | None = None,
    ) -> OutOfDistribution:
        """Fit on the training scans' features (n, D); ``reference`` holds each scan's distance under a model
        fitted on the other folds (``groups``, e.g. patient ids: a patient's scans are held out together, so that
        a repeat scan does not sit in the model that measures it)."""
        x = np.asarray(features, dtype=np.float64)
        units = len(x) if groups is None else len(set(np.asarray(groups).tolist()))
        if x.ndim != 2 or units < 2 * folds:
            raise CtsurvError(f"the OOD score needs at least {2 * folds} training scans (patients) with features (n, D), "
                              f"got {x.shape} from {units}")
        if not np.isfinite(x).all():
            raise CtsurvError("the training scans' encoder features hold NaN or inf; check the volumes and the encoder")
        reference = np.empty(len(x))
        if groups is None:
            splits = KFold(folds, shuffle=True, random_state=seed).split(x)
        else:
            splits = GroupKFold(folds, shuffle=True, random_state=seed).split(x, groups=np.asarray(groups))
        for train, held in splits:
            reference[held] = cls._fit(x[train]).distance(x[held])
        whole = cls._fit(x)
        return cls(whole.mean, whole.scale, whole.precision, np.sort(reference), quantile)

    @classmethod
    def _fit(cls, x: np.ndarray) -> OutOfDistribution:
        mean, scale = x.mean(0), x.std(0)
        scale = np.where(scale > 0, scale, 1.0)
        precision = LedoitWolf(assume_centered=True).fit((x - mean) / scale).precision_
        return cls(mean, scale, precision, np.zeros(0))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance (n,) of features (n, D)."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", z, self.precision, z), 0.0))

    @property
    def threshold(self) -> float:
        """The distance above which a scan is flagged: the ``quantile`` of the cross-fitted training distances."""
        return float(np.quantile(self.reference, self.quantile))

    def percentile(self, distance: np.ndarray) -> np.ndarray:
        """Per distance, the percentage of the training scans' cross-fitted distances at or below it."""
        return 100.0 * np.searchsorted(self.reference, np.asarray(distance), side="right") / len(self.reference)

    def save(self, path: Path) -> None:
        arrays = {"mean": self.mean, "scale": self.scale, "precision": self.precision, "reference": self.reference,
                  "quantile": np.asarray([self.quantile])}
        save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()}, str(path))

    @classmethod
    def load(cls, path: Path) -> OutOfDistribution:
        a = load_file(str(path))
        return cls(a["mean"], a["scale"], a["precision"], a["reference"], float(a["quantile"][0]))

"""Volumes -> preprocessed tensors -> frozen encoder features: the step that pretrain, survival and predict share.

    cohort.volume_paths --Preprocessor (ctsurv.features.preprocess, cached on disk)--> VolumeStore (N, C, X, Y, Z)
                        --vision encoder + the projector's parameter-free pooling-->    (N, Dv, tokens) float32

The commands stream the volumes from a :class:`~ctsurv.features.store.VolumeStore` batch by batch (no step holds
more than one batch of them); only the features, which are small, are kept in memory. In a persistent cache the
features (per encoder) and the findings head's cells are cached per volume too, beside the volumes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ctsurv.config import ExperimentConfig
from ctsurv.features.preprocess import save_npy_atomic
from ctsurv.features.store import VolumeStore, volume_store
from ctsurv.io.cohort import Cohort
from ctsurv.models.projector import CELLS_XYZ
from ctsurv.models.vlm import CTVLM

Volumes = torch.Tensor | VolumeStore  # (N, C, X, Y, Z): a stacked tensor (small cohorts, tests) or a store


class RowBuffer:
    """A cohort-sized array (n, ...) filled a batch of rows at a time, allocated when the first rows arrive.

    Per-study outputs are written in place rather than kept as a list of batch pieces and concatenated: the
    pieces, small and long-lived among each batch's large temporaries, pin glibc's heap, which is then never
    given back (measured: the central cells of 3,000 studies, 37 MB, raised the resident size by 350 MB as a
    list of batches, by 100 MB written in place).
    """

    def __init__(self, n: int, dtype: np.dtype | type = np.float32) -> None:
        self.n, self.dtype = n, dtype
        self.array: np.ndarray | None = None

    def put(self, start: int, rows: np.ndarray | torch.Tensor) -> None:
        """Rows ``start``, ``start + 1``, ... are ``rows`` (a batch, first axis)."""
        if isinstance(rows, torch.Tensor):
            rows = rows.detach().cpu().numpy()
        if self.array is None:
            self.array = np.empty((self.n, *rows.shape[1:]), dtype=self.dtype)
        self.array[start : start + len(rows)] = rows

    def numpy(self, row_shape: tuple[int, ...] = ()) -> np.ndarray:
        """The filled array ((0, *row_shape) when there were no rows)."""
        return np.empty((0, *row_shape), dtype=self.dtype) if self.array is None else self.array

    def tensor(self, row_shape: tuple[int, ...] = ()) -> torch.Tensor:
        """The filled array as a tensor sharing its memory."""
        return torch.from_numpy(self.numpy(row_shape))


def preprocess_all(cohort: Cohort, cfg: ExperimentConfig, progress: bool) -> torch.Tensor:
    """All volumes of ``cohort`` preprocessed and stacked, (N, C, X, Y, Z) float16: for small cohorts only
    (tests, research probes); the commands use :func:`~ctsurv.features.store.volume_store`, which streams them."""
    with volume_store(cohort, cfg.data, progress) as store:
        return store[:]


@torch.no_grad()
def encode_all(vlm: CTVLM, volumes: Volumes, batch_size: int = 8) -> torch.Tensor:
    """Features of a frozen vision encoder for every volume, computed once: (n, Dv, N tokens), on the CPU.

    They are stored already pooled by the projector (the token grid, and the max token if any): the
    pooling has no parameters, so this is exact, and it shrinks the I3ResNet-152 grid (2048×7×7×10 at
    full size) by an order of magnitude. The encoder runs where it is (a GPU after Accelerate's stage 0);
    the volumes are read ``batch_size`` at a time.

    With volumes in a persistent cache (``data.cache_dir``), each volume's features are cached beside it too,
    under a key of the encoder's weights and the pooling (:func:`feature_files`): pretrain, survival and predict
    then encode a volume once per encoder, and an interrupted pass computes only the missing entries.
    """
    vlm.vision_encoder.eval()
    return _per_volume(volumes, feature_files(vlm, volumes), lambda batch: _encode(vlm, batch), batch_size)


def _per_volume(
    volumes: Volumes, files: list[Path] | None, compute: Callable[[Volumes], torch.Tensor], batch_size: int
) -> torch.Tensor:
    """``compute`` of every volume (n, ...) float32, ``batch_size`` volumes at a time; with ``files`` (one per
    volume), each volume's row is read from its file when it holds one and written there when computed (so
    an interrupted pass resumes, and a damaged entry is computed again)."""
    out = RowBuffer(len(volumes))
    if files is None:
        for start in range(0, len(volumes), batch_size):
            out.put(start, compute(volumes[start : start + batch_size]))
        return out.tensor()
    missing = []
    for i, file in enumerate(files):
        row = _cached(file)
        if row is None:
            missing.append(i)
        else:
            out.put(i, row[None])
    for start in range(0, len(missing), batch_size):
        rows = missing[start : start + batch_size]
        for i, row in zip(rows, compute(volumes[np.asarray(rows)][:])):  # (a store's rows, read as one batch)
            save_npy_atomic(files[i], row.float().numpy())
            out.put(i, row[None])
    return out.tensor()


def _cached(file: Path) -> np.ndarray | None:
    """A volume's cached features, or None when the entry is missing or damaged (then it is computed again)."""
    try:
        return np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None


def _encode(vlm: CTVLM, batch: torch.Tensor) -> torch.Tensor:
    """The pooled features (B, Dv, N) of a batch of volumes, computed where the encoder is."""
    device = next(vlm.vision_encoder.parameters()).device
    return vlm.projector.pool(vlm.vision_encoder.features(batch.to(device).float()))


def feature_files(vlm: CTVLM, volumes: Volumes) -> list[Path] | None:
    """Where :func:`encode_all` caches each volume's features: ``<cache_dir>/features/<encoder key>/<volume
    entry>.npy``, the key a hash of the encoder's weights (every parameter and buffer) and the projector's pooling
    (token grid, max token); None for volumes not in a persistent cache."""
    if not _persistent(volumes):
        return None
    digest = hashlib.sha256()
    digest.update(repr((type(vlm.vision_encoder).__name__, vlm.projector.tokens_xyz, vlm.projector.max_token)).encode())
    for name, tensor in vlm.vision_encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    return _entries_beside(volumes, "features", digest.hexdigest()[:32])


@torch.no_grad()
def cells_all(vlm: CTVLM, volumes: Volumes, batch_size: int = 8) -> torch.Tensor | None:
    """``vlm.projector.cells`` of every volume (n, K), read ``batch_size`` volumes at a time; None when the
    projector's findings head reads no cells. The cells of a volume do not depend on its batch. Cached per
    volume like the features (:func:`cell_files`), so later commands need not read every volume again."""
    findings = vlm.projector.findings
    if findings is None or findings.cells_channel is None:
        return None
    return _per_volume(volumes, cell_files(vlm, volumes), vlm.projector.cells, batch_size)


def cell_files(vlm: CTVLM, volumes: Volumes) -> list[Path] | None:
    """Where :func:`cells_all` caches each volume's cells: ``<cache_dir>/cells/<key>/<volume entry>.npy``, the key
    a hash of what the cells are (the channel and :data:`~ctsurv.models.projector.CELLS_XYZ`: they have no
    weights); None for volumes not in a persistent cache or a projector that reads no cells."""
    findings = vlm.projector.findings
    if findings is None or findings.cells_channel is None:
        return None
    if not _persistent(volumes):
        return None
    key = hashlib.sha256(repr(("central_cells", findings.cells_channel, CELLS_XYZ)).encode()).hexdigest()[:32]
    return _entries_beside(volumes, "cells", key)


def _persistent(volumes: Volumes) -> bool:
    """Whether ``volumes`` are entries of a persistent cache (``data.cache_dir``), beside which rows may be cached."""
    return isinstance(volumes, VolumeStore) and volumes.persistent and len(volumes) > 0


def _entries_beside(volumes: VolumeStore, kind: str, key: str) -> list[Path]:
    """One file per volume, ``<cache_dir>/<kind>/<key>/<volume entry>.npy``."""
    folder = Path(volumes.files[0]).parent / kind / key
    return [folder / Path(f).name for f in volumes.files]


RING_MM = 10.0  # "around" a region: the voxels within this distance of it, outside it


def region_weights(mask: torch.Tensor, spacing_xyz: tuple[float, float, float], grid_xyz: tuple[int, int, int],
                   ring_mm: float = RING_MM) -> torch.Tensor:
    """(2, gx, gy, gz): the fraction of each cell of an encoder's grid that lies inside the region ``mask``
    ((X, Y, Z) bool, the preprocessed volume's grid) and in the ring of ``ring_mm`` around it. The cells are the
    volume cut into ``grid_xyz`` near-equal blocks (adaptive average pooling), as a CNN's strided grid covers it."""
    inside = mask.numpy()
    ring = (ndimage.distance_transform_edt(~inside, sampling=spacing_xyz) <= ring_mm) & ~inside
    regions = torch.from_numpy(np.stack([inside, ring]).astype(np.float32))
    return F.adaptive_avg_pool3d(regions, grid_xyz)


def region_pool(grid: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A (Dv, gx, gy, gz) grid averaged over each region of ``weights`` (R, gx, gy, gz), cells weighted by
    how much of them the region covers: (R, Dv) (:func:`pooling_weights`)."""
    return pooling_weights(weights.flatten(1).to(grid.dtype)) @ grid.flatten(1).T


def pooling_weights(weights: torch.Tensor) -> torch.Tensor:
    """Region weights (R, cells) normalised to sum to 1 per region; a region that covers no cell (a ring around a
    region that fills the field) averages every cell alike, the grid's plain mean."""
    total = weights.sum(1, keepdim=True)
    return torch.where(total > 0, weights / total.clamp_min(1e-12), torch.full_like(weights, 1.0 / weights.shape[1]))

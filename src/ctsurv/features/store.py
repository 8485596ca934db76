"""A cohort's preprocessed volumes on disk, read one at a time: stream them, never stack them.

At ``configs/paper.yaml``'s 160×224×224 a preprocessed volume is 16 MB in float16, so a CT-RATE-sized cohort
(50 k studies) does not fit in memory as one tensor. :func:`volume_store` instead makes sure every volume has
its entry in the on-disk cache of :class:`~ctsurv.features.preprocess.Preprocessor` (one ``.npy`` per volume,
as MONAI's ``PersistentDataset`` keeps them) and returns a :class:`VolumeStore` that reads them back lazily:

    cohort.volume_paths --Preprocessor, in data.workers processes--> cache_dir/<key>.npy (float32, atomic writes)
                        --VolumeStore[i], memory-mapped read-->      (C, X, Y, Z) float16

Rules:

* The values are those the stacked tensor held before: the float32 result rounded to float16 by torch.
* Preprocessing is resumable: a cache entry is written whole or not at all (write to a temporary file, then
  rename), so an interrupted pass leaves only complete entries and the next pass computes just the missing ones.
* ``data.cache_dir`` unset: the entries go to a temporary folder (``tempfile``, so ``TMPDIR`` decides where)
  that is removed when the store is closed or garbage-collected, or the interpreter exits. Set
  ``data.cache_dir`` for a big cohort: a folder on a disk with room for it, reused by the next run.
* Workers: ``data.workers`` processes (default ``min(4, CPU count)``); 1 preprocesses in this process.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from numbers import Integral
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from rich.progress import track
from torch.utils.data import Dataset

from ctsurv.config import DataConfig
from ctsurv.errors import CtsurvError
from ctsurv.features.preprocess import Preprocessor
from ctsurv.io.cohort import Cohort

Job = tuple[Path, Any, "tuple[float, float] | None", "Path | None"]  # (volume, spacing_zyx, rescale to HU, mask) of a row
STORE_DTYPE = torch.float16  # half the memory of float32; what every consumer has always read


def default_workers() -> int:
    """Preprocessing processes when ``data.workers`` is unset: min(4, CPU count)."""
    return max(1, min(4, os.cpu_count() or 1))


class VolumeStore(Dataset):
    """Preprocessed volumes (C, X, Y, Z) float16, each read from its ``.npy`` cache file when asked for.

    Indexing follows what the consumers do with a stacked (N, C, X, Y, Z) tensor:

    * ``store[i]`` (an integer): volume i, (C, X, Y, Z);
    * ``store[a:b]`` (a slice): those volumes stacked, (b - a, C, X, Y, Z), the batch loops of encoding;
    * ``store[rows]`` (a sequence or array of integers, or a boolean mask): a lazy sub-store of those volumes
      in that order, e.g. the training studies of a split; nothing is read until it is indexed.

    Only the volumes asked for are ever in memory. ``close()`` (or ``with store:``) removes a temporary cache.
    :meth:`mask` reads a study's region mask, (X, Y, Z) bool, when the cohort gave one.
    """

    def __init__(
        self, files: Sequence[Path], shape: tuple[int, ...], scratch: tempfile.TemporaryDirectory | None = None,
        mask_files: Sequence[Path | None] | None = None,
    ) -> None:
        self.files = list(files)
        self.mask_files = list(mask_files) if mask_files is not None else [None] * len(self.files)
        self.shape = (len(self.files), *shape)  # (N, C, X, Y, Z), as the stacked tensor's
        self.dtype = STORE_DTYPE
        self._scratch = scratch  # the temporary cache folder, if any: kept alive by every sub-store

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: Any) -> torch.Tensor | VolumeStore:
        if isinstance(index, Integral):
            return self._read(int(index))
        if isinstance(index, slice):
            rows = range(*index.indices(len(self)))
            if not rows:
                return torch.empty((0, *self.shape[1:]), dtype=self.dtype)
            return torch.stack([self._read(i) for i in rows])
        rows = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise IndexError(f"a boolean mask must have one entry per volume ({len(self)}), got shape {rows.shape}")
            rows = np.flatnonzero(rows)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise IndexError(f"index a VolumeStore with an integer, a slice, integer rows or a boolean mask, not {index!r}")
        return VolumeStore([self.files[int(i)] for i in rows], self.shape[1:], self._scratch,
                           [self.mask_files[int(i)] for i in rows])

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self._read(i) for i in range(len(self)))

    def _read(self, i: int) -> torch.Tensor:
        """Volume i, memory-mapped from its cache file and rounded to float16 (as ``.to(torch.float16)`` did)."""
        try:
            mapped = np.load(self.files[i], mmap_mode="r", allow_pickle=False)
            volume = torch.from_numpy(np.array(mapped, dtype=np.float32))  # one copy; the mapping goes with `mapped`
        except (OSError, ValueError, EOFError) as e:
            raise CtsurvError(
                f"cannot read the preprocessed volume {self.files[i]} ({e}); it was removed or damaged after "
                "preprocessing: run the command again (the cache recomputes missing entries)"
            ) from e
        if tuple(volume.shape) != self.shape[1:]:
            raise CtsurvError(f"{self.files[i]} holds shape {tuple(volume.shape)}, expected {self.shape[1:]}; run the command again")
        return volume.to(self.dtype)

    @property
    def has_masks(self) -> bool:
        """Whether any study of the store has a region mask."""
        return any(f is not None for f in self.mask_files)

    def mask(self, i: int) -> torch.Tensor | None:
        """Study i's region mask on the preprocessed grid, (X, Y, Z) bool, or None when it has none: no mask
        file, or one whose region is empty, or lies wholly outside the preprocessed field."""
        file = self.mask_files[i]
        if file is None:
            return None
        try:
            mask = torch.from_numpy(np.load(file, allow_pickle=False)).bool()
        except (OSError, ValueError, EOFError) as e:
            raise CtsurvError(f"cannot read the preprocessed mask {file} ({e}); run the command again") from e
        if tuple(mask.shape) != self.shape[2:]:
            raise CtsurvError(f"{file} holds shape {tuple(mask.shape)}, expected {self.shape[2:]}; run the command again")
        return mask if bool(mask.any()) else None

    @property
    def persistent(self) -> bool:
        """Whether the entries live in ``data.cache_dir`` (kept for later runs), not in a temporary folder."""
        return self._scratch is None

    def close(self) -> None:
        """Remove the temporary cache folder, if this store made one (sub-stores share it)."""
        if self._scratch is not None:
            self._scratch.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def volume_store(cohort: Cohort, data: DataConfig, progress: bool = False, workers: int | None = None) -> VolumeStore:
    """The cohort's volumes preprocessed (cached on disk, computing only the missing entries) as a :class:`VolumeStore`.

    ``workers`` overrides ``data.workers``. See the module's docstring for where the cache goes.
    """
    scratch = None
    if data.cache_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="ctsurv-volumes-")
        data = dataclasses.replace(data, cache_dir=scratch.name)
    try:
        pre = Preprocessor(data)
        jobs = [(Path(p), cohort.spacing_zyx(i), cohort.rescale(i), cohort.mask_path(i)) for i, p in enumerate(cohort.volume_paths)]
        files = [_cache_file(pre, *job) for job in jobs]
        mask_files = [None if job[3] is None else _mask_file(pre, file, job) for job, file in zip(jobs, files)]
        preprocess_missing(pre, jobs, files, workers or data.workers or default_workers(), progress)
    except BaseException:
        if scratch is not None:
            scratch.cleanup()
        raise
    return VolumeStore(files, (data.in_channels, *pre.shape_xyz), scratch, mask_files)


def preprocess_missing(
    pre: Preprocessor, jobs: list[Job], files: list[Path], workers: int, progress: bool = False
) -> int:
    """Preprocess the (path, spacing, rescale, mask) ``jobs`` whose cache ``files`` (or their masks' entries) are
    missing or incomplete; returns how many.

    Each entry is computed once even if several rows share a volume; ``workers`` > 1 runs them in that many
    processes, 1 in this one. An error stops the pass; the entries already written stay for the next pass.
    """
    todo: dict[Path, Job] = {}
    for job, file in zip(jobs, files):
        if file not in todo and not _complete(file, pre, job[3]):
            todo[file] = job
    tasks = list(todo.values())
    description = f"preprocessing {len(tasks)} of {len(files)} volumes"
    if workers <= 1 or len(tasks) <= 1:
        for job in track(tasks, description=description, disable=not progress):
            _load(pre, job)
        return len(tasks)
    # fork: the workers start at once (no re-import of torch); they run torch ops on one thread each, as a
    # DataLoader's workers do, and never touch CUDA
    pool = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=get_context("fork"),
                               initializer=_start_worker, initargs=(pre.cfg,))
    try:
        done = pool.map(_preprocess_one, tasks, chunksize=1)
        for _ in track(done, total=len(tasks), description=description, disable=not progress):
            pass
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # stop at the first error: the running volumes finish whole
        raise
    pool.shutdown(wait=True)
    return len(tasks)


def _load(pre: Preprocessor, job: Job) -> None:
    """Preprocess one (path, spacing, rescale, mask) into its cache entries; an unexpected error names the volume."""
    path, spacing, rescale, mask = job
    try:
        pre.load_with_mask(path, spacing_zyx=spacing, rescale=rescale, mask=mask)
    except CtsurvError:
        raise  # read_volume's errors already name the file and what to do
    except Exception as e:
        raise CtsurvError(f"{path}: preprocessing failed ({type(e).__name__}: {e}); check that the volume opens "
                          "with `ctsurv inspect`, or remove it from the cohort table") from e


def _cache_file(pre: Preprocessor, path: Path, spacing: Any, rescale: tuple[float, float] | None, mask: Path | None) -> Path:
    """The cache entry of one volume; a missing or unreadable path fails here, with read_volume's message."""
    file = pre.cache_file(path, spacing, rescale, mask)
    if file is None:
        pre.load(path, spacing_zyx=spacing, rescale=rescale)  # raises read_volume's error, which says what is wrong with the path
        raise CtsurvError(f"{path}: cannot fingerprint this volume for the preprocessing cache; check that it is readable")
    return file


def _mask_file(pre: Preprocessor, file: Path, job: Job) -> Path:
    """The cache entry of one study's mask; a missing mask path fails here, with read_mask's message."""
    mask_file = pre.mask_cache_file(file, job[3])  # type: ignore[arg-type]
    if mask_file is None:
        _load(pre, job)  # raises read_mask's error
        raise CtsurvError(f"{job[3]}: cannot fingerprint this mask for the preprocessing cache; check that it is readable")
    return mask_file


def _complete(file: Path, pre: Preprocessor, mask: Path | None = None) -> bool:
    """Whether ``file`` is a whole cache entry of the right shape and dtype, and so is its ``mask``'s if the study
    has one (reads the headers only)."""
    entries = [(file, (pre.cfg.in_channels, *pre.shape_xyz), np.float32)]
    if mask is not None:
        mask_file = pre.mask_cache_file(file, mask)
        if mask_file is None:
            return False
        entries.append((mask_file, pre.shape_xyz, np.uint8))
    for entry, shape, dtype in entries:
        try:
            mapped = np.load(entry, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return False
        if mapped.shape != tuple(shape) or mapped.dtype != dtype:
            return False
    return True


_worker_preprocessor: Preprocessor | None = None


def _start_worker(data: DataConfig) -> None:
    """One thread per worker process (the processes are the parallelism) and its own Preprocessor."""
    global _worker_preprocessor
    torch.set_num_threads(1)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    _worker_preprocessor = Preprocessor(data)


def _preprocess_one(job: Job) -> None:
    """Preprocess one volume into its cache entry (the parent reads it back from disk, not from a pipe)."""
    assert _worker_preprocessor is not None, "_start_worker did not run"
    _load(_worker_preprocessor, job)

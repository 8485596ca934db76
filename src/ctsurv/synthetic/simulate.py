"""Writing a synthetic cohort to disk (``ctsurv simulate``), and new outcomes for a cohort already written.

:mod:`ctsurv.synthetic.patients` draws a cohort in memory (findings, clinical data, risk, outcomes, truth);
this module is the part with side effects: it renders the phantom volumes in worker processes, writes
them as reproducible NIfTI files, writes the cohort and truth tables atomically, and refuses to
overwrite an existing cohort. Kept apart so that the risk model reads on its own, without file handling.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pandas as pd

from ctsurv.errors import CtsurvError
from ctsurv.synthetic.geometry import affine_for
from ctsurv.synthetic.patients import (
    CATEGORICAL_COLUMNS,
    CLINICAL_COLUMNS,
    CLINICAL_WEIGHTS,
    IMAGE_WEIGHTS,
    NUMERIC_COLUMNS,
    draw_cohort,
    draw_outcomes,
    prevalences,
    stream,
)
from ctsurv.synthetic.phantom import render_phantom
from ctsurv.text.findings import Findings

if TYPE_CHECKING:
    from rich.table import Table


@dataclass(frozen=True)
class SimulationSummary:
    """What :func:`simulate` wrote, in numbers (printed by ``ctsurv simulate`` via :meth:`to_table`)."""

    out_dir: Path
    n: int
    events: int
    median_follow_up_days: float  # reverse Kaplan-Meier median
    prevalence: dict[str, float]  # per finding label
    seconds: float

    def to_table(self) -> Table:
        """A rich Table of the summary, for the command line."""
        from rich.table import Table

        table = Table(title=f"synthetic cohort: {self.out_dir}", show_header=False)
        table.add_row("patients", str(self.n))
        table.add_row("events", f"{self.events} ({self.events / self.n:.0%})")
        table.add_row("median follow-up", f"{self.median_follow_up_days:.0f} days")
        for label, p in self.prevalence.items():
            table.add_row(f"  {label}", f"{p:.0%}")
        table.add_row("time", f"{self.seconds:.1f} s")
        return table


def median_follow_up(time: np.ndarray, event: np.ndarray) -> float:
    """Reverse Kaplan-Meier median follow-up (censoring treated as the event), in the unit of ``time``."""
    times, inverse = np.unique(np.asarray(time, float), return_inverse=True)
    censored = np.bincount(inverse, weights=1 - np.asarray(event, float))  # (T,) "events" of the reverse KM
    at_risk = len(inverse) - np.cumsum(np.bincount(inverse)) + np.bincount(inverse)
    below = np.flatnonzero(np.cumprod(1 - censored / at_risk) <= 0.5)
    return float(times[below[0]]) if len(below) else float("inf")


def write_volume(path: Path, hu: np.ndarray, affine: np.ndarray) -> None:
    """int16 NIfTI (qform and sform = the RAS affine, mm), gzipped byte-for-byte reproducibly, written atomically."""
    image = nib.Nifti1Image(hu.astype(np.int16), affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    # mtime 0: the same seed gives the same bytes; level 1: the noise barely compresses at any level
    data = gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# (patient index, findings, seed, shape_zyx, spacing_zyx, volume path)
RenderTask = tuple[int, Findings, int, tuple[int, int, int], tuple[float, float, float], str]


def _render_one(task: RenderTask) -> int:
    """Render patient i's volume and write it (runs in a worker process)."""
    i, findings, seed, shape, spacing, path = task
    hu = render_phantom(findings, shape, spacing, stream(seed, i, "phantom"))
    write_volume(Path(path), hu, affine_for(shape, spacing))
    return i


def _write_table(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def check_simulation_args(n: int, seed: int, image_signal: float, clinical_signal: float,
                          shape_zyx: Sequence[int] = (8, 8, 8), spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
                          workers: int | None = None, n_option: str = "--n") -> None:
    """Raise a :class:`CtsurvError` naming the option when an argument of :func:`simulate` is invalid."""
    if n < 10:
        raise CtsurvError(f"{n_option} must be at least 10 patients (a survival model needs events to learn from), got {n}")
    if seed < 0:
        raise CtsurvError(f"--seed must be a non-negative integer, got {seed}")
    for name, v in (("--image-signal", image_signal), ("--clinical-signal", clinical_signal)):
        if not math.isfinite(v) or v < 0:
            raise CtsurvError(f"{name} is the SD of a part of the log-hazard and must be a finite number >= 0, got {v}")
    if len(shape_zyx) != 3 or any(int(v) != v or v < 8 for v in shape_zyx):
        raise CtsurvError(f"--shape must be three integers >= 8 (Z Y X voxels), got {tuple(shape_zyx)}")
    if len(spacing_zyx) != 3 or any(not math.isfinite(v) or v <= 0 for v in spacing_zyx):
        raise CtsurvError(f"--spacing must be three positive numbers in mm (Z Y X), got {tuple(spacing_zyx)}")
    if workers is not None and workers < 1:
        raise CtsurvError(f"--workers must be at least 1, got {workers}")


def refuse_existing(out_dir: Path) -> None:
    """A CtsurvError if ``out_dir`` is a file or already holds a cohort (simulate never overwrites one)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CtsurvError(f"{out_dir} exists and is not a folder; choose another --out")
    for name in ("cohort.csv", "truth.csv"):
        if (out_dir / name).exists():
            raise CtsurvError(f"{out_dir / name} already exists; simulate never overwrites a cohort: choose a new "
                              "--out folder or delete the old one")


def simulate(out_dir: str | Path, n: int = 600, seed: int = 0, image_signal: float = 1.0, clinical_signal: float = 0.3,
             shape_zyx: tuple[int, int, int] = (48, 64, 64), spacing_zyx: tuple[float, float, float] = (6.0, 5.0, 5.0),
             workers: int | None = None, progress: bool = True) -> SimulationSummary:
    """Write a synthetic cohort to ``out_dir``: volumes/<id>.nii.gz, truth.csv, simulation.json, then cohort.csv.

    cohort.csv: id, volume (relative path), findings, impression (report text), time (days), event,
    and CLINICAL_COLUMNS. truth.csv (evaluation only): id, log_hazard and its image/clinical parts,
    f, g (unscaled scores), the finding labels and the sizes/counts behind them. The tables are written
    last, each atomically, so an interrupted run never leaves a cohort.csv pointing at missing volumes.
    The result depends on ``seed`` only, not on ``workers`` (default: all cores).
    """
    from ctsurv.synthetic.reports import write_report

    start = time.perf_counter()
    check_simulation_args(n, seed, image_signal, clinical_signal, shape_zyx, spacing_zyx, workers)
    shape = tuple(int(v) for v in shape_zyx)
    spacing = tuple(float(v) for v in spacing_zyx)
    out = Path(out_dir)
    refuse_existing(out)
    (out / "volumes").mkdir(parents=True, exist_ok=True)

    draw = draw_cohort(n, seed, image_signal, clinical_signal)
    ids = draw.clinical["id"].tolist()
    reports = [write_report(f, stream(seed, i, "report")) for i, f in enumerate(draw.findings)]
    paths = [out / "volumes" / f"{pid}.nii.gz" for pid in ids]
    tasks = [(i, f, seed, shape, spacing, str(p)) for i, (f, p) in enumerate(zip(draw.findings, paths))]
    _run(tasks, workers or os.cpu_count() or 1, progress)

    cohort = pd.concat([draw.clinical[["id"]],
                        pd.DataFrame({"volume": [f"volumes/{pid}.nii.gz" for pid in ids],
                                      "findings": [r[0] for r in reports], "impression": [r[1] for r in reports]}),
                        draw.outcomes[["time", "event"]], draw.clinical[list(CLINICAL_COLUMNS)]], axis=1)
    meta = {"n": n, "seed": seed, "image_signal": image_signal, "clinical_signal": clinical_signal,
            "shape_zyx": list(shape), "spacing_zyx": list(spacing), "time_unit": "days",
            "numeric_columns": list(NUMERIC_COLUMNS), "categorical_columns": list(CATEGORICAL_COLUMNS),
            "image_weights": IMAGE_WEIGHTS, "clinical_weights": CLINICAL_WEIGHTS}
    (out / ".simulation.json.tmp").write_text(json.dumps(meta, indent=2))
    os.replace(out / ".simulation.json.tmp", out / "simulation.json")
    _write_table(draw.truth, out / "truth.csv")
    _write_table(cohort, out / "cohort.csv")  # last: its presence means the cohort is complete
    return SimulationSummary(out, n, int(cohort["event"].sum()), median_follow_up(cohort["time"], cohort["event"]),
                             prevalences(draw.findings), time.perf_counter() - start)


def _run(tasks: list[RenderTask], workers: int, progress: bool) -> None:
    """Render and write the volumes, in ``workers`` processes, with a progress bar when asked."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    def bar() -> Progress:
        columns = (TextColumn("rendering volumes"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        return Progress(*columns, disable=not progress, transient=True)

    if workers == 1:
        with bar() as b:
            for task in b.track(tasks):
                _render_one(task)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
        done = pool.map(_render_one, tasks, chunksize=4)  # submits all: the workers start before the bar's thread
        with bar() as b:
            for _ in b.track(done, total=len(tasks)):
                pass


def resample_outcomes(cohort_dir: str | Path, image_signal: float, clinical_signal: float, seed: int,
                      out_dir: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """New times and events for an existing cohort (same scans, findings, reports and clinical data) with
    new signal strengths, from the f and g scores in its truth.csv; returns (cohort, truth) tables.

    With the seed the cohort was made with and its signal strengths this reproduces its outcomes; with
    the same seed and other strengths, the same random draws meet a new log-hazard (a smooth sweep).
    With ``out_dir`` the tables are also written there (volume paths rewritten to point at the original
    volumes), ready for ``ctsurv survival``.
    """
    src = Path(cohort_dir)
    for name in ("cohort.csv", "truth.csv"):
        if not (src / name).is_file():
            raise CtsurvError(f"{src / name} not found; resample_outcomes needs a folder written by `ctsurv simulate`")
    check_simulation_args(10, seed, image_signal, clinical_signal, (8, 8, 8), (1.0, 1.0, 1.0), None)
    text = {"id": str, **{c: str for c in CATEGORICAL_COLUMNS}}
    cohort = pd.read_csv(src / "cohort.csv", dtype=text, keep_default_na=False, na_values=[""])
    words = ("pleural_effusion_side", "pleural_effusion_size", "emphysema_severity", "consolidation_lobes")
    truth = pd.read_csv(src / "truth.csv", dtype={"id": str, **{c: str for c in words}}, keep_default_na=False,
                        na_values=[""])
    if cohort["id"].tolist() != truth["id"].tolist():
        raise CtsurvError(f"the ids of {src / 'cohort.csv'} and {src / 'truth.csv'} differ; they are not one "
                          "simulated cohort")
    out = draw_outcomes(truth["f"].to_numpy(), truth["g"].to_numpy(), image_signal, clinical_signal, seed)
    cohort[["time", "event"]] = out[["time", "event"]].to_numpy()
    parts = ["log_hazard", "log_hazard_image", "log_hazard_clinical"]
    truth[parts] = out[parts].to_numpy()
    if out_dir is not None:
        dest = Path(out_dir)
        refuse_existing(dest)
        dest.mkdir(parents=True, exist_ok=True)
        cohort["volume"] = [os.path.relpath((src / v).resolve(), dest.resolve()) for v in cohort["volume"]]
        _write_table(truth, dest / "truth.csv")
        _write_table(cohort, dest / "cohort.csv")
    return cohort, truth

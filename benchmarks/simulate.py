"""Benchmark ``ctsurv simulate``: wall time, time per volume, disk size, and what the drawn cohort looks like.

    python benchmarks/simulate.py --out /tmp/ctsurv-bench --n 600 --workers 2 [--montage montage.png]

Prints a Markdown block for benchmarks/simulate.md: the simulate() wall time, the single-process render
time per volume at the same shape, the size on disk, the event rate and median follow-up, and two
diagnostics of the risk model: corr(f, g) and the R^2 of the image score f from the clinical features
(how much of the image risk clinical data already carries). With --ceilings it also prints test-half
C-indices (lifelines) of what the truth allows: a clinical-only Cox on the recorded columns vs the same
Cox plus the true image score f, over a sweep of the clinical signal.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ctsurv.synthetic.patients import clinical_features, draw_cohort, sample_patient, stream
from ctsurv.synthetic.phantom import render_phantom
from ctsurv.synthetic.simulate import simulate


def render_seconds(shape: tuple[int, int, int], spacing: tuple[float, float, float], k: int = 20) -> float:
    """Mean seconds to render one volume (no writing) in this process, over k drawn patients."""
    findings = [sample_patient(stream(99, i, "patient")).findings for i in range(k)]
    render_phantom(findings[0], shape, spacing, stream(99, 0, "phantom"))  # warm-up
    start = time.perf_counter()
    for i, f in enumerate(findings):
        render_phantom(f, shape, spacing, stream(99, i, "phantom"))
    return (time.perf_counter() - start) / k


def r2_of_f_from_clinical(n: int = 4000) -> tuple[float, float]:
    """(corr(f, g), R^2 of f regressed on the clinical features) over n drawn patients."""
    draw = draw_cohort(n, 0, 1.0, 0.3)
    x = pd.DataFrame([clinical_features(sample_patient(stream(0, i, "patient")).clinical) for i in range(n)])
    design = np.c_[np.ones(n), x.to_numpy()]
    f, g = draw.truth["f"].to_numpy(), draw.truth["g"].to_numpy()
    beta = np.linalg.lstsq(design, f, rcond=None)[0]
    return float(np.corrcoef(f, g)[0, 1]), float(1 - np.var(f - design @ beta) / np.var(f))


def _test_half_c(x: pd.DataFrame, time: np.ndarray, event: np.ndarray) -> float:
    """Harrell's C on the second half of a Cox model (lifelines, small ridge) fitted on the first half."""
    import lifelines
    from lifelines.utils import concordance_index

    half, table = len(x) // 2, x.assign(time=time, event=event)
    fit = lifelines.CoxPHFitter(penalizer=0.01).fit(table.iloc[:half], "time", "event")
    return concordance_index(time[half:], -fit.predict_partial_hazard(table.iloc[half:]).to_numpy(), event[half:])


def ceilings(n: int = 4000, clinical_signals: tuple[float, ...] = (0.0, 0.3, 0.6, 1.0)) -> None:
    """Print a Markdown table of what the truth allows, image signal 1: test-half C of a clinical-only Cox on the
    recorded columns (mean imputation + missing indicators) and of the same Cox plus the true image score f."""
    from lifelines.utils import concordance_index

    from ctsurv.synthetic.patients import CATEGORICAL_COLUMNS, NUMERIC_COLUMNS

    print("| clinical signal | events | oracle (true eta) | clinical Cox | clinical Cox + true f | gain |")
    print("|---|---|---|---|---|---|")
    for signal in clinical_signals:
        draw = draw_cohort(n, 0, 1.0, signal)
        c, t, e = draw.clinical, draw.outcomes["time"].to_numpy(), draw.outcomes["event"].to_numpy()
        x = pd.get_dummies(c[list(CATEGORICAL_COLUMNS)].fillna("missing"), drop_first=True).astype(float)
        for col in NUMERIC_COLUMNS:  # mean imputation + a missing indicator where values are missing
            v = c[col].astype(float)
            x[col] = v.fillna(v.mean())
            if v.isna().any():
                x[f"{col}_missing"] = v.isna().astype(float)
        oracle = concordance_index(t[n // 2:], -draw.truth["log_hazard"].to_numpy()[n // 2:], e[n // 2:])
        clinical, both = _test_half_c(x, t, e), _test_half_c(x.assign(f=draw.truth["f"].to_numpy()), t, e)
        print(f"| {signal} | {e.mean():.0%} | {oracle:.3f} | {clinical:.3f} | {both:.3f} | {both - clinical:+.3f} |")


def save_montage(cohort_dir: Path, png: Path, k: int = 6) -> None:
    """Mid-axial, coronal and sagittal slices of the first k volumes, titled with their findings labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    from ctsurv.io.inspect import axial, coronal, sagittal

    truth = pd.read_csv(cohort_dir / "truth.csv", dtype={"id": str})
    labels = [c for c in truth.columns[6:16]]
    fig, axes = plt.subplots(3, k, figsize=(3 * k, 9))
    for j in range(k):
        hu = np.asarray(nib.load(cohort_dir / "volumes" / f"{truth['id'][j]}.nii.gz").dataobj, dtype=np.float32)
        nx, ny, nz = hu.shape
        present = [name for name in labels if truth[name][j]] or ["normal"]
        for r, img in enumerate((axial(hu, int(nz * 0.55)), coronal(hu, int(ny * 0.45)), sagittal(hu, int(nx * 0.6)))):
            axes[r, j].imshow(img, cmap="gray", vmin=-1000, vmax=400, aspect="auto")
            axes[r, j].axis("off")
        axes[0, j].set_title(f"{truth['id'][j]}: " + ", ".join(present), fontsize=7, wrap=True)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder to simulate into (deleted first if --overwrite)")
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shape", type=int, nargs=3, default=(48, 64, 64))
    p.add_argument("--spacing", type=float, nargs=3, default=(6.0, 5.0, 5.0))
    p.add_argument("--overwrite", action="store_true", help="delete --out before simulating")
    p.add_argument("--montage", type=Path, help="also save a montage PNG of the first volumes")
    p.add_argument("--ceilings", action="store_true", help="also print C-indices the truth allows (needs lifelines)")
    args = p.parse_args()
    if args.overwrite and args.out.exists():
        shutil.rmtree(args.out)
    shape, spacing = tuple(args.shape), tuple(args.spacing)

    load = os.getloadavg()[0]
    summary = simulate(args.out, n=args.n, seed=0, shape_zyx=shape, spacing_zyx=spacing, workers=args.workers)
    per_volume = render_seconds(shape, spacing)
    volumes = list((args.out / "volumes").glob("*.nii.gz"))
    size = sum(v.stat().st_size for v in volumes)
    corr, r2 = r2_of_f_from_clinical()
    if args.montage:
        save_montage(args.out, args.montage)

    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores, load average before: {load:.1f}")
    print(f"command: python benchmarks/simulate.py --out {args.out} --n {args.n} --workers {args.workers} "
          f"--shape {' '.join(map(str, shape))} --spacing {' '.join(map(str, spacing))}")
    print("| quantity | value |\n|---|---|")
    print(f"| simulate() wall time, {args.n} patients, {args.workers} workers | {summary.seconds:.1f} s |")
    print(f"| wall time per patient | {summary.seconds / args.n * 1000:.0f} ms |")
    print(f"| render one volume, one process (no writing) | {per_volume * 1000:.0f} ms |")
    print(f"| volumes on disk | {size / 2**20:.1f} MiB ({size / len(volumes) / 1024:.0f} KiB each, int16 .nii.gz) |")
    print(f"| events | {summary.events} ({summary.events / args.n:.0%}) |")
    print(f"| median follow-up (reverse KM) | {summary.median_follow_up_days:.0f} days |")
    print(f"| corr(f, g) / R^2 of f from clinical features (n=4000) | {corr:.2f} / {r2:.2f} |")
    print("| prevalence | " + ", ".join(f"{k} {v:.0%}" for k, v in summary.prevalence.items()) + " |")
    if args.ceilings:
        print()
        ceilings()


if __name__ == "__main__":
    main()

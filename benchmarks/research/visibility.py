"""Is a finding visible in the phantom at the demo's resolution? A classical detector, no training.

    python benchmarks/research/visibility.py --test DIR [--sigma 4.0] [key=value ...]
    python benchmarks/research/visibility.py --test DIR data.hu_window=[-200,1300]   # blobness of the bone window

For every study of a simulated cohort (``ctsurv simulate``), preprocessed as configs/demo.yaml says,
the score is the largest blobness (:func:`ctsurv.features.preprocess.blobness`, ITK's Hessian objectness
for bright round objects) of the lung-window image (``data.hu_window``) anywhere in the volume. Its AUC and its best
accuracy over all thresholds (an optimistic bound: the threshold is chosen on the same studies) are
reported against the generator's truth for each finding, and written to benchmarks/research/visibility.md.
A high AUC says the finding is there to be seen; it says nothing about what a model learns.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ctsurv.config import load_config
from ctsurv.features.preprocess import Preprocessor
from ctsurv.io.cohort import load_cohort

HERE = Path(__file__).parent
ROOT = HERE.resolve().parents[1]  # the repository root
FINDINGS = ["Lung nodule", "Lung mass", "Lymphadenopathy", "Consolidation", "Emphysema", "Pleural effusion",
            "Arterial wall calcification", "Lytic bone lesion"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--sigma", type=float, default=4.0, help="Gaussian scale of the blobness, mm")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.target_spacing_zyx=[4.5,3.333,3.333]")
    args = parser.parse_args()
    overrides = [*args.overrides, "data.extra_hu_windows=[]", "data.blob_windows=[0]",
                 f"data.blob_sigmas_mm=[{args.sigma}]"]
    cfg = load_config(ROOT / "configs" / "demo.yaml", overrides)
    cohort = load_cohort(args.test / "cohort.csv", cfg.data)
    pre = Preprocessor(cfg.data)
    t0 = time.perf_counter()
    score = np.array([float(pre.load(p, cohort.spacing_zyx(i))[1].max()) for i, p in enumerate(cohort.volume_paths)])
    seconds = time.perf_counter() - t0
    truth = pd.read_csv(args.test / "truth.csv", dtype={"id": str}).set_index("id").loc[cohort.ids]
    lines = [
        f"| {f} | {truth[f].mean():.2f} | {roc_auc_score(truth[f], score):.3f} | "
        f"{max(((score >= t) == truth[f].to_numpy()).mean() for t in np.unique(score)):.3f} |"
        for f in FINDINGS
    ]
    text = "\n".join(
        [
            f"\n## {args.test} ({len(cohort)} studies), blobness at {args.sigma} mm, {' '.join(args.overrides) or 'demo grid'}\n",
            "| finding | prevalence | AUC of the volume's largest blobness | best accuracy (optimistic) |",
            "|---|---|---|---|",
            *lines,
            f"\n{seconds / len(cohort):.2f} s per study (read, preprocess, blobness).\n",
        ]
    )
    print(text)
    with (HERE / "visibility.md").open("a") as f:
        f.write(text)


if __name__ == "__main__":
    main()

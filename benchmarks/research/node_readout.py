"""Lymph nodes: are they in the image, and how many training studies does a reader need to find them?

    python benchmarks/research/node_readout.py [--work DIR] [--seeds 0 7 11] [--n 600] [--sizes 510 1020 1800]

Simulates (or reuses) one cohort of --n studies per training seed and a test cohort (seed 1000, 200
studies) under --work, preprocesses them as configs/demo.yaml says, and reads lymphadenopathy with the
simplest reader that knows where things are: a logistic regression (standardised, L2) on the mediastinal
window (the first of ``data.extra_hu_windows``) averaged to 16 × 16 × 12 cells, either of the whole field
or of its central part (half the width in x and y, two thirds of the height in z: the mediastinum and the
hila on the demo's 320 × 320 × 288 mm field; cells of 10 × 10 × 16 mm). It is fitted on the first N
training studies (seeds in order) against the generator's truth and scored on the test cohort: AUC, and
accuracy at P = 0.5. Writes benchmarks/research/node_readout.md.

Why: stage 0's CNN pools its grid by mean and maximum, which forgets where a feature was. An enlarged node
differs from normal anatomy mainly by where it is (soft tissue at a nodal station, where there is
otherwise fat or lung), and the CNN's linear readout of nodes stays near chance (benchmarks/pretrain.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ctsurv.config import load_config
from ctsurv.features.preprocess import Preprocessor
from ctsurv.io.cohort import load_cohort
from ctsurv.models.projector import CELLS_XYZ, central_cells
from ctsurv.synthetic.simulate import simulate

HERE = Path(__file__).parent
ROOT = HERE.resolve().parents[1]  # the repository root
FINDING = "Lymphadenopathy"


def cells(volume: torch.Tensor, whole: bool = False) -> np.ndarray:
    """A preprocessed volume (C, X, Y, Z) -> its mediastinal window (the first of ``data.extra_hu_windows``,
    channel 1) averaged to CELLS_XYZ cells (3072,), of the central field (what the findings head reads with
    ``projector.findings_cells_channel: 1``) or, with ``whole``, of all of it."""
    if whole:
        return F.adaptive_avg_pool3d(volume[None, 1:2].float(), CELLS_XYZ).flatten().numpy()
    return central_cells(volume[None], channel=1)[0].numpy()


def features(cohort_dir: Path, pre: Preprocessor, cfg) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Cell averages of the mediastinal window ({"central": (n, 3072), "whole": (n, 3072)}) and the truth."""
    cohort = load_cohort(cohort_dir / "cohort.csv", cfg.data)
    rows: dict[str, list[np.ndarray]] = {"central": [], "whole": []}
    for i, path in enumerate(cohort.volume_paths):
        volume = pre.load(path, cohort.spacing_zyx(i))
        rows["central"].append(cells(volume))
        rows["whole"].append(cells(volume, whole=True))
    truth = pd.read_csv(cohort_dir / "truth.csv", dtype={"id": str}).set_index("id").loc[cohort.ids]
    return {k: np.stack(v) for k, v in rows.items()}, truth[FINDING].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctsurv-nodes"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 7, 11])
    parser.add_argument("--n", type=int, default=600, help="studies per training seed")
    parser.add_argument("--sizes", type=int, nargs="+", default=[510, 1020, 1800])
    parser.add_argument("--C", type=float, default=0.01, help="inverse L2 strength on standardised cells")
    args = parser.parse_args()
    if any(s == 1000 for s in args.seeds):
        parser.error("seed 1000 is the test cohort's")
    if max(args.sizes) > args.n * len(args.seeds):
        parser.error(f"--sizes go up to {max(args.sizes)}, but the seeds give {args.n * len(args.seeds)} studies")
    cfg = load_config(ROOT / "configs" / "demo.yaml", [])
    pre = Preprocessor(cfg.data)
    dirs = [(args.work / f"seed{s}", args.n, s) for s in args.seeds] + [(args.work / "test", 200, 1000)]
    for d, n, seed in dirs:
        if not (d / "cohort.csv").exists():
            simulate(d, n=n, seed=seed, progress=False)
    t0 = time.perf_counter()
    parts = [features(d, pre, cfg) for d, _, _ in dirs]
    seconds = time.perf_counter() - t0
    (x_test, y_test), train = parts[-1], parts[:-1]
    y_train = np.concatenate([y for _, y in train])
    lines = []
    for view in ("central", "whole"):
        x_train = np.concatenate([x[view] for x, _ in train])
        for size in args.sizes:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=5000))
            p = model.fit(x_train[:size], y_train[:size]).predict_proba(x_test[view])[:, 1]
            lines.append(f"| {view} | {size} | {y_train[:size].mean():.2f} | {roc_auc_score(y_test, p):.3f} | "
                         f"{((p >= 0.5) == y_test).mean():.3f} |")
    text = "\n".join([
        "# Lymph nodes: a linear reader of where soft tissue lies, by training-set size",
        "",
        (
            "Reproduce: `python benchmarks/research/node_readout.py --work DIR "
            f"--seeds {' '.join(map(str, args.seeds))} --n {args.n} --sizes {' '.join(map(str, args.sizes))} "
            f"--C {args.C}`. Test cohort: seed 1000, 200 studies, "
            f"lymphadenopathy in {y_test.mean():.2f} of them (accuracy of always answering no: {1 - y_test.mean():.3f})."
        ),
        "",
        "| view of the mediastinal window | training studies | prevalence (train) | AUC | accuracy at P = 0.5 |",
        "|---|---|---|---|---|",
        *lines,
        "",
        f"{seconds / sum(len(y) for _, y in parts):.2f} s per study (read, preprocess, cell averages).",
        "",
    ])
    (HERE / "node_readout.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Would the findings classifier read lymph nodes if it also saw where soft tissue lies? Offline, on a pretrained model.

    python benchmarks/research/findings_cells.py --work DIR [--C 0.1]

DIR is a `benchmarks/pretrain.py --work DIR` folder (train/, test/, pretrain/). For every presence finding
the generator labels, two logistic regressions like the findings token's (``fit_findings_head``: standardised,
L2) are fitted on the training studies of the run's split against the truth:

- ``pooled``: the frozen encoder's mean- and max-pooled features (what the findings token reads now);
- ``pooled + cells``: those plus the central mediastinal-window cells of ``node_readout.py`` (16 × 16 × 12).

Each is scored three ways: 5-fold out-of-fold log-loss on the training studies, log-loss on the run's held-out
studies (which stage 0 never trained on), and AUC and accuracy on the test cohort (an unseen seed). The
question is which of the first two picks, per finding, the block that is better on the test cohort.
Writes benchmarks/research/findings_cells.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from node_readout import cells
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ctsurv.features import encode_all
from ctsurv.features.preprocess import Preprocessor
from ctsurv.io.cohort import load_cohort
from ctsurv.models.projector import findings_summary
from ctsurv.training.checkpoint import load_checkpoint

HERE = Path(__file__).parent
FINDINGS = ["Lung nodule", "Lymphadenopathy", "Lytic bone lesion", "Consolidation", "Arterial wall calcification",
            "Emphysema", "Lung mass", "Pleural effusion", "Cardiomegaly", "Pericardial effusion"]


def features(cohort_dir: Path, vlm, cfg, chunk: int = 50) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Study ids, pooled encoder features (n, 2*Dv) and mediastinal-window cells (n, 3072)."""
    cohort = load_cohort(cohort_dir / "cohort.csv", cfg.data)
    pre = Preprocessor(cfg.data)
    pooled, views = [], []
    for start in range(0, len(cohort), chunk):  # in chunks: all volumes at once would take GBs
        volumes = torch.stack([pre.load(cohort.volume_paths[i], cohort.spacing_zyx(i))
                               for i in range(start, min(start + chunk, len(cohort)))])
        pooled.append(findings_summary(encode_all(vlm, volumes), vlm.projector.max_token).numpy())
        views += [cells(v) for v in volumes]
    return list(cohort.ids), np.concatenate(pooled), np.stack(views)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--C", type=float, default=0.1, help="inverse L2 strength (the findings token's)")
    args = parser.parse_args()
    vlm, cfg = load_checkpoint(args.work / "pretrain" / "instruct")
    vlm.eval()
    split = pd.read_csv(args.work / "pretrain" / "split.csv", dtype={"id": str}).set_index("id")["split"]
    ids, pooled, cells = features(args.work / "train", vlm, cfg)
    test_ids, test_pooled, test_cells = features(args.work / "test", vlm, cfg)
    truth = pd.read_csv(args.work / "train" / "truth.csv", dtype={"id": str}).set_index("id").loc[ids]
    test_truth = pd.read_csv(args.work / "test" / "truth.csv", dtype={"id": str}).set_index("id").loc[test_ids]
    is_train = (split.loc[ids] == "train").to_numpy()
    blocks = {"pooled": (pooled, test_pooled),
              "pooled + cells": (np.hstack([pooled, cells]), np.hstack([test_pooled, test_cells]))}
    lines = []
    for finding in FINDINGS:
        y, y_test = truth[finding].to_numpy(), test_truth[finding].to_numpy()
        scores = {}
        for name, (x, x_test) in blocks.items():
            model = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=5000))
            oof = cross_val_predict(model, x[is_train], y[is_train], cv=5, method="predict_proba")[:, 1]
            model.fit(x[is_train], y[is_train])
            held_out = model.predict_proba(x[~is_train])[:, 1]
            p = model.predict_proba(x_test)[:, 1]
            scores[name] = (log_loss(y[is_train], oof, labels=[0, 1]), log_loss(y[~is_train], held_out, labels=[0, 1]),
                            roc_auc_score(y_test, p), float(((p >= 0.5) == y_test).mean()))
        pick_oof = min(scores, key=lambda k: scores[k][0])
        pick_held = min(scores, key=lambda k: scores[k][1])
        cells_row = " | ".join(f"{scores[k][0]:.3f} | {scores[k][1]:.3f} | {scores[k][2]:.3f} | {scores[k][3]:.3f}"
                               for k in blocks)
        lines.append(f"| {finding} | {cells_row} | {pick_oof} | {pick_held} |")
    header = " | ".join(f"{k}: {m}" for k in blocks for m in ("out-of-fold log-loss", "held-out log-loss",
                                                                "test AUC", "test accuracy"))
    text = "\n".join([
        "# Findings classifier with and without the mediastinal cells (offline)",
        "",
        (
            f"Reproduce: `python benchmarks/research/findings_cells.py --work {args.work} --C {args.C}`. "
            f"{int(is_train.sum())} training studies, {int((~is_train).sum())} held out, {len(test_ids)} test studies."
        ),
        "",
        f"| finding | {header} | picked by out-of-fold | picked by held-out |",
        "|---|" + "---|" * 10,
        *lines,
        "",
    ])
    (HERE / "findings_cells.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

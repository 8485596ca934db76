"""Where does a pretrained model lose a finding: in the frozen encoder, or in the language model?

    python benchmarks/research/readout_gap.py --work DIR [--finding "Lung nodule" ...]

DIR is a `benchmarks/pretrain.py` work folder (DIR/train, DIR/test with truth.csv, DIR/pretrain). For each
finding, AUCs against the generator's truth on the training studies (the split's "train" rows) and on the
test cohort, of:

- the model's P(yes) (its answer),
- logistic regressions fitted on the training studies' truth, on parts of the frozen encoder's cached
  features (``encode_all``: the projector's token grid, and the max token last): the blob channels' maximum
  (the skip channels, when ``data.blob_sigmas_mm`` is set), the CNN channels' maximum, mean + max of all
  channels (what stage 0's head reads), and the LM's hidden states at the answer and at the visual tokens.

A feature set that reads the finding on the training studies but not on the test cohort has been learnt by
heart. Appends a table to benchmarks/research/readout_gap.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ctsurv.features import encode_all, preprocess_all
from ctsurv.io.cohort import load_cohort
from ctsurv.text.questions import QUESTIONS
from ctsurv.training.checkpoint import load_checkpoint
from ctsurv.training.survival import vlm_features

HERE = Path(__file__).parent
LABELS = [str(q.label) for q in QUESTIONS if q.kind == "presence"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--finding", action="append", help="a presence label (default: nodule, lymph nodes, calcification)")
    args = parser.parse_args()
    findings = args.finding or ["Lung nodule", "Lymphadenopathy", "Arterial wall calcification"]
    run = args.work / "pretrain"
    model, cfg = load_checkpoint(run / "instruct")
    split = pd.read_csv(run / "split.csv", dtype={"id": str})
    train = load_cohort(args.work / "train" / "cohort.csv", cfg.data)
    train = train.subset(np.flatnonzero(np.isin(train.ids, split.id[split.split == "train"])))
    test = load_cohort(args.work / "test" / "cohort.csv", cfg.data)
    parts = {}
    for name, cohort in (("train", train), ("test", test)):
        volumes = preprocess_all(cohort, cfg, progress=False)
        features = encode_all(model, volumes)  # (n, Dv, N)
        answers = vlm_features(model, features, kind="features", cells=model.projector.cells(volumes))
        truth = pd.read_csv(args.work / name / "truth.csv", dtype={"id": str}).set_index("id").loc[cohort.ids]
        parts[name] = (features.numpy(), answers, truth)

    n_blob = cfg.data.n_blob_channels
    n_pooled = model.projector.num_pooled  # the cached features' tokens (a findings token is made later)
    grid = slice(0, n_pooled - 1) if cfg.projector.max_token else slice(0, n_pooled)
    overall_max = (lambda f: f[:, :, -1]) if cfg.projector.max_token else (lambda f: f.max(2))
    sets = {
        "mean + max, all channels": lambda f, a, j: np.concatenate([f[:, :, grid].mean(2), overall_max(f)], 1),
        "CNN channels' max": lambda f, a, j: overall_max(f)[:, : f.shape[1] - n_blob],
        **({"blob channels' max": lambda f, a, j: overall_max(f)[:, -n_blob:]} if n_blob else {}),
        "LM state at the answer": lambda f, a, j: a.hidden.reshape(len(f), len(LABELS), -1)[:, j],
        "LM states at the visual tokens": lambda f, a, j: a.visual.reshape(len(f), -1),
    }
    lines = [f"\n## {args.work} ({len(train)} training studies, {len(test)} test studies)\n",
             "| finding | read by | AUC, training studies | AUC, test cohort | accuracy, test cohort |", "|---|---|---|---|---|"]
    for label in findings:
        j = LABELS.index(label)
        (f_tr, a_tr, t_tr), (f_te, a_te, t_te) = parts["train"], parts["test"]
        y_tr, y_te = t_tr[label].to_numpy(), t_te[label].to_numpy()
        p_tr, p_te = a_tr.p_yes[:, j], a_te.p_yes[:, j]
        lines.append(f"| {label} | the model's P(yes) | {roc_auc_score(y_tr, p_tr):.3f} | {roc_auc_score(y_te, p_te):.3f} | "
                     f"{((p_te > 0.5) == y_te).mean():.3f} |")
        for name, take in sets.items():
            x_tr, x_te = take(f_tr, a_tr, j), take(f_te, a_te, j)
            fit = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)).fit(x_tr, y_tr)
            q_tr, q_te = fit.predict_proba(x_tr)[:, 1], fit.predict_proba(x_te)[:, 1]
            lines.append(f"| {label} | logistic regression on {name} ({x_tr.shape[1]}) | {roc_auc_score(y_tr, q_tr):.3f} | "
                         f"{roc_auc_score(y_te, q_te):.3f} | {((q_te > 0.5) == y_te).mean():.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "readout_gap.md"
    if not out.exists():
        out.write_text("# Readout gap: encoder features against the model's answers\n\n"
                       "Reproduce: `python benchmarks/research/readout_gap.py --work DIR` "
                       "(see the script's docstring).\n")
    with out.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()

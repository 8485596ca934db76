"""Fitting the projector's findings token: a linear presence classifier on the frozen encoder's features.

The classifier is fitted in closed form between stage 0 and stage 1 (scikit-learn's L2-regularised
logistic regression on standardised mean + max pooled features, one per finding, on the training
studies' report-derived labels) and stored in :class:`ctsurv.models.projector.FindingsHead`.

Why out-of-fold logits in training: a scratch encoder learns its few hundred training scans by heart.
On them a classifier is right far more often than on new scans (nodules: AUC 0.99 on the training
studies, 0.94 on an unseen cohort; benchmarks/readout_gap.md), and a language model trained on such
logits would trust them more than it should. Each training study's logits therefore come from the
classifier fitted on the other folds (AUC 0.955 for nodules, close to the unseen cohort's); the model
saved, and used on every other scan, is the one fitted on all training studies.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler

from ctsurv.models.projector import FindingsHead

FOLDS = 5
C = 0.1  # inverse L2 strength on standardised features (benchmarks/readout_gap.md used the same)


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Coefficients and intercept on standardised ``x`` for 0/1 ``y``; a constant log-odds for one class."""
    if len(np.unique(y)) < 2:
        p = (y.mean() * len(y) + 0.5) / (len(y) + 1)  # smoothed prior: finite logits
        return np.zeros(x.shape[1]), float(np.log(p / (1 - p)))
    model = LogisticRegression(C=C, max_iter=5000).fit(x, y)
    return model.coef_[0], float(model.intercept_[0])


def fit_findings_head(head: FindingsHead, pooled: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Fit ``head`` on pooled features (n, Dv, N) and presence labels (n, P), -1 where the report is silent.

    Sets the head's buffers from all ``n`` studies and returns the out-of-fold logits (n, P): each study's
    from the classifier fitted on the other folds (its own fold's standardisation included). A finding
    with no known label gets logit 0 everywhere.
    """
    x = head.summary(pooled.float()).double().numpy()
    y_all = labels.numpy()
    n, p = y_all.shape
    if n < FOLDS:
        raise ValueError(f"the findings token needs at least {FOLDS} training studies, got {n}")
    # one standardisation for the full fit and one per fold (from that fold's fitting rows), shared by all findings;
    # StandardScaler leaves constant features unscaled (scale 1)
    full = StandardScaler().fit(x)
    z = full.transform(x)
    folds = []
    for fit_rows, out_rows in KFold(FOLDS, shuffle=True, random_state=seed).split(x):
        fold = StandardScaler().fit(x[fit_rows])
        folds.append((fit_rows, out_rows, fold.transform(x[fit_rows]), fold.transform(x[out_rows])))
    oof = np.zeros((n, p))
    weight, bias = np.zeros((p, x.shape[1])), np.zeros(p)
    for j in range(p):
        known = y_all[:, j] >= 0
        if not known.any():
            continue
        weight[j], bias[j] = _fit(z[known], y_all[known, j])
        for fit_rows, out_rows, z_fit, z_out in folds:
            known_fit = known[fit_rows]
            if not known_fit.any():
                oof[out_rows, j] = bias[j]
                continue
            w, b = _fit(z_fit[known_fit], y_all[fit_rows[known_fit], j])
            oof[out_rows, j] = z_out @ w + b
    with torch.no_grad():
        head.mean.copy_(torch.from_numpy(full.mean_))
        head.scale.copy_(torch.from_numpy(full.scale_))
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    return torch.from_numpy(oof).float()

"""Fitting the projector's findings token: a linear presence classifier on the frozen encoder's features.

The classifier is fitted in closed form between stage 0 and stage 1 (scikit-learn's L2-regularised
logistic regression on standardised mean + max pooled features, one per finding, on the training
studies' report-derived labels) and stored in :class:`ctsurv.models.projector.FindingsHead`.

Why out-of-fold logits in training: a scratch encoder learns its few hundred training scans by heart.
On them a classifier is right far more often than on new scans (nodules: AUC 0.99 on the training
studies, 0.94 on an unseen cohort; benchmarks/research/readout_gap.md), and a language model trained on such
logits would trust them more than it should. Each training study's logits therefore come from the
classifier fitted on the other folds (AUC 0.955 for nodules, close to the unseen cohort's); the model
saved, and used on every other scan, is the one fitted on all training studies. The folds are of patients
(``GroupKFold``): CT-RATE holds several reconstructions of one scan per patient, and a sibling in the fitting
rows would hand a study's own scan to the classifier that scores it.

With cells (``projector.findings_cells_channel``) every finding has two candidate inputs: the pooled
features alone, or with the cells appended. The cells carry where tissue lies (lymph nodes: AUC 0.62 ->
0.88 on an unseen cohort) but, 3072 of them, drown a finding the pooled features read well (nodules:
0.95 -> 0.78; benchmarks/research/findings_cells.md). Which one a finding gets is decided on held-out studies that
stage 0 never trained on (the run's validation split, kept apart from the test split that the run's evaluation
scores, so that the choice does not flatter it): on the training studies themselves the memorised
pooled features look better than they are and win even for lymph nodes. The cells must earn their place:
their held-out log-loss must be lower by more than one standard error of the per-study difference (the
one-standard-error rule), so that a small or noisy validation split keeps the simpler classifier.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import StandardScaler

from ctsurv.models.projector import FindingsHead

FOLDS = 5
C = 0.1  # inverse L2 strength on standardised features (benchmarks/research/readout_gap.md used the same)


@dataclass(frozen=True)
class HeldOut:
    """Studies the encoder never trained on, that choose per finding whether the cells are read."""

    pooled: torch.Tensor  # (m, Dv, N)
    cells: torch.Tensor  # (m, K)
    labels: torch.Tensor  # (m, P), -1 where the report is silent


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Coefficients and intercept on standardised ``x`` for 0/1 ``y``; a constant log-odds for one class."""
    if len(np.unique(y)) < 2:
        p = (y.mean() * len(y) + 0.5) / (len(y) + 1)  # smoothed prior: finite logits
        return np.zeros(x.shape[1]), float(np.log(p / (1 - p)))
    # newton-cg reaches lbfgs's optimum (the problem is strictly convex) about 17x faster on 3300 features
    model = LogisticRegression(C=C, solver="newton-cg", tol=1e-8, max_iter=1000).fit(x, y)
    return model.coef_[0], float(model.intercept_[0])


def patient_folds(groups: Sequence | np.ndarray, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, out rows) of the ``FOLDS`` folds of patients ``groups`` (one per study): a patient's studies
    fall in one fold. The patients are shuffled with ``seed``: scikit-learn's ``GroupKFold(shuffle=True)``
    (1.6 and later), or on older versions the same permutation of the sorted patients, split the same way."""
    groups = np.asarray(groups)
    rows = np.arange(len(groups))
    if "shuffle" in inspect.signature(GroupKFold).parameters:
        yield from GroupKFold(FOLDS, shuffle=True, random_state=seed).split(rows, groups=groups)
        return
    for out_patients in np.array_split(np.random.RandomState(seed).permutation(np.unique(groups)), FOLDS):
        out = np.isin(groups, out_patients)
        yield rows[~out], rows[out]


def _study_losses(y: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Each study's log-loss (m,) of 0/1 ``y`` under ``logits``: log(1 + exp(-logit)) if y = 1, else of +logit."""
    return np.logaddexp(0.0, np.where(y == 1, -logits, logits))


def fit_findings_head(
    head: FindingsHead,
    pooled: torch.Tensor,
    labels: torch.Tensor,
    seed: int = 0,
    cells: torch.Tensor | None = None,
    held_out: HeldOut | None = None,
    groups: Sequence | np.ndarray | None = None,
) -> tuple[torch.Tensor, dict[int, dict[str, float | bool | None]]]:
    """Fit ``head`` on pooled features (n, Dv, N) and presence labels (n, P), -1 where the report is silent.

    Sets the head's buffers from all ``n`` studies and returns the out-of-fold logits (n, P): each study's
    from the classifier fitted on the other folds (its own fold's standardisation included). The folds are of
    the patients ``groups`` (one per study; None: each study its own patient), so that no sibling study of a
    patient is among the rows that score it. A finding with no known label gets logit 0 everywhere.

    A head that reads cells needs the studies' ``cells`` (n, K) and ``held_out`` studies: a finding reads
    the cells when they lower its mean log-loss there by more than the standard error of the per-study
    difference (findings the held-out reports never mention keep the pooled features alone). Also returns,
    per finding index, those held-out log-losses, the standard error and the choice.
    """
    if (head.cells_channel is not None) != (cells is not None):
        raise ValueError("give cells exactly when the findings head reads them (projector.findings_cells_channel)")
    if cells is not None and held_out is None:
        raise ValueError("a findings head that reads cells chooses them on held-out studies: give held_out")

    def design(pooled: torch.Tensor, cells: torch.Tensor | None) -> np.ndarray:
        """The classifier's inputs (n, k + K), float64: the pooled summary, then the cells (if read)."""
        summary = head.summary(pooled.float()).double().numpy()
        return summary if cells is None else np.hstack([summary, cells.double().numpy()])

    x = design(pooled, cells)
    k = x.shape[1] - (0 if cells is None else cells.shape[1])  # the pooled summary's columns
    y_all = labels.numpy()
    n, p = y_all.shape
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups holds {len(groups)} patient ids for {n} studies; give one per study")
    if len(np.unique(groups)) < FOLDS:
        raise ValueError(
            f"the findings token needs training studies of at least {FOLDS} patients (one fold each), "
            f"got {len(np.unique(groups))} patients ({n} studies)"
        )
    # one standardisation for the full fit and one per fold (from that fold's fitting rows), shared by all findings;
    # StandardScaler leaves constant features unscaled (scale 1)
    full = StandardScaler().fit(x)
    z = full.transform(x)
    del x  # memory: at most two (n, k + K) float64 copies at a time (built again for the folds)
    if cells is not None:  # and so held_out, checked above
        z_val, y_val = full.transform(design(held_out.pooled, held_out.cells)), held_out.labels.numpy()
    oof = np.zeros((n, p))
    weight, bias = np.zeros((p, z.shape[1])), np.zeros(p)
    reads_cells = np.zeros(p, dtype=bool)
    choices: dict[int, dict[str, float | bool | None]] = {}
    for j in range(p):
        known = y_all[:, j] >= 0
        if not known.any():
            continue
        z_known = z if known.all() else z[known]
        w, b = _fit(z_known[:, :k], y_all[known, j])
        if cells is not None:
            seen = y_val[:, j] >= 0
            if seen.any():
                w_cells, b_cells = _fit(z_known, y_all[known, j])
                pooled_loss = _study_losses(y_val[seen, j], z_val[seen, :k] @ w + b)
                cells_loss = _study_losses(y_val[seen, j], z_val[seen] @ w_cells + b_cells)
                gain = pooled_loss - cells_loss  # (m,) per held-out study
                se = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else None
                reads_cells[j] = se is not None and gain.mean() > se  # one held-out study cannot tell
                choices[j] = {"pooled": float(pooled_loss.mean()), "pooled + cells": float(cells_loss.mean()),
                              "standard_error": se, "reads_cells": bool(reads_cells[j])}
                if reads_cells[j]:
                    w, b = w_cells, b_cells
        cols = slice(None) if reads_cells[j] else slice(0, k)
        weight[j, cols], bias[j] = w, b
    z = z_known = None  # freed before the folds (z_known is unset when no finding has a label)
    # fold by fold, so that one fold's standardised copy of the features is in memory at a time (all five at
    # once were most of what `ctsurv pretrain` grew by per training study: benchmarks/command_memory.md)
    x = design(pooled, cells)
    for fit_rows, out_rows in patient_folds(groups, seed):
        fold = StandardScaler().fit(x[fit_rows])
        z_fit, z_out = fold.transform(x[fit_rows]), fold.transform(x[out_rows])
        for j in np.flatnonzero((y_all >= 0).any(0)):  # the findings with a known label
            known_fit = y_all[fit_rows, j] >= 0
            if not known_fit.any():
                oof[out_rows, j] = bias[j]
                continue
            cols = slice(None) if reads_cells[j] else slice(0, k)
            w_fold, b_fold = _fit(z_fit[known_fit, cols], y_all[fit_rows[known_fit], j])
            oof[out_rows, j] = z_out[:, cols] @ w_fold + b_fold
    with torch.no_grad():
        head.mean.copy_(torch.from_numpy(full.mean_))
        head.scale.copy_(torch.from_numpy(full.scale_))
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
        if cells is not None:
            head.reads_cells.copy_(torch.from_numpy(reads_cells))
    return torch.from_numpy(oof).float(), choices

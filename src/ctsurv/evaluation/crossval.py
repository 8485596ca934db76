"""The evaluation protocol: patient-level stratified k-fold, repeated; out-of-fold risks; method comparison.

Every method (the model, its ablations, the clinical Cox baseline, the oracle) is cross-validated on
the *same* folds, so their out-of-fold risks pair up patient by patient::

    folds = make_folds(time, event, groups=patient_id, n_splits=5, n_repeats=1, seed=0)
    oof = {name: cross_validate(folds, fit_predict, time, event) for name, fit_predict in methods.items()}
    results["methods"] = compare_methods(time, event, oof, reference="clinical_cox", groups=patient_id,
                                         ladder=["clinical_cox", "encoder_no_instruction", "model"])

``fit_predict(train_idx, test_idx)`` trains on the training rows and returns the test rows' risk
(n_test,) (higher = shorter survival), or a :class:`FoldPrediction` that adds survival curves for
the integrated Brier score.

How the reported numbers are defined (``compare_methods``):

- ``harrell_c``: Harrell's C of the pooled out-of-fold risks of all patients (one model per fold,
  each scoring only its unseen patients), averaged over repeats. Pooling uses every comparable pair
  of the cohort, not only pairs within a fold, and matches what the bootstrap resamples: patients.
- ``harrell_c_ci``, ``delta_c_vs_clinical``, ``delta_c_ci``, ``p_vs_clinical``: percentile bootstrap
  over patients (all studies of a drawn patient come along when ``groups`` is given), the same
  resamples for every method and every repeat (a paired comparison with the reference); p as in
  :func:`ctsurv.evaluation.metrics.bootstrap_p`. The out-of-fold risks are held fixed, so the
  intervals reflect the test patients' sampling, not refitting the models.
- ``harrell_c_folds_mean``, ``harrell_c_folds_sd``: mean and SD (ddof=1) of Harrell's C within each
  test fold, over all folds of all repeats (None: no fold, or for the SD fewer than two, scored).
- ``previous_rung``, ``delta_c_vs_previous``, ``delta_c_vs_previous_ci``, ``p_vs_previous``: for a
  method on the ablation ``ladder``, the same paired comparison against the rung below it (the
  previous ladder method present); None for the first rung and for methods off the ladder.
- ``p_vs_clinical_cv``, ``p_vs_previous_cv``: the same comparisons by Nadeau and Bengio's corrected
  resampled t-test of the per-fold differences in Harrell's C (``metrics.corrected_fold_t_test``). The
  bootstrap holds the fitted models fixed and so misses the variance of refitting them on overlapping
  training sets: under shuffled outcomes its paired test rejected 8 of 60 times at 5%
  (benchmarks/protocol.md), the corrected t-test 2 of 60. Read the bootstrap's p with that in mind.
- ``uno_c``, ``td_auc``, ``ibs``: computed per fold (IPCW weights from that fold's training data,
  as sksurv requires) and averaged over the folds where they can be computed. A fold that cannot be
  scored is dropped from the mean and the reason recorded (``OutOfFold.notes()``); a metric no fold
  can score is None. Uno's C is truncated at tau = the last horizon, td-AUC is at the horizons
  (event-time quartiles of the cohort), the IBS integrates from the 5% event-time quantile to tau.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.model_selection import StratifiedGroupKFold

from ctsurv.errors import CtsurvError
from ctsurv.evaluation import metrics

log = logging.getLogger(__name__)
_ATTEMPTS = 10  # fold draws tried per repeat before giving up on "every fold has events"

# ============================================================================================
# Folds
# ============================================================================================


@dataclass(frozen=True)
class Fold:
    """One train/test split of one repeat; indices are row positions in the cohort table."""

    repeat: int
    fold: int
    train_idx: np.ndarray  # (n_train,)
    test_idx: np.ndarray  # (n_test,)


def _fewer_folds(k: int, n_splits: int) -> str:
    """Advice for a cohort with ``k`` patients with an event: the largest fold count that can work."""
    feasible = [m for m in range(2, n_splits) if m <= k and k - math.ceil(k / m) >= 2]
    if not feasible:
        return "cross-validation needs at least 3 patients with an event"
    return f"use fewer folds (--folds {feasible[-1]})"


def make_folds(
    time: ArrayLike, event: ArrayLike, groups: ArrayLike | None = None,
    n_splits: int = 5, n_repeats: int = 1, seed: int = 0,
) -> list[Fold]:
    """Patient-level folds stratified on the event, ``n_repeats`` x ``n_splits``, deterministic for a seed.

    All rows of one patient (``groups``: patient ids) fall in the same fold (sklearn
    ``StratifiedGroupKFold``). Every test fold gets at least one event and every training part at
    least two (needed by the IPCW metrics); a draw that misses this is redrawn with another seed.
    """
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event).astype(bool)
    if t.ndim != 1 or e.shape != t.shape:
        raise ValueError(f"time and event must be 1-D and equally long, got {t.shape} and {e.shape}")
    codes = metrics.group_codes(groups, len(t))
    n_patients = len(np.unique(codes))
    if n_splits < 2 or n_repeats < 1:
        raise CtsurvError(f"cross-validation needs --folds >= 2 and --repeats >= 1, got {n_splits} and {n_repeats}")
    if n_patients < n_splits:
        raise CtsurvError(f"cannot split {n_patients} patients into {n_splits} folds (a test fold would be "
                          f"empty); use --folds {n_patients} or fewer" if n_patients >= 2 else
                          f"cross-validation needs at least 2 patients, the cohort has {n_patients}")
    k = len(np.unique(codes[e]))
    too_few = CtsurvError(f"the cohort has only {k} patients with an event, too few for {n_splits} folds with an "
                          f"event in every test fold and two in every training part; {_fewer_folds(k, n_splits)}")
    if k < n_splits:
        raise too_few
    folds: list[Fold] = []
    for repeat in range(n_repeats):
        for attempt in range(_ATTEMPTS):
            state = int(np.random.default_rng([seed, repeat, attempt]).integers(2**31 - 1))
            splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=state)
            with warnings.catch_warnings():  # "least populated class": our own event checks cover it
                warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
                splits = list(splitter.split(np.zeros(len(t)), e.astype(int), codes))
            if all(len(te) and e[te].sum() >= 1 and e[tr].sum() >= 2 for tr, te in splits):
                folds += [Fold(repeat, i, np.sort(tr), np.sort(te)) for i, (tr, te) in enumerate(splits)]
                break
        else:
            raise too_few
    check_folds(folds, codes)
    return folds


def check_folds(folds: Sequence[Fold], groups: ArrayLike | None = None) -> None:
    """Raise ValueError unless no patient is in both parts of a fold and each row is tested once per repeat."""
    if not folds:
        raise ValueError("no folds")
    n = max(int(max(f.train_idx.max(initial=-1), f.test_idx.max(initial=-1))) for f in folds) + 1
    codes = np.arange(n) if groups is None else metrics.group_codes(groups, len(np.asarray(groups)))
    if len(codes) < n:
        raise ValueError(f"the folds index row {n - 1} but groups has only {len(codes)} rows")
    for repeat in sorted({f.repeat for f in folds}):
        tested = np.zeros(len(codes), dtype=int)
        for f in (f for f in folds if f.repeat == repeat):
            shared = np.intersect1d(codes[f.train_idx], codes[f.test_idx])
            if len(shared):
                raise ValueError(f"repeat {repeat} fold {f.fold}: {len(shared)} patients are in both train and test")
            np.add.at(tested, f.test_idx, 1)
        if (tested != 1).any():
            bad = int((tested != 1).sum())
            raise ValueError(f"repeat {repeat}: {bad} rows are not in exactly one test fold")


# ============================================================================================
# Cross-validation of one method
# ============================================================================================


@dataclass(frozen=True)
class FoldPrediction:
    """What ``fit_predict`` returns for the test rows: risk (n_test,), optional survival curves."""

    risk: ArrayLike
    survival: Callable[[np.ndarray], np.ndarray] | None = None  # times (m,) -> (n_test, m) P(T > t)
    chosen: dict[str, Any] | None = None  # what the fold chose on its training rows (a penalty, a budget, an epoch)


FitPredict = Callable[[np.ndarray, np.ndarray], "np.ndarray | FoldPrediction"]


@dataclass
class OutOfFold:
    """Out-of-fold risks (n_repeats, n) of one method and its per-fold metrics."""

    folds: list[Fold]
    risk: np.ndarray  # (n_repeats, n)
    horizons: list[float]
    tau: float
    fold_metrics: list[dict[str, Any]] = field(default_factory=list)

    def chosen(self) -> dict[str, dict[str, int]]:
        """What the folds chose, counted: {"l2": {"0.2": 14, "1": 11}, ...} (empty when nothing was chosen)."""
        counts: dict[str, dict[str, int]] = {}
        for m in self.fold_metrics:
            for key, value in m.get("chosen", {}).items():
                text = f"{value:g}" if isinstance(value, float) else str(value)
                counts.setdefault(key, {})[text] = counts.get(key, {}).get(text, 0) + 1
        return counts

    def notes(self) -> list[str]:
        """Why a metric was not computed on a fold (for the results' notes)."""
        return [f"repeat {m['repeat']} fold {m['fold']}: {name} skipped: {why}"
                for m in self.fold_metrics for name, why in m["skipped"].items()]

    def summary(self, time: ArrayLike, event: ArrayLike) -> dict[str, Any]:
        """Pooled out-of-fold Harrell's C (mean over repeats), mean and SD of the per-fold Harrell's C,
        and fold means of Uno's C, td-AUC and IBS."""
        by_repeat = []
        for r in self.risk:
            try:
                by_repeat.append(metrics.harrell_c(time, event, r))
            except ValueError as err:
                log.warning("pooled Harrell's C not computable: %s", err)
        td = {t: _mean([m["td_auc"][t] for m in self.fold_metrics if t in m["td_auc"]]) for t in self.horizons}
        folds = [m["harrell_c"] for m in self.fold_metrics if m["harrell_c"] is not None]
        return {
            "harrell_c": _mean(by_repeat) if len(by_repeat) == len(self.risk) else None,
            "harrell_c_by_repeat": by_repeat,
            "harrell_c_folds_mean": _mean(folds),
            "harrell_c_folds_sd": float(np.std(folds, ddof=1)) if len(folds) >= 2 else None,
            "uno_c": _mean([m["uno_c"] for m in self.fold_metrics]),
            "td_auc": td,
            "ibs": _mean([m["ibs"] for m in self.fold_metrics]),
            "folds_scored": {name: sum(m[name] is not None for m in self.fold_metrics) for name in ("uno_c", "ibs")},
        }


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the values that exist; None when none does."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _score_fold(
    fold: Fold, pred: FoldPrediction, t: np.ndarray, e: np.ndarray, horizons: list[float], tau: float,
    ibs_grid: np.ndarray,
) -> dict[str, Any]:
    """All metrics of one fold's test rows; the IPCW ones weighted by the fold's training data."""
    tr, te = fold.train_idx, fold.test_idx
    risk = np.asarray(pred.risk, dtype=np.float64)
    out: dict[str, Any] = {"repeat": fold.repeat, "fold": fold.fold, "n_test": len(te), "events_test": int(e[te].sum()),
                           "harrell_c": None, "uno_c": None, "tau": None, "td_auc": {}, "ibs": None, "skipped": {}}

    def attempt(name: str, compute: Callable[[], Any]) -> Any:
        try:
            return compute()
        except ValueError as err:  # sksurv's refusals (see metrics' module docstring)
            out["skipped"][name] = str(err)
            return None

    out["harrell_c"] = attempt("harrell_c", lambda: metrics.harrell_c(t[te], e[te], risk))
    out["tau"] = metrics.safe_tau(tau, t[tr], t[te], e[te])
    if out["tau"] is None:
        out["skipped"]["uno_c"] = f"no test event before tau={tau}"
    else:
        out["uno_c"] = attempt("uno_c", lambda: metrics.uno_c(t[tr], e[tr], t[te], e[te], risk, out["tau"]))
    times = metrics.safe_times(horizons, t[tr], t[te], e[te])
    for h in sorted(set(horizons) - set(times)):
        out["skipped"][f"td_auc@{h:g}"] = "outside this fold's test/training follow-up"
    if times:
        out["td_auc"] = attempt("td_auc", lambda: metrics.td_auc(t[tr], e[tr], t[te], e[te], risk, times)) or {}
    grid = np.asarray(metrics.safe_times(ibs_grid, t[tr], t[te], e[te]))
    if pred.survival is None:
        out["skipped"]["ibs"] = "the method gives no survival curves"
    elif len(grid) < 2:
        out["skipped"]["ibs"] = "fewer than two IBS times inside this fold's follow-up"
    else:
        probs = np.asarray(pred.survival(grid), dtype=np.float64)  # (n_test, len(grid))
        out["ibs"] = attempt("ibs", lambda: metrics.integrated_brier(t[tr], e[tr], t[te], e[te], probs, grid))
    return out


def cross_validate(
    folds: Sequence[Fold], fit_predict: FitPredict, time: ArrayLike, event: ArrayLike,
    horizons: Sequence[float] | None = None, tau: float | None = None, ibs_points: int = 50,
    progress: bool = False, description: str = "cross-validation",
) -> OutOfFold:
    """Run ``fit_predict`` on every fold; collect out-of-fold risks and per-fold metrics.

    ``horizons`` default to the cohort's event-time quartiles (``metrics.choose_horizons``), ``tau``
    to the last horizon. Pass the same folds (and horizons) to every method to compare them.
    """
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event).astype(bool)
    hz = sorted(float(h) for h in horizons) if horizons is not None else metrics.choose_horizons(t, e)
    tau = float(tau) if tau is not None else hz[-1]
    ibs_grid = np.linspace(min(float(np.quantile(t[e], 0.05)), hz[0]), tau, ibs_points)
    n_repeats = max(f.repeat for f in folds) + 1
    risk = np.full((n_repeats, len(t)), np.nan)
    oof = OutOfFold(folds=list(folds), risk=risk, horizons=hz, tau=tau)
    iterator: Iterable[Fold] = folds
    if progress:
        from rich.progress import track

        iterator = track(folds, description=description)
    for fold in iterator:
        raw = fit_predict(fold.train_idx, fold.test_idx)
        pred = raw if isinstance(raw, FoldPrediction) else FoldPrediction(raw)
        r = np.asarray(pred.risk, dtype=np.float64)
        if r.shape != fold.test_idx.shape:
            raise ValueError(f"fit_predict returned risk of shape {r.shape} for {len(fold.test_idx)} test rows")
        if not np.isfinite(r).all():
            raise CtsurvError(f"{description}: repeat {fold.repeat} fold {fold.fold} predicted "
                              f"{int((~np.isfinite(r)).sum())} NaN/infinite risks; training diverged "
                              "(lower the learning rate or standardise the clinical columns)")
        risk[fold.repeat, fold.test_idx] = r
        oof.fold_metrics.append(_score_fold(fold, pred, t, e, hz, tau, ibs_grid))
        if pred.chosen:
            oof.fold_metrics[-1]["chosen"] = dict(pred.chosen)
    if np.isnan(risk).any():
        raise ValueError("the folds do not give every row a test fold in every repeat; build them with make_folds")
    for note in oof.notes():
        log.info("%s: %s", description, note)
    return oof


# ============================================================================================
# Comparing methods
# ============================================================================================


def compare_methods(
    time: ArrayLike, event: ArrayLike, oof_by_method: dict[str, OutOfFold], reference: str = "clinical_cox",
    n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, *, groups: ArrayLike | None = None,
    ladder: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The ``results.json`` "methods" block: per method, the contract fields (see the module docstring).

    ``groups``: patient id per row, for the bootstrap (None: each row its own patient). ``ladder``:
    method names from the bottom rung up (names not in ``oof_by_method`` are skipped); each method
    on it is compared with the one below. Every comparison uses the same resamples. No value is NaN:
    what cannot be computed is None (the reasons are in each ``OutOfFold.notes()``).
    """
    if reference not in oof_by_method:
        raise CtsurvError(f"the reference method {reference!r} is not among the methods {sorted(oof_by_method)}; "
                          "include it, or pass the name of one as the reference")
    ref = oof_by_method[reference]
    for name, oof in oof_by_method.items():
        same = len(oof.folds) == len(ref.folds) and all(
            np.array_equal(a.test_idx, b.test_idx) for a, b in zip(oof.folds, ref.folds))
        if not same:
            raise ValueError(f"method {name!r} was cross-validated on other folds than {reference!r}")
    rungs = _rungs(ladder, oof_by_method)
    below = dict(zip(rungs[1:], rungs[:-1]))
    summaries = {name: oof.summary(time, event) for name, oof in oof_by_method.items()}
    boot = _bootstrap_c(time, event, oof_by_method, summaries, n_boot, seed, groups)

    def versus(name: str, other: str) -> tuple[float | None, list[float] | None, float | None]:
        if name not in boot or other not in boot:
            return None, None, None
        delta = summaries[name]["harrell_c"] - summaries[other]["harrell_c"]
        paired = metrics.paired_summary(delta, boot[name] - boot[other], alpha)
        return paired["delta"], list(paired["ci"]), paired["p"]

    def fold_test(name: str, other: str) -> float | None:
        """The corrected resampled t-test of the per-fold C differences (folds both methods could score)."""
        pairs = [(a["harrell_c"], b["harrell_c"], a["n_test"]) for a, b in
                 zip(oof_by_method[name].fold_metrics, oof_by_method[other].fold_metrics, strict=True)
                 if a["harrell_c"] is not None and b["harrell_c"] is not None]
        if name == other or len(pairs) < 2:
            return 1.0 if name == other else None
        n_test = float(np.mean([n for *_, n in pairs]))
        return metrics.corrected_fold_t_test([a - b for a, b, _ in pairs], n_test / (len(time) - n_test))

    results = {}
    for name, oof in oof_by_method.items():
        s = summaries[name]
        ci = [float(q) for q in np.quantile(boot[name], [alpha / 2, 1 - alpha / 2])] if name in boot else None
        delta, delta_ci, p = versus(name, reference)
        row: dict[str, Any] = {"harrell_c": s["harrell_c"], "harrell_c_ci": ci, "uno_c": s["uno_c"],
                               "td_auc": s["td_auc"], "ibs": s["ibs"], "delta_c_vs_clinical": delta,
                               "delta_c_ci": delta_ci, "p_vs_clinical": p,
                               "harrell_c_folds_mean": s["harrell_c_folds_mean"],
                               "harrell_c_folds_sd": s["harrell_c_folds_sd"], "previous_rung": below.get(name)}
        delta, delta_ci, p = versus(name, below[name]) if name in below else (None, None, None)
        row.update(delta_c_vs_previous=delta, delta_c_vs_previous_ci=delta_ci, p_vs_previous=p,
                   p_vs_clinical_cv=fold_test(name, reference),
                   p_vs_previous_cv=fold_test(name, below[name]) if name in below else None)
        for note in oof.notes():
            log.info("%s: %s", name, note)  # also in results.json "notes"
        results[name] = _no_nan(row)
    return results


def _rungs(ladder: Sequence[str] | None, oof_by_method: dict[str, OutOfFold]) -> list[str]:
    """The ladder's methods that were evaluated, bottom rung first; ValueError on a repeated name."""
    if ladder is None:
        return []
    if isinstance(ladder, str) or len(set(ladder)) != len(ladder):
        raise ValueError(f"ladder must be a sequence of distinct method names, got {ladder!r}")
    return [name for name in ladder if name in oof_by_method]


def _bootstrap_c(
    time: ArrayLike, event: ArrayLike, oof_by_method: dict[str, OutOfFold], summaries: dict[str, dict[str, Any]],
    n_boot: int, seed: int, groups: ArrayLike | None,
) -> dict[str, np.ndarray]:
    """Per method with a pooled C: its bootstrap C (n_boot,), the mean over repeats, all on the same resamples."""
    names = [name for name in oof_by_method if summaries[name]["harrell_c"] is not None]
    if not names:
        return {}
    try:
        stats = metrics.harrell_c_bootstrap(time, event, np.concatenate([oof_by_method[k].risk for k in names]),
                                            n=n_boot, seed=seed, groups=groups)
    except ValueError as err:  # e.g. no comparable pair: leave the intervals and comparisons None
        log.warning("Harrell's C bootstrap not computable: %s", err)
        return {}
    ends = np.cumsum([len(oof_by_method[k].risk) for k in names])
    return {k: part.mean(axis=0) for k, part in zip(names, np.split(stats, ends[:-1]))}


def _no_nan(value: Any) -> Any:
    """``value`` with every NaN float replaced by None, recursively (the contract never holds NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value

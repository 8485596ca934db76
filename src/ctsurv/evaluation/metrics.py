"""Survival metrics: Harrell's and Uno's C, time-dependent AUC, integrated Brier score, bootstrap.

Every point estimate is scikit-survival's (``sksurv.metrics``), called on float64 arrays, so numbers
are comparable with published ones; this module only adapts inputs, keeps sksurv from refusing
valid evaluations, and adds the bootstrap. Harrell's C is the exception in how, not in what: it is
computed here by sksurv's rules in O(n log n) (sksurv's loop is O(n^2)), and equals
``concordance_index_censored`` exactly, tied times and tied risks included (tested against it).
All results are plain Python floats (JSON-friendly).

Conventions: ``time`` (n,) follow-up, ``event`` (n,) True where the event was observed, ``risk`` (n,)
where a higher risk means a shorter survival (a Cox linear predictor), ``surv_probs`` (n, m) the
predicted probability of surviving past each of ``times`` (m,).

When sksurv refuses (read off sksurv 0.28's ``metrics.py`` and ``nonparametric.py``):

- every metric: fewer than two test patients, or no event in the test data ("All samples are
  censored"); Uno's C also when no test event falls before ``tau``; the IPCW metrics also when the
  training data have no event (``CensoringDistributionEstimator.fit``);
- Harrell's / Uno's C: no comparable pair (``NoComparablePairException``);
- td-AUC and Brier: any time outside ``[min(time_test), max(time_test))`` (``_check_times``);
- IPCW (Uno, td-AUC, Brier): the censoring Kaplan-Meier G is fitted on the *training* data and
  evaluated at test times. It raises when a test time it is evaluated at lies beyond the last
  training time while G is still positive there ("time must be smaller than largest observed time
  point"), and Uno/td-AUC raise when G is 0 at a test event ("censoring survival function is zero",
  i.e. a test event at or after the last training time when that time is a censoring). td-AUC
  evaluates G at *every* test event and Brier at *every* test time, whatever ``times`` are, so one
  long-surviving test patient can make the whole fold fail;
- IBS: fewer than two distinct times.

What this module does about it: :func:`safe_times` keeps the times t with
``min(test event times) <= t < min(max(time_test), max(time_train))`` (at or after the first test
event so that AUC(t) has a case; before the last test time so that it has a control; before the
last training time so that G(t) > 0); :func:`safe_tau` caps Uno's ``tau`` at the last training time.
:func:`td_auc` and :func:`integrated_brier` also administratively censor the test data at the last
evaluation time (a test patient followed past it becomes censored there, or at the last training
time if earlier): such a patient is a control at every evaluation time either way, so every
AUC(t) and Brier(t) is unchanged, but sksurv no longer evaluates G beyond the training data.

The bootstrap resamples patients (a cluster bootstrap): given ``groups`` (the patient id of each row),
every study of a drawn patient comes along, so several studies per patient do not narrow the
intervals as if they were independent patients.

Comparing two risk scores uses :func:`paired_bootstrap`, not torchsurv's ``ConcordanceIndex.compare``
(0.2.0): its default Noether test is one-sided and, in a simulation here (200 cohorts of 300
patients), rejected 0% of true nulls at 5% but also detected only 16% of real differences that the
paired bootstrap detected 76% of the time; its bootstrap variant crashes on float64 input ("Index
put requires the source and destination dtypes match") and draws from torch's global RNG, so it
is not reproducible for a seed without touching global state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.stats import t as student_t
from sksurv.exceptions import NoComparablePairException
from sksurv.metrics import (
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.util import Surv

from ctsurv.errors import CtsurvError
from ctsurv.evaluation.concordance import TIED_TOL, weighted_c_parts

_MAX_REDRAWS = 1000

# ============================================================================================
# Inputs
# ============================================================================================


def _survival(time: ArrayLike, event: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return (time float64, event bool), both 1-D and equally long; ValueError otherwise."""
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event)
    if t.ndim != 1 or e.shape != t.shape:
        raise ValueError(f"time and event must be 1-D and equally long, got shapes {t.shape} and {e.shape}")
    if not np.isfinite(t).all():
        raise ValueError("time contains NaN or infinite values")
    if e.dtype != bool:
        if not np.isin(e, (0, 1)).all():
            raise ValueError("event must be boolean or 0/1")
        e = e.astype(bool)
    return t, e


def _risk(risk: ArrayLike, n: int, name: str = "risk") -> np.ndarray:
    """Return ``risk`` as a finite float64 (n,) array; ValueError otherwise."""
    r = np.asarray(risk, dtype=np.float64)
    if r.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(r)).sum())} NaN or infinite values")
    return r


def group_codes(groups: ArrayLike | None, n: int) -> np.ndarray:
    """Patient ids as codes 0..n_patients-1 in order of first appearance (n,); row i is patient i when None."""
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must hold one patient id per row, shape ({n},), got {g.shape}")
    codes = pd.factorize(pd.Series(g))[0]
    if (codes < 0).any():
        raise ValueError(f"groups has {int((codes < 0).sum())} missing patient ids")
    return codes


def _times(times: ArrayLike) -> np.ndarray:
    """Evaluation times as a sorted float64 array without duplicates."""
    return np.unique(np.asarray(times, dtype=np.float64).ravel())


# ============================================================================================
# Point estimates (scikit-survival)
# ============================================================================================


def harrell_c(time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> float:
    """Harrell's concordance index, equal to sksurv's ``concordance_index_censored(..., tied_tol=TIED_TOL)``.

    Same pairs, scores (tied risks count 0.5), refusals and value, computed in O(n log n)
    (:func:`weighted_c_parts` with unit weights) instead of sksurv's O(n^2): well under a second
    for 100,000 patients (``benchmarks/concordance.md``). Like sksurv 0.28 it raises ValueError for fewer
    than two patients or no event, NoComparablePairException (a ValueError) when the only event is
    the one patient with the largest time, and returns NaN (sksurv's 0/0) for other data without a
    comparable pair, e.g. when every event is at the same time and nobody is followed longer.
    """
    t, e = _survival(time, event)
    r = _risk(risk, len(t))
    if len(t) < 2:
        raise ValueError("Need a minimum of two samples")
    if not e.any():
        raise ValueError("All samples are censored")
    num, den = weighted_c_parts(t, e, r[None, :], np.ones((1, len(t))))
    if den[0]:
        return float(num[0, 0] / den[0])
    last = t == t.max()
    if e.sum() == 1 and last.sum() == 1 and e[last].all():  # sksurv skips a lone last row, so it saw no event
        raise NoComparablePairException("Data has no comparable pairs, cannot estimate concordance index.")
    return float("nan")


def uno_c(
    time_train: ArrayLike, event_train: ArrayLike, time_test: ArrayLike, event_test: ArrayLike,
    risk: ArrayLike, tau: float,
) -> float:
    """Uno's IPCW concordance truncated at ``tau`` (sksurv ``concordance_index_ipcw``).

    The censoring distribution is estimated on the training data; pass ``safe_tau(...)`` as ``tau``.
    """
    t_tr, e_tr = _survival(time_train, event_train)
    t_te, e_te = _survival(time_test, event_test)
    r = _risk(risk, len(t_te))
    return float(concordance_index_ipcw(Surv.from_arrays(e_tr, t_tr), Surv.from_arrays(e_te, t_te), r,
                                        tau=float(tau), tied_tol=TIED_TOL)[0])


def _censor_after(
    time_train: np.ndarray, time_test: np.ndarray, event_test: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Administratively censor test data after ``times[-1]`` (see the module docstring: scores unchanged)."""
    hi = min(float(time_test.max()), float(time_train.max()))
    if times[-1] >= hi:
        raise ValueError(f"times must be before {hi} (the last test or training time), got {times[-1]}; "
                         "filter them with safe_times()")
    later = time_test > times[-1]
    return np.where(later, np.minimum(time_test, hi), time_test), event_test & ~later


def td_auc(
    time_train: ArrayLike, event_train: ArrayLike, time_test: ArrayLike, event_test: ArrayLike,
    risk: ArrayLike, times: ArrayLike,
) -> dict[float, float]:
    """Cumulative/dynamic AUC at each of ``times`` (sksurv ``cumulative_dynamic_auc``): {t: AUC(t)}."""
    t_tr, e_tr = _survival(time_train, event_train)
    t_te, e_te = _survival(time_test, event_test)
    r, ts = _risk(risk, len(t_te)), _times(times)
    if not e_te.any() or ts[0] < t_te[e_te].min():
        raise ValueError("AUC(t) needs a test event at or before t: every time must be at or after the first "
                         "test event; filter them with safe_times()")
    t_te, e_te = _censor_after(t_tr, t_te, e_te, ts)
    auc, _ = cumulative_dynamic_auc(Surv.from_arrays(e_tr, t_tr), Surv.from_arrays(e_te, t_te), r, ts,
                                    tied_tol=TIED_TOL)
    return {float(t): float(a) for t, a in zip(ts, auc)}


def integrated_brier(
    time_train: ArrayLike, event_train: ArrayLike, time_test: ArrayLike, event_test: ArrayLike,
    surv_probs: ArrayLike, times: ArrayLike,
) -> float:
    """Integrated Brier score over ``times`` (sksurv ``integrated_brier_score``, trapezoid rule).

    ``surv_probs`` (n_test, len(times)) are the predicted P(T > t); ``times`` must be sorted, distinct.
    """
    t_tr, e_tr = _survival(time_train, event_train)
    t_te, e_te = _survival(time_test, event_test)
    ts = np.asarray(times, dtype=np.float64)
    if ts.ndim != 1 or len(ts) < 2 or (np.diff(ts) <= 0).any():
        raise ValueError("times must be at least two strictly increasing values")
    p = np.asarray(surv_probs, dtype=np.float64)
    if p.shape != (len(t_te), len(ts)) or not np.isfinite(p).all():
        raise ValueError(f"surv_probs must be finite with shape ({len(t_te)}, {len(ts)}), got {p.shape}")
    t_te, e_te = _censor_after(t_tr, t_te, e_te, ts)
    return float(integrated_brier_score(Surv.from_arrays(e_tr, t_tr), Surv.from_arrays(e_te, t_te), p, ts))


# ============================================================================================
# Evaluation times
# ============================================================================================


def choose_horizons(time: ArrayLike, event: ArrayLike, quantiles: Sequence[float] = (0.25, 0.5, 0.75)) -> list[float]:
    """Default evaluation times: quantiles of the observed event times of the whole cohort.

    Event-time (not follow-up) quantiles put every horizon where events happen; each fold then keeps
    those that are safe for its data with :func:`safe_times`.
    """
    t, e = _survival(time, event)
    if not e.any():
        raise CtsurvError("the cohort has no events; survival metrics need at least one observed event")
    return sorted({float(q) for q in np.quantile(t[e], list(quantiles))})


def safe_times(times: ArrayLike, time_train: ArrayLike, time_test: ArrayLike, event_test: ArrayLike) -> list[float]:
    """The ``times`` sksurv accepts for td-AUC/Brier here: ``first test event <= t < min(last test, last train)``."""
    t_te, e_te = _survival(time_test, event_test)
    if not e_te.any():
        return []
    lo = t_te[e_te].min()
    hi = min(t_te.max(), float(np.max(np.asarray(time_train, dtype=np.float64))))
    return [float(t) for t in _times(times) if lo <= t < hi]


def safe_tau(tau: float, time_train: ArrayLike, time_test: ArrayLike, event_test: ArrayLike) -> float | None:
    """``tau`` capped at the last training time (so that G > 0 before it); None if no test event precedes it."""
    t_te, e_te = _survival(time_test, event_test)
    capped = min(float(tau), float(np.max(np.asarray(time_train, dtype=np.float64))))
    return capped if (e_te & (t_te < capped)).any() else None


# ============================================================================================
# Bootstrap over patients
# ============================================================================================


def _resample_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(size, n) how often each of ``n`` patients is drawn in each of ``size`` bootstrap resamples."""
    draws = rng.integers(0, n, size=(size, n))
    offsets = (np.arange(size) * n)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=size * n).reshape(size, n).astype(np.float64)


def _study_weights(rng: np.random.Generator, codes: np.ndarray, size: int) -> np.ndarray:
    """(size, n_rows) bootstrap weights: every row (study) gets the draw count of its patient ``codes``."""
    return _resample_counts(rng, int(codes.max()) + 1, size)[:, codes]


def _patient_rows(codes: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A function from drawn patients (k,) to the row indices of all their studies, in draw order."""
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.cumsum(sizes) - sizes

    def rows(drawn: np.ndarray) -> np.ndarray:
        s = sizes[drawn]
        return order[np.repeat(starts[drawn] - (np.cumsum(s) - s), s) + np.arange(s.sum())]

    return rows


def harrell_c_weighted(time: ArrayLike, event: ArrayLike, risks: ArrayLike, weights: ArrayLike) -> np.ndarray:
    """Harrell's C (k, B) of each row of ``risks`` (k, n) on resamples given as counts ``weights`` (B, n).

    Equals sksurv's C on the data with row i repeated ``weights[b, i]`` times; ValueError when a
    resample has no comparable pair.
    """
    t, e = _survival(time, event)
    r = np.atleast_2d(np.asarray(risks, dtype=np.float64))
    r = np.stack([_risk(row, len(t)) for row in r])
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != len(t) or (w < 0).any() or (w != np.round(w)).any():
        raise ValueError(f"weights must be non-negative integer counts with {len(t)} columns")
    num, den = weighted_c_parts(t, e, r, w)
    if (den == 0).any():
        raise ValueError(f"{int((den == 0).sum())} resamples have no comparable pair")
    return num / den


def harrell_c_bootstrap(
    time: ArrayLike, event: ArrayLike, risks: ArrayLike, n: int = 1000, seed: int = 0, *,
    groups: ArrayLike | None = None,
) -> np.ndarray:
    """Harrell's C of each row of ``risks`` (k, n_rows) on the same ``n`` resamples of patients: (k, n).

    ``groups`` holds the patient id of each row (None: each row its own patient). With
    ``rng = np.random.default_rng(seed)`` and patients numbered 0.. in order of first appearance,
    resample b draws patients ``rng.integers(0, n_patients, size=(n, n_patients))[b]`` with
    replacement, and every study of a drawn patient comes along as often as the patient is drawn.
    Resamples without a comparable pair (e.g. no event) are redrawn, so no value is NaN; the
    resamples depend only on the seed, the groups and (time, event), so two calls with the same
    seed on the same cohort pair up resample by resample.
    """
    t, e = _survival(time, event)
    r = np.asarray(risks, dtype=np.float64)
    r = r[None, :] if r.ndim == 1 else r
    r = np.stack([_risk(row, len(t)) for row in r])
    codes = group_codes(groups, len(t))
    rng = np.random.default_rng(seed)
    w = _study_weights(rng, codes, n)
    if not weighted_c_parts(t, e, r[:0], np.ones((1, len(t))))[1][0]:  # no resample can have a pair
        raise ValueError("the data have no comparable pair (no event before another patient's time)")
    num, den = weighted_c_parts(t, e, r, w)
    for _ in range(_MAX_REDRAWS):
        bad = np.flatnonzero(den == 0)
        if not len(bad):
            return num / den
        w[bad] = _study_weights(rng, codes, len(bad))
        num[:, bad], den[bad] = weighted_c_parts(t, e, r, w[bad])
    raise ValueError(f"could not draw bootstrap resamples with a comparable pair in {_MAX_REDRAWS} tries")


def bootstrap_ci(
    time: ArrayLike, event: ArrayLike, risk: ArrayLike, metric: Callable[..., float] = harrell_c,
    n: int = 1000, seed: int = 0, alpha: float = 0.05, *, groups: ArrayLike | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of ``metric(time, event, risk)`` over patients.

    ``groups``: patient id per row (None: each row its own patient); every study of a drawn patient
    comes along. Harrell's C takes the vectorised path (:func:`harrell_c_bootstrap`); any other
    metric is called on each resample (``rng.integers(0, n_patients, n_patients)`` per resample, the
    drawn patients' rows concatenated in draw order), and resamples without an event, or on which it
    raises ValueError, are redrawn.
    """
    t, e = _survival(time, event)
    r = np.asarray(risk, dtype=np.float64)
    if metric is harrell_c:
        stats = harrell_c_bootstrap(t, e, r, n=n, seed=seed, groups=groups)[0]
    else:
        codes = group_codes(groups, len(t))
        rows, n_patients = _patient_rows(codes), int(codes.max()) + 1
        rng, values = np.random.default_rng(seed), []
        for _ in range(n * _MAX_REDRAWS):
            if len(values) == n:
                break
            idx = rows(rng.integers(0, n_patients, n_patients))
            if not e[idx].any():
                continue
            try:
                values.append(float(metric(t[idx], e[idx], r[idx])))
            except ValueError:
                continue
        if len(values) < n:
            raise ValueError(f"only {len(values)} of {n} bootstrap resamples could be scored")
        stats = np.asarray(values)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_p(deltas: np.ndarray) -> float:
    """Two-sided bootstrap p-value of H0: delta = 0 from the replicates ``deltas`` (B,).

    p = min(1, 2 * min((1 + #{delta* <= 0}) / (B + 1), (1 + #{delta* >= 0}) / (B + 1))): the
    percentile-interval test (p < alpha about when the percentile CI excludes 0), with the +1
    correction so that p is never 0 (the smallest possible p is 2 / (B + 1)).
    """
    b = len(deltas)
    below = (1 + np.count_nonzero(deltas <= 0)) / (b + 1)
    above = (1 + np.count_nonzero(deltas >= 0)) / (b + 1)
    return float(min(1.0, 2 * min(below, above)))


def p_floor(n_boot: int) -> float:
    """The smallest p :func:`bootstrap_p` can return from ``n_boot`` resamples: 2 / (n_boot + 1)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    return 2 / (n_boot + 1)


def corrected_fold_t_test(deltas: ArrayLike, test_fraction: float) -> float | None:
    """Two-sided p of H0: mean = 0 for per-fold differences ``deltas`` (J folds over all repeats) with Nadeau and
    Bengio's corrected resampled t-test (Machine Learning 52, 2003): variance (1/J + n_test/n_train) s^2, J - 1
    degrees of freedom, where ``test_fraction`` = n_test/n_train of a fold. The correction accounts for the
    training sets the folds share, which a bootstrap of the out-of-fold predictions (fixed fitted models) does
    not see. None with fewer than two folds; 1.0 when every fold agrees exactly."""
    d = np.asarray(deltas, dtype=np.float64)
    if len(d) < 2:
        return None
    var = (1 / len(d) + test_fraction) * d.var(ddof=1)
    if var == 0:
        return 1.0 if d.mean() == 0 else 0.0
    return float(2 * student_t.sf(abs(d.mean()) / np.sqrt(var), len(d) - 1))


def paired_summary(delta: float, deltas: np.ndarray, alpha: float = 0.05) -> dict[str, float | tuple[float, float]]:
    """``{"delta": delta, "ci": percentile (1 - alpha) interval of deltas (B,), "p": bootstrap_p(deltas)}``."""
    lo, hi = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    return {"delta": float(delta), "ci": (float(lo), float(hi)), "p": bootstrap_p(deltas)}


def paired_bootstrap(
    time: ArrayLike, event: ArrayLike, risk_a: ArrayLike, risk_b: ArrayLike, n: int = 1000, seed: int = 0,
    alpha: float = 0.05, *, groups: ArrayLike | None = None,
) -> dict[str, float | tuple[float, float]]:
    """Harrell's C of a minus that of b, with a paired bootstrap over patients (``groups``, as in
    :func:`harrell_c_bootstrap`).

    Both risks are scored on the same resamples. ``risk_a``/``risk_b`` may also be (repeats, n): C is
    then the mean over rows (out-of-fold risks of repeated cross-validation). Returns
    ``{"delta": C_a - C_b, "ci": (lo, hi) percentile interval, "p": bootstrap_p(delta*)}``;
    deterministic for a seed.
    """
    t, e = _survival(time, event)
    a = np.atleast_2d(np.asarray(risk_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(risk_b, dtype=np.float64))
    delta = np.mean([harrell_c(t, e, r) for r in a]) - np.mean([harrell_c(t, e, r) for r in b])
    stats = harrell_c_bootstrap(t, e, np.concatenate([a, b]), n=n, seed=seed, groups=groups)
    return paired_summary(delta, stats[: len(a)].mean(axis=0) - stats[len(a):].mean(axis=0), alpha)

"""The cross-validation protocol: patient-level folds, out-of-fold risks, the results.json comparison."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv

from ctsurv.errors import CtsurvError
from ctsurv.evaluation import metrics
from ctsurv.evaluation.crossval import (
    Fold,
    FoldPrediction,
    OutOfFold,
    check_folds,
    compare_methods,
    cross_validate,
    make_folds,
)

CONTRACT = {"harrell_c", "harrell_c_ci", "uno_c", "td_auc", "ibs", "delta_c_vs_clinical", "delta_c_ci", "p_vs_clinical"}
FOLDS = {"harrell_c_folds_mean", "harrell_c_folds_sd"}
LADDER = {"previous_rung", "delta_c_vs_previous", "delta_c_vs_previous_ci", "p_vs_previous"}
FOLD_TESTS = {"p_vs_clinical_cv", "p_vs_previous_cv"}


def _cohort(n_patients: int = 120, seed: int = 0) -> dict[str, np.ndarray]:
    """Patients with 1-3 studies each (rows share the patient's outcome); x drives hazard, c is weaker."""
    rng = np.random.default_rng(seed)
    studies = rng.integers(1, 4, n_patients)
    pid = np.repeat(np.arange(n_patients), studies)
    x, c = rng.normal(size=n_patients), rng.normal(size=n_patients)
    t_event = rng.exponential(np.exp(-(x + 0.5 * c)))
    t_cens = rng.exponential(1.5, n_patients)
    time, event = np.minimum(t_event, t_cens)[pid], (t_event <= t_cens)[pid]
    return {"pid": pid, "time": time, "event": event, "x": x[pid] + 0.1 * rng.normal(size=len(pid)), "c": c[pid]}


def _cox_fit_predict(cohort: dict[str, np.ndarray], columns: list[str], curves: bool = True):
    """A Cox model on ``columns`` as ``fit_predict``; with survival curves when ``curves``."""
    features = np.column_stack([cohort[c] for c in columns])
    y = Surv.from_arrays(cohort["event"], cohort["time"])

    def fit_predict(train_idx: np.ndarray, test_idx: np.ndarray) -> FoldPrediction | np.ndarray:
        cox = CoxPHSurvivalAnalysis().fit(features[train_idx], y[train_idx])
        risk = cox.predict(features[test_idx])
        if not curves:
            return risk
        fns = cox.predict_survival_function(features[test_idx])
        return FoldPrediction(risk, lambda times: np.stack([f(times) for f in fns]))

    return fit_predict


# ============================================================================================
# Folds
# ============================================================================================


def test_folds_keep_patients_together_and_have_events() -> None:
    d = _cohort()
    folds = make_folds(d["time"], d["event"], groups=d["pid"], n_splits=5, n_repeats=2, seed=0)
    assert [(f.repeat, f.fold) for f in folds] == [(r, k) for r in range(2) for k in range(5)]
    for f in folds:
        assert not set(d["pid"][f.train_idx]) & set(d["pid"][f.test_idx])
        assert d["event"][f.test_idx].sum() >= 1 and d["event"][f.train_idx].sum() >= 2
        assert len(f.train_idx) + len(f.test_idx) == len(d["pid"])
    check_folds(folds, d["pid"])


def test_folds_are_stratified_on_event() -> None:
    d = _cohort(300)
    rate = d["event"].mean()
    for f in make_folds(d["time"], d["event"], groups=d["pid"], n_splits=5, seed=3):
        assert abs(d["event"][f.test_idx].mean() - rate) < 0.08


def test_repeats_differ_and_seed_is_deterministic() -> None:
    d = _cohort()
    folds = make_folds(d["time"], d["event"], groups=d["pid"], n_splits=4, n_repeats=2, seed=0)
    first = {tuple(f.test_idx) for f in folds if f.repeat == 0}
    second = {tuple(f.test_idx) for f in folds if f.repeat == 1}
    assert first != second
    again = make_folds(d["time"], d["event"], groups=d["pid"], n_splits=4, n_repeats=2, seed=0)
    assert all(np.array_equal(a.test_idx, b.test_idx) for a, b in zip(folds, again))
    other = make_folds(d["time"], d["event"], groups=d["pid"], n_splits=4, n_repeats=2, seed=1)
    assert {tuple(f.test_idx) for f in other if f.repeat == 0} != first


def test_too_few_events_is_a_user_error() -> None:
    t = np.arange(1.0, 41.0)
    e = np.zeros(40, dtype=bool)
    e[[5, 15, 25, 35]] = True
    with pytest.raises(CtsurvError, match=r"only 4 patients with an event.*--folds 4"):
        make_folds(t, e, n_splits=5)
    assert len(make_folds(t, e, n_splits=4)) == 4
    with pytest.raises(CtsurvError, match="at least 3 patients with an event"):
        make_folds(t, np.isin(np.arange(40), [3, 30]), n_splits=2)


def test_more_folds_than_patients_is_a_user_error() -> None:
    t, e = np.arange(1.0, 7.0), np.ones(6, dtype=bool)
    with pytest.raises(CtsurvError, match=r"3 patients into 5 folds.*--folds 3"):
        make_folds(t, e, groups=[0, 0, 1, 1, 2, 2], n_splits=5)
    with pytest.raises(CtsurvError, match="--folds >= 2"):
        make_folds(t, e, n_splits=1)


def test_check_folds_catches_leaks() -> None:
    groups = np.array([0, 0, 1, 1, 2, 2])
    leaky = [Fold(0, 0, np.array([0, 2, 3]), np.array([1, 4, 5])), Fold(0, 1, np.array([1, 4, 5]), np.array([0, 2, 3]))]
    with pytest.raises(ValueError, match="both train and test"):
        check_folds(leaky, groups)
    missing = [Fold(0, 0, np.array([2, 3, 4, 5]), np.array([0, 1])), Fold(0, 1, np.array([0, 1]), np.array([2, 3]))]
    with pytest.raises(ValueError, match="exactly one test fold"):
        check_folds(missing, groups)


# ============================================================================================
# Cross-validation and comparison
# ============================================================================================


@pytest.fixture(scope="module")
def evaluated() -> tuple[dict[str, np.ndarray], dict[str, OutOfFold]]:
    d = _cohort(150)
    folds = make_folds(d["time"], d["event"], groups=d["pid"], n_splits=5, n_repeats=2, seed=0)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=len(d["time"]))
    methods = {
        "model": _cox_fit_predict(d, ["x", "c"]),
        "clinical_cox": _cox_fit_predict(d, ["c"]),
        "no_curves": _cox_fit_predict(d, ["x"], curves=False),
        "random": lambda tr, te: noise[te],
    }
    return d, {name: cross_validate(folds, fn, d["time"], d["event"]) for name, fn in methods.items()}


def test_out_of_fold_risks_and_fold_metrics(evaluated: tuple[dict, dict[str, OutOfFold]]) -> None:
    d, oof = evaluated
    model = oof["model"]
    assert model.risk.shape == (2, len(d["time"])) and np.isfinite(model.risk).all()
    assert len(model.fold_metrics) == 10
    assert model.horizons == metrics.choose_horizons(d["time"], d["event"]) and model.tau == model.horizons[-1]
    for m in model.fold_metrics:
        assert 0.5 < m["harrell_c"] < 1 and 0.5 < m["uno_c"] < 1 and 0 < m["ibs"] < 0.3
    f = model.folds[0]  # the IPCW metrics use the fold's training data
    expected = metrics.uno_c(d["time"][f.train_idx], d["event"][f.train_idx], d["time"][f.test_idx],
                             d["event"][f.test_idx], model.risk[0, f.test_idx], model.fold_metrics[0]["tau"])
    assert model.fold_metrics[0]["uno_c"] == pytest.approx(expected)
    s = model.summary(d["time"], d["event"])
    assert s["harrell_c"] == pytest.approx(np.mean([metrics.harrell_c(d["time"], d["event"], r) for r in model.risk]))
    assert oof["no_curves"].summary(d["time"], d["event"])["ibs"] is None
    assert any("no survival curves" in note for note in oof["no_curves"].notes())


def test_compare_methods_fills_the_contract(evaluated: tuple[dict, dict[str, OutOfFold]]) -> None:
    d, oof = evaluated
    results = compare_methods(d["time"], d["event"], oof, reference="clinical_cox", n_boot=200, seed=0)
    assert set(results) == set(oof)
    for name, row in results.items():
        assert set(row) == CONTRACT | FOLDS | LADDER | FOLD_TESTS, name
        assert all(row[k] is None for k in LADDER), name  # no ladder given
        flat = [row["harrell_c"], *row["harrell_c_ci"], row["uno_c"], *row["td_auc"].values(),
                row["delta_c_vs_clinical"], *row["delta_c_ci"], row["p_vs_clinical"]]
        assert all(isinstance(v, float) and not math.isnan(v) for v in flat), name
        assert row["harrell_c_ci"][0] <= row["harrell_c"] <= row["harrell_c_ci"][1]
        assert list(row["td_auc"]) == oof[name].horizons
    assert results["no_curves"]["ibs"] is None and isinstance(results["model"]["ibs"], float)
    ref = results["clinical_cox"]
    assert (ref["delta_c_vs_clinical"], ref["delta_c_ci"], ref["p_vs_clinical"]) == (0.0, [0.0, 0.0], 1.0)
    assert results["model"]["delta_c_vs_clinical"] > 0 and results["model"]["p_vs_clinical"] < 0.01
    assert results["random"]["delta_c_vs_clinical"] < 0 and results["random"]["delta_c_ci"][1] < 0
    json.loads(json.dumps(results, allow_nan=False))
    assert results == compare_methods(d["time"], d["event"], oof, reference="clinical_cox", n_boot=200, seed=0)
    with pytest.raises(CtsurvError, match="reference method 'cox'"):
        compare_methods(d["time"], d["event"], oof, reference="cox", n_boot=10)


def test_compare_methods_ladder_and_patient_bootstrap(evaluated: tuple[dict, dict[str, OutOfFold]]) -> None:
    d, oof = evaluated
    t, e, pid = d["time"], d["event"], d["pid"]
    ladder = ["clinical_cox", "not_run", "no_curves", "model"]
    results = compare_methods(t, e, oof, n_boot=200, seed=0, groups=pid, ladder=ladder)
    for name in ("clinical_cox", "random"):  # the bottom rung, and a method off the ladder
        assert all(results[name][k] is None for k in LADDER), name
    assert results["no_curves"]["previous_rung"] == "clinical_cox" and results["model"]["previous_rung"] == "no_curves"
    for upper, lower in (("no_curves", "clinical_cox"), ("model", "no_curves")):
        row = results[upper]
        assert row["delta_c_vs_previous"] == pytest.approx(row["harrell_c"] - results[lower]["harrell_c"], abs=1e-12)
        paired = metrics.paired_bootstrap(t, e, oof[upper].risk, oof[lower].risk, n=200, seed=0, groups=pid)
        assert row["delta_c_vs_previous_ci"] == pytest.approx(list(paired["ci"]), abs=1e-12)
        assert row["p_vs_previous"] == paired["p"]
    assert results["no_curves"]["delta_c_vs_previous"] > 0 and results["no_curves"]["p_vs_previous"] < 0.01  # x > c
    ref = metrics.paired_bootstrap(t, e, oof["model"].risk, oof["clinical_cox"].risk, n=200, seed=0, groups=pid)
    assert results["model"]["delta_c_ci"] == pytest.approx(list(ref["ci"]), abs=1e-12)
    for name, row in results.items():  # per-fold C recomputed with sksurv on each test fold
        per_fold = [concordance_index_censored(e[f.test_idx], t[f.test_idx], oof[name].risk[f.repeat, f.test_idx])[0]
                    for f in oof[name].folds]
        assert len(per_fold) == 10
        assert row["harrell_c_folds_mean"] == pytest.approx(np.mean(per_fold), abs=1e-12)
        assert row["harrell_c_folds_sd"] == pytest.approx(np.std(per_fold, ddof=1), abs=1e-12)
    for upper, lower, key in (("model", "clinical_cox", "p_vs_clinical_cv"), ("model", "no_curves", "p_vs_previous_cv")):
        # the corrected resampled t-test by hand: per-fold sksurv C differences, variance (1/J + n_test/n_train) s^2
        diffs = [concordance_index_censored(e[f.test_idx], t[f.test_idx], oof[upper].risk[f.repeat, f.test_idx])[0]
                 - concordance_index_censored(e[f.test_idx], t[f.test_idx], oof[lower].risk[f.repeat, f.test_idx])[0]
                 for f in oof[upper].folds]
        ratio = np.mean([len(f.test_idx) for f in oof[upper].folds]) / (len(t) - np.mean([len(f.test_idx) for f in oof[upper].folds]))
        tstat = np.mean(diffs) / np.sqrt((1 / len(diffs) + ratio) * np.var(diffs, ddof=1))
        assert results[upper][key] == pytest.approx(2 * scipy.stats.t.sf(abs(tstat), len(diffs) - 1), rel=1e-9), key
    assert results["clinical_cox"]["p_vs_clinical_cv"] == 1.0 and results["clinical_cox"]["p_vs_previous_cv"] is None
    plain = compare_methods(t, e, oof, n_boot=200, seed=0)  # studies resampled as if independent patients
    for name in ("model", "clinical_cox"):
        width, narrow = np.diff(results[name]["harrell_c_ci"])[0], np.diff(plain[name]["harrell_c_ci"])[0]
        assert width > 1.1 * narrow, name
    json.loads(json.dumps(results, allow_nan=False))
    with pytest.raises(ValueError, match="distinct method names"):
        compare_methods(t, e, oof, n_boot=10, ladder=["clinical_cox", "model", "clinical_cox"])


def test_fold_sd_needs_two_scored_folds(evaluated: tuple[dict, dict[str, OutOfFold]]) -> None:
    d, oof = evaluated
    model = oof["model"]
    one = OutOfFold(model.folds, model.risk, model.horizons, model.tau,
                    [m | {"harrell_c": m["harrell_c"] if i == 3 else None} for i, m in enumerate(model.fold_metrics)])
    s = one.summary(d["time"], d["event"])
    assert s["harrell_c_folds_mean"] == model.fold_metrics[3]["harrell_c"] and s["harrell_c_folds_sd"] is None
    none = OutOfFold(model.folds, model.risk, model.horizons, model.tau,
                     [m | {"harrell_c": None} for m in model.fold_metrics])
    assert none.summary(d["time"], d["event"])["harrell_c_folds_mean"] is None


def test_horizon_past_a_folds_follow_up_is_dropped_not_nan() -> None:
    d = _cohort(100)
    t, e = d["time"], d["event"]
    folds = make_folds(t, e, groups=d["pid"], n_splits=3, seed=0)
    ends = sorted(min(t[f.test_idx].max(), t[f.train_idx].max()) for f in folds)  # td-AUC needs t < end
    some, never = (ends[0] + ends[-1]) / 2, ends[-1] + 1.0
    oof = cross_validate(folds, _cox_fit_predict(d, ["x"]), t, e, horizons=[0.2, some, never])
    kept = [m["td_auc"][some] for m in oof.fold_metrics if some in m["td_auc"]]
    assert 0 < len(kept) < len(folds)
    assert any(f"td_auc@{some:g}" in note for note in oof.notes())
    td = compare_methods(t, e, {"clinical_cox": oof}, n_boot=20)["clinical_cox"]["td_auc"]
    assert td[some] == pytest.approx(np.mean(kept)) and td[never] is None and isinstance(td[0.2], float)


def test_non_finite_risk_is_a_user_error() -> None:
    d = _cohort(60)
    folds = make_folds(d["time"], d["event"], groups=d["pid"], n_splits=3)
    with pytest.raises(CtsurvError, match="NaN/infinite risks"):
        cross_validate(folds, lambda tr, te: np.full(len(te), np.nan), d["time"], d["event"])

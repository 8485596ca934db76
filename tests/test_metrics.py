"""Survival metrics against independent references: lifelines, and direct scikit-survival calls."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pytest
import scipy.stats
from lifelines.utils import concordance_index
from numpy.typing import ArrayLike
from sksurv.column import encode_categorical
from sksurv.datasets import load_veterans_lung_cancer
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.util import Surv

from ctsurv.errors import CtsurvError
from ctsurv.evaluation import concordance as C
from ctsurv.evaluation import metrics as M


@pytest.fixture(scope="module")
def veterans() -> dict[str, np.ndarray]:
    """Veterans' lung cancer trial (137 patients, 128 deaths, tied times) with a Cox fit's risk."""
    x, y = load_veterans_lung_cancer()
    x = encode_categorical(x)
    cox = CoxPHSurvivalAnalysis().fit(x, y)
    return {"x": x.to_numpy(float), "time": y["Survival_in_days"].astype(float), "event": y["Status"],
            "risk": cox.predict(x)}


@pytest.fixture(scope="module")
def split(veterans: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A train/test split on which raw sksurv accepts every metric (the longest follow-up is in train)."""
    t, e, x = veterans["time"], veterans["event"], veterans["x"]
    test = np.zeros(len(t), dtype=bool)
    test[::3] = True
    test[np.argmax(t)] = False
    tr, te = np.flatnonzero(~test), np.flatnonzero(test)
    y_tr = Surv.from_arrays(e[tr], t[tr])
    cox = CoxPHSurvivalAnalysis().fit(x[tr], y_tr)
    times = np.array(M.safe_times(M.choose_horizons(t, e), t[tr], t[te], e[te]))
    grid = np.linspace(times[0], times[-1], 20)
    surv = np.stack([f(grid) for f in cox.predict_survival_function(x[te])])
    return {"tr": tr, "te": te, "y_tr": y_tr, "y_te": Surv.from_arrays(e[te], t[te]), "risk": cox.predict(x[te]),
            "times": times, "grid": grid, "surv": surv}


def _random_ties(seed: int, n: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random survival data with many tied times (events and censorings) and tied risks."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, 12, n).astype(float), rng.random(n) < 0.5, rng.integers(0, 6, n) / 2.0


# ============================================================================================
# Harrell's C and its vectorised bootstrap
# ============================================================================================


def test_harrell_c_matches_lifelines_on_veterans(veterans: dict[str, np.ndarray]) -> None:
    t, e, r = veterans["time"], veterans["event"], veterans["risk"]
    c = M.harrell_c(t, e, r)
    assert isinstance(c, float)
    assert c == pytest.approx(concordance_index(t, -r, e), abs=1e-6)
    assert 0.7 < c < 0.8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_c_equals_sksurv_on_resamples_with_ties(seed: int) -> None:
    t, e, r = _random_ties(seed)
    rng = np.random.default_rng(100 + seed)
    counts = np.stack([np.bincount(rng.integers(0, len(t), len(t)), minlength=len(t)) for _ in range(20)])
    ours = M.harrell_c_weighted(t, e, np.stack([r, -r]), counts)  # (2, 20)
    for b, w in enumerate(counts):
        idx = np.repeat(np.arange(len(t)), w)
        assert ours[0, b] == pytest.approx(concordance_index_censored(e[idx], t[idx], r[idx])[0], abs=1e-12)
        assert ours[1, b] == pytest.approx(concordance_index_censored(e[idx], t[idx], -r[idx])[0], abs=1e-12)


def _pairwise_c_parts(t: np.ndarray, e: np.ndarray, risks: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The O(B n^2) reference (the module's former implementation, unblocked): every pair's comparability
    and score straight from sksurv's rules, summed with the weights w (B, n)."""
    comparable = e[:, None] & ((t[None, :] > t[:, None]) | ((t[None, :] == t[:, None]) & ~e[None, :]))
    a = comparable.astype(np.float64)  # a[i, j]: event i is comparable with j
    den = np.einsum("bi,ij,bj->b", w, a, w)
    num = []
    for r in risks:
        diff = r[:, None] - r[None, :]
        score = np.where(np.abs(diff) <= M.TIED_TOL, 0.5, (diff > 0).astype(np.float64)) * a
        num.append(np.einsum("bi,ij,bj->b", w, score, w))
    return np.array(num), den


def _hard_ties(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tied event and censoring times, exactly tied risks, risks chained within TIED_TOL, and risks a few
    ulps either side of +-TIED_TOL from one another (where a rounded rule would differ from sksurv's)."""
    rng = np.random.default_rng(seed)
    t, e = rng.integers(1, 15, n).astype(float), rng.random(n) < rng.uniform(0.2, 0.9)
    steps = np.array([0.0, 0.5, 1.0, 2.0, -1.0]) * M.TIED_TOL
    r = rng.integers(0, 8, n) / 4.0 * 10.0 ** rng.integers(-2, 3) + rng.choice(steps, n)
    near = rng.random(n) < 0.3
    r[near] = np.nextafter(r[near], rng.choice([-np.inf, np.inf], int(near.sum())))
    return t, e, r


def test_harrell_c_by_hand() -> None:
    """Patient 0 (t=1, event) is comparable with 1, 2, 3 and concordant with all (risk 3 > 1, 1, 2);
    patient 1 (t=2, event) with 2 (censored at its time: risk tie, 0.5) and 3 (later, lower risk: 0):
    3.5 / 5. Weights (2, 1, 0, 1): pairs (0,1) and (0,3) count 2 each, (1,3) once, (0,2), (1,2) not: 4 / 5."""
    t, e, r = np.array([1.0, 2, 2, 3]), np.array([True, True, False, False]), np.array([3.0, 1, 1, 2])
    assert M.harrell_c(t, e, r) == 0.7
    assert M.harrell_c_weighted(t, e, r, [[1, 1, 1, 1], [2, 1, 0, 1]]).tolist() == [[0.7, 0.8]]
    # two events at one time are not comparable; each is comparable with the later censoring only
    assert M.harrell_c([1.0, 1, 2], [True, True, False], [0.0, 1, 0.5]) == 0.5
    # sksurv's tolerance is pairwise, not transitive: 1 ~ 1 + 0.6e-8 ~ 1 + 1.2e-8, but 1 < 1 + 1.2e-8
    chain = np.array([1.0, 1 + 0.6 * M.TIED_TOL, 1 + 1.2 * M.TIED_TOL])
    assert M.harrell_c([1.0, 2, 3], [True, True, False], chain) == pytest.approx(1 / 3, abs=1e-15)
    assert concordance_index_censored(np.array([True, True, False]), np.array([1.0, 2, 3]), chain)[0] == \
        pytest.approx(1 / 3, abs=1e-15)


def _sksurv_c(t: np.ndarray, e: np.ndarray, r: np.ndarray) -> float:
    return float(concordance_index_censored(np.asarray(e), np.asarray(t), np.asarray(r), tied_tol=M.TIED_TOL)[0])


def _outcome(c_index: Callable[..., float], t: ArrayLike, e: ArrayLike, r: ArrayLike) -> float | str:
    """C, or the refusal's type and message; NaN as the string "nan" (so that == compares it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # sksurv's 0/0
            c = float(c_index(t, e, r))
    except ValueError as err:
        return f"{type(err).__name__}: {err}"
    return "nan" if np.isnan(c) else c


@pytest.mark.parametrize("seed", range(8))
def test_harrell_c_equals_sksurv_exactly_with_ties(seed: int) -> None:
    """Equal floats (both sum integers and halves exactly), or the same refusal, small data included."""
    for n in (2, 3, 7, 40, 300):
        t, e, r = _hard_ties(10 * seed + n, n)
        assert _outcome(M.harrell_c, t, e, r) == _outcome(_sksurv_c, t, e, r), n


def test_harrell_c_equals_sksurv_on_a_realistic_cohort() -> None:
    """5,000 patients, times in whole days (many ties), continuous risks and 40% censoring."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=5000)
    t_event, t_cens = rng.exponential(900 * np.exp(-x)), rng.uniform(0, 2500, 5000)
    t, e = np.ceil(np.minimum(t_event, t_cens)), t_event <= t_cens
    risk = x + rng.normal(0, 0.5, 5000)
    for r in (risk, risk.round(1), np.zeros(5000)):
        assert M.harrell_c(t, e, r) == concordance_index_censored(e, t, r, tied_tol=M.TIED_TOL)[0]
    assert M.harrell_c(t, e, np.zeros(5000)) == 0.5


def test_harrell_c_refuses_as_sksurv_does() -> None:
    cases = {"Need a minimum of two samples": ([1.0], [True], [0.0]),
             "All samples are censored": ([1.0, 2], [False, False], [0.0, 1]),
             "no comparable pairs": ([1.0, 2, 3], [False, False, True], [0.0, 1, 2])}  # the lone last row
    for message, (t, e, r) in cases.items():
        with pytest.raises(ValueError, match=message) as ours:
            M.harrell_c(t, e, r)
        with pytest.raises(type(ours.value), match=message):
            concordance_index_censored(np.array(e), np.array(t), np.array(r))
    # events but no comparable pair that sksurv still visits: its 0/0
    t, e, r = np.array([1.0, 2, 2]), np.array([False, True, True]), np.array([0.0, 1, 2])
    assert _outcome(_sksurv_c, t, e, r) == "nan" == _outcome(M.harrell_c, t, e, r)


@pytest.mark.parametrize("seed", range(4))
def test_weighted_parts_equal_the_pairwise_reference(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Numerators and denominators bit for bit, in several blocks of resamples, on rows that are several
    studies of one patient (zero weights included)."""
    d = _clustered(seed)
    t, e, r = d["time"], d["event"], d["risk"]
    _, _, hard = _hard_ties(seed, len(t))
    risks = np.stack([r, -r, hard, np.zeros(len(t))])
    w = M._study_weights(np.random.default_rng(seed), M.group_codes(d["ids"], len(t)), 23)
    monkeypatch.setattr(C, "_BLOCK_BYTES", 5 * 16 * len(t))  # 5 resamples a block
    num, den = C.weighted_c_parts(t, e, risks, w)
    ref_num, ref_den = _pairwise_c_parts(t, e, risks, w)
    assert np.array_equal(den, ref_den) and np.array_equal(num, ref_num)
    assert (w == 0).any() and (den > 0).all()


def test_weighted_c_equals_sksurv_on_repeated_rows_with_hard_ties() -> None:
    t, e, r = _hard_ties(5, 120)
    counts = np.random.default_rng(5).integers(0, 4, (10, 120))
    ours = M.harrell_c_weighted(t, e, r, counts)[0]
    for b, w in enumerate(counts):
        idx = np.repeat(np.arange(len(t)), w)
        assert ours[b] == concordance_index_censored(e[idx], t[idx], r[idx], tied_tol=M.TIED_TOL)[0]


def test_weighted_c_with_large_counts() -> None:
    """Counts summing past 2^30 take the int64 path; C does not change when every count is scaled."""
    t, e, r = _random_ties(6)
    counts = np.random.default_rng(6).integers(0, 3, (4, len(t)))
    assert np.array_equal(M.harrell_c_weighted(t, e, r, counts * 2**26), M.harrell_c_weighted(t, e, r, counts))


def test_bootstrap_redraws_resamples_without_pairs() -> None:
    t = np.arange(1.0, 21.0)
    e = np.zeros(20, dtype=bool)
    e[[3, 10]] = True  # two events: many resamples have none
    stats = M.harrell_c_bootstrap(t, e, np.random.default_rng(0).normal(size=20), n=200, seed=0)
    assert stats.shape == (1, 200) and np.isfinite(stats).all()
    with pytest.raises(ValueError, match="no comparable pair"):
        M.harrell_c_bootstrap(t, np.zeros(20, dtype=bool), t, n=10)


def test_bootstrap_ci_brackets_the_estimate(veterans: dict[str, np.ndarray]) -> None:
    t, e, r = veterans["time"], veterans["event"], veterans["risk"]
    lo, hi = M.bootstrap_ci(t, e, r, n=200, seed=0)
    assert isinstance(lo, float) and lo < M.harrell_c(t, e, r) < hi
    assert (lo, hi) == M.bootstrap_ci(t, e, r, n=200, seed=0)
    lo2, hi2 = M.bootstrap_ci(t, e, r, metric=lambda *a: M.harrell_c(*a), n=50, seed=0)  # generic path
    assert lo2 < M.harrell_c(t, e, r) < hi2


# ============================================================================================
# IPCW metrics: the wiring to sksurv, and what sksurv refuses
# ============================================================================================


def test_uno_td_auc_ibs_equal_direct_sksurv(veterans: dict[str, np.ndarray], split: dict[str, np.ndarray]) -> None:
    t, e = veterans["time"], veterans["event"]
    tr, te, risk, times = split["tr"], split["te"], split["risk"], split["times"]
    tau = float(times[-1])
    expected = concordance_index_ipcw(split["y_tr"], split["y_te"], risk, tau=tau)[0]
    assert M.uno_c(t[tr], e[tr], t[te], e[te], risk, tau) == pytest.approx(expected, abs=1e-12)
    auc = M.td_auc(t[tr], e[tr], t[te], e[te], risk, times)
    expected_auc, _ = cumulative_dynamic_auc(split["y_tr"], split["y_te"], risk, times)
    assert list(auc) == [float(x) for x in times]
    np.testing.assert_allclose(list(auc.values()), expected_auc, atol=1e-12)
    ibs = M.integrated_brier(t[tr], e[tr], t[te], e[te], split["surv"], split["grid"])
    expected_ibs = integrated_brier_score(split["y_tr"], split["y_te"], split["surv"], split["grid"])
    assert ibs == pytest.approx(expected_ibs, abs=1e-12)


def test_choose_horizons_are_event_time_quartiles(veterans: dict[str, np.ndarray]) -> None:
    t, e = veterans["time"], veterans["event"]
    assert M.choose_horizons(t, e) == pytest.approx(list(np.quantile(t[e], [0.25, 0.5, 0.75])))
    with pytest.raises(CtsurvError, match="no events"):
        M.choose_horizons(t, np.zeros_like(e))


def test_safe_times_prevent_sksurv_refusals(veterans: dict[str, np.ndarray]) -> None:
    """Times past follow-up, and a test patient followed past the last training time."""
    t, e = veterans["time"], veterans["event"]
    te = np.zeros(len(t), dtype=bool)
    te[1::3] = True
    te[np.argmax(t)] = True  # the longest follow-up (an event) is a test patient
    tr, te = np.flatnonzero(~te), np.flatnonzero(te)
    assert t[te].max() > t[tr].max() and e[tr][np.argmax(t[tr])]  # G_train is still > 0 at its last time
    y_tr, y_te = Surv.from_arrays(e[tr], t[tr]), Surv.from_arrays(e[te], t[te])
    risk = veterans["risk"][te]
    wanted = [0.5, 30.0, 100.0, float(t[tr].max()), 2000.0]
    with pytest.raises(ValueError, match="follow-up"):  # 0.5 and 2000 are outside the test follow-up
        cumulative_dynamic_auc(y_tr, y_te, risk, wanted)
    safe = M.safe_times(wanted, t[tr], t[te], e[te])
    assert safe == [30.0, 100.0]
    with pytest.raises(ValueError, match="largest observed time"):  # G_train evaluated past the training data
        cumulative_dynamic_auc(y_tr, y_te, risk, safe)
    with pytest.raises(ValueError, match="largest observed time"):
        integrated_brier_score(y_tr, y_te, np.full((len(te), 2), 0.5), safe)
    with pytest.raises(ValueError, match="largest observed time"):
        concordance_index_ipcw(y_tr, y_te, risk, tau=None)
    auc = M.td_auc(t[tr], e[tr], t[te], e[te], risk, safe)
    assert set(auc) == {30.0, 100.0} and all(0.5 < a <= 1 for a in auc.values())
    assert 0 < M.integrated_brier(t[tr], e[tr], t[te], e[te], np.full((len(te), 2), 0.5), safe) < 0.5
    tau = M.safe_tau(2000.0, t[tr], t[te], e[te])
    assert tau == t[tr].max()
    assert 0.5 < M.uno_c(t[tr], e[tr], t[te], e[te], risk, tau) < 1
    with pytest.raises(ValueError, match="safe_times"):
        M.td_auc(t[tr], e[tr], t[te], e[te], risk, wanted[1:])


# ============================================================================================
# Paired comparison
# ============================================================================================


def _strong_and_random(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t_event, t_cens = rng.exponential(np.exp(-x)), rng.exponential(2.0, n)
    return np.minimum(t_event, t_cens), t_event <= t_cens, x, rng.normal(size=n)


def test_paired_bootstrap_strong_vs_random() -> None:
    t, e, strong, noise = _strong_and_random()
    out = M.paired_bootstrap(t, e, strong, noise, n=200, seed=0)
    assert out["delta"] == pytest.approx(M.harrell_c(t, e, strong) - M.harrell_c(t, e, noise))
    assert out["p"] < 0.01 and out["ci"][0] > 0
    assert out["ci"][0] < out["delta"] < out["ci"][1]
    assert out == M.paired_bootstrap(t, e, strong, noise, n=200, seed=0)
    assert out["ci"] != M.paired_bootstrap(t, e, strong, noise, n=200, seed=1)["ci"]
    flipped = M.paired_bootstrap(t, e, noise, strong, n=200, seed=0)
    assert flipped["delta"] == pytest.approx(-out["delta"]) and flipped["p"] == out["p"]


def test_paired_bootstrap_identical_risks() -> None:
    t, e, strong, _ = _strong_and_random()
    assert M.paired_bootstrap(t, e, strong, strong.copy(), n=200) == {"delta": 0.0, "ci": (0.0, 0.0), "p": 1.0}


def test_paired_bootstrap_averages_repeats() -> None:
    t, e, strong, noise = _strong_and_random()
    a = np.stack([strong, strong + 0.1 * noise])
    out = M.paired_bootstrap(t, e, a, noise, n=200)
    expected = np.mean([M.harrell_c(t, e, r) for r in a]) - M.harrell_c(t, e, noise)
    assert out["delta"] == pytest.approx(expected)


def test_bootstrap_p_definition() -> None:
    assert M.bootstrap_p(np.ones(99)) == pytest.approx(2 / 100)  # never 0: the +1 correction
    assert M.bootstrap_p(np.zeros(99)) == 1.0
    assert M.bootstrap_p(np.r_[-np.ones(10), np.ones(89)]) == pytest.approx(2 * 11 / 100)


# ============================================================================================
# Cluster bootstrap: patients, not studies, are resampled
# ============================================================================================


def _clustered(seed: int = 0, n_patients: int = 60) -> dict[str, np.ndarray]:
    """Patients with 1-3 studies each, rows shuffled, string ids; a study's time is its patient's time
    plus 0 or 1 (tied times within and across patients), risks with ties."""
    rng = np.random.default_rng(seed)
    pid = rng.permutation(np.repeat(np.arange(n_patients), rng.integers(1, 4, n_patients)))
    t_patient, e_patient = rng.integers(1, 12, n_patients).astype(float), rng.random(n_patients) < 0.6
    return {"ids": np.array([f"P{(37 * k) % 101:03d}" for k in pid]), "time": t_patient[pid] + rng.integers(0, 2, len(pid)),
            "event": e_patient[pid], "risk": rng.integers(0, 6, len(pid)) / 2.0}


def _explicit_rows(ids: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """All rows of each drawn patient (patients numbered in order of first appearance), in draw order."""
    patients = list(dict.fromkeys(ids.tolist()))
    return np.concatenate([np.flatnonzero(ids == patients[k]) for k in drawn])


def test_cluster_bootstrap_equals_sksurv_on_explicit_patient_resamples() -> None:
    d = _clustered()
    t, e, r, ids = d["time"], d["event"], d["risk"], d["ids"]
    n_patients, b = len(set(ids.tolist())), 30
    ours = M.harrell_c_bootstrap(t, e, np.stack([r, -r]), n=b, seed=3, groups=ids)
    draws = np.random.default_rng(3).integers(0, n_patients, size=(b, n_patients))  # the documented draws
    for k in range(b):
        idx = _explicit_rows(ids, draws[k])
        assert len(idx) > n_patients  # several studies per drawn patient came along
        assert ours[0, k] == pytest.approx(concordance_index_censored(e[idx], t[idx], r[idx])[0], abs=1e-12)
        assert ours[1, k] == pytest.approx(concordance_index_censored(e[idx], t[idx], -r[idx])[0], abs=1e-12)


def test_generic_bootstrap_path_resamples_patients() -> None:
    d = _clustered(1)
    t, e, ids = d["time"], d["event"], d["ids"]
    n_patients, seen = len(set(ids.tolist())), []

    def metric(tt: np.ndarray, ee: np.ndarray, rows: np.ndarray) -> float:
        seen.append(rows.astype(int))  # the risk passed is the row index
        return float(concordance_index_censored(ee, tt, d["risk"][rows.astype(int)])[0])

    lo, hi = M.bootstrap_ci(t, e, np.arange(len(t), dtype=float), metric=metric, n=20, seed=5, groups=ids)
    rng = np.random.default_rng(5)
    expected = [_explicit_rows(ids, rng.integers(0, n_patients, n_patients)) for _ in range(20)]
    assert len(seen) == 20 and all(np.array_equal(a, b) for a, b in zip(seen, expected))
    values = [concordance_index_censored(e[i], t[i], d["risk"][i])[0] for i in expected]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])), abs=1e-12)


def test_groups_of_single_rows_keep_the_old_resamples() -> None:
    t, e, r = _random_ties(4)
    plain = M.harrell_c_bootstrap(t, e, r, n=50, seed=2)
    assert np.array_equal(plain, M.harrell_c_bootstrap(t, e, r, n=50, seed=2, groups=np.arange(len(t))[::-1] * 7))
    with pytest.raises(ValueError, match="one patient id per row"):
        M.harrell_c_bootstrap(t, e, r, n=5, groups=np.arange(len(t) - 1))
    with pytest.raises(ValueError, match="missing patient ids"):
        M.bootstrap_ci(t, e, r, n=5, groups=np.r_[np.nan, np.arange(len(t) - 1.0)])


def _duplicated(t: np.ndarray, e: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every patient twice (two identical studies) and the patient ids."""
    return np.repeat(t, 2), np.repeat(e, 2), np.repeat(r, 2), np.repeat(np.arange(len(t)), 2)


def test_duplicated_studies_leave_the_cluster_ci_unchanged() -> None:
    t, e, strong, _ = _strong_and_random(200)
    width = np.diff(M.bootstrap_ci(t, e, strong, n=400, seed=0))[0]
    tt, ee, rr, pid = _duplicated(t, e, strong)
    clustered = np.diff(M.bootstrap_ci(tt, ee, rr, n=400, seed=0, groups=pid))[0]
    naive = np.diff(M.bootstrap_ci(tt, ee, rr, n=400, seed=0))[0]
    assert clustered == pytest.approx(width, rel=0.10)
    assert clustered == pytest.approx(width, abs=1e-12)  # same patient draws, every pair counted 4 times
    assert naive < 0.85 * width  # resampling studies: the bug, CIs about 1/sqrt(2) too narrow


def test_paired_cluster_bootstrap() -> None:
    t, e, strong, noise = _strong_and_random(200)
    tt, ee, a, pid = _duplicated(t, e, strong)
    b = np.repeat(noise, 2)
    out = M.paired_bootstrap(tt, ee, a, b, n=300, seed=0, groups=pid)
    assert out["delta"] == pytest.approx(concordance_index_censored(ee, tt, a)[0] - concordance_index_censored(ee, tt, b)[0],
                                         abs=1e-12)
    assert out["ci"][0] < out["delta"] < out["ci"][1] and out["ci"][0] > 0
    assert out["p"] == pytest.approx(M.p_floor(300))  # every resample favours the strong risk
    assert out == M.paired_bootstrap(tt, ee, a, b, n=300, seed=0, groups=pid)
    assert out == M.paired_bootstrap(tt, ee, a, b, n=300, seed=0, groups=[f"id{k}" for k in pid])  # ids' names
    assert out["ci"] == pytest.approx(M.paired_bootstrap(t, e, strong, noise, n=300, seed=0)["ci"], abs=1e-12)
    naive = M.paired_bootstrap(tt, ee, a, b, n=300, seed=0)
    assert naive["ci"][1] - naive["ci"][0] < 0.85 * (out["ci"][1] - out["ci"][0])


def test_p_floor_is_the_smallest_bootstrap_p() -> None:
    assert M.p_floor(1000) == pytest.approx(2 / 1001)
    for b in (99, 200, 1000):
        assert M.p_floor(b) == M.bootstrap_p(np.ones(b)) == M.bootstrap_p(-np.ones(b))
    with pytest.raises(ValueError):
        M.p_floor(0)


def test_corrected_fold_t_test_against_scipy() -> None:
    """Without the correction it is scipy's one-sample t-test; the correction scales t by sqrt((1/J) / (1/J + r))."""
    d = np.array([0.031, -0.004, 0.022, 0.015, 0.009, -0.012, 0.027, 0.018, 0.001, 0.024])
    plain = scipy.stats.ttest_1samp(d, 0.0)
    assert M.corrected_fold_t_test(d, 0.0) == pytest.approx(plain.pvalue, rel=1e-12)
    r, j = 0.25, len(d)
    t = plain.statistic * np.sqrt((1 / j) / (1 / j + r))
    assert M.corrected_fold_t_test(d, r) == pytest.approx(2 * scipy.stats.t.sf(abs(t), j - 1), rel=1e-12)
    assert M.corrected_fold_t_test(d, r) > plain.pvalue  # overlapping training sets: less evidence
    assert M.corrected_fold_t_test(d[:1], r) is None
    assert M.corrected_fold_t_test(np.zeros(5), r) == 1.0

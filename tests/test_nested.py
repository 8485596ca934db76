"""Nested selection (survival.nested): each training fold chooses the head's penalty and image width by inner
cross-validation on its own rows; the test fold's outcomes never enter. And lifelines fits that survive a
column constant on the fitting rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from tiny_setups import survival_table

from ctsurv.config import DataConfig, ExperimentConfig
from ctsurv.evaluation.metrics import harrell_c
from ctsurv.training.survival import (
    BUDGET_SHARES,
    COX_PENALTIES,
    HEAD_PENALTIES,
    FoldData,
    choose_head,
    clinical_cox,
    encoder_image,
    fit_cox,
    head_method,
)


def cohort_with_image(tmp_path, n: int = 90, seed: int = 0):
    """A cohort (no volumes read) with one clinical column and 40 image columns, one of which carries the risk."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, 40))
    data_cfg = DataConfig(numeric_columns=("age",), categorical_columns=("stage",))
    cohort = survival_table(tmp_path, rng, image[:, 3], 1.0, data_cfg, stage=lambda rng, n: rng.choice(["I", "ii", "II", "III"], n))
    cfg = ExperimentConfig(data=data_cfg)
    cfg = dataclasses.replace(cfg, survival=dataclasses.replace(cfg.survival, nested=True, epochs=150))
    return cohort, image, cfg


def test_choice_keeps_to_its_grid_and_never_sees_the_test_fold(tmp_path):
    cohort, image, cfg = cohort_with_image(tmp_path)
    train, test = np.arange(70), np.arange(70, 90)
    data = FoldData(cohort, cohort.times, cohort.events)
    build = encoder_image((image,), 12)
    choice = choose_head(data, cfg, build, True, 0, train, kept=0, budget=12)
    assert choice.l2 in HEAD_PENALTIES
    assert choice.width in {max(1, round(share * 12)) for share in BUDGET_SHARES}
    pred = head_method(data, cfg, build, use_clinical=True, seed=0, kept=0)(train, test)
    assert np.isfinite(pred.risk).all() and pred.risk.shape == (20,)
    assert pred.chosen == {"l2": choice.l2, "image_columns": choice.width}  # what results.json's "chosen" counts
    # other outcomes in the test fold change nothing: neither the inner search nor the fit saw them
    time, event = cohort.times.copy(), cohort.events.copy()
    time[test], event[test] = time[test][::-1] * 2.0, ~event[test]
    moved = FoldData(cohort, time, event)
    assert choose_head(moved, cfg, build, True, 0, train, kept=0, budget=12) == choice
    np.testing.assert_array_equal(head_method(moved, cfg, build, use_clinical=True, seed=0, kept=0)(train, test).risk, pred.risk)
    # but the training outcomes decide it: the fitted risk follows them
    time[train] = time[train][::-1]
    other = head_method(FoldData(cohort, time, event), cfg, build, use_clinical=True, seed=0, kept=0)(train, test)
    assert not np.allclose(other.risk, pred.risk)


def test_nested_clinical_cox_reads_the_clinical_signal(tmp_path):
    cohort, _, _ = cohort_with_image(tmp_path, n=150, seed=2)
    train, test = np.arange(110), np.arange(110, 150)
    data = FoldData(cohort, cohort.times, cohort.events)
    nested = clinical_cox(data, seed=0, nested=True)(train, test)
    fixed = clinical_cox(data)(train, test)
    assert np.corrcoef(nested.risk, fixed.risk)[0, 1] > 0.9  # same covariates, another penalty at most
    assert harrell_c(cohort.times[test], cohort.events[test], nested.risk) > 0.5


def test_fit_cox_gives_a_constant_column_no_weight_and_matches_lifelines_on_the_rest():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 3))
    time = rng.exponential(1 / np.exp(x[:, 0])) + 0.01
    event = rng.random(60) < 0.7
    with_constant = np.column_stack([x[:, 0], np.zeros(60), x[:, 1:]])  # a level absent from these rows
    beta = fit_cox(with_constant, time, event, 0.1)
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(T=time, E=event.astype(int))
    expected = CoxPHFitter(penalizer=0.1).fit(frame, "T", "E").params_.to_numpy()
    assert beta[1] == 0.0
    np.testing.assert_allclose(beta[[0, 2, 3]], expected, rtol=1e-6)
    assert not fit_cox(np.zeros((60, 2)), time, event, 0.1).any()


@pytest.mark.parametrize("nested", [False, True])
def test_categorical_spellings_fold_into_one_level_in_every_fold(tmp_path, nested):
    cohort, _, _ = cohort_with_image(tmp_path, n=80, seed=4)
    data = FoldData(cohort, cohort.times, cohort.events)
    schema = data.schema(np.arange(60))
    assert schema.feature_names == ["age"] + [f"stage={level}" for level in schema.levels[0][1:]]
    assert {level.casefold() for level in schema.levels[0]} == {"i", "ii", "iii"}  # "ii" and "II" are one level
    pred = clinical_cox(data, seed=0, nested=nested)(np.arange(60), np.arange(60, 80))
    assert np.isfinite(pred.risk).all()


def test_cross_validation_counts_what_the_folds_chose(tmp_path):
    from ctsurv.evaluation.crossval import cross_validate, make_folds

    cohort, _, _ = cohort_with_image(tmp_path, n=90, seed=5)
    data = FoldData(cohort, cohort.times, cohort.events)
    folds = make_folds(cohort.times, cohort.events, n_splits=3, seed=0)
    oof = cross_validate(folds, clinical_cox(data, seed=0, nested=True), cohort.times, cohort.events)
    counts = oof.chosen()["penalizer"]
    assert sum(counts.values()) == 3 and set(counts) <= {f"{p:g}" for p in COX_PENALTIES}
    assert cross_validate(folds, clinical_cox(data), cohort.times, cohort.events).chosen() == {}

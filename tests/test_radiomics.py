"""Radiomics features of a masked region against values computed by hand (numpy, scipy, geometry)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from tiny_setups import survival_table

from ctsurv.config import DataConfig
from ctsurv.features.radiomics import RADIOMICS_FEATURES, cohort_radiomics, region_features
from ctsurv.io.cohort import load_cohort
from ctsurv.io.volumes import Volume


def named(values: np.ndarray) -> dict[str, float]:
    return dict(zip(RADIOMICS_FEATURES, values, strict=True))


def test_box_region_statistics_match_numpy():
    rng = np.random.default_rng(3)
    hu = rng.normal(20, 100, (20, 22, 24)).astype(np.float32)
    hu[3:9, 4:14, 5:21] += rng.exponential(80, (6, 10, 16)).astype(np.float32)  # a skewed inside
    mask = np.zeros(hu.shape, bool)
    mask[3:9, 4:14, 5:21] = True  # 6 x 10 x 16 voxels of 0.8 x 0.8 x 2 mm: 4.8 x 8 x 32 mm
    f = named(region_features(Volume(hu, np.diag([0.8, 0.8, 2.0, 1.0])), mask))
    x, n = hu[mask].astype(np.float64), int(mask.sum())
    assert f["log_volume_mm3"] == pytest.approx(np.log(n * 0.8 * 0.8 * 2.0))
    assert f["mean_hu"] == pytest.approx(x.mean(), rel=1e-6)
    assert f["sd_hu"] == pytest.approx(x.std(ddof=1), rel=1e-6)
    # ITK normalises the third and fourth moments by the sample (n - 1) variance
    assert f["skewness"] == pytest.approx(stats.skew(x) * ((n - 1) / n) ** 1.5, rel=1e-6)
    assert f["kurtosis"] == pytest.approx((stats.kurtosis(x) + 3) * ((n - 1) / n) ** 2 - 3, rel=1e-6)
    assert [f["p10_hu"], f["median_hu"], f["p90_hu"]] == pytest.approx(np.percentile(x, [10, 50, 90]))
    # the farthest voxel centres: (5, 9, 15) voxels apart
    assert f["log_max_diameter_mm"] == pytest.approx(np.log(np.sqrt((5 * 0.8) ** 2 + (9 * 0.8) ** 2 + (15 * 2.0) ** 2)))
    # elongation and flatness: square roots of the principal moments' ratios, here the sides' ratios (32/8, 8/4.8)
    assert f["elongation"] == pytest.approx(32 / 8, rel=0.02)
    assert f["flatness"] == pytest.approx(8 / 4.8, rel=0.02)


def test_ball_shape_is_a_sphere():
    r = 12.0  # mm, on 1 mm voxels
    grid = np.stack(np.meshgrid(*(np.arange(40.0),) * 3, indexing="ij"), -1)
    mask = np.linalg.norm(grid - 19.5, axis=-1) <= r
    f = named(region_features(Volume(np.zeros(mask.shape, np.float32), np.eye(4)), mask))
    assert np.exp(f["log_volume_mm3"]) == pytest.approx(4 / 3 * np.pi * r**3, rel=0.02)
    assert np.exp(f["log_surface_mm2"]) == pytest.approx(4 * np.pi * r**2, rel=0.05)
    assert f["roundness"] == pytest.approx(1.0, abs=0.05)
    assert f["elongation"] == pytest.approx(1.0, abs=0.02) and f["flatness"] == pytest.approx(1.0, abs=0.02)


def test_cohort_radiomics_reads_each_masked_study(tmp_path):
    rows = []
    for i in range(4):
        scan = np.full((10, 12, 14), -800, np.int16)
        scan[2:6, 3:7, 4 : 6 + i] = 50
        masks = [scan > 0, scan > 0, None, scan > 100]  # the fourth: an empty segmentation
        np.savez(tmp_path / f"p{i}.npz", scan=scan, **({"mask": masks[i]} if masks[i] is not None else {}))
        rows.append({"id": f"p{i}", "volume": f"p{i}.npz", "spacing_z": 2.0, "spacing_y": 1.0, "spacing_x": 1.0})
    pd.DataFrame(rows).to_csv(tmp_path / "cohort.csv", index=False)
    table = cohort_radiomics(load_cohort(tmp_path / "cohort.csv", DataConfig()))
    assert table.shape == (4, len(RADIOMICS_FEATURES)) and np.isnan(table[2:]).all() and np.isfinite(table[:2]).all()
    volume = named(table[0])["log_volume_mm3"], named(table[1])["log_volume_mm3"]
    assert volume == pytest.approx((np.log(4 * 4 * 2 * 2.0), np.log(4 * 4 * 3 * 2.0)))
    assert named(table[1])["mean_hu"] == pytest.approx(50.0)


def survival_frame(tmp_path, n: int = 120, seed: int = 0):
    """A cohort table (no volumes read) with one clinical column, and radiomics of which column 0 carries the risk."""
    rng = np.random.default_rng(seed)
    radiomics = rng.normal(size=(n, 6))
    cohort = survival_table(tmp_path, rng, radiomics[:, 0], 1.2, DataConfig(numeric_columns=("age",)))
    return cohort, radiomics


def test_radiomics_cox_reads_the_region_and_never_sees_the_test_fold(tmp_path):
    from ctsurv.evaluation.metrics import harrell_c
    from ctsurv.training.survival import FoldData, clinical_cox, radiomics_cox

    cohort, radiomics = survival_frame(tmp_path)
    radiomics[5] = np.nan  # a study without a mask
    train, test = np.arange(90), np.arange(90, 120)
    data = FoldData(cohort, cohort.times, cohort.events)
    pred = radiomics_cox(data, radiomics, seed=0)(train, test)
    clinical = clinical_cox(data)(train, test)
    c = harrell_c(cohort.times[test], cohort.events[test], pred.risk)
    assert c > harrell_c(cohort.times[test], cohort.events[test], clinical.risk) + 0.1  # the region's signal is read
    # other outcomes in the test fold change nothing: neither the penalty search nor the fit saw them
    time, event = cohort.times.copy(), cohort.events.copy()
    time[test], event[test] = time[test][::-1] * 3.0, ~event[test]
    again = radiomics_cox(FoldData(cohort, time, event), radiomics, seed=0)(train, test)
    np.testing.assert_array_equal(again.risk, pred.risk)


def test_penalty_search_keeps_to_its_grid_and_falls_back_without_events(tmp_path):
    from ctsurv.training.survival import COX_PENALTIES, choose_cox_penalty

    cohort, radiomics = survival_frame(tmp_path, n=150, seed=1)
    groups = np.array(cohort.ids, dtype=object)
    assert choose_cox_penalty(radiomics, cohort.times, cohort.events, groups, seed=0) in COX_PENALTIES
    assert choose_cox_penalty(radiomics, cohort.times, cohort.events, groups, seed=0, penalties=(0.5,)) == 0.5
    two_events = np.zeros(150, bool)
    two_events[:2] = True  # too few for three inner folds: the middle of the grid
    assert choose_cox_penalty(radiomics, cohort.times, two_events, groups, seed=0) == COX_PENALTIES[len(COX_PENALTIES) // 2]

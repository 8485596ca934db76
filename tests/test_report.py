"""The survival run's tables and figures: files parse back, missing values stay missing, stats match lifelines."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test
from matplotlib.image import imread
from rich.console import Console
from rich.table import Table

from ctsurv.evaluation import figures, formatting, report

DASH = "–"


def _method(c: float | None, delta: float | None, p: float | None) -> dict:
    return {"harrell_c": c, "harrell_c_ci": None if c is None else [c - 0.03, c + 0.03], "uno_c": c,
            "td_auc": {1.0: 0.7512345, 3.0: 0.73, 5.0: None}, "ibs": 0.1534567,
            "delta_c_vs_clinical": delta, "delta_c_ci": None if delta is None else [delta - 0.02, delta + 0.02],
            "p_vs_clinical": p}


@pytest.fixture()
def results() -> dict:
    return {
        "cohort": {"n": 300, "events": np.int64(170), "horizon": 3.0, "times": np.array([1.0, 3.0, 5.0])},
        "methods": {
            "model": _method(0.7123456, 0.0451234, 0.0000123456),
            "model_image_only": _method(0.69, -0.0123, 0.18),
            "encoder_no_instruction": _method(None, None, float("nan")) | {"ibs": float("inf")},
            "clinical_cox": _method(0.667, None, None),
            "oracle": _method(np.float32(0.76), 0.093, 0.0496),
        },
    }


@pytest.fixture(scope="module")
def oof() -> pd.DataFrame:
    """Exponential survival whose hazard rises with a latent x; the risk is a noisy copy of x."""
    rng = np.random.default_rng(0)
    n = 300
    x = rng.normal(size=n)
    t_event = rng.exponential(3.0 * np.exp(-0.8 * x))
    t_cens = rng.uniform(0, 8, size=n)
    risk = 0.8 * x + rng.normal(scale=0.6, size=n)
    return pd.DataFrame({"id": [f"P{i:03d}" for i in range(n)], "time": np.minimum(t_event, t_cens),
                         "event": (t_event <= t_cens).astype(int), "risk": risk,
                         "surv_at_horizon": np.exp(-3.0 / (3.0 * np.exp(-0.9 * risk)))})


def _png_ok(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5000
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200 and img.shape[2] in (3, 4)
    assert img[..., :3].std() > 0.05  # not a blank canvas
    assert not list(path.parent.glob(".*.tmp"))


# ============================================================================================
# Tables
# ============================================================================================


def test_write_results_files_parse_back(results: dict, tmp_path: Path) -> None:
    paths = report.write_results(results, tmp_path / "run")
    assert [p.name for p in paths] == ["results.json", "results.csv", "results.md"]
    assert all(p.is_file() for p in paths)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["results.csv", "results.json", "results.md"]
    for p in paths:  # NaN/inf in the input are written as null / empty cells / "–", never as text
        words = p.read_text().replace(",", " ").replace("|", " ").lower().split()
        assert not {"nan", "inf", "-inf", "infinity", "-infinity", "none"} & set(words), p.name


def test_json_round_trip_rounding_and_null(results: dict, tmp_path: Path) -> None:
    path = report.write_results(results, tmp_path)[0]
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in results.json"))
    assert data == formatting.clean(results)
    assert list(data["methods"]) == list(results["methods"])  # keys as given, order kept
    model = data["methods"]["model"]
    assert model["harrell_c"] == 0.7123 and model["ibs"] == 0.1535
    assert model["p_vs_clinical"] == pytest.approx(1.235e-5)  # p keeps significant digits, not 4 decimals
    assert model["td_auc"] == {"1": 0.7512, "3": 0.73, "5": None}
    enc = data["methods"]["encoder_no_instruction"]
    assert enc["harrell_c"] is None and enc["p_vs_clinical"] is None and enc["ibs"] is None
    assert data["cohort"] == {"n": 300, "events": 170, "horizon": 3.0, "times": [1.0, 3.0, 5.0]}
    assert data["methods"]["oracle"]["harrell_c"] == 0.76


def test_csv_columns_and_missing_cells(results: dict, tmp_path: Path) -> None:
    path = report.write_results(results, tmp_path)[1]
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["method", "harrell_c", "ci_lo", "ci_hi", "uno_c", "td_auc@1", "td_auc@3", "td_auc@5",
                             "ibs", "delta_c_vs_clinical", "delta_ci_lo", "delta_ci_hi", "p_vs_clinical",
                             "harrell_c_folds_mean", "harrell_c_folds_sd", "previous_rung", "delta_c_vs_previous",
                             "delta_prev_ci_lo", "delta_prev_ci_hi", "p_vs_previous", "p_vs_clinical_cv",
                             "p_vs_previous_cv"]
    assert [r["method"] for r in rows] == list(results["methods"])
    model = rows[0]
    assert float(model["harrell_c"]) == 0.7123
    assert float(model["ci_lo"]) == pytest.approx(0.6823) and float(model["ci_hi"]) == pytest.approx(0.7423)
    assert float(model["delta_ci_lo"]) == pytest.approx(0.0251)
    assert model["td_auc@5"] == ""
    enc = rows[2]
    assert enc["harrell_c"] == enc["ci_lo"] == enc["p_vs_clinical"] == enc["ibs"] == ""
    df = pd.read_csv(path)
    assert df.shape == (5, 22)


def test_markdown_table(results: dict, tmp_path: Path) -> None:
    text = report.write_results(results, tmp_path)[2].read_text()
    assert "n = 300 patients, 170 events (57%), horizon t = 3" in text
    for name in results["methods"]:
        assert f"`{name}`" in text and report.label(name) in text
    for col in ("C-index (95% CI)", "Uno's C", "td-AUC at t=1", "IBS", "ΔC vs clinical (95% CI)", "| p (bootstrap; fold t-test) |"):
        assert col in text
    model_row = next(line for line in text.splitlines() if line.startswith("| Model: CT + clinical"))
    assert "0.712 (0.682–0.742)" in model_row and "+0.045 (+0.025 to +0.065)" in model_row
    assert model_row.split("|")[-4].strip() == "<0.001"
    enc_row = next(line for line in text.splitlines() if line.startswith("| Encoder"))
    cells = [c.strip() for c in enc_row.strip("|").split("|")]
    assert cells[1] == cells[2] == cells[-3] == cells[-4] == cells[-5] == DASH  # C, C per fold, p, ΔC, IBS
    assert cells[-2] == cells[-1] == ""  # not on a ladder
    assert "| reference |" in text  # the clinical Cox row is the reference for ΔC
    assert "| 0.050 |" in text  # p = 0.0496 is not rounded to 0.05


@pytest.fixture()
def ladder_results(results: dict) -> dict:
    """The results with fold C, a ladder clinical_cox -> model_image_only -> model, and 1000 resamples."""
    methods = results["methods"]
    for m in methods.values():
        m |= {"harrell_c_folds_mean": m["harrell_c"], "harrell_c_folds_sd": 0.0312, "previous_rung": None,
              "delta_c_vs_previous": None, "delta_c_vs_previous_ci": None, "p_vs_previous": None}
    methods["model_image_only"] |= {"previous_rung": "clinical_cox", "delta_c_vs_previous": 0.023,
                                     "delta_c_vs_previous_ci": [0.001, 0.045], "p_vs_previous": 0.041}
    methods["model"] |= {"previous_rung": "model_image_only", "delta_c_vs_previous": 0.0223,
                         "delta_c_vs_previous_ci": [-0.004, 0.048], "p_vs_previous": 0.12}
    methods["encoder_no_instruction"]["harrell_c_folds_sd"] = None
    results["cohort"]["bootstrap"] = {"resamples": 1000, "unit": "patient", "p_floor": 2 / 1001}
    return results | {"ladder": ["clinical_cox", "model_image_only", "model"]}


def _row(text: str, start: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {start}"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_ladder_columns_in_markdown_csv_and_terminal(ladder_results: dict, tmp_path: Path) -> None:
    paths = report.write_results(ladder_results, tmp_path)
    text = paths[2].read_text()
    assert "| C per fold (mean ± SD) |" in text and "| ΔC vs rung below (95% CI) | p (bootstrap; fold t-test) |" in text
    model, image, ref = _row(text, "Model: CT + clinical"), _row(text, "Model: CT only"), _row(text, "Clinical Cox")
    assert model[2] == "0.712 ± 0.031" and model[-2:] == ["+0.022 (-0.004 to +0.048)", "0.12"]
    assert model[-3] == "≤ 0.002"  # p_vs_clinical 1.2e-5 is below what 1000 resamples can show
    assert image[-2:] == ["+0.023 (+0.001 to +0.045)", "0.04"]
    assert ref[-2:] == ["bottom rung", ""]
    assert _row(text, "Encoder")[2] == DASH
    assert "- `model`: Model: CT + clinical" in text and "; rung below: `model_image_only`" in text
    assert "Bootstrap: 1000 resamples of patients; the smallest possible p is 0.002." in text
    sentence = report.ladder_sentence(ladder_results)
    assert f"\n\n{sentence}\n\n" in text  # right under the table
    with paths[1].open() as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert rows["model"]["previous_rung"] == "model_image_only" and rows["clinical_cox"]["previous_rung"] == ""
    assert float(rows["model"]["delta_c_vs_previous"]) == 0.0223 and float(rows["model"]["delta_prev_ci_lo"]) == -0.004
    assert float(rows["model"]["p_vs_previous"]) == 0.12 and float(rows["model"]["harrell_c_folds_sd"]) == 0.0312
    console = Console(record=True, width=260)
    console.print(report.terminal_table(ladder_results))
    out = console.export_text()
    assert "0.712 ± 0.031" in out and "model_image_only" in out and "bottom rung" in out and "≤ 0.002" in out
    assert "the step that carries the gain is" in out  # the sentence as the caption


def test_ladder_sentence_with_a_significant_step(ladder_results: dict) -> None:
    assert report.ladder_sentence(ladder_results) == (
        "Of the ladder clinical_cox → model_image_only → model, the step that carries the gain is model_image_only "
        "over clinical_cox (ΔC +0.023, 95% CI +0.001 to +0.045, p = 0.04); no other step is significant at α = 0.05.")
    ladder_results["methods"]["model_image_only"]["p_vs_previous"] = 0.0019980  # at the floor, as results.json keeps it
    ladder_results["methods"]["model"]["p_vs_previous"] = 0.0499
    assert report.ladder_sentence(ladder_results).endswith(
        "the steps that carry the gain are model_image_only over clinical_cox (ΔC +0.023, 95% CI +0.001 to +0.045, "
        "p ≤ 0.002) and model over model_image_only (ΔC +0.022, 95% CI -0.004 to +0.048, p = 0.050).")


def test_ladder_sentence_without_a_significant_step(ladder_results: dict) -> None:
    methods = ladder_results["methods"]
    methods["model_image_only"] |= {"delta_c_vs_previous": -0.02, "delta_c_vs_previous_ci": [-0.035, -0.005],
                                    "p_vs_previous": 0.01}
    assert report.ladder_sentence(ladder_results) == (
        "Of the ladder clinical_cox → model_image_only → model, no step improves significantly on the one below it "
        "at α = 0.05; the largest step is model over model_image_only (ΔC +0.022, 95% CI -0.004 to +0.048, p = 0.12); "
        "model_image_only over clinical_cox (ΔC -0.020, 95% CI -0.035 to -0.005, p = 0.01) is significantly lower "
        "than the rung below.")


def test_a_step_needs_both_tests_and_tables_show_both_ps(ladder_results: dict) -> None:
    """The bootstrap holds the fitted models fixed and runs low; a step counts only when the fold t-test agrees."""
    step = ladder_results["methods"]["model_image_only"]
    step |= {"p_vs_previous_cv": 0.21, "p_vs_clinical_cv": 0.034}
    assert report.ladder_sentence(ladder_results).startswith(
        "Of the ladder clinical_cox → model_image_only → model, no step improves significantly on the one below it")
    step["p_vs_previous_cv"] = 0.031
    assert "carries the gain is model_image_only over clinical_cox (ΔC +0.023, 95% CI +0.001 to +0.045, p = 0.04; " \
           "fold t-test p = 0.03)" in report.ladder_sentence(ladder_results)
    row = next(line for line in report.results_markdown(ladder_results).splitlines()
               if line.startswith(f"| {report.label('model_image_only')} |"))
    assert f"| {formatting.fmt_p(step['p_vs_clinical'])}; 0.03 |" in row and "| 0.04; 0.03 |" in row


def test_ladder_order_from_results_then_method_order(ladder_results: dict) -> None:
    methods = ladder_results["methods"]
    scrambled = {k: methods[k] for k in ("model", "oracle", "clinical_cox", "model_image_only")}
    shuffled = ladder_results | {"methods": scrambled}
    assert report.ladder_sentence(shuffled).startswith("Of the ladder clinical_cox → model_image_only → model,")
    in_order = {k: methods[k] for k in ("clinical_cox", "model_image_only", "model")}
    assert report.ladder_sentence({"methods": in_order}) == report.ladder_sentence(ladder_results)
    no_ladder = {"methods": {k: m | {"previous_rung": None} for k, m in methods.items()}}
    assert report.ladder_sentence(no_ladder) == "" and "Of the ladder" not in report.results_markdown(no_ladder)


def test_cohort_line_units_and_missing() -> None:
    line = report.cohort_line({"cohort": {"n": 10, "events": 4, "horizon": 365.25, "time_unit": "days"}})
    assert line == "n = 10 patients, 4 events (40%), horizon t = 365.25 days"
    assert report.cohort_line({}) == f"n = {DASH} patients, horizon t = {DASH}"


@pytest.mark.parametrize(
    ("p", "text"),
    [(None, DASH), (float("nan"), DASH), (1e-9, "<0.001"), (0.0009999, "<0.001"), (0.001, "0.001"),
     (0.0042, "0.004"), (0.0312, "0.03"), (0.0496, "0.050"), (0.054, "0.054"), (0.18, "0.18"), (0.999, ">0.99")],
)
def test_fmt_p(p: float | None, text: str) -> None:
    assert formatting.fmt_p(p) == text


@pytest.mark.parametrize(
    ("p", "floor", "text"),
    [(2 / 1001, 2 / 1001, "≤ 0.002"), (0.001998, 2 / 1001, "≤ 0.002"), (2 / 1001, 0.001998, "≤ 0.002"),
     (1e-6, 2 / 1001, "≤ 0.002"), (4 / 1001, 2 / 1001, "0.004"), (0.002, 0.002, "≤ 0.002"), (2 / 201, 2 / 201, "≤ 0.010"),
     (2 / 10001, 2 / 10001, "≤ 0.00020"), (4 / 10001, 2 / 10001, "<0.001"), (2 / 20001, 2 / 20001, "≤ 0.00010"),
     (0.31, 2 / 1001, "0.31"), (None, 2 / 1001, DASH), (1e-6, None, "<0.001"), (1e-6, float("nan"), "<0.001")],
)
def test_fmt_p_at_the_bootstrap_floor(p: float | None, floor: float | None, text: str) -> None:
    assert formatting.fmt_p(p, floor) == text


def test_floor_text_is_a_tight_upper_bound() -> None:
    for b in range(100, 30000, 37):
        floor = 2 / (b + 1)
        text = formatting.fmt_p(floor, floor=floor)
        assert text.startswith("≤ ")
        digits = len(text.split(".")[1])
        assert float(text[2:]) >= floor and float(text[2:]) - floor < 10.0**-digits, b
        assert digits == 3 if floor >= 0.001 else len(text[2:].lstrip("0.")) == 2, b


def test_p_phrase() -> None:
    assert formatting.p_phrase(2 / 1001, floor=2 / 1001) == "p ≤ 0.002"
    assert formatting.p_phrase(0.03, floor=2 / 1001) == "p = 0.03"
    assert formatting.p_phrase(1e-5) == "p < 0.001" and formatting.p_phrase(0.999) == "p > 0.99"
    assert report.p_floor({"cohort": {"bootstrap": {"p_floor": 0.002}}}) == 0.002
    assert report.p_floor({"cohort": {}}) is None and report.p_floor({}) is None


def test_clean_plain_json() -> None:
    out = formatting.clean({"a": np.float64(0.123456), "p_x": 0.00001234567, "logrank_p": 2e-30, "b": [np.int32(2), None],
                        "c": float("-inf"), 2.0: True, 0.5: np.bool_(False), "s": "x"})
    assert out == {"a": 0.1235, "p_x": 1.235e-5, "logrank_p": 2e-30, "b": [2, None], "c": None, "2": True,
                   "0.5": False, "s": "x"}
    with pytest.raises(TypeError, match="results.json"):
        formatting.clean({"bad": object()})


def test_more_td_auc_times_than_columns_keep_the_horizon(results: dict) -> None:
    for m in results["methods"].values():
        m["td_auc"] = {float(t): 0.7 for t in range(1, 8)}
    results["cohort"]["horizon"] = 2.0
    text = report.results_markdown(results)
    assert "td-AUC at t=2 " in text and text.count("td-AUC at t=") == 4
    assert "td-AUC at all 7 times is in results.csv" in text


def test_terminal_table(results: dict) -> None:
    table = report.terminal_table(results)
    assert isinstance(table, Table)
    assert table.row_count == len(results["methods"])
    console = Console(record=True, width=220)
    console.print(table)
    text = console.export_text()
    assert "<0.001" in text and "│ oracle " in text and DASH in text and "n = 300" in text


def test_results_without_methods_fail_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="methods"):
        report.write_results({"cohort": {}}, tmp_path)
    assert not list(tmp_path.iterdir())


def test_atomic_write_keeps_old_file_and_leaves_no_tmp(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text("old")

    def crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        report.write_atomic(path, crash)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


# ============================================================================================
# Figures
# ============================================================================================


def test_km_by_risk_group_matches_lifelines(oof: pd.DataFrame, tmp_path: Path) -> None:
    out = figures.km_by_risk_group(oof, tmp_path / "km.png")
    _png_ok(tmp_path / "km.png")
    groups = pd.qcut(oof["risk"], 3, labels=False)  # continuous risk: no ties, so qcut groups are the tertiles
    direct = multivariate_logrank_test(oof["time"], groups, oof["event"])
    assert out["logrank_p"] == pytest.approx(direct.p_value, rel=1e-10)
    assert out["logrank_p"] < 0.001  # the risk carries real signal
    assert out["group_sizes"] == [100, 100, 100] and sum(out["group_sizes"]) == len(oof)
    json.dumps(out, allow_nan=False)


def test_km_groups_with_ties_and_other_group_counts(oof: pd.DataFrame, tmp_path: Path) -> None:
    tied = oof.assign(risk=np.round(oof["risk"]))  # a handful of distinct scores
    out = figures.km_by_risk_group(tied.iloc[:97], tmp_path / "km5.png", groups=5, time_label="Years")
    _png_ok(tmp_path / "km5.png")
    assert sum(out["group_sizes"]) == 97 and max(out["group_sizes"]) - min(out["group_sizes"]) <= 1
    assert 0 <= out["logrank_p"] <= 1
    with pytest.raises(ValueError, match="column"):
        figures.km_by_risk_group(oof.drop(columns="event"), tmp_path / "x.png")
    with pytest.raises(ValueError, match="missing or infinite"):
        figures.km_by_risk_group(oof.assign(risk=np.nan), tmp_path / "x.png")


def test_cindex_forest(results: dict, tmp_path: Path) -> None:
    assert figures.cindex_forest(results, tmp_path / "forest.png") == tmp_path / "forest.png"
    _png_ok(tmp_path / "forest.png")
    no_oracle = {"cohort": results["cohort"], "methods": {"model": results["methods"]["model"]}}
    figures.cindex_forest(no_oracle, tmp_path / "forest1.png")
    _png_ok(tmp_path / "forest1.png")


def test_calibration_plot_uses_km_per_bin(oof: pd.DataFrame, tmp_path: Path) -> None:
    out = figures.calibration_plot(oof, 3.0, tmp_path / "cal.png")
    _png_ok(tmp_path / "cal.png")
    assert [b["n"] for b in out["bins"]] == [60] * 5
    lowest = oof[oof["risk"] <= np.sort(oof["risk"])[59]]
    kmf = KaplanMeierFitter().fit(lowest["time"], lowest["event"])
    assert out["bins"][0]["observed"] == pytest.approx(float(kmf.survival_function_at_times(3.0).iloc[0]))
    assert out["bins"][0]["predicted"] == pytest.approx(lowest["surv_at_horizon"].mean())
    for b in out["bins"]:
        assert b["observed_lo"] <= b["observed"] <= b["observed_hi"]
    predicted = [b["predicted"] for b in out["bins"]]
    assert predicted == sorted(predicted, reverse=True)  # bin 1 = lowest risk = highest survival
    with pytest.raises(ValueError, match="surv_at_horizon"):
        figures.calibration_plot(oof.drop(columns="surv_at_horizon"), 3.0, tmp_path / "x.png")


def test_calibration_bin_censored_before_horizon_has_no_observed(oof: pd.DataFrame, tmp_path: Path) -> None:
    short = oof.assign(time=np.minimum(oof["time"], 2.0), event=np.where(oof["time"] > 2.0, 0, oof["event"]))
    out = figures.calibration_plot(short, 3.0, tmp_path / "cal.png")
    assert all(b["observed"] is None for b in out["bins"])
    _png_ok(tmp_path / "cal.png")


def test_signal_sweep_plot(tmp_path: Path) -> None:
    sweep = [{"clinical_signal": s, "delta_c": 0.08 - 0.09 * s, "delta_ci": [0.05 - 0.09 * s, 0.11 - 0.09 * s],
              "oracle_delta_c": 0.12 - 0.08 * s} for s in (1.0, 0.0, 0.5)]
    sweep.append({"clinical_signal": 1.5, "delta_c": None, "delta_ci": None, "oracle_delta_c": None})
    assert figures.signal_sweep_plot(sweep, tmp_path / "sweep.png") == tmp_path / "sweep.png"
    _png_ok(tmp_path / "sweep.png")
    figures.signal_sweep_plot([{"clinical_signal": 0.3, "delta_c": 0.01}], tmp_path / "one.png")
    _png_ok(tmp_path / "one.png")
    with pytest.raises(ValueError):
        figures.signal_sweep_plot([], tmp_path / "none.png")


def test_figures_do_not_touch_pyplot_state(oof: pd.DataFrame, results: dict, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    figures.km_by_risk_group(oof, tmp_path / "km.png")
    figures.cindex_forest(results, tmp_path / "f.png")
    assert plt.get_fignums() == before

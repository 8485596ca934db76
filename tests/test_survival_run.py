"""`ctsurv survival`, `ctsurv predict` and `ctsurv demo` end to end on tiny simulated cohorts.

One tiny pretraining run and one 3-fold survival run (module fixtures) feed every test: the
``results.json`` contract (DESIGN.md) with its C-indices recomputed by scikit-survival from the
out-of-fold risks and the true log-hazard, patient-level folds, the one-line errors with exit status 2,
the prediction table, and predict's survival curves against lifelines' and scikit-survival's Breslow
estimators for the same linear predictor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import shutil
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceWarning
from rich.console import Console
from sksurv.linear_model.coxph import BreslowEstimator
from sksurv.metrics import concordance_index_censored
from survival_setups import CONFIG, N_PAIRS, N_SIM, N_TWINS, RUN, SIM, SURVIVAL, Cohorts, read_table
from tiny_setups import assert_user_error, cli, one_torch_thread  # noqa: F401 (autouse)

import ctsurv.demo
from ctsurv.config import ExperimentConfig, load_config
from ctsurv.errors import CohortError
from ctsurv.evaluation.crossval import make_folds
from ctsurv.features import preprocess_all
from ctsurv.io.cohort import Cohort, load_cohort
from ctsurv.synthetic.simulate import simulate
from ctsurv.text.questions import PRESENCE_QUESTIONS
from ctsurv.training import survival_run
from ctsurv.training.checkpoint import load_checkpoint
from ctsurv.training.survival import (
    FoldData,
    ImageFeatures,
    answer_image,
    clinical_cox,
    encoder_image,
    head_method,
    image_budget,
)
from ctsurv.training.survival_run import Features, evaluate, prepare

METHODS = {"model", "model_image_only", "model_risk_query", "model_align", "findings_classifier", "clinical_cox",
           "encoder_no_instruction", "oracle"}
LADDER = ["clinical_cox", "encoder_no_instruction", "findings_classifier", "model_align", "model"]
METHOD_KEYS = {
    "harrell_c", "harrell_c_ci", "uno_c", "td_auc", "ibs", "delta_c_vs_clinical", "delta_c_ci", "p_vs_clinical",
    "harrell_c_folds_mean", "harrell_c_folds_sd", "previous_rung", "delta_c_vs_previous", "delta_c_vs_previous_ci",
    "p_vs_previous", "p_vs_clinical_cv", "p_vs_previous_cv",
}
LEARNED = ("model", "model_image_only", "model_risk_query", "model_align", "findings_classifier",
           "encoder_no_instruction")  # fitted per fold on image features


def strict_json(path: Path) -> object:
    """Parse JSON refusing NaN / Infinity (Python's json module accepts them by default)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{path} holds the non-finite number {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def sksurv_c(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> float:
    t, e, r = np.asarray(time, float), np.asarray(event, bool), np.asarray(risk, float)
    return float(concordance_index_censored(e, t, r)[0])


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def predicted(run: Path, cohorts: Cohorts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ctsurv predict`` on the training cohort itself."""
    out = tmp_path_factory.mktemp("survival_predict") / "predict"
    result = cli("predict", run, cohorts.cohort, "--out", out)
    assert result.exit_code == 0, result.output
    assert str(out / "predictions.csv") in result.stdout
    return out


@pytest.fixture(scope="module")
def prepared(cohorts: Cohorts, pretrained: Path) -> tuple[ExperimentConfig, Cohort, Features]:
    """`prepare` in-process with the `run` fixture's settings: the config, the cohort and every rung's features."""
    return prepare(load_config(CONFIG, [*SURVIVAL, "seed=0"]), cohorts.cohort, pretrained, None, progress=False)


def pooled_by_hand(encoder: torch.nn.Module, volumes: torch.Tensor, tokens_xyz: tuple[int, int, int]) -> torch.Tensor:
    """The projector's input (B, Dv, N + 1) written out: the encoder grid averaged to ``tokens_xyz`` tokens,
    then its channel-wise maximum (the max token)."""
    with torch.no_grad():
        grid = encoder.eval().features(volumes.float())
    return torch.cat([F.adaptive_avg_pool3d(grid, tokens_xyz).flatten(2), grid.flatten(2).amax(-1, keepdim=True)], 2)


def cells_by_hand(volumes: torch.Tensor, channel: int) -> torch.Tensor:
    """The findings head's cells of 32×32×16 (X, Y, Z) volumes: the central half in x and y, the central two
    thirds in z (16×16×12 voxels, already the 16×16×12 cells), of ``channel``, flattened."""
    return volumes[:, channel, 8:24, 8:24, 2:14].float().flatten(1)


# ----------------------------------------------------------------------------------- survival: results


def test_results_json_follows_the_contract(run: Path, cohorts: Cohorts) -> None:
    results = strict_json(run / "results.json")
    assert isinstance(results, dict) and {"cohort", "methods"} <= set(results)
    table = read_table(cohorts.cohort)
    cohort = results["cohort"]
    assert cohort["n"] == N_SIM + N_PAIRS + N_TWINS and cohort["patients"] == N_SIM + N_TWINS and cohort["folds"] == 3
    assert cohort["events"] == int(table["event"].sum())

    methods = results["methods"]
    assert set(methods) == METHODS
    time_keys = {str(int(t)) if float(t).is_integer() else repr(float(t)) for t in cohort["times"]}
    for name, m in methods.items():
        assert set(m) == METHOD_KEYS, name
        assert 0 <= m["harrell_c"] <= 1, name
        lo, hi = m["harrell_c_ci"]
        assert 0 <= lo <= hi <= 1, name
        assert set(m["td_auc"]) == time_keys, name
        assert all(v is None or 0 <= v <= 1 for v in m["td_auc"].values()), name
        assert m["uno_c"] is None or 0 <= m["uno_c"] <= 1, name
        assert m["ibs"] is None or m["ibs"] >= 0, name
        dlo, dhi = m["delta_c_ci"]
        assert dlo <= dhi and 0 <= m["p_vs_clinical"] <= 1, name
        delta = m["harrell_c"] - methods["clinical_cox"]["harrell_c"]
        assert m["delta_c_vs_clinical"] == pytest.approx(delta, abs=2e-4), name
    reference = methods["clinical_cox"]
    assert reference["delta_c_vs_clinical"] == 0 and reference["delta_c_ci"] == [0, 0]
    assert reference["p_vs_clinical"] == 1

    # the ablation ladder: every rung present, bottom first, each compared with the rung below it
    assert results["ladder"] == LADDER
    for below, name in itertools.pairwise(LADDER):
        m = methods[name]
        assert m["previous_rung"] == below, name
        delta = m["harrell_c"] - methods[below]["harrell_c"]
        assert m["delta_c_vs_previous"] == pytest.approx(delta, abs=2e-4), name
        lo, hi = m["delta_c_vs_previous_ci"]
        assert lo <= hi and 0 < m["p_vs_previous"] <= 1, name
    assert methods["clinical_cox"]["previous_rung"] is None
    assert all(methods[name]["previous_rung"] is None for name in METHODS - set(LADDER))
    boot = cohort["bootstrap"]
    assert boot == {"resamples": 100, "unit": "patient", "p_floor": pytest.approx(2 / 101, rel=1e-3)}
    pretrain = Path(cohort["pretrained"]).parent
    assert cohort["sources"] == {
        "model": str(pretrain / "instruct"), "findings_classifier": str(pretrain / "instruct"),
        "model_align": str(pretrain / "align"), "encoder_no_instruction": str(pretrain / "vision"),
    }
    assert not set(results["notes"]) & set(LADDER)  # no rung is absent

    assert "nan" not in (run / "results.csv").read_text().lower()
    assert read_table(run / "results.csv")["method"].tolist() == list(methods)
    assert (run / "results.md").read_text().startswith("# Survival results")
    for png in ("km_risk_groups.png", "cindex.png", "calibration.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    for name in ("model.json", "head.safetensors", "config.yaml"):
        assert (run / "model" / name).is_file(), name


def test_c_indices_match_scikit_survival(run: Path, cohorts: Cohorts) -> None:
    """Every method's Harrell C is sksurv's C of its out-of-fold risks in oof.csv; the oracle's out-of-fold
    risk is the true log-hazard of truth.csv. results.json keeps 4 decimals, so the comparison is with
    sksurv's C rounded to 4 decimals (oof.csv keeps the risks exactly)."""
    results = strict_json(run / "results.json")
    table = read_table(cohorts.cohort)
    truth = pd.read_csv(cohorts.cohort.with_name("truth.csv"), dtype={"id": str}).set_index("id").loc[table["id"]]
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    assert oof["id"].tolist() == table["id"].tolist()
    assert oof["time"].tolist() == table["time"].tolist() and oof["event"].tolist() == table["event"].tolist()
    time, event = table["time"].to_numpy(float), table["event"].to_numpy(bool)

    np.testing.assert_allclose(oof["risk_oracle"], truth["log_hazard"], rtol=0, atol=1e-12)
    oracle_c = sksurv_c(event, time, truth["log_hazard"].to_numpy())
    assert results["methods"]["oracle"]["harrell_c"] == pytest.approx(round(oracle_c, 4), abs=1e-12)

    assert oof["risk"].tolist() == oof["risk_model"].tolist()  # the main method is the model
    model_c = sksurv_c(event, time, oof["risk"].to_numpy())
    assert results["methods"]["model"]["harrell_c"] == pytest.approx(round(model_c, 4), abs=1e-12)
    for name in METHODS:
        c = sksurv_c(event, time, oof[f"risk_{name}"].to_numpy())
        assert results["methods"][name]["harrell_c"] == pytest.approx(round(c, 4), abs=1e-12), name


def test_image_features_reorder_every_field_alike() -> None:
    n = 5
    features = ImageFeatures(np.arange(n * 2.0).reshape(n, 2), np.arange(n * 3.0).reshape(n, 3),
                             np.arange(n * 8.0).reshape(n, 4, 2))
    order = np.array([3, 0, 4])
    picked = features.rows(order)
    for got, full in ((picked.p_yes, features.p_yes), (picked.hidden, features.hidden), (picked.visual, features.visual)):
        np.testing.assert_array_equal(got, full[order])
    assert ImageFeatures(features.p_yes, features.hidden).rows(order).visual is None


def test_folds_keep_a_patients_studies_together(run: Path, cohorts: Cohorts) -> None:
    """The folds `ctsurv survival` builds (make_folds on patient_id, seed 0) never split a patient, and the
    run used such folds: a patient's two studies are identical inputs, so a fitted method gives them the same
    out-of-fold risk only when one fold's model scored both (models of different folds differ)."""
    table = read_table(cohorts.cohort)
    time, event, patients = table["time"].to_numpy(float), table["event"].to_numpy(bool), table["patient_id"].to_numpy()
    folds = make_folds(time, event, groups=patients, n_splits=3, n_repeats=1, seed=0)
    tested = np.zeros(len(table), int)
    for fold in folds:
        assert not set(patients[fold.train_idx]) & set(patients[fold.test_idx])
        tested[fold.test_idx] += 1
    assert (tested == 1).all()
    where = dict(zip(table["id"], range(len(table))))
    fold_of = {int(i): f.fold for f in folds for i in f.test_idx}
    assert all(fold_of[where[a]] == fold_of[where[b]] for a, b in cohorts.pairs)
    # the same draw without patient ids splits some pairs: the grouping is what keeps them together
    ungrouped = {int(i): f.fold for f in make_folds(time, event, n_splits=3, seed=0) for i in f.test_idx}
    assert any(ungrouped[where[a]] != ungrouped[where[b]] for a, b in cohorts.pairs)

    oof = pd.read_csv(run / "oof.csv", dtype={"id": str}).set_index("id")
    for a, b in cohorts.pairs:
        assert oof.at[a, "risk_clinical_cox"] == oof.at[b, "risk_clinical_cox"], (a, b)
        for name in LEARNED:  # image features of one scan in two batch positions: equal to float rounding
            assert oof.at[a, f"risk_{name}"] == pytest.approx(oof.at[b, f"risk_{name}"], abs=1e-6), (name, a, b)
    # identical inputs scored by different folds' models get different risks: the equalities above have teeth
    apart = [(a, b) for a, b in cohorts.twins if fold_of[where[a]] != fold_of[where[b]]]
    assert apart, "no twin fell in another fold than its original; choose other twins"
    for a, b in apart:
        for name in ("clinical_cox", *LEARNED):
            assert abs(oof.at[a, f"risk_{name}"] - oof.at[b, f"risk_{name}"]) > 1e-3, (name, a, b)


STUDIES = [0, 7, 19, 33, 45]  # a few studies of the grouped cohort, checked by hand


def test_findings_classifier_rung_is_the_models_findings_head_by_hand(prepared: tuple, pretrained: Path) -> None:
    """`findings_classifier` reads sigmoid(weight @ ((x - mean) / scale) + bias) of the instruct checkpoint's
    findings head, x the mean of the grid tokens, the max token and (where the head reads them) the cells."""
    cfg, cohort, features = prepared
    vlm, model_cfg = load_checkpoint(pretrained / "instruct")
    head = vlm.projector.findings
    volumes = preprocess_all(cohort, cfg, progress=False)[STUDIES]
    pooled = pooled_by_hand(vlm.vision_encoder, volumes, tuple(reversed(model_cfg.projector.tokens_zyx)))
    summary = torch.cat([pooled[:, :, :-1].mean(-1), pooled[:, :, -1]], 1)
    x = torch.cat([summary, cells_by_hand(volumes, model_cfg.projector.findings_cells_channel)], 1).double().numpy()
    mean, scale, weight, bias = (getattr(head, n).double().numpy() for n in ("mean", "scale", "weight", "bias"))
    expected = 1 / (1 + np.exp(-(((x - mean) / scale) @ weight.T + bias)))
    assert features.findings.shape == (len(cohort), len(PRESENCE_QUESTIONS))
    np.testing.assert_allclose(features.findings[STUDIES], expected, rtol=0, atol=1e-5)
    assert expected.std(0).max() > 1e-3  # probabilities that differ between studies: the comparison has teeth


def test_encoder_rung_reads_the_projector_input_of_the_stage0_encoder_at_the_models_budget(
    prepared: tuple, pretrained: Path
) -> None:
    """`encoder_no_instruction`'s blocks are what the projector receives from the stage-0 (vision) encoder (the
    pooled grid with its max token, flattened; the cells when the findings head reads them), and its PCA keeps
    as many features as `model` reads: P(yes) per presence question + survival.hidden_components."""
    cfg, cohort, features = prepared
    vision, model_cfg = load_checkpoint(pretrained / "vision")
    volumes = preprocess_all(cohort, cfg, progress=False)[STUDIES]
    pooled = pooled_by_hand(vision.vision_encoder, volumes, tuple(reversed(model_cfg.projector.tokens_zyx)))
    np.testing.assert_allclose(features.encoder[0][STUDIES], pooled.flatten(1).numpy(), rtol=0, atol=1e-5)
    reads_cells = bool(load_checkpoint(pretrained / "instruct")[0].projector.findings.reads_cells.any())
    assert len(features.encoder) == 1 + reads_cells
    if reads_cells:
        cells = cells_by_hand(volumes, model_cfg.projector.findings_cells_channel).numpy()
        np.testing.assert_array_equal(features.encoder[1][STUDIES], cells)

    budget = len(PRESENCE_QUESTIONS) + cfg.survival.hidden_components
    assert image_budget(cfg) == budget
    scans = np.array([i for i, s in enumerate(cohort.ids) if not s.endswith(("_b", "_t"))])  # distinct scans
    train, test = scans[:32], scans[32:]
    model_train, _ = answer_image(features.answers, cfg.survival.hidden_components)(train, test)
    x_train, x_test = encoder_image(features.encoder, image_budget(cfg))(train, test)
    assert model_train.shape == x_train.shape == (len(train), budget) and x_test.shape == (len(test), budget)
    assert encoder_image(features.encoder, budget)(train[:10], test)[1].shape == (len(test), 9)  # n_train - 1
    # a fold holding both studies of a patient (the same scan twice): as many components as the training
    # rows' centred, block-scaled features have dimensions
    fold = make_folds(cohort.times, cohort.events, groups=cohort.patient_ids, n_splits=3, seed=0)[0]
    blocks = [b[fold.train_idx].astype(np.float64) for b in features.encoder]
    centred = np.hstack([(b - b.mean(0)) / np.sqrt(b.var(0).sum()) for b in blocks])
    rank = np.linalg.matrix_rank(centred, tol=1e-6)
    assert rank < budget  # the case this checks
    x_train, x_test = encoder_image(features.encoder, budget)(fold.train_idx, fold.test_idx)
    assert x_train.shape[1] == x_test.shape[1] == rank and x_train.std(0).min() > 1e-3


def test_repeats_keep_each_repeats_values_together(prepared: tuple, tmp_path: Path) -> None:
    """--repeats 2: oof.csv holds one row per study and repeat, each with that repeat's fold, the model's risk of
    that repeat (recomputed here fold by fold) and survival at the horizon from that fold's Breslow baseline
    (so, within a fold, non-increasing in risk)."""
    cfg, cohort, features = prepared
    run = evaluate(cfg, cohort, features, tmp_path / "repeats", folds=3, repeats=2, progress=False,
                   final_model=False, only={"model", "clinical_cox"})
    assert run.model_dir is None and run.results["ladder"] == ["clinical_cox", "model"]
    oof = pd.read_csv(tmp_path / "repeats" / "oof.csv", dtype={"id": str})
    assert oof["repeat"].tolist() == [0] * len(cohort) + [1] * len(cohort)
    assert oof["id"].tolist() == cohort.ids * 2
    folds = make_folds(cohort.times, cohort.events, groups=cohort.patient_ids, n_splits=3, n_repeats=2, seed=0)
    model = head_method(FoldData(cohort, cohort.times, cohort.events), cfg,
                        answer_image(features.answers, cfg.survival.hidden_components), use_clinical=True, seed=0)
    for fold in folds:
        rows = oof[oof["repeat"] == fold.repeat].iloc[fold.test_idx]
        assert (rows["fold"] == fold.fold).all()
        np.testing.assert_allclose(rows["risk"], model(fold.train_idx, fold.test_idx).risk, rtol=0, atol=1e-9)
        by_risk = rows.sort_values("risk")
        assert (np.diff(by_risk["surv_at_horizon"].to_numpy()) <= 1e-12).all(), (fold.repeat, fold.fold)
    assert (oof["risk"] == oof["risk_model"]).all()
    first, second = (oof[oof["repeat"] == r].reset_index(drop=True) for r in (0, 1))
    assert (first["fold"] != second["fold"]).any() and np.abs(first["risk"] - second["risk"]).max() > 1e-3
    assert (tmp_path / "repeats" / "calibration_repeat1.png").read_bytes()[:4] == b"\x89PNG"
    assert len(run.results["figures"]["calibration_by_repeat"]) == 2


def test_a_vision_checkpoint_is_refused_by_ask_survival_and_predict(
    pretrained: Path, run: Path, cohorts: Cohorts, tmp_path: Path
) -> None:
    """Stage 0's checkpoint has a language model that never trained: one line naming the instruct folder."""
    vision, instruct = pretrained / "vision", str(pretrained / "instruct")
    volume = read_table(cohorts.cohort)["volume"].iloc[0]
    assert_user_error(cli("ask", vision, volume), str(vision), "never trained", instruct)
    out = tmp_path / "survival"
    result = cli("survival", "--config", CONFIG, "--cohort", cohorts.cohort, "--out", out, "--pretrained", vision)
    assert_user_error(result, str(vision), "never trained", instruct)
    assert not out.exists()
    shutil.copytree(run / "model", tmp_path / "run" / "model")
    meta = json.loads((run / "model" / "model.json").read_text())
    (tmp_path / "run" / "model" / "model.json").write_text(json.dumps({**meta, "checkpoint": str(vision)}))
    shutil.copy(run / "config.yaml", tmp_path / "run" / "config.yaml")
    out = tmp_path / "predicted"
    assert_user_error(cli("predict", tmp_path / "run", cohorts.cohort, "--out", out), str(vision), instruct)
    assert not out.exists()


def test_pretrained_reads_the_same_stages_from_the_run_or_its_instruct_folder(pretrained: Path, tmp_path: Path) -> None:
    """--pretrained RUN and --pretrained RUN/instruct give the same rungs; another checkpoint is read alone."""
    from ctsurv.training.survival_run import PretrainedCheckpoints, pretrained_checkpoints

    expected = PretrainedCheckpoints(pretrained / "instruct", pretrained / "vision", pretrained / "align")
    assert pretrained_checkpoints(pretrained) == pretrained_checkpoints(pretrained / "instruct") == expected
    assert expected.before == pretrained / "vision"
    alone = Path(shutil.copytree(pretrained / "instruct", tmp_path / "instruct_copy"))
    assert pretrained_checkpoints(alone) == PretrainedCheckpoints(alone)


@pytest.mark.parametrize("encoder", ["vit3d", "cnn3d", "resnet"])
def test_survival_refuses_an_encoder_without_pretrained_weights(encoder: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("survival", "--config", CONFIG, "--cohort", tmp_path / "cohort.csv", "--out", out, "--encoder", encoder)
    assert_user_error(result, f"--encoder {encoder}" if encoder != "resnet" else "'resnet'", "--pretrained", "i3resnet152")
    assert not out.exists()


def test_bare_i3resnet_keeps_the_users_vision_settings(cohorts: Cohorts, monkeypatch: pytest.MonkeyPatch) -> None:
    """--encoder i3resnet152 replaces vision.encoder only; the rung reads its mean-pooled grid, and the rungs that
    need a language model are absent with a reason."""

    class Grid(torch.nn.Module):
        def features(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, 2 * x], 1)  # (B, 2, X, Y, Z)

    built = []
    monkeypatch.setattr(survival_run, "build_vision_encoder", lambda vision, *a, **k: built.append(vision) or Grid())
    volumes = torch.rand(len(read_table(cohorts.cohort)), 1, 2, 2, 2)
    monkeypatch.setattr(survival_run, "volume_store", lambda cohort, data, progress: contextlib.nullcontext(volumes))
    user = load_config(None, ["vision.cnn_widths=[8,16,32,64]", "vision.dim=48"])  # one HU window, as I3ResNet-152 reads
    cfg, _, features = prepare(user, cohorts.cohort, None, "i3resnet152", progress=False)
    assert cfg.vision == built[0] == dataclasses.replace(user.vision, encoder="i3resnet152")
    mean = volumes.mean(dim=(2, 3, 4)).numpy()
    np.testing.assert_allclose(features.encoder[0], np.concatenate([mean, 2 * mean], 1), rtol=1e-6)
    assert features.answers is None
    assert set(features.absent) == {"model", "model_align", "findings_classifier", "radiomics_cox", "encoder_region", "encoder_finetuned"}


def test_too_few_patients_with_an_event_is_a_one_line_error(cohorts: Cohorts, pretrained: Path, tmp_path: Path) -> None:
    """4 event studies of 3 patients (one patient twice) cannot fill 4 folds: a clear error, exit 2,
    and no results (never a NaN metric in a report)."""
    table = read_table(cohorts.cohort)
    a, b = next((a, b) for a, b in cohorts.pairs if table.set_index("id").at[a, "event"] == 1)
    events = table[(table["event"] == 1) & ~table["id"].isin([a, b])].head(2)
    censored = table[table["event"] == 0].head(6)
    small = pd.concat([table[table["id"].isin([a, b])], events, censored])
    assert small["event"].sum() == 4 and small[small["event"] == 1]["patient_id"].nunique() == 3
    small.to_csv(tmp_path / "few_events.csv", index=False)
    out = tmp_path / "out"
    result = cli("survival", "--config", CONFIG, "--cohort", tmp_path / "few_events.csv", "--out", out,
                 "--pretrained", pretrained, "--folds", 4, *SURVIVAL)
    assert_user_error(result, "only 3 patients with an event", "4 folds", "--folds 3")
    assert not (out / "results.json").exists()


def test_cross_validation_reads_a_level_missing_from_its_training_fold_as_missing(tmp_path: Path) -> None:
    """A rare categorical level whose patients all fall in one test fold: that fold's models read it as
    missing (here: the reference level, training had no missing stage) instead of stopping the run."""
    data = load_config(CONFIG).data
    rng = np.random.default_rng(0)
    n = 30
    table = pd.DataFrame({"id": [f"S{i:02d}" for i in range(n)], "volume": [f"v{i}.nii.gz" for i in range(n)],
                          "time": rng.uniform(1, 100, n).round(1), "event": np.arange(n) % 3 != 0})
    for col in data.numeric_columns:
        table[col] = rng.normal(size=n)
    for col in data.categorical_columns:
        table[col] = rng.choice(["a", "b", "c"], n)
    table.loc[[0, 1], "stage"] = "rare"
    table.loc[n] = {**table.loc[0], "id": "S00-no-stage", "stage": None}  # row 0 with the stage left empty
    table.to_csv(tmp_path / "cohort.csv", index=False)
    cohort = load_cohort(tmp_path / "cohort.csv", data, require_outcomes=True, check_files=False)
    fold_data = FoldData(cohort, cohort.times, cohort.events)
    test = np.array([0, 1, 2, 3, 4, 5, n])
    train = np.setdiff1d(np.arange(n + 1), test)
    assert "rare" not in set(cohort.table["stage"].iloc[train])
    with pytest.raises(CohortError, match="never seen in training"):  # the schema alone refuses the level
        fold_data.schema(train).transform(cohort.clinical().iloc[test])
    risk = np.asarray(clinical_cox(fold_data)(train, test).risk)
    assert np.isfinite(risk).all()
    assert risk[0] == pytest.approx(risk[-1], abs=1e-12)


def test_finetuned_run_tunes_per_fold_saves_the_tuned_model_and_predict_reads_it(
    cohorts: Cohorts, pretrained: Path, tmp_path: Path
) -> None:
    """survival.finetune=projector: `model` is the tuned variant and `model_frozen` the frozen one, in the same
    folds; the final model's tuned checkpoint (stage "survival") differs from the pretrained one in the projector
    only; model.json names it relative to the model folder, so predict reads it, from a moved run folder, and
    gives the final model's training risks back."""
    from ctsurv.training.checkpoint import checkpoint_stage, load_checkpoint

    out = tmp_path / "tuned"
    tuning = ["survival.finetune=projector", "survival.finetune_epochs=1", "survival.finetune_batch_size=10",
              "survival.finetune_lr=0.01", "survival.finetune_validation=0"]
    result = cli("survival", "--config", CONFIG, "--cohort", cohorts.cohort, "--out", out, "--pretrained", pretrained,
                 "--folds", 3, *SURVIVAL, *tuning)
    assert result.exit_code == 0, result.output
    results = strict_json(out / "results.json")
    assert set(results["methods"]) == METHODS | {"model_frozen"}
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    assert not np.allclose(oof["risk_model"], oof["risk_model_frozen"])

    tuned, _ = load_checkpoint(out / "model" / "vlm")
    base, _ = load_checkpoint(pretrained / "instruct")
    tuned_state, base_state = tuned.state_dict(), base.state_dict()
    changed = {n for n in base_state if not torch.equal(base_state[n], tuned_state[n])}
    assert changed and all(n.startswith("projector.") for n in changed)
    assert checkpoint_stage(out / "model" / "vlm") == "survival"
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["checkpoint"] == "vlm"

    moved = tmp_path / "elsewhere" / "tuned"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    result = cli("predict", moved, cohorts.cohort, "--out", tmp_path / "pred")
    assert result.exit_code == 0, result.output
    risk = read_table(tmp_path / "pred" / "predictions.csv")["risk"].to_numpy()
    # the tuned model reads the pooled encoder grids of the same scans in the same batches in both
    np.testing.assert_allclose(np.sort(risk), meta["training_risk"], rtol=0, atol=1e-9)


def test_survival_refuses_a_non_empty_out(run: Path, cohorts: Cohorts, pretrained: Path) -> None:
    result = cli("survival", "--config", CONFIG, "--cohort", cohorts.cohort, "--out", run, "--pretrained", pretrained)
    assert_user_error(result, str(run), "already exists and is not empty")


# --------------------------------------------------------------------------------------------- predict


def test_predict_table_on_the_training_cohort(predicted: Path, run: Path, cohorts: Cohorts) -> None:
    table = read_table(cohorts.cohort)
    pred = read_table(predicted / "predictions.csv")
    meta = json.loads((run / "model" / "model.json").read_text())
    assert pred["id"].tolist() == table["id"].tolist()  # one row per study, in input order
    risk = pred["risk"].to_numpy()
    # the final model's risks of its own training cohort, recomputed from the scans: same values
    np.testing.assert_allclose(np.sort(risk), meta["training_risk"], rtol=0, atol=1e-9)

    pct = pred["risk_percentile"].to_numpy()
    assert ((0 <= pct) & (pct <= 100)).all()
    ranks = np.array([np.sum(risk <= r) for r in risk])  # within the training cohort: its own rank
    assert np.abs(pct - 100 * ranks / len(risk)).max() <= 100 / len(risk) + 1e-9

    columns = [f"survival_at_{t:g}" for t in meta["horizon_times"]]
    assert [c for c in pred.columns if c.startswith("survival_at_")] == columns
    surv = pred[columns].to_numpy()
    assert ((0 <= surv) & (surv <= 1)).all()
    assert (np.diff(surv, axis=1) <= 0).all()  # non-increasing in time
    order = np.argsort(risk)
    assert (np.diff(surv[order], axis=0) <= 1e-12).all()  # lower for higher risk

    p_yes = pred[[c for c in pred.columns if c.startswith("p_yes: ")]]
    assert p_yes.shape[1] == len(meta["presence_labels"]) and ((0 <= p_yes) & (p_yes <= 1)).all().all()
    for label in meta["presence_labels"]:
        expected = np.where(pred[f"p_yes: {label}"] >= 0.5, "Yes.", "No.")
        assert pred[f"answer: {label}"].tolist() == expected.tolist(), label
    assert sorted(p.stem for p in (predicted / "curves").glob("*.png")) == sorted(table["id"])


def test_predicted_curves_are_the_breslow_estimate_of_lifelines_and_sksurv(predicted: Path, cohorts: Cohorts) -> None:
    """predict's curves S(t | x) = exp(-H0(t) exp(lp(x))), H0 the Breslow baseline of the final model's training
    cohort with its linear predictor lp (the risk, coefficient 1), against two independent estimators.

    The training lp per study is predict's risk on the training cohort (checked above to equal model.json's
    ``training_risk``). scikit-survival's ``BreslowEstimator`` takes a fixed linear predictor directly.
    lifelines estimates the coefficient, so the coefficient is held at 1 through its public fitting options:
    it fits on covariates scaled by their sample std, so the starting point std(lp) is coefficient 1 on the
    original scale, and ``max_steps=1`` stops Newton-Raphson after evaluating that point without moving
    (``params_ == 1`` is asserted). Its ``baseline_cumulative_hazard_`` is then the Breslow estimate for lp
    itself (lifelines centres lp at its mean, which cancels in S)."""
    table = read_table(cohorts.cohort)
    pred = read_table(predicted / "predictions.csv")
    lp, time, event = pred["risk"].to_numpy(), table["time"].to_numpy(float), table["event"].to_numpy(int)
    curves = pd.read_csv(predicted / "curves.csv", dtype={"id": str})
    grid = np.unique(curves["time"].to_numpy())
    np.testing.assert_array_equal(grid, np.unique(time[event == 1]))  # the training cohort's event times
    ours = curves.pivot(index="id", columns="time", values="survival").loc[pred["id"], grid].to_numpy()  # (n, T)

    frame = pd.DataFrame({"lp": lp, "T": time, "E": event})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # stopping after one step is deliberate
        cph = CoxPHFitter().fit(
            frame, "T", "E", initial_point=np.array([frame["lp"].std()]), fit_options={"max_steps": 1}
        )
    assert cph.params_["lp"] == pytest.approx(1.0, abs=1e-12)
    lifelines_curves = cph.predict_survival_function(frame[["lp"]], times=grid).to_numpy().T  # (n, T)
    np.testing.assert_allclose(ours, lifelines_curves, rtol=0, atol=1e-6)

    breslow = BreslowEstimator().fit(lp, event.astype(bool), time)
    sksurv_curves = np.stack([f(grid) for f in breslow.get_survival_function(lp)])  # (n, T)
    np.testing.assert_allclose(ours, sksurv_curves, rtol=0, atol=1e-6)
    assert ours[:, -1].std() > 0.01  # curves that differ between patients: the comparison has teeth


def test_predict_one_volume_imputes_the_clinical_data(run: Path, cohorts: Cohorts, tmp_path: Path) -> None:
    """A volume given alone has no clinical data: imputed as the training mean (numeric columns) and the
    most frequent level (categorical), with missing indicators where training had missing values — the
    same prediction as a table row holding those values."""
    table = read_table(cohorts.cohort)
    volume = Path(table.at[0, "volume"])
    result = cli("predict", run, volume, "--out", tmp_path / "one")
    assert result.exit_code == 0, result.output
    one = read_table(tmp_path / "one" / "predictions.csv")
    assert one["id"].tolist() == [table.at[0, "id"]] and np.isfinite(one["risk"]).all()

    cfg = load_config(run / "config.yaml")
    typical: dict[str, object] = {}
    for col in cfg.data.numeric_columns:
        if table[col].notna().all():
            typical[col] = float(table[col].mean())
    for col in cfg.data.categorical_columns:
        counts = table[col].value_counts()
        if table[col].notna().all() and counts.iloc[0] > counts.iloc[1]:
            typical[col] = counts.index[0]
    assert typical, "the cohort should have complete clinical columns"
    clinical = [*cfg.data.numeric_columns, *cfg.data.categorical_columns]
    empty = {"id": "empty", "volume": str(volume), **dict.fromkeys(clinical)}
    pd.DataFrame([empty, {**empty, "id": "typical", **typical}]).to_csv(tmp_path / "two.csv", index=False)
    result = cli("predict", run, tmp_path / "two.csv", "--out", tmp_path / "two")
    assert result.exit_code == 0, result.output
    two = read_table(tmp_path / "two" / "predictions.csv")
    numbers = [c for c in one.columns if c == "risk" or c.startswith("survival_at_")]
    for row in (0, 1):
        expected = one.loc[0, numbers].to_numpy(float)
        # A batch of two vs one volume: float32 matmuls are not bitwise batch-invariant (~1e-6 in the
        # features), and the head's standardisation of this tiny model's near-constant P(yes) features
        # amplifies that to ~2e-4 in risk. Imputing anything else would move the risk by ~0.1 or more.
        np.testing.assert_allclose(two.loc[row, numbers].to_numpy(float), expected, rtol=0, atol=2e-3)


def test_predict_names_an_unseen_categorical_level(run: Path, cohorts: Cohorts, tmp_path: Path) -> None:
    table = read_table(cohorts.cohort).head(3)
    table.loc[1, "sex"] = "X"
    table.to_csv(tmp_path / "unseen.csv", index=False)
    out = tmp_path / "out"
    result = cli("predict", run, tmp_path / "unseen.csv", "--out", out)
    assert_user_error(result, "'sex'", "'X'", "never seen in training")
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ demo


def demo_config(language: str = "tiny") -> ExperimentConfig:
    assert language == "tiny"
    return load_config(CONFIG, [*RUN, "survival.epochs=20", "survival.bootstrap=100"])


def test_demo_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole demo on a tiny config and tiny cohorts (small volumes, one rendering process)."""
    monkeypatch.setattr(ctsurv.demo, "demo_config", demo_config)
    monkeypatch.setattr(ctsurv.demo, "simulate", partial(simulate, **SIM))
    signals = ctsurv.demo.SWEEP_CLINICAL_SIGNALS
    out = tmp_path / "demo"
    settings = ctsurv.demo.DemoSettings(n_pretrain=12, n_survival=30)
    summary = ctsurv.demo.run_demo(out, settings, console=Console(file=io.StringIO()))

    results = strict_json(out / "survival" / "results.json")
    assert set(results["methods"]) == METHODS and results["cohort"]["n"] == 30
    assert (out / "survival" / "model" / "model.json").is_file()
    sweep = strict_json(out / "sweep.json")
    assert [p["clinical_signal"] for p in sweep] == list(signals)
    assert sweep == json.loads(json.dumps(summary["sweep"]))
    main = next(p for p in sweep if p["clinical_signal"] == settings.clinical_signal)
    raw = summary["survival"]["methods"]  # the main run's point comes from its own (unrounded) results
    assert main["model_c"] == raw["model"]["harrell_c"] and main["clinical_c"] == raw["clinical_cox"]["harrell_c"]
    for signal in signals:
        if signal != settings.clinical_signal:
            swept = strict_json(out / "sweep" / f"clinical_{signal:g}" / "results.json")
            assert set(swept["methods"]) == set(ctsurv.demo.SWEEP_METHODS), signal
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "REPORT.md").read_text()
    assert report.startswith("# ctsurv demo") and "# Survival results" in report
    rows = [line for line in report.splitlines() if line.startswith("| ") and line.split("|")[1].strip()[:1].isdigit()]
    assert [float(r.split("|")[1]) for r in rows] == list(signals)


@pytest.mark.parametrize("option, value", [("--image-signal", "-1"), ("--clinical-signal", "nan"), ("--n-survival", "5"),
                                           ("--language", "mistral")])
def test_demo_checks_its_options_before_writing_anything(tmp_path: Path, option: str, value: str) -> None:
    out = tmp_path / "demo"
    assert_user_error(cli("demo", "--out", out, option, value), option)
    assert not out.exists()


def test_demo_refuses_a_non_empty_out(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me\n")
    assert_user_error(cli("demo", "--out", tmp_path), str(tmp_path), "already exists and is not empty")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_survival_preprocesses_as_the_pretrained_model_did(tmp_path: Path) -> None:
    """with_preprocessing: every preprocessing parameter comes from the model's config (the cache key, which
    covers them all, is the same), the cohort columns from the user's."""
    from ctsurv.features.preprocess import Preprocessor
    from ctsurv.training.survival_run import with_preprocessing

    model = load_config(None, ["data.target_spacing_zyx=[3,3,3]", "data.target_shape_zyx=[8,16,16]",
                               "data.hu_window=[-900,300]", "data.extra_hu_windows=[[-160,240]]",
                               "data.blob_sigmas_mm=[4]", "data.crop=foreground", f"data.cache_dir={tmp_path}"])
    user = load_config(None, ["data.numeric_columns=[age]", f"data.cache_dir={tmp_path}"])
    merged = with_preprocessing(user, model)
    assert merged.data.numeric_columns == ("age",) and merged.data.in_channels == 3
    volume = tmp_path / "v.npy"
    np.save(volume, np.zeros((4, 4, 4)))
    assert Preprocessor(merged.data).cache_file(volume) == Preprocessor(model.data).cache_file(volume)


def test_nested_final_model_keeps_its_choice_and_predict_reads_it(prepared: tuple, cohorts: Cohorts, tmp_path: Path) -> None:
    """survival.nested: the final model chooses its penalty and components on the whole cohort as each fold does;
    model.json keeps them, and predict gives back its training risks from the scans."""
    from ctsurv.training.survival import HEAD_PENALTIES

    cfg, cohort, features = prepared
    cfg = dataclasses.replace(cfg, survival=dataclasses.replace(cfg.survival, nested=True))
    run = evaluate(cfg, cohort, features, tmp_path / "nested", folds=3, progress=False, only={"model", "clinical_cox"})
    assert set(run.results["chosen"]) == {"model", "clinical_cox"}
    assert sum(run.results["chosen"]["model"]["l2"].values()) == 3
    meta = json.loads((run.model_dir / "model.json").read_text())
    assert meta["l2"] in HEAD_PENALTIES
    kept = 0 if meta["pca"] is None else len(meta["pca"]["components"])
    assert kept <= cfg.survival.hidden_components and meta["head"]["image_dim"] == len(PRESENCE_QUESTIONS) + kept
    result = cli("predict", run.out_dir, cohorts.cohort, "--out", tmp_path / "predict")
    assert result.exit_code == 0, result.output
    risk = read_table(tmp_path / "predict" / "predictions.csv")["risk"].to_numpy()
    np.testing.assert_allclose(np.sort(risk), meta["training_risk"], rtol=0, atol=1e-9)

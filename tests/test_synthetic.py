"""The synthetic cohort: determinism, files and schema, the documented risk model, prevalences, refusal to overwrite."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctsurv.config import DataConfig
from ctsurv.errors import CtsurvError
from ctsurv.io.cohort import load_cohort
from ctsurv.synthetic.geometry import affine_for
from ctsurv.synthetic.patients import (
    CATEGORICAL_COLUMNS,
    CLINICAL_COLUMNS,
    FINDINGS,
    MISSING,
    NUMERIC_COLUMNS,
    clinical_features,
    draw_cohort,
    prevalences,
    sample_patient,
    stream,
)
from ctsurv.synthetic.simulate import median_follow_up, resample_outcomes, simulate
from ctsurv.text.findings import FINDING_LABELS

SMALL = {"n": 12, "seed": 3, "shape_zyx": (24, 32, 32), "spacing_zyx": (12.0, 10.0, 10.0), "progress": False}


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "cohort"
    simulate(out, workers=2, **SMALL)  # type: ignore[arg-type]
    return out


def test_same_seed_same_cohort_whatever_the_workers(cohort_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    simulate(again, workers=1, **SMALL)  # type: ignore[arg-type]
    for name in ("cohort.csv", "truth.csv", "simulation.json"):
        assert (cohort_dir / name).read_bytes() == (again / name).read_bytes(), name
    for path in sorted((cohort_dir / "volumes").iterdir()):
        assert path.read_bytes() == (again / "volumes" / path.name).read_bytes(), path.name
    other = tmp_path / "other"
    simulate(other, workers=1, **{**SMALL, "seed": 4})  # type: ignore[arg-type]
    assert (cohort_dir / "cohort.csv").read_bytes() != (other / "cohort.csv").read_bytes()


def test_files_and_schema(cohort_dir: Path) -> None:
    cohort = pd.read_csv(cohort_dir / "cohort.csv", dtype={"id": str})
    assert list(cohort.columns) == ["id", "volume", "findings", "impression", "time", "event", *CLINICAL_COLUMNS]
    assert sorted(p.name for p in (cohort_dir / "volumes").iterdir()) == sorted(f"{i}.nii.gz" for i in cohort["id"])
    assert not list(cohort_dir.rglob(".*.tmp"))
    assert cohort["volume"].tolist() == [f"volumes/{i}.nii.gz" for i in cohort["id"]]
    assert cohort["findings"].str.len().min() > 50 and cohort["impression"].str.len().min() > 10
    image = nib.load(cohort_dir / cohort["volume"][0])
    assert image.get_data_dtype() == np.int16 and image.shape == SMALL["shape_zyx"][::-1]
    assert np.allclose(image.affine, affine_for(SMALL["shape_zyx"], SMALL["spacing_zyx"]))
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert image.header["qform_code"] == image.header["sform_code"] == 1
    hu = np.asarray(image.dataobj)
    assert -1024 <= hu.min() < -900 and 300 < hu.max() <= 3071
    truth = pd.read_csv(cohort_dir / "truth.csv", dtype={"id": str})
    assert truth["id"].tolist() == cohort["id"].tolist()
    for col in ("log_hazard", "log_hazard_image", "log_hazard_clinical", "f", "g", *FINDING_LABELS,
                "largest_nodule_mm", "n_nodules", "n_masses", "n_lymph_nodes", "n_lytic_lesions"):
        assert col in truth.columns, col


def test_cohort_passes_the_project_validation(cohort_dir: Path) -> None:
    config = DataConfig(numeric_columns=NUMERIC_COLUMNS, categorical_columns=CATEGORICAL_COLUMNS)
    cohort = load_cohort(cohort_dir / "cohort.csv", config, require_outcomes=True, require_reports=True)
    assert len(cohort) == SMALL["n"] and all(p.is_file() for p in cohort.volume_paths)


def test_log_hazard_is_the_documented_sum() -> None:
    draw = draw_cohort(300, seed=1, image_signal=0.7, clinical_signal=0.4)
    t = draw.truth

    def std(v: pd.Series) -> np.ndarray:
        return ((v - v.mean()) / v.std(ddof=0)).to_numpy()

    assert np.allclose(t["log_hazard_image"], 0.7 * std(t["f"]))
    assert np.allclose(t["log_hazard_clinical"], 0.4 * std(t["g"]))
    assert np.allclose(t["log_hazard"], t["log_hazard_image"] + t["log_hazard_clinical"])
    assert np.isclose(t["log_hazard_image"].std(ddof=0), 0.7) and np.isclose(t["log_hazard_clinical"].std(ddof=0), 0.4)


def test_times_and_events_and_event_rate() -> None:
    out = draw_cohort(600, seed=0, image_signal=1.0, clinical_signal=0.3).outcomes
    assert (out["time"] > 0).all() and out["time"].dtype.kind == "i"
    assert set(out["event"].unique()) <= {0, 1}
    assert 0.5 <= out["event"].mean() <= 0.7
    assert out["time"].max() <= 5 * 365.25 + 1  # administrative end of follow-up


def test_median_follow_up_is_the_reverse_kaplan_meier_median() -> None:
    lifelines = pytest.importorskip("lifelines")
    out = draw_cohort(500, seed=8, image_signal=1.0, clinical_signal=0.3).outcomes
    reverse = lifelines.KaplanMeierFitter().fit(out["time"], 1 - out["event"])
    assert median_follow_up(out["time"], out["event"]) == reverse.median_survival_time_


def test_prevalences_near_their_targets() -> None:
    findings = [sample_patient(stream(11, i, "patient")).findings for i in range(5000)]
    p = prevalences(findings)
    targets = {"Lung nodule": FINDINGS["nodule"][0], "Lung mass": FINDINGS["mass"][0],
               "Pleural effusion": FINDINGS["pleural_effusion"][0], "Emphysema": FINDINGS["emphysema"][0],
               "Consolidation": FINDINGS["consolidation"][0], "Lymphadenopathy": FINDINGS["lymphadenopathy"][0],
               "Pericardial effusion": FINDINGS["pericardial_effusion"][0], "Cardiomegaly": FINDINGS["cardiomegaly"][0],
               "Arterial wall calcification": FINDINGS["arterial_calcification"][0],
               "Lytic bone lesion": FINDINGS["lytic_bone_lesions"][0]}
    for label, target in targets.items():
        assert abs(p[label] - target) < 0.025, (label, p[label], target)
    sizes = [n.diameter_mm for f in findings for n in f.nodules]
    assert min(sizes) >= 10 and max(sizes) <= 60


def test_correlations_and_missingness() -> None:
    draw = draw_cohort(4000, seed=2, image_signal=1.0, clinical_signal=0.3)
    t, c = draw.truth, draw.clinical
    mass, nodes, bone = t["Lung mass"], t["Lymphadenopathy"], t["Lytic bone lesion"]
    assert np.corrcoef(mass, nodes)[0, 1] > 0.1 and np.corrcoef(nodes, bone)[0, 1] > 0.1  # cancer burden
    assert (c.loc[bone == 1, "stage"] == "IV").all()
    never = c["smoking_status"].eq("never")
    assert never[t["Emphysema"] == 1].mean() < never.mean() - 0.1  # smoking
    for col, rate in MISSING.items():
        assert abs(c[col].isna().mean() - rate) < 0.04, col
    assert c[["age", "sex", "stage"]].notna().all().all()
    assert set(c["stage"]) == {"I", "II", "III", "IV"}
    assert set(c["smoking_status"].dropna()) == {"never", "former", "current"}


def test_cox_on_the_true_log_hazard_recovers_coefficient_one() -> None:
    lifelines = pytest.importorskip("lifelines")
    draw = draw_cohort(2000, seed=5, image_signal=1.0, clinical_signal=0.3)
    df = pd.DataFrame({"eta": draw.truth["log_hazard"], "time": draw.outcomes["time"], "event": draw.outcomes["event"]})
    coef = lifelines.CoxPHFitter().fit(df, "time", "event").params_["eta"]
    assert abs(coef - 1.0) < 0.15, coef


def test_a_cox_model_on_the_clinical_columns_can_learn_g() -> None:
    lifelines = pytest.importorskip("lifelines")
    draw = draw_cohort(3000, seed=6, image_signal=0.0, clinical_signal=1.0)
    x = pd.DataFrame([clinical_features(sample_patient(stream(6, i, "patient")).clinical) for i in range(3000)])
    table = x.assign(time=draw.outcomes["time"], event=draw.outcomes["event"])
    fit = lifelines.CoxPHFitter().fit(table, "time", "event")
    learned = x.to_numpy() @ fit.params_[x.columns].to_numpy()
    assert np.corrcoef(learned, draw.truth["g"])[0, 1] > 0.97


def test_resample_outcomes_reuses_the_scans(cohort_dir: Path, tmp_path: Path) -> None:
    original = pd.read_csv(cohort_dir / "cohort.csv", dtype={"id": str})
    same, _ = resample_outcomes(cohort_dir, 1.0, 0.3, seed=SMALL["seed"])
    assert same["time"].tolist() == original["time"].tolist() and same["event"].tolist() == original["event"].tolist()
    _, truth = resample_outcomes(cohort_dir, 0.5, 1.5, seed=SMALL["seed"], out_dir=tmp_path / "sweep")
    assert np.isclose(truth["log_hazard_clinical"].std(ddof=0), 1.5)
    assert np.allclose(truth["log_hazard"], truth["log_hazard_image"] + truth["log_hazard_clinical"])
    written = pd.read_csv(tmp_path / "sweep" / "cohort.csv", dtype={"id": str})
    assert written["findings"].tolist() == original["findings"].tolist()
    for new, old in zip(written["volume"], original["volume"]):
        assert (tmp_path / "sweep" / new).resolve() == (cohort_dir / old).resolve()


def test_refuses_to_overwrite_a_cohort(cohort_dir: Path) -> None:
    before = (cohort_dir / "cohort.csv").read_bytes()
    with pytest.raises(CtsurvError, match="already exists"):
        simulate(cohort_dir, **SMALL)  # type: ignore[arg-type]
    assert (cohort_dir / "cohort.csv").read_bytes() == before


@pytest.mark.parametrize("bad", [{"n": 5}, {"image_signal": -1.0}, {"clinical_signal": float("nan")},
                                 {"shape_zyx": (24, 0, 32)}, {"spacing_zyx": (1.0, -1.0, 1.0)}, {"workers": 0},
                                 {"seed": -1}])
def test_bad_arguments_are_user_errors(bad: dict, tmp_path: Path) -> None:
    with pytest.raises(CtsurvError):
        simulate(tmp_path / "x", **{**SMALL, **bad})  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()

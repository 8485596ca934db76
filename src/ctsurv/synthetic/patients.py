"""A synthetic oncology cohort with a staging chest CT, clinical data and survival whose true risk is known.

It stands in for hospital data on a laptop and makes the project's claim testable: "image understanding
learned from reports improves survival prediction over clinical data alone, most where clinical data
alone predicts weakly". Each patient is a mixed-primary cancer patient having a chest CT. This module
draws a cohort in memory; :mod:`ctsurv.synthetic.simulate` renders and writes it to disk.

**Latent causes.** Five independent standard-normal latents: ``burden`` (thoracic cancer burden),
``smoking``, ``cardiac`` (heart disease), ``infection`` and ``age``. Each finding is present when
``w . latents + sqrt(1 - |w|^2) * noise`` exceeds the normal quantile of its prevalence, so its marginal
prevalence is exactly ``FINDINGS[name][0]`` while the loadings correlate findings with each other (masses,
nodes and bone lesions through burden; emphysema and calcification through smoking) and with the clinical
variables, which are drawn from the same latents.

**Clinical columns** (``NUMERIC_COLUMNS``, ``CATEGORICAL_COLUMNS``): age (years), sex (male/female),
smoking_status (never/former/current), pack_years, ecog (performance status 0-3, numeric), stage (I-IV),
hemoglobin (g/dL), albumin (g/dL), ldh (U/L), crp (mg/L). Missing in the table (MCAR for smoking status
and ECOG; labs missing at random, more often in well patients, who are tested less): see ``MISSING``.

**Survival.** Proportional hazards, log-hazard ``eta = image_signal * f_std + clinical_signal * g_std``,
where f = ``IMAGE_WEIGHTS . image_features(findings)`` and g = ``CLINICAL_WEIGHTS . clinical_features(true
clinical values, before missingness)`` are fixed linear scores, each standardised over the cohort so that
the two signal strengths are the SDs of the two parts. Event times: Weibull baseline (shape 1.2, median 2
years at eta = 0); censoring by drop-out (exponential, mean 10 years) and by the end of the study
(uniform 2-5 years after entry). Time is in days (integer, >= 1), like the real-data adapters.

**Randomness.** Patient i's streams are ``SeedSequence(seed).spawn(n)[i].spawn(4)[k]`` (k: 0 findings and
clinical data, 1 phantom, 2 report text, 3 outcome), so a cohort does not depend on the number of workers,
and redrawing outcomes with the same seed and new signal strengths reuses the same exponential draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from ctsurv.text.findings import FINDING_LABELS, Findings, LymphNode, Nodule, PleuralEffusion

LATENTS: tuple[str, ...] = ("burden", "smoking", "cardiac", "infection", "age")
# finding: (prevalence, loadings on the latents); sum of squared loadings < 1
FINDINGS: dict[str, tuple[float, dict[str, float]]] = {
    "mass": (0.12, {"burden": 0.65, "smoking": 0.35}),
    "nodule": (0.35, {"burden": 0.30, "smoking": 0.30, "age": 0.15}),  # a lung lesion < 30 mm
    "pleural_effusion": (0.20, {"burden": 0.35, "cardiac": 0.45, "infection": 0.25}),
    "emphysema": (0.25, {"smoking": 0.75, "age": 0.20}),
    "consolidation": (0.12, {"infection": 0.80}),
    "lymphadenopathy": (0.20, {"burden": 0.70, "infection": 0.15}),
    "pericardial_effusion": (0.08, {"cardiac": 0.50, "burden": 0.30}),
    "cardiomegaly": (0.15, {"cardiac": 0.75, "age": 0.30}),
    "arterial_calcification": (0.35, {"age": 0.60, "smoking": 0.45}),
    "lytic_bone_lesions": (0.10, {"burden": 0.75}),
}
LOBES = {"RUL": 0.30, "RML": 0.08, "RLL": 0.22, "LUL": 0.25, "LLL": 0.15}  # where lung lesions arise
CONSOLIDATION_LOBES = {"RUL": 0.15, "RML": 0.15, "RLL": 0.30, "LUL": 0.15, "LLL": 0.25}
STATIONS = {"subcarinal": 0.25, "right paratracheal": 0.25, "aortopulmonary window": 0.15, "right hilar": 0.15,
            "left hilar": 0.12, "left paratracheal": 0.08}

NUMERIC_COLUMNS: tuple[str, ...] = ("age", "pack_years", "ecog", "hemoglobin", "albumin", "ldh", "crp")
CATEGORICAL_COLUMNS: tuple[str, ...] = ("sex", "smoking_status", "stage")
CLINICAL_COLUMNS: tuple[str, ...] = ("age", "sex", "smoking_status", "pack_years", "ecog", "stage",
                                     "hemoglobin", "albumin", "ldh", "crp")
# column: base probability of being missing. Labs are missing at random: x1.3 in well patients, x0.7 in sick ones
# (stage IV or ECOG >= 2); a never-smoker's pack_years (0) is missing 2% of the time; no pack_years without a status.
MISSING: dict[str, float] = {"smoking_status": 0.06, "pack_years": 0.15, "ecog": 0.08, "hemoglobin": 0.04,
                             "albumin": 0.12, "ldh": 0.18, "crp": 0.15}

# f = sum of weight x feature (features from image_features): log-hazard per unit of each, before standardising
IMAGE_WEIGHTS: dict[str, float] = {
    "mass": 0.8,  # any lung lesion >= 30 mm
    "largest_lesion_cm": 0.2,  # per cm of the largest nodule or mass (0 without one)
    "n_lung_lesions": 0.1,  # per nodule or mass
    "lymphadenopathy": 0.5,
    "n_lymph_nodes": 0.15,  # per enlarged node
    "lytic_bone_lesion": 0.8,
    "n_lytic_lesions": 0.1,  # per lesion
    "pleural_effusion": 0.4,
    "effusion_size": 0.25,  # small 0, moderate 1, large 2
    "pericardial_effusion": 0.5,
    "emphysema_severity": 0.15,  # none 0, mild 1, moderate 2, severe 3
    "consolidation": 0.3,
    "cardiomegaly": 0.4,
    "arterial_calcification": 0.15,
}
# g = sum of weight x feature (features from clinical_features): linear in the table's columns, categories one-hot
CLINICAL_WEIGHTS: dict[str, float] = {
    "age": 0.03,  # per year
    "male": 0.2,
    "former_smoker": 0.1,  # vs never
    "current_smoker": 0.25,  # vs never
    "pack_years": 0.004,  # per pack-year
    "ecog": 0.45,  # per point
    "stage_II": 0.35,  # vs stage I
    "stage_III": 0.8,
    "stage_IV": 1.4,
    "hemoglobin": -0.08,  # per g/dL
    "albumin": -0.6,  # per g/dL
    "ldh": 0.002,  # per U/L
    "crp": 0.004,  # per mg/L
}
WEIBULL_SHAPE = 1.2
MEDIAN_DAYS = 730.5  # baseline median survival (eta = 0): 2 years
DROPOUT_MEAN_DAYS = 10 * 365.25
STUDY_END_DAYS = (2 * 365.25, 5 * 365.25)  # administrative censoring: uniform follow-up window after entry
STREAMS = {"patient": 0, "phantom": 1, "report": 2, "outcome": 3}


def stream(seed: int, patient: int, name: str) -> np.random.Generator:
    """Patient ``patient``'s generator for ``name`` (a key of STREAMS).

    The same as ``SeedSequence(seed).spawn(n)[patient].spawn(4)[STREAMS[name]]``, without the spawning state.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(patient, STREAMS[name])))


# ----------------------------------------------------------------------------- findings and clinical data


def _present(name: str, z: dict[str, float], rng: np.random.Generator) -> bool:
    prevalence, loadings = FINDINGS[name]
    common = sum(w * z[k] for k, w in loadings.items())
    own = np.sqrt(1 - sum(w * w for w in loadings.values())) * rng.standard_normal()
    return bool(common + own > special.ndtri(1 - prevalence))


def _pick(rng: np.random.Generator, table: dict[str, float], k: int = 1) -> list[Any]:
    """k different keys of ``table``, drawn with its weights."""
    p = np.array(list(table.values()))
    return [str(s) for s in rng.choice(list(table), size=k, replace=False, p=p / p.sum())]


def _level(score: float, levels: Sequence[Any], cum: Sequence[float]) -> Any:
    """The level whose band of cumulative probabilities ``cum`` (as standard normal quantiles) holds ``score``."""
    return levels[int(np.digitize(score, special.ndtri(np.asarray(cum))))]


def _findings(z: dict[str, float], rng: np.random.Generator) -> Findings:
    """Findings from the latents: each finding's presence, then its size, place and count."""
    has = {name: _present(name, z, rng) for name in FINDINGS}
    nodules: list[Nodule] = []
    if has["nodule"]:  # 1-4 nodules of 10-29 mm, most under 20 mm
        for _ in range(min(4, 1 + rng.poisson(0.5))):
            nodules.append(Nodule(_pick(rng, LOBES)[0], round(10 + 19 * rng.beta(1.3, 2.5), 1)))
    if has["mass"]:  # one mass of 30-60 mm, bigger with more burden
        u = special.ndtr(0.6 * z["burden"] + 0.8 * rng.standard_normal())
        nodules.insert(0, Nodule(_pick(rng, LOBES)[0], round(30 + 30 * u**1.3, 1)))
    effusion = None
    if has["pleural_effusion"]:  # bilateral more often with heart disease, larger with more burden
        bilateral = rng.random() < (0.55 if z["cardiac"] > 0.5 else 0.25)
        side = "bilateral" if bilateral else ("right" if rng.random() < 0.55 else "left")
        size = _level(0.4 * z["burden"] + rng.standard_normal(), ("small", "moderate", "large"), (0.55, 0.85))
        effusion = PleuralEffusion(side, size)  # type: ignore[arg-type]
    emphysema = None
    if has["emphysema"]:  # worse in heavier smokers
        emphysema = _level(0.6 * z["smoking"] + 0.8 * rng.standard_normal(), ("mild", "moderate", "severe"), (0.7, 0.9))
    n_lobes = 1 if rng.random() < 0.75 else 2
    consolidation = tuple(_pick(rng, CONSOLIDATION_LOBES, n_lobes)) if has["consolidation"] else ()
    nodes: tuple[LymphNode, ...] = ()
    if has["lymphadenopathy"]:  # 1-4 nodes at different stations, short axis 12-30 mm
        k = min(4, 1 + rng.poisson(0.5 + 0.5 * max(z["burden"], 0)))
        nodes = tuple(LymphNode(s, round(12 + 18 * rng.beta(1.3, 2.5), 1)) for s in _pick(rng, STATIONS, k))
    lytic = min(6, 1 + rng.poisson(0.8 + 0.5 * max(z["burden"], 0))) if has["lytic_bone_lesions"] else 0
    return Findings(nodules=tuple(nodules), pleural_effusion=effusion, emphysema=emphysema, consolidation=consolidation,
                    lymph_nodes=nodes, pericardial_effusion=has["pericardial_effusion"],
                    cardiomegaly=has["cardiomegaly"], arterial_calcification=has["arterial_calcification"],
                    lytic_bone_lesions=int(lytic))


def _clinical(z: dict[str, float], f: Findings, rng: np.random.Generator) -> dict[str, Any]:
    """True (complete) clinical values from the latents; stage IV whenever there are bone metastases."""
    e = rng.standard_normal(8)
    male = bool(rng.random() < 0.56)
    status = _level(z["smoking"], ("never", "former", "current"), (0.35, 0.75))
    packs = np.clip(round(np.exp(3.2 + 0.35 * z["smoking"] + 0.45 * e[0]), 1), 1, 150) if status != "never" else 0.0
    frailty = 0.3 * z["burden"] + 0.25 * z["age"] + 0.25 * z["cardiac"] + 0.15 * z["infection"] + 0.87 * e[1]
    stage = _level(0.55 * z["burden"] + 0.84 * e[2], ("I", "II", "III", "IV"), (0.22, 0.44, 0.7))
    stage = "IV" if f.lytic_bone_lesions else stage
    hb = 13.0 + 1.2 * male - 0.4 * z["burden"] - 0.3 * z["infection"] - 0.2 * z["age"] + 1.0 * e[3]
    albumin = 4.0 - 0.15 * z["burden"] - 0.15 * z["infection"] - 0.1 * z["age"] - 0.1 * z["cardiac"] + 0.35 * e[4]
    ldh = 190 * np.exp(0.15 * z["burden"] + 0.05 * z["infection"] + 0.3 * e[5])
    crp = np.exp(1.3 + 0.3 * z["burden"] + 0.6 * z["infection"] + 0.9 * e[6])
    return {
        "age": int(np.clip(round(65 + 10 * z["age"]), 30, 92)),  # years
        "sex": "male" if male else "female",
        "smoking_status": status,
        "pack_years": float(packs),
        "ecog": int(_level(frailty, (0, 1, 2, 3), (0.35, 0.7, 0.9))),
        "stage": stage,
        "hemoglobin": round(float(np.clip(hb, 6, 18)), 1),  # g/dL
        "albumin": round(float(np.clip(albumin, 1.5, 5.2)), 1),  # g/dL
        "ldh": float(np.clip(round(ldh), 80, 2000)),  # U/L
        "crp": round(float(np.clip(crp, 0.1, 400)), 1),  # mg/L
    }


def _observed(true: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """The table's values: ``true`` with missing values (None) drawn per ``MISSING``."""
    sick = true["stage"] == "IV" or true["ecog"] >= 2
    u = rng.random(len(MISSING))
    out = dict(true)
    for (col, p), ui in zip(MISSING.items(), u):
        if col in ("hemoglobin", "albumin", "ldh", "crp"):
            p *= 0.7 if sick else 1.3
        if col == "pack_years" and true["smoking_status"] == "never":
            p = 0.02  # a never-smoker's 0 is rarely left blank
        if ui < p or (col == "pack_years" and out["smoking_status"] is None):
            out[col] = None
    return out


@dataclass(frozen=True)
class Patient:
    """One drawn patient; only ``findings`` and ``observed`` reach the cohort table (and truth.csv)."""

    findings: Findings
    clinical: dict[str, Any]  # true values, complete
    observed: dict[str, Any]  # as in the table, None = missing
    latents: dict[str, float]


def sample_patient(rng: np.random.Generator) -> Patient:
    """One patient's latents, findings, true clinical values and the values recorded in the table."""
    z = dict(zip(LATENTS, (float(v) for v in rng.standard_normal(len(LATENTS)))))
    f = _findings(z, rng)
    true = _clinical(z, f, rng)
    return Patient(f, true, _observed(true, rng), z)


def sample_findings(rng: np.random.Generator) -> Findings:
    """One patient's findings, drawn with the cohort's prevalences and correlations."""
    return sample_patient(rng).findings


# ----------------------------------------------------------------------------- risk scores and outcomes


def image_features(f: Findings) -> dict[str, float]:
    """The findings as the numbers f weighs (keys of IMAGE_WEIGHTS)."""
    sizes = {"small": 0.0, "moderate": 1.0, "large": 2.0}
    return {
        "mass": float(any(n.is_mass for n in f.nodules)),
        "largest_lesion_cm": f.largest_nodule_mm / 10,
        "n_lung_lesions": float(len(f.nodules)),
        "lymphadenopathy": float(bool(f.lymph_nodes)),
        "n_lymph_nodes": float(len(f.lymph_nodes)),
        "lytic_bone_lesion": float(f.lytic_bone_lesions > 0),
        "n_lytic_lesions": float(f.lytic_bone_lesions),
        "pleural_effusion": float(f.pleural_effusion is not None),
        "effusion_size": sizes[f.pleural_effusion.size] if f.pleural_effusion else 0.0,
        "pericardial_effusion": float(f.pericardial_effusion),
        "emphysema_severity": {None: 0.0, "mild": 1.0, "moderate": 2.0, "severe": 3.0}[f.emphysema],
        "consolidation": float(bool(f.consolidation)),
        "cardiomegaly": float(f.cardiomegaly),
        "arterial_calcification": float(f.arterial_calcification),
    }


def clinical_features(c: dict[str, Any]) -> dict[str, float]:
    """True clinical values as the numbers g weighs (keys of CLINICAL_WEIGHTS): numbers as they are,
    categories one-hot against never-smoker and stage I."""
    num = {k: float(c[k]) for k in NUMERIC_COLUMNS}
    return {**num, "male": float(c["sex"] == "male"), "former_smoker": float(c["smoking_status"] == "former"),
            "current_smoker": float(c["smoking_status"] == "current"),
            **{f"stage_{s}": float(c["stage"] == s) for s in ("II", "III", "IV")}}


def image_score(f: Findings) -> float:
    """f: the unscaled image part of the log-hazard."""
    x = image_features(f)
    return float(sum(w * x[k] for k, w in IMAGE_WEIGHTS.items()))


def clinical_score(c: dict[str, Any]) -> float:
    """g: the unscaled clinical part of the log-hazard, from true (complete) clinical values."""
    x = clinical_features(c)
    return float(sum(w * x[k] for k, w in CLINICAL_WEIGHTS.items()))


def _standardise(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    return (v - v.mean()) / (sd if sd > 0 else 1.0)


def draw_outcomes(f: np.ndarray, g: np.ndarray, image_signal: float, clinical_signal: float, seed: int) -> pd.DataFrame:
    """Times and events for scores f, g (n,) (patient i uses its 'outcome' stream of ``seed``).

    Columns: time (days, integer >= 1), event (1 death, 0 censored), log_hazard, log_hazard_image,
    log_hazard_clinical (the two parts: signal x standardised score).
    """
    part_f = image_signal * _standardise(np.asarray(f, np.float64))
    part_g = clinical_signal * _standardise(np.asarray(g, np.float64))
    eta = part_f + part_g
    u = np.array([stream(seed, i, "outcome").random(3) for i in range(len(eta))]).reshape(-1, 3)  # (n, 3)
    scale = MEDIAN_DAYS / np.log(2) ** (1 / WEIBULL_SHAPE)
    death = scale * (-np.log1p(-u[:, 0]) * np.exp(-eta)) ** (1 / WEIBULL_SHAPE)  # S(t) = exp(-(t/scale)^k e^eta)
    dropout = -DROPOUT_MEAN_DAYS * np.log1p(-u[:, 1])
    end = STUDY_END_DAYS[0] + u[:, 2] * (STUDY_END_DAYS[1] - STUDY_END_DAYS[0])
    censor = np.minimum(dropout, end)
    time = np.maximum(np.ceil(np.minimum(death, censor)), 1.0)
    assert np.all(time > 0)
    return pd.DataFrame({"time": time.astype(np.int64), "event": (death <= censor).astype(np.int64),
                         "log_hazard": eta, "log_hazard_image": part_f, "log_hazard_clinical": part_g})


def patient_ids(n: int) -> list[str]:
    """P0000, P0001, ... (more digits beyond 10,000 patients)."""
    width = max(4, len(str(n - 1)))
    return [f"P{i:0{width}d}" for i in range(n)]


def truth_columns(f: Findings) -> dict[str, Any]:
    """The finding labels (Findings.labels()) and the sizes and counts behind them, for truth.csv."""
    return {**f.labels(), "largest_nodule_mm": f.largest_nodule_mm,
            "n_nodules": sum(not n.is_mass for n in f.nodules), "n_masses": sum(n.is_mass for n in f.nodules),
            "n_lymph_nodes": len(f.lymph_nodes),
            "largest_node_mm": max((n.short_axis_mm for n in f.lymph_nodes), default=0.0),
            "pleural_effusion_side": f.pleural_effusion.side if f.pleural_effusion else "",
            "pleural_effusion_size": f.pleural_effusion.size if f.pleural_effusion else "",
            "emphysema_severity": f.emphysema or "", "consolidation_lobes": " ".join(f.consolidation),
            "n_lytic_lesions": f.lytic_bone_lesions}


@dataclass(frozen=True)
class CohortDraw:
    """Everything about a cohort except images and reports (cheap: no rendering)."""

    findings: list[Findings]
    clinical: pd.DataFrame  # id + CLINICAL_COLUMNS as recorded (with missing values)
    outcomes: pd.DataFrame  # id, time, event
    truth: pd.DataFrame  # id, log_hazard, log_hazard_image, log_hazard_clinical, f, g, labels, sizes and counts


def draw_cohort(n: int, seed: int, image_signal: float, clinical_signal: float) -> CohortDraw:
    """Draw n patients' findings, clinical data, risk and outcomes (seeded as described in the module docs)."""
    ids = patient_ids(n)
    patients = [sample_patient(stream(seed, i, "patient")) for i in range(n)]
    f = np.array([image_score(p.findings) for p in patients])
    g = np.array([clinical_score(p.clinical) for p in patients])
    out = draw_outcomes(f, g, image_signal, clinical_signal, seed)
    clinical = pd.DataFrame([p.observed for p in patients], columns=list(CLINICAL_COLUMNS))
    clinical.insert(0, "id", ids)
    for col in ("age", "ecog"):
        clinical[col] = clinical[col].astype("Int64")  # integers that may be missing
    id_column = pd.DataFrame({"id": ids})
    truth = pd.concat([id_column, out.drop(columns=["time", "event"]), pd.DataFrame({"f": f, "g": g}),
                       pd.DataFrame([truth_columns(p.findings) for p in patients])], axis=1)
    outcomes = pd.concat([id_column, out[["time", "event"]]], axis=1)
    return CohortDraw([p.findings for p in patients], clinical, outcomes, truth)


def prevalences(findings: Sequence[Findings]) -> dict[str, float]:
    """Fraction of patients with each finding label (FINDING_LABELS)."""
    labels = np.array([[f.labels()[k] for k in FINDING_LABELS] for f in findings])
    return dict(zip(FINDING_LABELS, labels.mean(axis=0).round(4).tolist()))

"""The tiny pretraining run and survival run that several test modules read (session fixtures, built once).

``cohorts``: a 12-study pretraining cohort and a 40-patient survival cohort with repeated studies and twins;
``pretrained``: `ctsurv pretrain` on the first; ``run``: `ctsurv survival` on the second (3 folds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_setups import TINY_PIPELINE, cli, torch_threads

from ctsurv.synthetic.simulate import simulate

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
RUN = TINY_PIPELINE
SURVIVAL = ["survival.bootstrap=100", "survival.epochs=50"]
SIM = {"shape_zyx": (16, 32, 32), "spacing_zyx": (18, 10, 10), "workers": 1}
N_SIM, N_PAIRS, N_TWINS = 40, 6, 3  # 40 simulated patients; 6 get a second, identical study; 3 an identical twin


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str, "patient_id": str, "sex": str, "smoking_status": str, "stage": str})


@dataclass(frozen=True)
class Cohorts:
    pretrain: Path  # cohort.csv of 12 studies with reports
    cohort: Path  # grouped/cohort.csv: 40 + 6 second studies + 3 twins, patient_id, absolute volume paths
    pairs: list[tuple[str, str]]  # (first study, second study) of the patients with two studies
    twins: list[tuple[str, str]]  # (study, its twin): the same scan and data as another patient


@pytest.fixture(scope="session")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> Cohorts:
    """A 12-study pretraining cohort and a 40-patient survival cohort (16×32×32 voxels), the latter with
    a second study for 6 patients (3 with an event, 3 censored): the same scan, clinical data and outcome
    under a new study id and a shared ``patient_id``; and 3 twins: such copies as patients of their own.
    truth.csv gets the same rows."""
    root = tmp_path_factory.mktemp("survival_cohorts")
    simulate(root / "pretrain", n=12, seed=5, progress=False, **SIM)
    simulate(root / "sim", n=N_SIM, seed=3, progress=False, **SIM)
    table = read_table(root / "sim" / "cohort.csv")
    truth = pd.read_csv(root / "sim" / "truth.csv", dtype={"id": str})
    assert table["id"].tolist() == truth["id"].tolist()
    table["volume"] = [str((root / "sim" / v).resolve()) for v in table["volume"]]
    table["patient_id"] = table["id"]
    twice = [*np.flatnonzero(table["event"] == 1)[:3], *np.flatnonzero(table["event"] == 0)[:3]]
    second = table.iloc[twice].assign(id=lambda t: t["id"] + "_b")
    twin_rows = np.flatnonzero(table["event"] == 1)[3:6]
    twin = table.iloc[twin_rows].assign(id=lambda t: t["id"] + "_t", patient_id=lambda t: t["id"])
    copies = [truth.iloc[rows].assign(id=lambda t, s=suffix: t["id"] + s)
              for rows, suffix in ((twice, "_b"), (twin_rows, "_t"))]
    (root / "grouped").mkdir()
    pd.concat([table, second, twin], ignore_index=True).to_csv(root / "grouped" / "cohort.csv", index=False)
    pd.concat([truth, *copies], ignore_index=True).to_csv(root / "grouped" / "truth.csv", index=False)
    return Cohorts(root / "pretrain" / "cohort.csv", root / "grouped" / "cohort.csv",
                   list(zip(table["id"].iloc[twice], second["id"])), list(zip(table["id"].iloc[twin_rows], twin["id"])))


@pytest.fixture(scope="session")
def pretrained(cohorts: Cohorts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("survival_pretrain") / "run"
    with torch_threads(1):  # as every test module reads it (one_torch_thread): predict reproduces its numbers
        result = cli("pretrain", "--config", CONFIG, "--cohort", cohorts.pretrain, "--out", out, *RUN)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def run(cohorts: Cohorts, pretrained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("survival_run") / "survival"
    with torch_threads(1):
        result = cli("survival", "--config", CONFIG, "--cohort", cohorts.cohort, "--out", out, "--pretrained", pretrained,
                     "--folds", 3, *SURVIVAL)
    assert result.exit_code == 0, result.output
    assert f"model: {out / 'model'}" in result.stdout
    return out

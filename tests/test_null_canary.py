"""The null canary: outcomes shuffled across patients, run through the whole `ctsurv survival` path.

A leak of outcome information into the image features, the folds or the heads (a PCA or a scaler fitted on
test patients' outcomes, a fold split that separates a patient's studies, a head that sees its test rows)
shows as a C-index above chance on outcomes that no scan or clinical value can predict. The same cohort
with its real outcomes is the positive control: the oracle and the clinical model must then rank patients.
``benchmarks/protocol.py`` repeats the shuffle on demo-sized cohorts and reports the paired test's
false-positive rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_setups import TINY_PIPELINE, cli, one_torch_thread  # noqa: F401 (autouse)

from ctsurv.synthetic.simulate import simulate

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
SIM = {"shape_zyx": (16, 32, 32), "spacing_zyx": (18, 10, 10), "workers": 1}
SURVIVAL = ["survival.bootstrap=200", "survival.epochs=50"]
N = 150


def survival_results(cohort: Path, pretrained: Path, out: Path) -> dict:
    result = cli("survival", "--config", CONFIG, "--cohort", cohort, "--out", out, "--pretrained", pretrained,
                 "--folds", 3, *SURVIVAL)
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """(results with the real outcomes, results with (time, event) permuted across patients)."""
    root = tmp_path_factory.mktemp("null_canary")
    simulate(root / "pretrain", n=12, seed=21, progress=False, **SIM)
    simulate(root / "cohort", n=N, seed=22, image_signal=1.0, clinical_signal=1.0, progress=False, **SIM)
    pretrained = root / "pretrained"
    result = cli("pretrain", "--config", CONFIG, "--cohort", root / "pretrain" / "cohort.csv", "--out", pretrained,
                 *TINY_PIPELINE)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(root / "cohort" / "cohort.csv", dtype=str, keep_default_na=False)
    order = np.random.default_rng(0).permutation(len(table))
    assert (order != np.arange(len(table))).mean() > 0.9
    table[["time", "event"]] = table[["time", "event"]].to_numpy()[order]
    (root / "shuffled").mkdir()
    table["volume"] = [str((root / "cohort" / v).resolve()) for v in table["volume"]]
    table.to_csv(root / "shuffled" / "cohort.csv", index=False)  # no truth.csv: the oracle has nothing to read
    real = survival_results(root / "cohort" / "cohort.csv", pretrained, root / "real")
    shuffled = survival_results(root / "shuffled" / "cohort.csv", pretrained, root / "null")
    return real, shuffled


def test_the_positive_control_ranks_patients(runs: tuple[dict, dict]) -> None:
    real, _ = runs
    assert real["methods"]["oracle"]["harrell_c"] > 0.7
    assert real["methods"]["clinical_cox"]["harrell_c"] > 0.6


def test_shuffled_outcomes_give_chance_and_no_significant_gain(runs: tuple[dict, dict]) -> None:
    _, null = runs
    methods = null["methods"]
    assert "oracle" not in methods and {"model", "clinical_cox"} <= set(methods)
    # a leak inflates C; none may rank the shuffled outcomes better than chance (150 patients: the SD of C
    # under the null is about 0.03; out-of-fold C of a fitted model tends to fall below 0.5 there, not above)
    for name, m in methods.items():
        assert m["harrell_c"] < 0.6 and m["harrell_c_ci"][0] < 0.5, (name, m["harrell_c"], m["harrell_c_ci"])
    model = methods["model"]
    assert abs(model["harrell_c"] - 0.5) < 0.1 and abs(methods["clinical_cox"]["harrell_c"] - 0.5) < 0.1
    assert model["delta_c_ci"][0] <= 0 <= model["delta_c_ci"][1], model
    assert model["p_vs_clinical"] > 0.05 and model["p_vs_clinical_cv"] > 0.05

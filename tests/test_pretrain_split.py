"""Pretraining's three-way split of the patients (train / val / test), its settings, and the held-out
evaluation's macro means over the findings that the scored reports have."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctsurv.config import load_config
from ctsurv.errors import ConfigError, CtsurvError
from ctsurv.evaluation import vlm_eval
from ctsurv.evaluation.vlm_eval import evaluate_vlm, presence_table
from ctsurv.training.pretrain import split_patients


def patients(n_patients: int) -> list[str]:
    """Patient of each study: patient i has i % 3 + 1 studies."""
    return [f"pt{i:02d}" for i in range(n_patients) for _ in range(i % 3 + 1)]


def test_the_split_is_three_way_by_patient_and_drawn_from_the_seed() -> None:
    ids = patients(40)  # 79 studies
    part = split_patients(ids, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert part.shape == (len(ids),) and set(part) == {"train", "val", "test"}
    members = pd.Series(ids).groupby(part)
    assert members.nunique().to_dict() == {"test": 8, "val": 4, "train": 28}  # patients: 20 % and 10 % of 40
    for name, group in members:  # disjoint: a patient's studies fall in one part
        assert not set(group) & set(pd.Series(ids)[part != name])
    np.testing.assert_array_equal(part, split_patients(ids, 0.1, 0.2, seed=3))  # --resume draws it again
    np.testing.assert_array_equal(part, split_patients(list(reversed(ids)), 0.1, 0.2, seed=3)[::-1])  # not row order
    assert not np.array_equal(part, split_patients(ids, 0.1, 0.2, seed=4))


def test_each_held_out_part_has_at_least_one_patient() -> None:
    part = split_patients(patients(3), val_fraction=0.01, test_fraction=0.01, seed=0)
    assert pd.Series(patients(3)).groupby(part).nunique().to_dict() == {"test": 1, "val": 1, "train": 1}


@pytest.mark.parametrize(
    ("n_patients", "val_fraction", "test_fraction", "held"),
    [
        (2, 0.15, 0.15, "pretrain.test_fraction=0.15 holds out 1 and pretrain.val_fraction=0.15 1,"),
        (7, 0.45, 0.5, "pretrain.test_fraction=0.5 holds out 4 and pretrain.val_fraction=0.45 3,"),
    ],
)
def test_too_few_patients_for_three_parts(n_patients: int, val_fraction: float, test_fraction: float, held: str) -> None:
    with pytest.raises(CtsurvError) as err:
        split_patients(patients(n_patients), val_fraction, test_fraction, seed=0)
    message = str(err.value)
    assert f"{n_patients} patients cannot be split three ways" in message and held in message
    assert "lower pretrain.val_fraction or pretrain.test_fraction" in message and "\n" not in message


def test_test_fraction_setting() -> None:
    cfg = load_config(None)
    assert cfg.pretrain.test_fraction == cfg.pretrain.val_fraction == 0.15
    with pytest.raises(ConfigError, match=r"pretrain.test_fraction must be in \(0, 0.9\), got 0"):
        load_config(None, ["pretrain.test_fraction=0"])
    with pytest.raises(ConfigError, match=r"val_fraction \+ pretrain.test_fraction must be below 0.9.*0.5 \+ 0.4"):
        load_config(None, ["pretrain.val_fraction=0.5", "pretrain.test_fraction=0.4"])


# ----------------------------------------------------------------------------- the macro means

REPORTS = [  # the presence labels the report extractor reads in them: nodule, cardiomegaly, none, nodule
    "A nodule measuring 12 mm in the right upper lobe. No pleural effusion.",
    "Cardiomegaly. No nodule.",
    "The lungs are clear.",
    "A 6 mm nodule in the left lower lobe.",
]


def test_the_macro_is_over_the_findings_with_a_positive() -> None:
    truth = pd.DataFrame({"Lung nodule": [1, 0, 0, 1], "Emphysema": [0, 0, 0, 0], "Cardiomegaly": [0, 1, 0, 0]})
    pred = pd.DataFrame({"Lung nodule": [1, 0, 1, 0], "Emphysema": [0, 0, 0, 0], "Cardiomegaly": [0, 0, 0, 0]})
    table = presence_table(truth, pred)
    assert table["in_macro"].to_dict() == {"Lung nodule": True, "Emphysema": False, "Cardiomegaly": True, "macro": False}
    assert table["positives"].tolist() == [2, 0, 1, 3] and table["n"].tolist() == [4, 4, 4, 4]
    assert table.loc["Emphysema", "accuracy"] == 1.0 and table.loc["Emphysema", "f1"] == 0.0  # what it would add
    macro = table.loc["macro"]
    assert macro["accuracy"] == pytest.approx((0.5 + 0.75) / 2) and macro["f1"] == pytest.approx((0.5 + 0.0) / 2)
    assert macro["recall"] == pytest.approx(0.25) and macro["specificity"] == pytest.approx((0.5 + 1.0) / 2)
    # no finding with a positive: no macro mean
    none = presence_table(truth[["Emphysema"]], pred[["Emphysema"]])
    assert none.loc["macro", ["accuracy", "f1"]].isna().all()


def test_eval_json_and_md_state_which_findings_the_macro_leaves_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model says "Yes." to the nodule question for studies 0 and 2, and "No." to everything else."""
    presence = [q for q in vlm_eval.QUESTIONS if q.kind == "presence"]
    nodule = next(q for q in presence if q.label == "Lung nodule")

    def answers(vlm: object, inputs: object, kind: str, questions: list[str], *args: object, **kwargs: object) -> list[list[str]]:
        yes = [0, 2] if questions == [nodule.text] else []
        return [["Yes." if i in yes else "No."] for i in range(len(REPORTS))]

    def p_yes(vlm: object, inputs: object, kind: str, questions: list, **kwargs: object) -> pd.DataFrame:
        """P(yes): AUC 3/4 for the nodule (studies 0 and 3), 2.5/3 for cardiomegaly (study 1; a tie with study 2)."""
        p = pd.DataFrame(0.1, index=range(len(REPORTS)), columns=[q.label for q in questions])
        p["Lung nodule"], p["Cardiomegaly"] = [0.9, 0.3, 0.6, 0.5], [0.2, 0.7, 0.7, 0.1]
        return p

    monkeypatch.setattr(vlm_eval, "answer_questions", answers)
    monkeypatch.setattr(vlm_eval, "presence_probabilities", p_yes)
    monkeypatch.setattr(vlm_eval, "text_report", lambda generated, refs: {"n": len(refs), "bleu_4": 0.0, "rouge_l": 0.0,
                                                                            "embedding_similarity": 0.0})
    metrics = evaluate_vlm(None, None, "features", REPORTS, [""] * 4, max_new_tokens=4, out_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["presence"] == json.loads(json.dumps(metrics["presence"]))
    scores = saved["presence"]
    assert scores["Lung nodule"] == pytest.approx(
        {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "specificity": 0.5, "f1": 0.5, "positives": 2, "n": 4,
         "auc": 0.75}
    )
    assert scores["Cardiomegaly"]["auc"] == pytest.approx(2.5 / 3)
    assert scores["Cardiomegaly"]["accuracy"] == 0.75 and scores["Cardiomegaly"]["positives"] == 1
    never = [q.label for q in presence if q.label not in ("Lung nodule", "Cardiomegaly")]
    assert all(scores[label]["positives"] == 0 and scores[label]["accuracy"] == 1.0 for label in never)
    assert all(scores[label]["auc"] is None for label in never)  # no positive: no AUC
    macro = scores["macro"]
    assert macro["labels_in_macro"] == [q.label for q in presence if q.label in ("Lung nodule", "Cardiomegaly")]
    assert macro["accuracy"] == pytest.approx(0.625) and macro["f1"] == pytest.approx(0.25)
    assert macro["auc"] == pytest.approx((0.75 + 2.5 / 3) / 2)
    assert macro["n"] == 4 and macro["positives"] == 3
    md = (tmp_path / "eval.md").read_text()
    assert "| macro | 4 | 3 | 0.625 | 0.250 | 0.250 | 0.250 | 0.792 |" in md
    assert "| Lung nodule | 4 | 2 | 0.500 | 0.500 | 0.500 | 0.500 | 0.750 |" in md
    assert "mean over the 2 findings with at least one positive report" in md
    assert f"no report here has them (their accuracy is only the share of \"No.\" answers, their F1 0 whatever " \
           f"the model says): {', '.join(never)}." in md

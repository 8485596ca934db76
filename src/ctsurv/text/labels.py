"""Rule-based extraction of the 18 CT-RATE abnormality labels from free-text chest CT reports.

Why rules and not a classifier: the labels feed the question-answer pairs of instruction tuning, so
they must be right on reports the extractor has never seen (other hospitals, our synthetic
generator). A TF-IDF + logistic regression trained on 800 labelled reports learns the house style of
those reports and transfers poorly (macro-F1 about 0.8 elsewhere); explicit medical vocabulary with
clause-scoped negation transfers better, and every decision can be explained (``find_mentions``).

How it works, top-down:

1. ``split_sentences`` cuts a report into sentences (full stops, bullets, quotes, line breaks).
2. ``split_clauses`` cuts a sentence into clauses at contrast words ("but", "apart from this", ";")
   and at commas/"and"/":" that join two parts which each have their own verb, so the "no" of
   "no effusion was detected" does not leak into "nodules are observed" of the same sentence, while
   a list ("No pleural effusion, pneumothorax or nodule.") stays one clause under one negation.
3. ``find_mentions`` looks for each label's vocabulary (``LABEL_TERMS``) in every clause, drops
   mentions that are something else in context (``TERM_VETOES``, ``LABEL_EXCLUSIONS``, a "nodule" of
   the thyroid, plaques of the coronaries only for the aortic label) and marks each mention negated
   when a cue governs it inside its clause: one before it ("No ...", "without", "free of") or a
   negated verb after it ("Pleural effusion-thickening was not detected", "... has resolved").
4. A label is 1 when at least one mention is not negated.

The vocabulary itself (terms, context rules, negation and clause cues) is in
:mod:`ctsurv.text.vocabulary`; this module is the procedure that applies it.

Conventions of the manual CT-RATE labels, learnt from the development split and followed here:
uncertain findings count ("(cyst?)", "possible", "cannot be excluded"); any lymph node reported as
present counts as lymphadenopathy, even "millimetric" or "not of pathological size" (but not
"not enlarged" or "normal-sized"); a lung *mass* alone is not a "Lung nodule"; fibrotic sequelae are
post-inflammatory scars and bands, not interstitial fibrosis or honeycombing; "Arterial wall
calcification" is the thoracic aorta and its branches, not the coronaries or the abdominal aorta.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ctsurv.errors import CtsurvError
from ctsurv.outputs import check_output_file, staged_file
from ctsurv.text.findings import CTRATE_LABELS
from ctsurv.text.vocabulary import (
    ABDOMINAL_VESSEL,
    CLAUSE_REQUIREMENTS,
    CONTINUATION,
    CORONARY_VESSEL,
    EXTRA_LABEL_TERMS,  # noqa: F401 (re-exported: callers import it from here)
    HARD_BREAK,
    LABEL_EXCLUSIONS,
    LABEL_TERMS,
    LUNG,
    LUNG_ONLY_LABELS,
    NOT_EXCLUDED,
    OTHER_ORGAN,
    OTHER_PLAQUE_SITE,
    POST_NEGATION,
    PRE_NEGATION,
    SENTENCE_BREAK,
    SOFT_BREAK,
    TERM_VETOES,
    THORACIC_VESSEL,
    UNCERTAINTY,
    VERB,
)


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


@dataclass(frozen=True)
class _Term:
    pattern: re.Pattern[str]
    veto: re.Pattern[str] | None


# The vocabulary, compiled once (a report has ~40 clauses x 18 labels).
_TERMS: dict[str, tuple[_Term, ...]] = {
    label: tuple(
        _Term(_rx(t), _rx(TERM_VETOES[label][t]) if t in TERM_VETOES.get(label, {}) else None) for t in terms
    )
    for label, terms in LABEL_TERMS.items()
}
_ANY_TERM = {label: _rx("|".join(f"(?:{t})" for t in terms)) for label, terms in LABEL_TERMS.items()}  # fast pre-check
_EXCLUSIONS = {label: tuple(_rx(x) for x in xs) for label, xs in LABEL_EXCLUSIONS.items()}
_REQUIREMENTS = {label: _rx(x) for label, x in CLAUSE_REQUIREMENTS.items()}
_LUNG_RX, _OTHER_ORGAN_RX = _rx(LUNG), _rx(OTHER_ORGAN)
_CORONARY_VESSEL_RX, _ABDOMINAL_VESSEL_RX = _rx(CORONARY_VESSEL), _rx(ABDOMINAL_VESSEL)
_THORACIC_VESSEL_RX, _OTHER_PLAQUE_SITE_RX = _rx(THORACIC_VESSEL), _rx(OTHER_PLAQUE_SITE)


@dataclass(frozen=True)
class Mention:
    """One occurrence of a label's vocabulary in a clause: the evidence behind a label."""

    label: str
    term: str  # the matched text
    clause: str
    negated: bool
    uncertain: bool  # hedged ("?", "possible", "cannot be excluded"); still counts as positive


# ============================================================================================
# Segmentation
# ============================================================================================


def split_sentences(text: str) -> list[str]:
    """Split a report into sentences; decimal points ("2.3 mm") are not sentence ends."""
    return [p.strip() for p in SENTENCE_BREAK.split(text or "") if p and p.strip(" .")]


def split_clauses(sentence: str) -> list[str]:
    """Split a sentence into clauses that each carry their own negation scope.

    Contrast words always split. Commas, colons and "and" split only when the text before them already
    has a verb and the text after has its own verb and is not the continuation of the same clause
    ("..., which was observed"). So "No pleural effusion, pneumothorax or nodule was seen" stays one
    clause, and "Nodules are seen, no effusion is present" becomes two.
    """
    clauses: list[str] = []
    for part in HARD_BREAK.split(sentence):
        tokens = SOFT_BREAK.split(part)  # [piece, separator, piece, separator, ..., piece]
        current = tokens[0]
        for separator, piece in zip(tokens[1::2], tokens[2::2]):
            if VERB.search(current) and VERB.search(piece) and not CONTINUATION.match(piece):
                clauses.append(current)
                current = piece
            else:
                current = current + separator + piece
        clauses.append(current)
    return [c.strip() for c in clauses if c.strip()]


# ============================================================================================
# Mentions, negation and context
# ============================================================================================


def is_negated(clause: str, start: int) -> bool:
    """Whether the mention starting at ``clause[start]`` is governed by a negation cue of its clause.

    The post-negation search starts at the mention itself, not after it: a term that spans words
    ("effusion ... hemithorax") may already cover the negated verb.
    """
    if PRE_NEGATION.search(clause, 0, start):
        return True
    after = clause[start:]
    return bool(POST_NEGATION.search(after)) and not NOT_EXCLUDED.search(after)


def _in_lung_context(clause: str) -> bool:
    """False when the clause names another organ (liver, thyroid, ...) and nothing of the lung or pleura."""
    return not _OTHER_ORGAN_RX.search(clause) or bool(_LUNG_RX.search(clause))


def _names_thoracic_artery(clause: str) -> bool:
    """Whether atherosclerosis in this clause is in the thoracic aorta or its branches.

    A clause naming no vessel at all ("Atherosclerotic changes.") counts; plaques of the coronary
    arteries only, of the abdominal aorta/iliac arteries only, or of the pleura do not.
    """
    rest = _ABDOMINAL_VESSEL_RX.sub(" ", _CORONARY_VESSEL_RX.sub(" ", clause))
    return bool(_THORACIC_VESSEL_RX.search(rest)) or not _OTHER_PLAQUE_SITE_RX.search(clause)


def _clause_mentions(clause: str, label: str) -> list[Mention]:
    """Mentions of one label in one clause, after the context rules of that label."""
    if not _ANY_TERM[label].search(clause):  # the common case; all else is only paid for when a term matched
        return []
    found = [(term, m) for term in _TERMS[label] for m in term.pattern.finditer(clause)]
    requirement = _REQUIREMENTS.get(label)
    if requirement is not None and not requirement.search(clause):
        return []
    if any(x.search(clause) for x in _EXCLUSIONS.get(label, ())):
        return []
    if label in LUNG_ONLY_LABELS and not _in_lung_context(clause):
        return []
    if label == "Arterial wall calcification" and not _names_thoracic_artery(clause):
        return []
    matches = [m for term, m in found if not (term.veto and term.veto.search(clause))]
    uncertain = bool(UNCERTAINTY.search(clause))
    return [Mention(label, m.group(0), clause, is_negated(clause, m.start()), uncertain) for m in matches]


def _check_labels(labels: Iterable[str]) -> tuple[str, ...]:
    labels = tuple(labels)
    unknown = [label for label in labels if label not in LABEL_TERMS]
    if unknown:
        known = ", ".join(LABEL_TERMS)
        raise ValueError(f"unknown label(s) {unknown}; expected one of: {known}")
    return labels


def find_mentions(text: str, labels: Iterable[str] = CTRATE_LABELS) -> list[Mention]:
    """All mentions of the given labels in a report, clause by clause: the evidence for each label."""
    labels = _check_labels(labels)
    clauses = [c for s in split_sentences(text) for c in split_clauses(s)]
    return [m for clause in clauses for label in labels for m in _clause_mentions(clause, label)]


def text_has_label(text: str, label: str) -> bool:
    """Whether the report asserts the finding ``label`` anywhere, not negated.

    ``label`` is a CTRATE_LABELS name or one of EXTRA_LABEL_TERMS ("Lung mass", "Lytic bone lesion").
    """
    return any(not m.negated for m in find_mentions(text, (label,)))


def extract_labels(text: str) -> dict[str, int]:
    """0/1 for each of the 18 CT-RATE labels, in CTRATE_LABELS order."""
    positive = {m.label for m in find_mentions(text) if not m.negated}
    return {label: int(label in positive) for label in CTRATE_LABELS}


def extract_label_table(texts: Iterable[str]) -> pd.DataFrame:
    """One row per report, one 0/1 int column per CT-RATE label (named exactly as in CT-RATE's files).

    Missing texts (None/NaN) give all-zero rows, so the table stays aligned with its input.
    """
    rows = [extract_labels("" if t is None or (isinstance(t, float) and np.isnan(t)) else str(t)) for t in texts]
    return pd.DataFrame(rows, columns=list(CTRATE_LABELS), dtype=int)


def label_reports_csv(reports: Path, text_column: str, out: Path) -> int:
    """``ctsurv labels``: write ``out`` = the table ``reports`` plus one 0/1 column per CT-RATE label.

    Returns the number of reports. Raises CtsurvError (a one-line message in the CLI) when ``out`` is
    ``reports`` or a folder, or when the table cannot be read, lacks ``text_column``, or already has columns
    named like the labels (they would be overwritten, e.g. manual labels). ``out`` is written whole or not at all.
    """
    check_output_file(out, [reports])
    if not reports.is_file():
        raise CtsurvError(f"reports table not found: {reports}; pass a CSV file with one report per row")
    try:
        table = pd.read_csv(reports)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise CtsurvError(f"cannot read {reports} as a CSV table: {e}") from None
    if text_column not in table.columns:
        raise CtsurvError(
            f"{reports} has no column {text_column!r}; its columns are {list(table.columns)} (use --text-column)"
        )
    clash = [label for label in CTRATE_LABELS if label in table.columns]
    if clash:
        raise CtsurvError(f"{reports} already has label columns {clash}; drop or rename them so they are not overwritten")
    labelled = pd.concat([table, extract_label_table(table[text_column]).set_index(table.index)], axis=1)
    with staged_file(out, [reports]) as tmp:
        labelled.to_csv(tmp, index=False)
    return len(labelled)


# ============================================================================================
# Evaluation against manual labels
# ============================================================================================


def split_dev_test(labels: pd.DataFrame, test_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed development / held-out split of a labelled report table (positional row indices).

    Stratified by each report's rarest positive label (reports with none form one stratum), so that
    every label, rare ones included, appears in both parts in about the same proportion. The rules of
    this module were written from the development part only; the held-out part measures them.
    """
    missing = [label for label in CTRATE_LABELS if label not in labels.columns]
    if missing:
        raise ValueError(f"label table lacks columns {missing}; expected the 18 CTRATE_LABELS columns")
    y = labels.loc[:, list(CTRATE_LABELS)].to_numpy()
    prevalence = y.mean(axis=0)
    strata = np.where(y.any(axis=1), np.argmin(np.where(y == 1, prevalence, np.inf), axis=1), -1)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        rng.shuffle(members)
        test[members[: round(len(members) * test_fraction)]] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


def label_scores(truth: pd.DataFrame, predicted: pd.DataFrame) -> pd.DataFrame:
    """Per-label precision, recall, F1 and support (positives in ``truth``); rows in CTRATE_LABELS order.

    The macro-F1 is ``label_scores(...)["f1"].mean()``. A label with no true and no predicted positive
    scores F1 = 1 (nothing to find, nothing wrongly found).
    """
    rows = {}
    for label in CTRATE_LABELS:
        t = truth[label].to_numpy().astype(bool)
        p = predicted[label].to_numpy().astype(bool)
        tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
        rows[label] = {
            "precision": tp / (tp + fp) if tp + fp else 1.0,
            "recall": tp / (tp + fn) if tp + fn else 1.0,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
            "support": int(t.sum()),
        }
    return pd.DataFrame.from_dict(rows, orient="index")

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

from ctsurv.data.findings import CTRATE_LABELS
from ctsurv.errors import CtsurvError

# ============================================================================================
# Vocabulary (regular expressions, matched case-insensitively within one clause)
# ============================================================================================

# A nodule/density/effusion clause that names another organ and none of these lung words is not a lung finding.
_LUNG = (
    r"lung|pulmon|fissur|pleur|lingul|(?:upper|middle|lower)[- ]lobes?\b|hemithora|apex|apices|apical|bronch|"
    r"subsegment|posterobasal|laterobasal|mediobasal|apicoposterior"
)
_OTHER_ORGAN = (
    r"liver|hepat|kidney|renal|adrenal|thyroid|spleen|splen|pancrea|breast|mammar|bone|vertebra|\bribs?\b|sternum|"
    r"skin|subcutan|cutaneous|gallbladder|stomach|gastric|esophag|bowel|colon|uter|ovar|prostat|bladder|muscle|"
    r"axilla|peritone|mesenter|abdominal wall|omentum|choledoch|bile|perinephr|perirenal|pericardi|pelvi|joint|mediastin|"
    r"coronar|aort|valv"
)

LABEL_TERMS: dict[str, tuple[str, ...]] = {
    "Medical material": (
        r"catheter", r"\bports?\b", r"pacemaker", r"defibrillator", r"\bA?ICD\b", r"electrode", r"\bstent(?:s|ing)?\b",
        r"prosthe(?:sis|ses|tic)", r"valve replacement", r"sternotomy", r"sternal (?:wire|suture)",
        r"sutur(?:e|al) (?:material|line)", r"(?:metallic|surgical) sutur", r"\bclips?\b", r"staple",
        r"(?:nasogastric|orogastric|endotracheal|tracheostomy|chest|thorax|thoracostomy|drainage|feeding|gastrostomy) tube",
        r"\b(?:ET|NG|OG) tube", r"tracheostomy", r"\bcannula", r"\bdrain\b", r"\bcoils?\b", r"embolization material",
        r"(?:metallic|surgical|fixation) (?:material|plate)", r"(?:breast|silicone) implant", r"fixator", r"\bscrews?\b",
        r"\bPEG\b", r"\bCVC\b", r"\bPICC\b", r"central (?:venous )?line", r"hardware", r"\bwires?\b", r"foreign body",
        r"metallic (?:density|densities|artifact)",
    ),
    "Arterial wall calcification": (
        r"atheroma", r"atherosclero", r"atheromatous", r"calcific plaque", r"calcified plaque", r"\bplaques?\b",
        r"(?:aort\w*|arter\w*|vascular) (?:wall )?calcification", r"wall calcification", r"calcifications?\b",
    ),
    "Cardiomegaly": (
        r"cardiome[a-z]*",
        (
            r"heart (?:size|sizes|dimensions?|volume)?\s*(?:(?:is|are|was|were|has|have)\s+)?(?:been\s+)?"
            r"(?:slightly |mildly |minimally |significantly |markedly )?(?:increased|enlarged|larger|large)"
        ),
        r"(?:increase|enlargement) (?:in|of) (?:the )?(?:heart|cardiac) (?:size|dimension)", r"enlarged heart",
        r"cardiac enlargement", r"enlarge\w* (?:of )?(?:the )?cardiac silhouette", r"cardiac silhouette is enlarged",
        r"cardiothora\w* (?:index|ratio)[^.]{0,40}increas", r"increas\w* (?:in )?(?:the )?cardiothora\w*",
        r"\bCTR\b[^.]{0,30}increas", r"increas\w* (?:in )?(?:the )?CTR\b",
    ),
    "Pericardial effusion": (
        r"pericardi\w*(?: [\w-]+){0,2} (?:effusion|fluid)", r"(?:effusion|fluid)[^.;]{0,70}pericardi", r"hemopericardium",
    ),
    # counts only in a clause that also has a calcification/atherosclerosis word (CLAUSE_REQUIREMENTS)
    "Coronary artery wall calcification": (r"coronar", r"\bLAD\b", r"circumflex", r"anterior descending"),
    "Hiatal hernia": (
        r"hiat\w* hernia", r"hernia[^.;]{0,30}hiatus", r"paraesophageal hernia", r"herniated stomach",
        r"(?:diaphragmatic|sliding) hernia[^.;]{0,90}(?:esophag|gastric|hiat)", r"hernia[^.;]{0,40}esophagogastric",
        r"sliding(?:[- ]type)? (?:\w+ )?hernia",
    ),
    "Lymphadenopathy": (r"lymph ?nodes?(?! stations?)", r"lymphadenopath", r"\bLAPs?\b", r"\badenopath", r"lymph nodular"),
    "Emphysema": (r"emphysem", r"\bbullae?\b", r"\bbullous", r"\bblebs?\b"),
    "Atelectasis": (r"(?<!fibro)(?<!fibro-)(?<!fibro )atelecta", r"\bcollaps"),
    "Lung nodule": (
        r"nodul", r"micronod", r"granuloma", r"(?:intrapulmonary|intraparenchymal|subpleural|fissural|perifissural) lymph node",
    ),
    "Lung opacity": (
        r"(?:ground|frosted)[- ]?glass", r"opacit", r"density increase", r"increases? (?:in )?(?:the )?density",
        r"increased density", r"\bdensities\b", r"infiltrat",
    ),
    "Pulmonary fibrotic sequela": (
        r"sequel", r"fibro(?!id|adenom|ma\b|lipom|cystic)", r"fibrous", r"parenchymal band", r"pleuro-?parenchymal",
        r"\bscar", r"cicatri",
    ),
    "Pleural effusion": (
        r"pleural\W+(?:\w+\W+){0,2}effusion", r"(?<!pericardial )(?<!pericardial, )effusion[^.;]{0,70}(?:pleura|hemithora)",
        r"hydro-?p?n?\w*thorax", r"hemothorax", r"empyema", r"pleural fluid", r"fluid[^.;]{0,30}pleural (?:space|cavity)",
        r"(?:bilateral|right|left|minimal|mild|small) effusion",
    ),
    "Mosaic attenuation pattern": (r"mosaic",),
    "Peribronchial thickening": (
        r"peribronch\w*(?: \w+){0,4} thick", r"thicken\w* of the peribronch", r"peribronch\w* (?:sheath|cuffing)",
        r"peribronch\w* (?:\w+ )?(?:thickness|wall)", r"bronchial wall thicken", r"thickening of the bronchial wall",
    ),
    "Consolidation": (r"consolidat",),
    "Bronchiectasis": (r"bronchiect", r"bronchiolect", r"bronch\w* ectasi", r"ectasi\w*(?: \w+){0,4} bronch"),
    "Interlobular septal thickening": (
        r"septal (?:\w+ )?thicken", r"septal (?:\w+ )?thickness", r"interlob\w* sept\w*(?: \w+){0,3} (?:thick|clarif|prominen)",
        r"(?:thicken|prominen)\w*(?: [\w-]+){0,5} interlob\w* sept",
    ),
}

# Findings outside the 18 CT-RATE labels that our synthetic cohort also has; available through
# ``find_mentions`` / ``text_has_label`` but not part of ``extract_labels``.
EXTRA_LABEL_TERMS: dict[str, tuple[str, ...]] = {
    "Lung mass": (r"\bmass(?:es)?\b",),
    "Lytic bone lesion": (r"\blytic", r"osteoly"),
}
LABEL_TERMS.update(EXTRA_LABEL_TERMS)

# A term that does not count when its clause matches the veto: label -> {term: veto}.
# A "sequela density increase" is a fibrotic sequela, not an opacity; a "ground-glass nodule" is a nodule;
# "nodular consolidation" is a consolidation, not a nodule.
_QUALIFIED_DENSITY = (
    r"fibro|pleur\w*-?parenchymal|pleural parenchymal|\bband|consolidat|\bbud|tree|soft tissue|thym|gynecomast|"
    r"suture|calcif|scar|emphysem|bulla|free air|fatty|fat\b"
)
TERM_VETOES: dict[str, dict[str, str]] = {
    "Lung mass": {r"\bmass(?:es)?\b": r"mass effect|mass configuration|mass-like|mass lesion-active|space-occupying"},
    "Lymphadenopathy": {r"lymph ?nodes?(?! stations?)": r"normal[- ](?:size|sized)|normal in size|within normal"},
    "Consolidation": {r"consolidat": r"(?:ground|frosted)[- ]glass (?:\w+ )?consolidat"},
    "Atelectasis": {r"\bcollaps": r"^(?!.*(?:lung|lobe|lobar|segment|lingul))|vertebra|fracture"},
    "Lung nodule": {
        r"nodul": r"nodul\w* (?:ground|frosted|consolidat|infiltrat|densit|opacit|thicken|calcif|goiter|formation)"
        r"|nodular (?:\w+ )?(?:density|ground|consolidat|pleural)|multinodular|reticulonodul|hypodense|\bpleural nodul"
        r"|nodul\w* (?:\w+ ){0,3}in the pleura|patchy-nodular",
    },
    "Arterial wall calcification": {r"calcifications?\b": r"^(?!.*(?:aort|arter|arch\b|carotid))"},
    "Lung opacity": {
        r"(?:ground|frosted)[- ]?glass": r"(?:ground|frosted)[- ]?glass(?:[- ]density)? nodul",
        r"density increase": _QUALIFIED_DENSITY,
        r"increases? (?:in )?(?:the )?density": _QUALIFIED_DENSITY,
        r"increased density": _QUALIFIED_DENSITY,
        r"\bdensities\b": _QUALIFIED_DENSITY + r"|parenchyma densities|ground|frosted",
        r"infiltrat": r"pneumoni|leukemic|metasta|\bactive infiltrat|nodular infiltrat|mass|tumou?r|kidney|invasion",
    },
}

# A label's mentions do not count when the clause matches one of these.
LABEL_EXCLUSIONS: dict[str, tuple[str, ...]] = {
    # an intrapulmonary lymph node is a lung nodule, not lymphadenopathy
    "Lymphadenopathy": (r"(?:intrapulmonary|intraparenchymal|subpleural|fissur\w*|perifissural) lymph node", r"lymph node[^.;]{0,20}fissur"),
}

# A label's mentions count only when the clause also matches this.
CLAUSE_REQUIREMENTS: dict[str, str] = {
    "Coronary artery wall calcification": r"calcif|atheroma|atherosclero|atheromatous|plaque",
}

# Labels whose mentions count only in a lung context (dropped when the clause names another organ only).
LUNG_ONLY_LABELS: frozenset[str] = frozenset(
    {"Lung nodule", "Lung mass", "Lung opacity", "Pulmonary fibrotic sequela", "Consolidation", "Pleural effusion"}
)

# Vessels for "Arterial wall calcification" (thoracic aorta and branches; not coronary, not abdominal).
_CORONARY_VESSEL = (
    r"(?:coronary|left anterior descending|circumflex|\bLAD\b)(?: arter(?:y|ies)| vascular structures?| vessels?)?(?: walls?)?"
    r"|(?:aortic|mitral|cardiac|heart|prosthetic) valves?|valvular|annul\w*"  # valves are not arterial walls either
)
_ABDOMINAL_VESSEL = r"(?<!thoraco)(?:abdominal|infrarenal) aort\w*|iliac arter\w*|iliac\b|renal arter\w*|celiac|mesenteric arter\w*"
_THORACIC_VESSEL = r"aort|arch|carotid|subclavian|brachiocephalic|innominate|vascular (?:structures|walls?)|arter|vessel"
_OTHER_PLAQUE_SITE = r"coronar|\bLAD\b|circumflex|anterior descending|valv|annul|" + _ABDOMINAL_VESSEL + r"|pleura"

# ============================================================================================
# Negation, uncertainty and clause cues
# ============================================================================================

_NEG_VERB = (
    r"(?:detected|observed|seen|found|identified|present|visuali[sz]ed|visible|noted|determined|encountered|distinguished|"
    r"appreciated|demonstrated|evident|apparent|monitored|considered|selected|described|reported|recognized|followed)"
)
# A cue before the mention negates everything after it in the clause ("no change/difference" is not a negation).
PRE_NEGATION = re.compile(
    r"\bno\b(?!\s+(?:significant\s+|marked\s+|obvious\s+|interval\s+|appreciable\s+)?"
    r"(?:change|difference|progression|regression|growth|increase in (?:size|number))\b)"
    r"|\bnot? any\b|\bwithout\b|\bresolution of\b|\bnon-?enlarged\b|\bfree of\b|\babsence of\b|\bnegative for\b"
    r"|\bneither\b|\bnor\b|\bthere is not\b",
    re.IGNORECASE,
)
# A negated verb after the mention negates the mention ("was not detected", "has resolved", ": none").
POST_NEGATION = re.compile(
    rf"\b(?:not|nor)\s+(?:been\s+|be\s+)?(?:clearly\s+|significantly\s+|obviously\s+)?{_NEG_VERB}\b"
    r"(?!\s+(?:in|on)\s+the\s+(?:previous|prior|former|old|last)\b)"  # "not seen on the prior study": new, not absent
    r"|\b(?:is|are|was|were)\s+not\s+(?:pathologically\s+|significantly\s+)?enlarged\b"
    r"|:\s*(?:none|absent|negative|no|nil)\b|\bruled out\b|\bexcluded\b|\bno longer\b|\bdisappeared\b|\bresolved\b"
    r"|\b(?:completely|totally|fully) regressed\b|\b(?:full|complete|total) regression\b|\babsent\b"
    r"|\b(?:was|were|has been|have been) removed\b",
    re.IGNORECASE,
)
# "cannot be excluded" raises a finding rather than denying it.
_NOT_EXCLUDED = re.compile(r"(?:cannot|can not|could not|can't) be (?:excluded|ruled out)", re.IGNORECASE)
UNCERTAINTY = re.compile(
    r"\?|\bpossib|\bprobab|\bsuspicio|\blikely\b|\bmay (?:be|belong|represent)|\bcannot be (?:excluded|ruled out)"
    r"|\bdifferential\b|\bquestionable\b|\bconsistent with\b|\bin favou?r of\b",
    re.IGNORECASE,
)

_VERB = re.compile(
    r"\b(?:is|are|was|were|has|have|had|been|be|there|observed|detected|seen|noted|found|present|extends?|ends?"
    r"|terminates?|contains?|shows?|measur(?:es|ed))\b",
    re.IGNORECASE,
)
# A piece starting with these continues the clause before it ("A nodule, which was seen before, ...").
_CONTINUATION = re.compile(
    r"^\s*(?:is|are|was|were|has|have|had|which|that|who|where|in which|measuring|reaching|respectively|the largest|largest)\b",
    re.IGNORECASE,
)
_HARD_BREAK = re.compile(
    r";|\bbut\b|\bhowever\b|\bwhereas\b|\bwhile\b|\balthough\b|\bapart from (?:this|these|that)\b"
    r"|\bother than (?:this|these)\b|\bexcept for\b|\bin addition\b|\bbesides\b",
    re.IGNORECASE,
)
_SOFT_BREAK = re.compile(
    r"(:\s*|,\s*and\s+|,\s*|\s+and\s+(?=there|no\b|[a-z ]{0,40}\b(?:is|are|was|were)\b))", re.IGNORECASE
)
# sentence ends: ". " before a non-lowercase character (not "2.3 mm"), bullets, quotes, line breaks
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[^a-z])|(?<=[.])(?=[A-Z][a-z])|\s*[\"“”•·\n]+\s*")


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


@dataclass(frozen=True)
class _Term:
    pattern: re.Pattern[str]
    veto: re.Pattern[str] | None


# The vocabulary above, compiled once (a report has ~40 clauses x 18 labels).
_TERMS: dict[str, tuple[_Term, ...]] = {
    label: tuple(
        _Term(_rx(t), _rx(TERM_VETOES[label][t]) if t in TERM_VETOES.get(label, {}) else None) for t in terms
    )
    for label, terms in LABEL_TERMS.items()
}
_ANY_TERM = {label: _rx("|".join(f"(?:{t})" for t in terms)) for label, terms in LABEL_TERMS.items()}  # fast pre-check
_EXCLUSIONS = {label: tuple(_rx(x) for x in xs) for label, xs in LABEL_EXCLUSIONS.items()}
_REQUIREMENTS = {label: _rx(x) for label, x in CLAUSE_REQUIREMENTS.items()}
_LUNG_RX, _OTHER_ORGAN_RX = _rx(_LUNG), _rx(_OTHER_ORGAN)
_CORONARY_VESSEL_RX, _ABDOMINAL_VESSEL_RX = _rx(_CORONARY_VESSEL), _rx(_ABDOMINAL_VESSEL)
_THORACIC_VESSEL_RX, _OTHER_PLAQUE_SITE_RX = _rx(_THORACIC_VESSEL), _rx(_OTHER_PLAQUE_SITE)


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
    return [p.strip() for p in _SENTENCE_BREAK.split(text or "") if p and p.strip(" .")]


def split_clauses(sentence: str) -> list[str]:
    """Split a sentence into clauses that each carry their own negation scope.

    Contrast words always split. Commas, colons and "and" split only when the text before them already
    has a verb and the text after has its own verb and is not the continuation of the same clause
    ("..., which was observed"). So "No pleural effusion, pneumothorax or nodule was seen" stays one
    clause, and "Nodules are seen, no effusion is present" becomes two.
    """
    clauses: list[str] = []
    for part in _HARD_BREAK.split(sentence):
        tokens = _SOFT_BREAK.split(part)  # [piece, separator, piece, separator, ..., piece]
        current = tokens[0]
        for separator, piece in zip(tokens[1::2], tokens[2::2]):
            if _VERB.search(current) and _VERB.search(piece) and not _CONTINUATION.match(piece):
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
    return bool(POST_NEGATION.search(after)) and not _NOT_EXCLUDED.search(after)


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

    Returns the number of reports. Raises CtsurvError (a one-line message in the CLI) when the table
    cannot be read, lacks ``text_column``, or already has columns named like the labels (they would be
    overwritten, e.g. manual labels).
    """
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
    out.parent.mkdir(parents=True, exist_ok=True)
    labelled.to_csv(out, index=False)
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

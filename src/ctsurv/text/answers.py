"""Answers to the predefined questions, read from report text (and read back from what a model writes).

How a size, lobe or side is tied to the right finding: ``split_sentences`` / ``split_clauses`` and
``find_mentions`` of :mod:`ctsurv.text.labels` give every finding word of a sentence (an
*anchor*) with its negation; other measurable things (cysts, the aorta, a gland, ...) are anchors too.
Each anchor owns the text from itself to the next anchor, plus the words just before it that modify
it ("a 12 mm parenchymal nodule", "right-sided pleural effusion"); the first anchor of a clause also owns
the clause's start ("In the right upper lobe, a nodule ..."), and a clause without anchors belongs to the
anchor before it ("...; the others measure 9 mm in the left lower lobe"). Sizes, lobes and sides are
read only from the text owned by a mention that is not negated, so "no nodule; a 12 mm lymph node" gives
the nodule no size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ctsurv.text.findings import LOBE_NAMES, Findings
from ctsurv.text.labels import (
    EXTRA_LABEL_TERMS,
    LABEL_TERMS,
    extract_labels,
    find_mentions,
    split_clauses,
    split_sentences,
    text_has_label,
)
from ctsurv.text.questions import (
    GRADES,
    NO,
    NORMAL_IMPRESSION,
    NOT_APPLICABLE,
    NOT_STATED,
    QUESTIONS,
    SHORT_AXIS_LABELS,
    YES,
    Question,
    Value,
    format_location,
    format_mm,
)
from ctsurv.text.readers import NUMBER, grade, locations, measurements, sides

# Measurable things that are none of the labels: they own the sizes said of them, so a liver cyst's or the
# aorta's diameter is never a nodule's. ("aortopulmonary window" is a lymph node station, not the aorta.)
_OTHER = re.compile(
    r"\b(?:cysts?|cystic|lesions?|hemangioma\w*|adenoma\w*|aneurysm\w*|aort(?!o|ico)\w*|pulmonary (?:artery|trunk)|"
    r"trachea\w*|esophag\w*|thyroid|liver|hepatic|kidneys?|renal|adrenal|spleen|splenic|gland|stones?|calcul\w*|"
    r"thick(?:ness|ening))\b",
    re.IGNORECASE,
)
# Words that end the run of modifiers in front of a finding ("in", "and", a verb): "a 12 mm nodule" owns "12 mm".
_STOP = frozenset(re.findall(r"\w+", """a an the and or with in of on at to from by for is are was were be been
    has have had there which that no not measuring measures measured observed detected seen noted largest than"""))
_MAX_MODIFIERS = 6

# ------------------------------ Anchors: finding words of a sentence and the text each one owns


@dataclass
class _Anchor:
    start: int  # in the sentence
    word_end: int
    negated: dict[str, bool]  # label -> negated; empty for a measurable thing that is no label
    region: tuple[int, int] = (0, 0)


def _modifier_start(sentence: str, boundary: int, start: int) -> int:
    """Start of the run of modifier words just before ``start`` (not before ``boundary``): "a [12 mm solid] nodule"."""
    begin = start
    tokens = list(re.finditer(r"\S+", sentence[boundary:start]))
    for i in range(len(tokens) - 1, max(-1, len(tokens) - 1 - _MAX_MODIFIERS), -1):
        word = tokens[i].group(0)
        follows = tokens[i + 1].group(0).lower() if i + 1 < len(tokens) else ""
        if re.search(r"[,;:()\[\]]", word) or (word.lower() in _STOP and not (word.lower() == "in" and
                                                                                follows in ("diameter", "size"))):
            break
        begin = boundary + tokens[i].start()
    return begin


def _clause_anchors(clause: str, offset: int) -> list[_Anchor]:
    """Anchors of one clause: each mention of the 20 labels (with its negation) and each other measurable thing."""
    anchors: list[_Anchor] = []
    cursor: dict[tuple[str, str], int] = {}
    for m in find_mentions(clause, LABEL_TERMS):
        at = clause.find(m.term, cursor.get((m.label, m.term), 0))
        if at < 0:
            continue
        cursor[(m.label, m.term)] = at + 1
        word = re.match(r"[\w-]*", clause[at:])
        anchors.append(_Anchor(offset + at, offset + at + max(1, word.end() if word else 1), {m.label: m.negated}))
    anchors += [_Anchor(offset + o.start(), offset + o.end(), {}) for o in _OTHER.finditer(clause)]
    return sorted(anchors, key=lambda a: a.start)


def _sentence_anchors(sentence: str) -> list[_Anchor]:
    """The anchors of a sentence, merged where they name one thing, each with the region of text it owns."""
    merged: list[_Anchor] = []
    cursor = 0
    for clause in split_clauses(sentence):
        c0 = sentence.find(clause, cursor)
        c0 = cursor if c0 < 0 else c0
        cursor = c0 + len(clause)
        first_in_clause = True
        for a in _clause_anchors(clause, c0):
            boundary = max(c0, merged[-1].word_end) if merged and not first_in_clause else c0
            if merged and not first_in_clause and (
                a.start < merged[-1].word_end or _modifier_start(sentence, c0, a.start) <= merged[-1].start
            ):  # one noun phrase ("mass lesion", "lytic-destructive lesion"): one anchor
                prev = merged[-1]
                for label, neg in a.negated.items():  # negated only if every mention of it here is
                    prev.negated[label] = prev.negated[label] and neg if label in prev.negated else neg
                prev.word_end = max(prev.word_end, a.word_end)
                continue
            begin = (0 if not merged else c0) if first_in_clause else _modifier_start(sentence, boundary, a.start)
            a.region = (begin, len(sentence))
            if merged:
                merged[-1].region = (merged[-1].region[0], begin)
            merged.append(a)
            first_in_clause = False
    return merged


@dataclass(frozen=True)
class Evidence:
    """Text that a positive (not negated) mention of a label owns: ``sentence[start:end]`` for its sizes.

    Its place (lobes, side) is read up to ``place_end``: past the measurable things that are no finding, so in
    "a nodule adjacent to the aortic arch in the left upper lobe" the lobe is the nodule's, the aorta has none.
    """

    sentence: str
    start: int
    end: int
    place_end: int

    @property
    def text(self) -> str:
        return self.sentence[self.start : self.end]

    @property
    def place(self) -> str:
        return self.sentence[self.start : self.place_end]


def find_evidence(text: str) -> dict[str, list[Evidence]]:
    """For each label with a positive mention in ``text``, the regions of text its mentions own."""
    out: dict[str, list[Evidence]] = {}
    for sentence in split_sentences(text):
        anchors = _sentence_anchors(sentence)
        for i, a in enumerate(anchors):
            following = [b for b in anchors[i + 1 :] if b.negated]  # the next finding (not measurable thing)
            place_end = following[0].region[0] if following else len(sentence)
            for label, negated in a.negated.items():
                if not negated:
                    out.setdefault(label, []).append(Evidence(sentence, *a.region, place_end))
    return out


# ------------------------------ Answers


def _derived_impression(text: str, evidence: dict[str, list[Evidence]]) -> str:
    """The sentences of ``text`` that assert a finding of the 20 labels (``evidence`` of ``text``), in order;
    a normal line when none does."""
    positive = {e.sentence for found in evidence.values() for e in found}
    lines = [s if s.endswith((".", "!", "?")) else s + "." for s in split_sentences(text) if s in positive]
    return " ".join(lines) if lines else NORMAL_IMPRESSION


def _detail(q: Question, evidence: list[Evidence]) -> str:
    """Answer to a size/grade/location/side question from the evidence of its (present) finding."""
    if q.kind == "size":
        sizes = [s for e in evidence for s in measurements(e.sentence, e.start, e.end, q.label in SHORT_AXIS_LABELS)]
        return format_mm(max(sizes)) if sizes else NOT_STATED
    if q.kind == "location":
        codes = frozenset().union(*(locations(e.sentence, e.start, e.place_end) for e in evidence))
        lobes = {c for c in codes if c in LOBE_NAMES}  # a lung named elsewhere adds nothing to a lobe on its side
        lungs = {c for c in codes if c not in LOBE_NAMES and c[0].upper() not in {lobe[0] for lobe in lobes}}
        codes = frozenset(lobes | lungs)
        return format_location(codes) if codes else NOT_STATED
    if q.kind == "side":
        found = {s for e in evidence if (s := sides(e.place))}
        side = "bilateral" if "bilateral" in found or len(found) > 1 else (found.pop() if found else None)
        return side.capitalize() + "." if side else NOT_STATED
    found = [g for e in evidence if (g := grade(e.text))]
    return max(found, key=GRADES.index).capitalize() + "." if found else NOT_STATED


def answers_from_report(findings_text: str, impression_text: str | None = None) -> dict[str, str]:
    """The canonical answer to every question of QUESTIONS (by key) for one report.

    Presence and details are read from the findings and the impression together (a real report may state a
    size in one and a side in the other); the presence answers are exactly ``extract_labels`` (and
    ``text_has_label`` for "Lung mass" and "Lytic bone lesion") on that text.
    """
    findings_text, impression = (findings_text or "").strip(), (impression_text or "").strip()
    text = "\n".join(p for p in (findings_text, impression) if p)
    present = {label: bool(v) for label, v in extract_labels(text).items()}
    present |= {label: text_has_label(text, label) for label in EXTRA_LABEL_TERMS}
    evidence = find_evidence(text)
    answers: dict[str, str] = {}
    for q in QUESTIONS:
        if q.kind == "presence":
            answers[q.key] = YES if present[q.label] else NO
        elif q.kind == "impression":
            answers[q.key] = impression or _derived_impression(findings_text, evidence)  # text == findings_text
        elif q.kind == "report":
            answers[q.key] = findings_text
        else:
            answers[q.key] = _detail(q, evidence.get(q.label, [])) if present[q.label] else NOT_APPLICABLE
    return answers


def instruction_pairs(findings_text: str, impression_text: str | None = None) -> list[tuple[Question, str]]:
    """(question, answer) for every question, in QUESTIONS order: one study's instruction-tuning examples.

    The report question is left out when there is no findings text (a dataset of impressions only).
    """
    answers = answers_from_report(findings_text, impression_text)
    return [(q, answers[q.key]) for q in QUESTIONS if answers[q.key]]


# ------------------------------ Reading answers back (scoring the model), and the synthetic truth in the same form

_YES = re.compile(r"^\W*(?:yes|yeah|true|present|positive)\b", re.IGNORECASE)
_NO = re.compile(r"^\W*(?:no|none|false|absent|negative|not (?:present|seen|detected))\b", re.IGNORECASE)
_NOT_GIVEN = re.compile(r"not (?:applicable|stated|available|mentioned|reported|measured)|\bn/?a\b|unknown",
                        re.IGNORECASE)


def parse_answer(question: Question, text: str) -> Value:
    """The comparable value of an answer (canonical or generated): presence -> bool; size -> mm (float);
    grade -> 'small'/'moderate'/'large'; location -> frozenset of LOCATIONS codes; side ->
    'right'/'left'/'bilateral'; impression/report -> the text with whitespace collapsed. None (an empty
    set for location) when the answer is "Not applicable.", "Not stated." or cannot be read.
    """
    text = " ".join((text or "").split())
    if question.kind in ("impression", "report"):
        return text
    if question.kind == "presence":  # "Yes."/"No." first; else "There is no ..." before "There is ..."
        if _YES.match(text):
            return True
        if _NO.match(text) or re.search(r"\b(?:no|not|absent|negative|without)\b", text, re.IGNORECASE):
            return False
        return True if re.search(r"^there (?:is|are)\b|\b(?:present|seen|observed)\b", text, re.IGNORECASE) else None
    if _NOT_GIVEN.search(text) or _NO.search(text):
        return frozenset() if question.kind == "location" else None
    if question.kind == "size":
        sizes = measurements(text, short_axis=question.label in SHORT_AXIS_LABELS)
        if not sizes and (bare := re.search(NUMBER, text)):
            sizes = [float(bare.group(0))]  # "12": millimetres, as asked
        return max(sizes) if sizes else None
    if question.kind == "grade":
        return grade(text)
    if question.kind == "side":
        return sides(text)
    return locations(text)


def values_from_findings(findings: Findings) -> dict[str, Value]:
    """What each answer should say, read from a synthetic patient's ground truth (evaluation only: training
    answers always come from the report text). Impression and report have no truth value (None)."""
    f, labels = findings, findings.labels()
    nodules = [n for n in f.nodules if not n.is_mass]
    masses = [n for n in f.nodules if n.is_mass]
    e = f.pleural_effusion
    values: dict[str, Value] = {q.key: bool(labels.get(q.label, 0)) for q in QUESTIONS if q.kind == "presence"}
    values |= {
        "lung_nodule_size": max((n.diameter_mm for n in nodules), default=None),
        "lung_nodule_location": frozenset(n.lobe for n in nodules),
        "lung_mass_size": max((n.diameter_mm for n in masses), default=None),
        "lung_mass_location": frozenset(n.lobe for n in masses),
        "consolidation_location": frozenset(f.consolidation),
        "pleural_effusion_side": e.side if e else None,
        "pleural_effusion_size": e.size if e else None,
        "lymphadenopathy_size": max((n.short_axis_mm for n in f.lymph_nodes), default=None),
        "impression": None,
        "report": None,
    }
    return values


def values_agree(question: Question, value: Value, reference: Value, tolerance_mm: float = 1.0) -> bool:
    """Whether two parsed answers agree: sizes within ``tolerance_mm`` (reports round sizes down to whole mm),
    everything else exactly (locations as sets)."""
    if question.kind == "size" and isinstance(value, (int, float)) and isinstance(reference, (int, float)):
        return abs(value - reference) <= tolerance_mm
    return value == reference

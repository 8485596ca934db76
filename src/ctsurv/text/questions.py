"""The predefined clinical questions of instruction tuning, and their answers read from report text.

Stage 2 ("instruct") teaches the model to answer a fixed set of questions about a chest CT
(``QUESTIONS``); the survival stage later reads the model's answers to exactly these questions, so the
keys, the wording and the canonical answer forms are a contract. Answers are built from the report
text only (``answers_from_report``), never from a generator's ground truth, because a real user has a
CT and its report and nothing else.

Canonical answers, chosen to be short, learnable and easy to score (``parse_answer`` reads them back,
and tolerates the variations a model may generate):

* presence: ``"Yes."`` / ``"No."`` (exactly ``extract_labels`` / ``text_has_label`` on the report);
* size: ``"12 mm."`` (largest diameter of a nodule or mass, largest short axis of a lymph node);
* grade: ``"Small."`` / ``"Moderate."`` / ``"Large."`` (a pleural effusion's amount);
* location: ``"Right upper lobe and left lower lobe."``; ``"Right lung."`` / ``"Both lungs."`` when a
  report names the lung but no lobe;
* side: ``"Right."`` / ``"Left."`` / ``"Bilateral."``;
* any detail of an absent finding is ``"Not applicable."``; of a present finding whose report does not
  give it, ``"Not stated."``;
* impression: the report's impression; without one, the sentences of the findings that assert a
  positive finding (of the 20 labels), or ``"No significant abnormality."`` when there is none;
* report: the findings text.

How answers are read from a report: :mod:`ctsurv.text.answers`; sizes, lobes, sides and grades:
:mod:`ctsurv.text.readers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ctsurv.text.findings import LOBE_NAMES

Kind = Literal["presence", "size", "grade", "location", "side", "impression", "report"]
Value = bool | float | str | frozenset[str] | None  # what parse_answer returns, by kind


@dataclass(frozen=True)
class Question:
    """One predefined question: ``key`` is its stable id, ``text`` the exact words put to the model."""

    key: str
    text: str
    label: str | None  # the CT-RATE label (or "Lung mass" / "Lytic bone lesion") it is about
    kind: Kind


_PRESENCE: dict[str, str] = {  # label -> question, in CTRATE_LABELS order, then the two extra labels
    "Medical material": "Is there any medical material, such as a catheter, tube, stent or implant?",
    "Arterial wall calcification": "Is there arterial wall calcification?",
    "Cardiomegaly": "Is there cardiomegaly?",
    "Pericardial effusion": "Is there a pericardial effusion?",
    "Coronary artery wall calcification": "Is there coronary artery wall calcification?",
    "Hiatal hernia": "Is there a hiatal hernia?",
    "Lymphadenopathy": "Is there lymphadenopathy?",
    "Emphysema": "Is there emphysema?",
    "Atelectasis": "Is there atelectasis?",
    "Lung nodule": "Is there a lung nodule?",
    "Lung opacity": "Is there a lung opacity?",
    "Pulmonary fibrotic sequela": "Are there pulmonary fibrotic sequelae?",
    "Pleural effusion": "Is there a pleural effusion?",
    "Mosaic attenuation pattern": "Is there a mosaic attenuation pattern?",
    "Peribronchial thickening": "Is there peribronchial thickening?",
    "Consolidation": "Is there consolidation?",
    "Bronchiectasis": "Is there bronchiectasis?",
    "Interlobular septal thickening": "Is there interlobular septal thickening?",
    "Lung mass": "Is there a lung mass?",
    "Lytic bone lesion": "Is there a lytic bone lesion?",
}
QUESTIONS: tuple[Question, ...] = (
    *(Question(label.lower().replace(" ", "_"), text, label, "presence") for label, text in _PRESENCE.items()),
    Question("lung_nodule_size", "What is the diameter of the largest lung nodule, in mm?", "Lung nodule", "size"),
    Question("lung_nodule_location", "In which lobe or lobes are the lung nodules?", "Lung nodule", "location"),
    Question("lung_mass_size", "What is the diameter of the largest lung mass, in mm?", "Lung mass", "size"),
    Question("lung_mass_location", "In which lobe or lobes is the lung mass?", "Lung mass", "location"),
    Question("consolidation_location", "In which lobe or lobes is the consolidation?", "Consolidation", "location"),
    Question("pleural_effusion_side", "On which side is the pleural effusion?", "Pleural effusion", "side"),
    Question("pleural_effusion_size", "How large is the pleural effusion?", "Pleural effusion", "grade"),
    Question("lymphadenopathy_size", "What is the short axis of the largest enlarged lymph node, in mm?",
             "Lymphadenopathy", "size"),
    Question("impression", "What is the impression?", None, "impression"),
    Question("report", "Write the full report.", None, "report"),
)
QUESTION_BY_KEY: dict[str, Question] = {q.key: q for q in QUESTIONS}

YES, NO, NOT_APPLICABLE, NOT_STATED = "Yes.", "No.", "Not applicable.", "Not stated."
NORMAL_IMPRESSION = "No significant abnormality."
SHORT_AXIS_LABELS = frozenset({"Lymphadenopathy"})  # sizes are short axes (the smaller of "AxB"), not diameters
GRADES: tuple[str, ...] = ("small", "moderate", "large")
LOCATIONS: tuple[str, ...] = (*LOBE_NAMES, "right lung", "left lung")  # lobe codes, then lungs named without a lobe
REPORT_QUESTION = QUESTION_BY_KEY["report"].text  # stage 1 (align) captions a volume with its report
PRESENCE_QUESTIONS: list[str] = [q.text for q in QUESTIONS if q.kind == "presence"]
PRESENCE_LABELS: list[str] = [str(q.label) for q in QUESTIONS if q.kind == "presence"]  # what a findings token carries


def format_mm(mm: float) -> str:
    """'12 mm.' (one decimal at most): the canonical size answer."""
    return f"{round(mm, 1):g} mm."


def format_location(codes: frozenset[str]) -> str:
    """'Right upper lobe and left lower lobe.' / 'Both lungs.' from location codes (LOCATIONS order)."""
    names = [LOBE_NAMES.get(c, c) for c in LOCATIONS if c in codes]
    if "right lung" in names and "left lung" in names:
        names = [n for n in names if not n.endswith(" lung")] + ["both lungs"]
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return text[0].upper() + text[1:] + "."

"""Tests of the synthetic chest CT report writer.

What matters downstream: every positive finding is stated with its size and place, nothing absent
is ever asserted (the report-to-labels extractor must recover the truth), the phrasing varies,
and a report is a function of the findings and the generator state.
"""

from __future__ import annotations

import re
from typing import get_args

import numpy as np
import pytest

from ctsurv.synthetic.phrases import (
    EFFUSION_SIZE_WORDS,
    EFFUSION_THICKNESS_MM,
    EMPHYSEMA_WORDS,
    LOBE_PHRASES,
    PHRASES,
)
from ctsurv.synthetic.reports import format_mm, lytic_sites, write_report
from ctsurv.text.findings import CTRATE_LABELS, LOBE_NAMES, Findings, LymphNode, NodeStation, Nodule, PleuralEffusion

LOBES = list(LOBE_NAMES)
STATIONS = list(get_args(NodeStation))
NEGATION = re.compile(r"\b(?:no|not|without|nor)\b", re.IGNORECASE)

# What a sentence must not say when the finding is absent (and what the impression says when present).
TERMS: dict[str, str] = {
    "Lung nodule": r"nodul",
    "Lung mass": r"\bmass",
    "Pleural effusion": r"pleural|hemithorax",
    "Emphysema": r"emphysem|bull",
    "Consolidation": r"consolidat|infiltrat|pneumon|bronchogram",
    "Lymphadenopathy": r"lymph|\blaps?\b",
    "Pericardial effusion": r"pericardi",
    "Cardiomegaly": r"cardiomegaly|heart size (?:has )?increased|increase in heart size|cardiothoracic index",
    "Arterial wall calcification": r"calcif|atherom|atheroscl",
    "Lytic bone lesion": r"lytic|metasta|vertebral bod|\bribs?\b",
}


def random_findings(rng: np.random.Generator, p: float = 0.35) -> Findings:
    """Findings with every schema field present with probability ``p``, sizes over their whole range."""

    def maybe() -> bool:
        return bool(rng.random() < p)

    nodules = tuple(
        Nodule(str(rng.choice(LOBES)), float(rng.choice([rng.uniform(3, 29.9), rng.uniform(30, 70)])))
        for _ in range(int(rng.integers(1, 5)))
    )
    sides, sizes = ["right", "left", "bilateral"], ["small", "moderate", "large"]
    effusion = PleuralEffusion(str(rng.choice(sides)), str(rng.choice(sizes)))
    nodes = tuple(
        LymphNode(str(s), float(rng.uniform(10.5, 30)))
        for s in rng.choice(STATIONS, size=int(rng.integers(1, 4)), replace=False)
    )
    return Findings(
        nodules=nodules if maybe() else (),
        pleural_effusion=effusion if maybe() else None,
        emphysema=str(rng.choice(["mild", "moderate", "severe"])) if maybe() else None,
        consolidation=tuple(str(x) for x in rng.choice(LOBES, size=int(rng.integers(1, 3)), replace=False))
        if maybe()
        else (),
        lymph_nodes=nodes if maybe() else (),
        pericardial_effusion=maybe(),
        cardiomegaly=maybe(),
        arterial_calcification=maybe(),
        lytic_bone_lesions=int(rng.integers(1, 6)) if maybe() else 0,
    )


def cases(n: int, seed: int = 0) -> list[tuple[Findings, str, str]]:
    """``n`` random patients (plus a normal one) with their reports."""
    rng = np.random.default_rng(seed)
    found = [Findings()] + [random_findings(rng) for _ in range(n)]
    return [(f, *write_report(f, np.random.default_rng(1000 + i))) for i, f in enumerate(found)]


def sentences(text: str) -> list[str]:
    """Full sentences (split at full stops only)."""
    return [s for s in re.split(r"(?<=\.)\s+", text) if s]


def asserted(text: str) -> list[str]:
    """Clauses with no negation cue: what the report states as present."""
    return [s for s in re.split(r"(?<=[.;:])\s+", text) if s and not NEGATION.search(s)]


def mm(value: float) -> str:
    """Regex for a measurement of ``value`` mm, alone or as either axis of 'AxB mm'."""
    d = re.escape(format_mm(value))
    return rf"(?<![\d.x]){d}(?:x[\d.]+)? mm|x{d} mm"


def names_lobe(sentence: str, lobe: str) -> bool:
    return any(name in sentence for name in LOBE_PHRASES[lobe])


# ----------------------------------------------------------------------------- form and determinism


def test_same_generator_state_gives_the_same_report() -> None:
    f = random_findings(np.random.default_rng(3), p=0.9)
    assert write_report(f, np.random.default_rng(7)) == write_report(f, np.random.default_rng(7))
    assert len({write_report(f, np.random.default_rng(s)) for s in range(10)}) > 1


def test_reports_are_well_formed() -> None:
    for _, text, impression in cases(200):
        for part in (text, impression):
            assert part and part.endswith("."), part
            assert "{" not in part and "}" not in part and "  " not in part and ".." not in part, part
            assert all(s[0].isupper() for s in sentences(part)), part


def test_format_mm_never_turns_a_nodule_into_a_mass() -> None:
    written = {6.7: "6.5", 8.0: "8", 9.99: "9.5", 12.9: "12", 29.99: "29", 30.0: "30", 42.3: "42"}
    assert {v: format_mm(v) for v in written} == written


# ----------------------------------------------------------------------------- content


def test_every_positive_finding_is_stated_with_size_and_place() -> None:
    for f, text, impression in cases(300):
        full, said = sentences(text), asserted(text)
        for n in f.nodules:
            word = "mass" if n.is_mass else "nodul"
            assert any(re.search(mm(n.diameter_mm), s) and names_lobe(s, n.lobe) and word in s for s in full), (n, text)
        if (e := f.pleural_effusion) is not None:
            [s] = [s for s in said if "pleural effusion" in s.lower()]
            assert any(w in s.lower() for w in EFFUSION_SIZE_WORDS[e.size]), s
            if e.side == "bilateral":
                assert re.search(r"bilateral|both", s, re.IGNORECASE), s
            else:
                other = "left" if e.side == "right" else "right"
                assert e.side in s and other not in s and not re.search(r"bilateral|both", s, re.IGNORECASE), s
        if f.emphysema is not None:
            [s] = [s for s in said if "emphysem" in s]
            assert any(w in s.lower() for w in EMPHYSEMA_WORDS[f.emphysema]) and "both lung" in s.lower(), s
        if f.consolidation:
            [s] = [s for s in said if "consolidation" in s.lower()]
            assert all(names_lobe(s, lobe) for lobe in f.consolidation), s
        for node in f.lymph_nodes:
            assert any(node.station in s and re.search(mm(node.short_axis_mm), s) for s in said), (node, text)
        if f.lytic_bone_lesions:
            [s] = [s for s in said if "lytic" in s.lower()]
            assert len(re.findall(r"\b(?:T\d{1,2}|L1)\b|\b\d+(?:rd|th)\b", s)) == f.lytic_bone_lesions, s
        for label, pattern in TERMS.items():
            if f.labels()[label] and label not in ("Lung nodule", "Lung mass", "Lymphadenopathy"):
                assert any(re.search(pattern, s, re.IGNORECASE) for s in said), (label, text)
            if f.labels()[label]:
                assert re.search(pattern, impression, re.IGNORECASE), (label, impression)


def test_absent_findings_are_never_asserted() -> None:
    for f, text, impression in cases(300):
        said = asserted(text) + asserted(impression)
        for label, present in f.labels().items():
            if not present:
                hits = [s for s in said if re.search(TERMS[label], s, re.IGNORECASE)]
                assert not hits, (label, hits)


def test_lung_mass_threshold() -> None:
    for seed in range(20):
        small = " ".join(write_report(Findings(nodules=(Nodule("RUL", 29.9),)), np.random.default_rng(seed)))
        assert "29 mm" in small and not any("mass" in s for s in asserted(small)), small
        big = " ".join(write_report(Findings(nodules=(Nodule("LLL", 30.0),)), np.random.default_rng(seed)))
        assert any("mass" in s and "30" in s and names_lobe(s, "LLL") for s in asserted(big)), big


def test_normal_patient_gets_a_normal_impression() -> None:
    for seed in range(30):
        text, impression = write_report(Findings(), np.random.default_rng(seed))
        assert impression in PHRASES["imp_normal"]
        assert "heart" in text.lower()  # the heart is always described, so the text is never empty


def test_lytic_sites_are_distinct_vertebrae_or_ribs() -> None:
    sites = lytic_sites(6, np.random.default_rng(0))
    assert len(set(sites)) == 6
    assert all(re.fullmatch(r"(?:T\d{1,2}|L1) vertebral body|(?:right|left) \d+(?:rd|th) rib", s) for s in sites)


# ----------------------------------------------------------------------------- variety


@pytest.mark.parametrize(
    ("findings", "marker"),
    [
        (Findings(pleural_effusion=PleuralEffusion("right", "small")), "pleural effusion"),
        (Findings(pleural_effusion=PleuralEffusion("bilateral", "large")), "pleural effusion"),
        (Findings(nodules=(Nodule("RML", 8.0),)), "nodule"),
        (Findings(nodules=(Nodule("RUL", 45.0),)), "mass"),
        (Findings(lymph_nodes=(LymphNode("subcarinal", 14.0),)), "lymph"),
        (Findings(emphysema="moderate"), "emphysem"),
        (Findings(cardiomegaly=True), "eart"),
        (Findings(lytic_bone_lesions=1), "lytic"),
    ],
)
def test_phrasing_varies_across_seeds(findings: Findings, marker: str) -> None:
    stated = set()
    for seed in range(50):
        text, _ = write_report(findings, np.random.default_rng(seed))
        stated |= {s for s in sentences(text) if marker in s.lower() and not NEGATION.search(s)}
    assert len(stated) >= 3, stated


def test_normal_reports_vary() -> None:
    texts = {write_report(Findings(), np.random.default_rng(seed))[0] for seed in range(20)}
    assert len(texts) >= 15


# ----------------------------------------------------------------------------- round trip through the extractor


def extraction_agreement(reports: list[tuple[Findings, str, str]], labels: list[str]) -> dict[str, float]:
    """Fraction of reports whose extracted label equals the truth (0 for CT-RATE labels outside the schema)."""
    report_labels = pytest.importorskip("ctsurv.text.labels", reason="report-to-labels extractor absent")
    agree = dict.fromkeys(labels, 0)
    for f, text, impression in reports:
        got, truth = report_labels.extract_labels(f"{text} {impression}"), f.labels()
        for label in labels:
            agree[label] += got[label] == truth.get(label, 0)
    return {label: n / len(reports) for label, n in agree.items()}


def test_extracted_labels_match_the_truth() -> None:
    """The rule-based extractor reads the truth back from written reports (a mass is not a 'Lung nodule')."""
    overlap = [label for label in Findings().labels() if label in CTRATE_LABELS]
    # Findings outside the schema are never written as present; Lung opacity may fairly accompany consolidation.
    never = [label for label in CTRATE_LABELS if label not in overlap and label != "Lung opacity"]
    reports = cases(200, seed=11)
    assert sum(bool(f.nodules) and all(n.is_mass for n in f.nodules) for f, _, _ in reports) >= 5  # mass-only cases
    rates = extraction_agreement(reports, overlap + never)
    assert all(rate >= 0.98 for rate in rates.values()), rates


def test_effusion_thickness_matches_the_phantom() -> None:
    """The thickness written for an effusion brackets the depth the phantom renders for its size class."""
    phantom = pytest.importorskip("ctsurv.synthetic.phantom", reason="phantom renderer not written yet")
    depth = getattr(phantom, "EFFUSION_MM", None)
    if depth is None:
        pytest.skip("phantom.EFFUSION_MM not defined")
    assert all(EFFUSION_THICKNESS_MM[size][0] <= depth[size] <= EFFUSION_THICKNESS_MM[size][1] for size in depth)

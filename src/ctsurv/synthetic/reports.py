"""Chest CT report text written from the ground-truth findings of a synthetic patient.

The phantom cohort needs reports that read like the real ones the model will later see, so the
vocabulary, sentence shapes and anatomical order follow the 800 manually labelled CT-RATE reports
(``shared/reports/ctrate_reports_labeled.csv``): trachea and main bronchi, heart and great vessels,
lymph nodes, esophagus, pleura, lungs, upper abdomen, bones; negatives are written the way those
reports write them ("Pleural effusion-thickening was not detected.").

Every positive finding gets a sentence of its own with its size and place; every absent finding is
negated or left out, never hinted at, so that the rule-based report-to-labels extractor recovers
the truth. Nothing outside the :class:`~ctsurv.text.findings.Findings` schema is ever reported as
present. Sizes the schema does not hold (a second diameter, an effusion's thickness, which vertebra
a lytic lesion is in) are drawn consistently with what it does hold. All choices come from the
given generator, so a report is a function of the findings and the generator's state. The wording
itself (templates, lobe names, size words) is in :mod:`ctsurv.synthetic.phrases`.
"""

from __future__ import annotations

import math

import numpy as np

from ctsurv.synthetic.phrases import (
    EFFUSION_SIZE_WORDS,
    EFFUSION_THICKNESS_MM,
    EMPHYSEMA_WORDS,
    LOBE_PHRASES,
    PHRASES,
)
from ctsurv.text.findings import Findings, LymphNode, Nodule


def pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    """One option, uniformly at random."""
    return options[int(rng.integers(len(options)))]


def _say(rng: np.random.Generator, key: str, **fields: str) -> str:
    """A drawn template of the phrasebook, filled in."""
    return pick(rng, PHRASES[key]).format(**fields)


def _some(rng: np.random.Generator, key: str, p: float, most: int = 1) -> list[str]:
    """With probability ``p``, 1..``most`` distinct phrases of ``key`` in phrasebook order; else none (left out)."""
    if rng.random() >= p:
        return []
    options = PHRASES[key]
    chosen = rng.choice(len(options), size=int(rng.integers(1, most + 1)), replace=False)
    return [options[i] for i in sorted(chosen)]


def format_mm(value: float) -> str:
    """Millimetres as radiologists write them: whole numbers from 10 mm up, halves below ('6.5', '12').

    Rounded down, so that a 29.8 mm nodule is never written as a 30 mm one (30 mm makes a mass).
    """
    written = math.floor(value) if value >= 10 else math.floor(value * 2) / 2
    return f"{written:g}"


def _article(number: str) -> str:
    """'a' or 'an' before a spoken number ('an 8 mm', 'an 11 mm', 'a 12 mm')."""
    return "an" if number.startswith("8") or number.split(".")[0] in ("11", "18") else "a"


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _lobes(lobes: list[str] | tuple[str, ...], rng: np.random.Generator) -> list[str]:
    """Lobes named in one drawn style, so a list reads 'right lower lobe and left lower lobe'."""
    style = int(rng.integers(len(LOBE_PHRASES["RUL"])))
    return [LOBE_PHRASES[lobe][style] for lobe in lobes]


def _second_dimension(long_mm: float, rng: np.random.Generator, low: float = 0.75, high: float = 0.95) -> str:
    """The perpendicular diameter of an 'AxB mm' measurement whose other axis is the truth."""
    return format_mm(long_mm * rng.uniform(low, high))


def _station(node: LymphNode, rng: np.random.Generator) -> str:
    if node.station == "aortopulmonary window":
        return node.station
    return f"{node.station} {pick(rng, ('region', 'area'))}"


def lytic_sites(count: int, rng: np.random.Generator) -> list[str]:
    """Where ``count`` lytic lesions are said to be: distinct vertebral bodies (T1-L1) and ribs (3rd-10th)."""
    pool = [f"T{i} vertebral body" for i in range(1, 13)] + ["L1 vertebral body"]
    pool += [f"{side} {i}{'rd' if i == 3 else 'th'} rib" for side in ("right", "left") for i in range(3, 11)]
    return [pool[i] for i in rng.choice(len(pool), size=min(count, len(pool)), replace=False)]


def _join_sites(sites: list[str]) -> str:
    """'T5 and T8 vertebral bodies and the right 4th and left 7th ribs' from single sites."""
    vertebrae = sorted((s.split()[0] for s in sites if "vertebral" in s), key=lambda v: (v[0] != "T", int(v[1:])))
    ribs = sorted(
        (s.removesuffix(" rib") for s in sites if s.endswith(" rib")),
        key=lambda r: (r.startswith("left"), int(r.split()[1][:-2])),
    )
    groups = []
    if vertebrae:
        groups.append(_join(vertebrae) + (" vertebral bodies" if len(vertebrae) > 1 else " vertebral body"))
    if ribs:
        groups.append(_join(ribs) + (" ribs" if len(ribs) > 1 else " rib"))
    return " and the ".join(groups)


# ----------------------------------------------------------------------------- sections, in anatomical order


def _mediastinum(f: Findings, rng: np.random.Generator, skip_pericardial_negative: bool) -> list[str]:
    """Heart size, great vessels, aortic wall, pericardium."""
    out = _some(rng, "unenhanced", 0.25)
    prefix = "As far as can be observed: " if out else ""
    vessels_said = False
    if f.cardiomegaly:
        heart = _say(rng, "cardiomegaly")
    elif not f.arterial_calcification and rng.random() < 0.4:
        heart, vessels_said = "Mediastinal main vascular structures, heart contour, size are normal.", True
    else:
        heart = _say(rng, "heart_normal")
    out.append(prefix + heart)
    if not vessels_said:
        out += _some(rng, "vessels_normal", 0.6)
    if f.arterial_calcification:
        out.append(_say(rng, "calcification"))
    elif rng.random() < 0.1:
        out.append("No calcific atheroma plaque was observed in the thoracic aorta.")
    if f.pericardial_effusion:
        out.append(_say(rng, "pericardial"))
    elif not skip_pericardial_negative:
        out += _some(rng, "pericardial_negative", 0.85)
    return out


def _node_sentence(node: LymphNode, rng: np.random.Generator) -> str:
    short = format_mm(node.short_axis_mm)
    long = _second_dimension(node.short_axis_mm, rng, 1.15, 1.6)
    return _say(rng, "node", s=short, l=long, where=_station(node, rng))


def _lymph_nodes(f: Findings, rng: np.random.Generator) -> list[str]:
    """Each enlarged node with its short axis (and sometimes a long axis) and station."""
    if not f.lymph_nodes:
        return _some(rng, "nodes_negative", 0.9)
    nodes = sorted(f.lymph_nodes, key=lambda n: -n.short_axis_mm)
    if len(nodes) == 1 or rng.random() < 0.5:
        return [_node_sentence(n, rng) for n in nodes]
    parts = [f"{_station(n, rng)} ({format_mm(n.short_axis_mm)} mm)" for n in nodes]
    axes = [f"{format_mm(n.short_axis_mm)} mm in the {_station(n, rng)}" for n in nodes]
    return [_say(rng, "nodes", parts=_join(parts), axes=_join(axes))]


def _pleura(f: Findings, rng: np.random.Generator, combined_negative: bool, size: str) -> list[str]:
    """Pleural effusion with side, amount (``size``, the word for its size class) and sometimes thickness."""
    e = f.pleural_effusion
    if e is None:
        return [_say(rng, "effusions_negative")] if combined_negative else _some(rng, "pleural_negative", 0.9)
    lo, hi = EFFUSION_THICKNESS_MM[e.size]
    thick = [format_mm(rng.uniform(lo, hi)) for _ in range(2)]
    if e.side == "bilateral":
        return [_say(rng, "pleural_bilateral", size=size, Size=_cap(size), right=thick[0], left=thick[1])]
    return [_say(rng, "pleural_one_side", size=size, Size=_cap(size), side=e.side, t=thick[0])]


def _nodules(nodules: list[Nodule], rng: np.random.Generator) -> list[str]:
    """Solid nodules (< 30 mm), each with its size and lobe: one sentence each, or one sentence for all."""
    if not nodules:
        return []
    nodules = sorted(nodules, key=lambda n: -n.diameter_mm)
    names = _lobes([n.lobe for n in nodules], rng)
    if len(nodules) == 1 or rng.random() < 0.4:
        sizes = [format_mm(n.diameter_mm) for n in nodules]
        return [_say(rng, "nodule", d=d, a=_article(d), A=_cap(_article(d)), lobe=ln) for d, ln in zip(sizes, names)]
    sides = {n.lobe[0] for n in nodules}
    where = "both lungs" if len(sides) > 1 else ("the right lung" if sides == {"R"} else "the left lung")
    others = _join([f"{format_mm(n.diameter_mm)} mm in the {name}" for n, name in zip(nodules[1:], names[1:])])
    return [_say(rng, "nodules", where=where, d=format_mm(nodules[0].diameter_mm), lobe=names[0], others=others)]


def _lungs(f: Findings, rng: np.random.Generator, sev: str) -> list[str]:
    """Emphysema (severity word ``sev``), masses, nodules, consolidation; then negatives that deny nothing present."""
    out = _some(rng, "lung_window", 0.6)
    if f.emphysema is not None:
        key = "emphysema_severe" if f.emphysema == "severe" and rng.random() < 0.3 else "emphysema"
        out.append(_say(rng, key, sev=sev, Sev=_cap(sev)))
    masses = sorted((n for n in f.nodules if n.is_mass), key=lambda n: -n.diameter_mm)
    for m in masses:
        d = format_mm(m.diameter_mm)
        lobe = _lobes([m.lobe], rng)[0]
        out.append(_say(rng, "mass", d=d, d2=_second_dimension(m.diameter_mm, rng), a=_article(d), lobe=lobe))
    out += _nodules([n for n in f.nodules if not n.is_mass], rng)
    if f.consolidation:
        out.append(_say(rng, "consolidation", lobes=_join(_lobes(f.consolidation, rng))))
    if not f.nodules and not f.consolidation:
        key = "lungs_clear_aerated" if f.emphysema is None and rng.random() < 0.25 else "lungs_clear"
        out += _some(rng, key, 0.9)
    elif not f.consolidation:
        out += _some(rng, "no_consolidation", 0.7)
        if not masses:
            out += _some(rng, "no_other_mass", 0.5)
    elif not f.nodules:
        out += _some(rng, "no_nodule", 0.8)
    if f.emphysema is None:
        out += _some(rng, "no_emphysema", 0.1)
    out += _some(rng, "lung_extra_negative", 0.2)
    return out if not out or not out[-1].endswith(";") else out[:-1]  # no dangling window heading


def _bones(sites: list[str], rng: np.random.Generator) -> list[str]:
    if not sites:
        return _some(rng, "bones_negative", 0.8) + _some(rng, "vertebrae_normal", 0.4)
    return [_say(rng, "lytic_one" if len(sites) == 1 else "lytic_many", where=_join_sites(sites))]


def _impression(f: Findings, sites: list[str], words: dict[str, str], rng: np.random.Generator) -> list[str]:
    """A short line per positive finding, most important first; a normal line when there is none."""
    lines: list[str] = []
    for m in sorted((n for n in f.nodules if n.is_mass), key=lambda n: -n.diameter_mm):
        d = format_mm(m.diameter_mm)
        lines.append(_say(rng, "imp_mass", lobe=_lobes([m.lobe], rng)[0], d=d, A=_cap(_article(d))))
    nodules = sorted((n for n in f.nodules if not n.is_mass), key=lambda n: -n.diameter_mm)
    if nodules:
        d, lobe = format_mm(nodules[0].diameter_mm), _lobes([nodules[0].lobe], rng)[0]
        key = "imp_nodule" if len(nodules) == 1 else "imp_nodules"
        lines.append(_say(rng, key, d=d, A=_cap(_article(d)), lobe=lobe))
    if f.lymph_nodes:
        kind = "Hilar" if all("hilar" in n.station for n in f.lymph_nodes) else "Mediastinal"
        stations = sorted({n.station for n in f.lymph_nodes})
        nodes = "nodes" if len(f.lymph_nodes) > 1 else "node"
        word = "stations" if len(stations) > 1 else "station"
        lines.append(_say(rng, "imp_nodes", Kind=kind, stations=_join(stations), nodes=nodes, station_word=word))
    if (e := f.pleural_effusion) is not None:
        size = words["effusion"]
        key = "imp_pleural_bilateral" if e.side == "bilateral" else "imp_pleural_one_side"
        lines.append(_say(rng, key, size=size, Size=_cap(size), side=e.side))
    if f.consolidation:
        lines.append(_say(rng, "imp_consolidation", lobes=_join(_lobes(f.consolidation, rng))))
    if f.emphysema is not None:
        lines.append(_say(rng, "imp_emphysema", Sev=_cap(words["emphysema"])))
    cardio = [_say(rng, "imp_cardiomegaly")] if f.cardiomegaly else []
    cardio += ["Pericardial effusion"] if f.pericardial_effusion else []
    cardio += [_say(rng, "imp_calcification")] if f.arterial_calcification else []
    if cardio and rng.random() < 0.5:  # one line: "Cardiomegaly, pericardial effusion."
        lines.append(cardio[0] + "".join(", " + c[0].lower() + c[1:] for c in cardio[1:]) + ".")
    else:
        lines += [c + "." for c in cardio]
    if sites:
        lines.append(_say(rng, "imp_lytic", s="s" if len(sites) > 1 else "", where=_join_sites(sites)))
    return lines or [_say(rng, "imp_normal")]


def write_report(findings: Findings, rng: np.random.Generator) -> tuple[str, str]:
    """(findings text, impression text) of a chest CT report for ``findings``; deterministic given ``rng``'s state.

    The findings text runs trachea -> mediastinum and heart -> lymph nodes -> esophagus -> pleura ->
    lungs (pleura after lungs in a quarter of reports) -> upper abdomen -> bones; the impression
    lists the positive findings, or says the examination is normal.
    """
    f = findings
    combined_negative = f.pleural_effusion is None and not f.pericardial_effusion and rng.random() < 0.3
    sites = lytic_sites(f.lytic_bone_lesions, rng) if f.lytic_bone_lesions > 0 else []
    words = {  # one word per report for each graded finding, the same in findings and impression
        "effusion": pick(rng, EFFUSION_SIZE_WORDS[f.pleural_effusion.size]) if f.pleural_effusion else "",
        "emphysema": pick(rng, EMPHYSEMA_WORDS[f.emphysema]) if f.emphysema else "",
    }
    sentences = _some(rng, "airways", 0.9) + _mediastinum(f, rng, combined_negative) + _lymph_nodes(f, rng)
    sentences += _some(rng, "esophagus", 0.85)
    pleura, lungs = _pleura(f, rng, combined_negative, words["effusion"]), _lungs(f, rng, words["emphysema"])
    sentences += pleura + lungs if rng.random() < 0.75 else lungs + pleura
    sentences += _some(rng, "abdomen", 0.7) + _some(rng, "abdomen_detail", 0.5, most=2) + _bones(sites, rng)
    return " ".join(sentences), " ".join(_impression(f, sites, words, rng))

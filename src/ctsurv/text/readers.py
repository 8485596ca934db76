"""Reading sizes, lobes, sides and grades out of report text (and out of what a model writes).

Regular expressions for the measurements, lobes, segments, lungs, side and amount words of chest CT
reports; :mod:`ctsurv.text.answers` decides which finding each one belongs to.
"""

from __future__ import annotations

import re

from ctsurv.text.questions import GRADES

NUMBER = r"\d+(?:\.\d+)?"
_UNIT = r"(?P<unit>mm|cm|mil+imet(?:er|re)s?|centimet(?:er|re)s?)\b"
_MEASUREMENT = re.compile(  # "12 mm", "12x9 mm", "26 X24 millimeters", "12 mm x 9 mm", "1.2 cm", "2-3 mm"
    rf"(?<![\w.])(?P<dims>{NUMBER}(?:\s*(?:mm|cm)?\s*[x×*]\s*{NUMBER}){{0,2}})"
    rf"(?:\s*[-–]\s*(?P<upper>{NUMBER}))?\s*{_UNIT}",
    re.IGNORECASE,
)
_LONG_AXIS_AFTER = re.compile(r"^\s*(?:in\s+(?:the\s+|its\s+)?)?long(?:est)?[- ]?(?:axis|diameter)", re.IGNORECASE)
_LONG_AXIS_BEFORE = re.compile(r"long[- ]?axis\s+(?:\w+\s+){0,2}$", re.IGNORECASE)
# a size of the previous examination: "(6 mm in the previous examination)", "previously 8 mm", "from 15 mm to ..."
_PRIOR_AFTER = re.compile(r"^\s*(?:(?:in|on|at)\s+)?(?:the\s+|its\s+)?(?:previous|prior|former|earlier|old)\b",
                          re.IGNORECASE)
_PRIOR_BEFORE = re.compile(r"\b(?:previously|formerly|from)\s+(?:measur\w*\s+|was\s+|of\s+)?$", re.IGNORECASE)

_LEVELS = r"(?:upper|middle|lower)(?:\s*(?:,|and|/|-|&)\s*(?:upper|middle|lower))*"
_LOBE = re.compile(  # "right upper lobe", "right lung upper lobe", "upper lobe of the right lung", "lower lobes"
    rf"\b(?:(?P<side>right|left|both|bilateral)\s+(?:lungs?\s+)?)?(?P<levels>{_LEVELS})\s+lobe(?P<plural>s)?\b"
    r"(?:\s+(?:[\w-]+\s+){0,3}?(?:of|in)\s+(?:the\s+)?(?P<side2>right|left|both)\s+lungs?\b)?"
    r"|\blingul\w*|\b(?P<code>RUL|RML|RLL|LUL|LLL)\b",
    re.IGNORECASE,
)
_SEGMENT = re.compile(  # a segment named without its lobe
    r"\b(?P<upper>apicoposterior|apical)\s+segment"
    r"|\b(?P<lower>(?:postero|latero|antero|medio)?basal|superior)\s+segment",
    re.IGNORECASE,
)
_SEGMENT_SIDE = re.compile(r"\s+(?:of|in)\s+the\s+(right|left)\s+lung", re.IGNORECASE)
_LUNG = re.compile(r"\b(?P<side>right|left)\s+(?:lung|hemithora\w*)\b|\b(?P<both>both\s+(?:lungs|hemithora\w*)|"
                   r"bilateral\s+lungs?|bilaterally)\b", re.IGNORECASE)
_SIDE_WORD = re.compile(r"\b(?:(?P<both>bilateral\w*|both)|(?P<right>right)|(?P<left>left))\b", re.IGNORECASE)
_GRADE_WORD = re.compile(r"\b(?:(?P<small>small|minimal|mild|slight|trace|minor|little|thin|smear\w*)|"
                         r"(?P<moderate>moderate|medium)|(?P<large>large|massive|marked|extensive|abundant))\b",
                         re.IGNORECASE)


def measurements(text: str, start: int = 0, end: int | None = None, short_axis: bool = False) -> list[float]:
    """Sizes in mm of the measurements starting in ``text[start:end]``: the largest dimension of each, or the
    smallest with ``short_axis`` (the short axis of "20x15 mm"). Long axes (for short axes) and sizes of a
    previous examination ("(8 mm in the previous examination)", "from 15 mm") are left out.
    """
    end = len(text) if end is None else end
    sizes = []
    for m in _MEASUREMENT.finditer(text):
        before, after = text[: m.start()], text[m.end() :]
        if not start <= m.start() < end or _PRIOR_AFTER.match(after) or _PRIOR_BEFORE.search(before):
            continue
        if short_axis and (_LONG_AXIS_AFTER.match(after) or _LONG_AXIS_BEFORE.search(before)):
            continue
        scale = 10.0 if m.group("unit").lower().startswith("c") else 1.0
        dims = [float(x) for x in re.findall(NUMBER, m.group("dims"))]
        if m.group("upper"):  # a range "2-3 mm": its upper end
            dims[-1] = float(m.group("upper"))
        sizes.append(scale * (min(dims) if short_axis else max(dims)))
    return sizes


def _side_before(text: str, at: int) -> str | None:
    """The nearest side word before ``text[at]`` ("In the right lung, ... upper lobe"): 'R', 'L', 'RL' or None."""
    last = None
    for m in _SIDE_WORD.finditer(text, 0, at):
        last = "RL" if m.group("both") else ("R" if m.group("right") else "L")
    return last


def locations(text: str, start: int = 0, end: int | None = None) -> frozenset[str]:
    """Lobes (codes of LOBE_NAMES) named in ``text[start:end]``; "right lung"/"left lung" for a lung named
    without any lobe of it. A lobe without a side takes the nearest side named before it in the same region
    (not one of another finding earlier in the sentence); a plural one without ("the lower lobes") is both."""
    end = len(text) if end is None else end
    region = text[start:end]
    lobes: set[str] = set()
    masked = list(region)
    for m in _LOBE.finditer(region):
        masked[m.start() : m.end()] = " " * (m.end() - m.start())
        word = m.group(0).lower()
        if word.startswith("lingul"):
            lobes.add("LUL")
            continue
        if m.group("code"):
            lobes.add(m.group("code").upper())
            continue
        side = m.group("side") or m.group("side2")
        sides = {"right": "R", "left": "L"}.get((side or "").lower(), "RL" if side else None)
        levels = re.findall(r"upper|middle|lower", m.group("levels").lower())
        if sides is None:
            sides = _side_before(region, m.start()) or ("RL" if m.group("plural") else None)
        for level in levels:
            for s in ("R" if level == "middle" else (sides or "")):
                lobes.add(f"{s}{level[0].upper()}L")
    rest = "".join(masked)
    named = {lobe[0] for lobe in lobes}
    for m in _SEGMENT.finditer(rest):  # "posterobasal segment of the right lung" -> RLL, unless a right lobe is named
        after = _SEGMENT_SIDE.match(rest, m.end())
        side = {"right": "R", "left": "L"}[after.group(1).lower()] if after else _side_before(region, m.start())
        for s in side or "":
            if s not in named:
                lobes.add(f"{s}{'U' if m.group('upper') else 'L'}L")
    lungs: set[str] = set()
    for m in _LUNG.finditer(rest):
        lungs |= {"R", "L"} if m.group("both") else {m.group("side")[0].upper()}
    named = {lobe[0] for lobe in lobes}
    lobes |= {f"{'right' if s == 'R' else 'left'} lung" for s in lungs - named}
    return frozenset(lobes)


def sides(text: str) -> str | None:
    """'right', 'left' or 'bilateral' from the side words of ``text`` (right and left together are bilateral)."""
    found = set()
    for m in _SIDE_WORD.finditer(text):
        found.add("bilateral" if m.group("both") else ("right" if m.group("right") else "left"))
    if "bilateral" in found or {"right", "left"} <= found:
        return "bilateral"
    return found.pop() if found else None


def grade(text: str) -> str | None:
    """'small', 'moderate' or 'large' from the amount words of ``text`` (the largest one named)."""
    found = [g for m in _GRADE_WORD.finditer(text) for g in GRADES if m.group(g)]
    return max(found, key=GRADES.index) if found else None



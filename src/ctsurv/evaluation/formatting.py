"""Numbers for the survival run's files and readers: cleaning for JSON/CSV, formatting for humans.

``clean`` turns numpy values into plain, rounded JSON data (non-finite -> None; p-values keep 4
significant digits) and ``dumps`` writes it as readable JSON. ``fmt_num``, ``fmt_estimate``,
``fmt_mean_sd`` and ``fmt_time`` print numbers, estimates with their 95% CI and times; ``fmt_p`` and
``p_phrase`` print p-values as journals do, "≤ 0.002" at the bootstrap's floor 2 / (B + 1) when given.
Missing values (None, NaN) render as "–" and are written as ``null`` (JSON) or an empty cell (CSV).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

DASH = "–"


def finite(x: Any) -> float | None:
    """``x`` as a Python float, or None when it is missing, not a number or not finite."""
    if x is None or isinstance(x, (bool, str)):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def as_float(text: str) -> float | None:
    """``text`` as a float, or None when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return None


def _is_p_value(key: str | None) -> bool:
    k = (key or "").lower()
    return k == "p" or k.startswith("p_") or k.endswith("_p") or "pvalue" in k or "p_value" in k


def json_key(k: Any) -> str:
    """A JSON object key: strings as given, numbers in their shortest form (365.0 -> "365", 1.5 -> "1.5")."""
    if isinstance(k, str):
        return k
    v = float(k)
    return str(int(v)) if v.is_integer() else repr(v)


def clean(obj: Any, key: str | None = None) -> Any:
    """Plain JSON data from ``obj``: numpy -> Python, non-finite -> None, floats rounded.

    Floats keep 4 decimals; p-values (keys ``p``, ``p_*``, ``*_p``) keep 4 significant digits
    instead, so that p = 2e-6 does not become 0.
    """
    if isinstance(obj, Mapping):
        return {json_key(k): clean(v, json_key(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray, pd.Series)):
        return [clean(v, key) for v in (obj.tolist() if hasattr(obj, "tolist") else obj)]
    if obj is None or isinstance(obj, (bool, np.bool_, str)):
        return bool(obj) if isinstance(obj, np.bool_) else obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    v = finite(obj)
    if v is None:
        if isinstance(obj, (float, np.floating)):
            return None
        raise TypeError(f"cannot write {type(obj).__name__} {obj!r} (under key {key!r}) to results.json")
    return float(f"{v:.4g}") if _is_p_value(key) else round(v, 4)


def fmt_num(x: Any, digits: int = 3, sign: bool = False) -> str:
    v = finite(x)
    if v is None:
        return DASH
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _ceil_text(x: float) -> str:
    """``x`` > 0 rounded up to 3 decimals (to 2 significant digits below 0.001), as text."""

    def digits(v: float) -> int:
        return 3 if v >= 0.001 else 1 - math.floor(round(math.log10(v), 9))

    up = math.ceil(x * 10 ** digits(x) * (1 - 1e-9)) / 10 ** digits(x)
    return f"{up:.{digits(up)}f}"  # 0.0000999 -> 0.00010, not 0.000100


def fmt_p(p: Any, floor: Any = None) -> str:
    """p as journals print it: "<0.001", 3 decimals below 0.01 or near 0.05, else 2 decimals.

    ``floor``: the smallest p the bootstrap can give (``metrics.p_floor(B)``); a p at it prints as
    "≤ 0.002", the floor rounded up to 3 decimals (2 significant digits below 0.001).
    """
    v, f = finite(p), finite(floor)
    if v is None:
        return DASH
    if f is not None and f > 0 and v <= f * (1 + 1e-3) + 1e-12:  # 1e-3: results.json keeps 4 digits of p
        return f"≤ {_ceil_text(f)}"
    if v < 0.001:
        return "<0.001"
    if v < 0.01 or 0.045 <= v < 0.055:
        return f"{v:.3f}"
    return ">0.99" if v > 0.99 else f"{v:.2f}"


def p_phrase(p: Any, floor: Any = None) -> str:
    """ "p < 0.001", "p ≤ 0.002" (at ``floor``, as in :func:`fmt_p`) or "p = 0.03" for titles and sentences."""
    text = fmt_p(p, floor)
    if text.startswith("≤"):
        return f"p {text}"
    return f"p {text[0]} {text[1:]}" if text[0] in "<>" else f"p = {text}"


def ci_bounds(ci: Any) -> tuple[float | None, float | None]:
    """(low, high) of a confidence interval given as a pair, each None when missing or not finite."""
    if isinstance(ci, (list, tuple, np.ndarray)) and len(ci) == 2:
        return finite(ci[0]), finite(ci[1])
    return None, None


def fmt_estimate(x: Any, ci: Any, sign: bool = False) -> str:
    """ "0.712 (0.684–0.741)", or for differences "+0.045 (-0.003 to +0.081)"; "–" when x is missing."""
    lo, hi = ci_bounds(ci)
    if finite(x) is None:
        return DASH
    if lo is None or hi is None:
        return fmt_num(x, sign=sign)
    sep = " to " if sign else "–"
    return f"{fmt_num(x, sign=sign)} ({fmt_num(lo, sign=sign)}{sep}{fmt_num(hi, sign=sign)})"


def fmt_time(t: Any) -> str:
    v = float(t)
    return str(int(v)) if v.is_integer() else f"{v:g}"


def fmt_mean_sd(mean: Any, sd: Any) -> str:
    """ "0.712 ± 0.031"; the mean alone without an SD; "–" without a mean."""
    if finite(mean) is None:
        return DASH
    return fmt_num(mean) + (f" ± {fmt_num(sd)}" if finite(sd) is not None else "")


def dumps(data: Any, indent: int = 2, level: int = 0) -> str:
    """Pretty JSON with lists of plain values on one line (``times`` stays readable); no NaN allowed."""
    pad, inner = " " * indent * level, " " * indent * (level + 1)
    if isinstance(data, dict) and data:
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {dumps(v, indent, level + 1)}" for k, v in data.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        return "[\n" + ",\n".join(f"{inner}{dumps(v, indent, level + 1)}" for v in data) + f"\n{pad}]"
    return json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(", ", ": "))

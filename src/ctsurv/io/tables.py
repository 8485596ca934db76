"""Cells and messages shared by the table readers (cohort, clinical columns, dataset adapters).

A cell is read as stripped text (:func:`as_text`) so that ids such as ``"007"`` survive; a message
about bad rows names at most :data:`MAX_LISTED` of them (:func:`describe_rows`) and counts the rest;
a missing column is answered with the column most likely meant (:func:`did_you_mean`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

MAX_LISTED = 5  # rows named in one message; the rest are counted


def as_text(value: Any) -> str | None:
    """Cell -> stripped text, None when missing or blank; integral floats lose their '.0' (Parquet ids)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def describe_rows(ids: pd.Series, positions: np.ndarray, values: pd.Series | None = None) -> str:
    """'2 rows: row 3 (id 'p3') = -1.0, row 7 (id 'p7') = 0.0' with at most MAX_LISTED shown."""
    shown = []
    for p in positions[:MAX_LISTED]:
        text = f"row {p + 1}"
        if isinstance(ids.iloc[p], str):
            text += f" (id {ids.iloc[p]!r})"
        if values is not None:
            value = values.iloc[p]
            text += f" = {value.item() if isinstance(value, np.generic) else value!r}"
        shown.append(text)
    more = f" and {len(positions) - MAX_LISTED} more" if len(positions) > MAX_LISTED else ""
    return f"{len(positions)} row{'s' if len(positions) != 1 else ''}: {', '.join(shown)}{more}"


def did_you_mean(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate most likely meant by ``name``: a close spelling ignoring case, else the one name containing it."""
    lower = {str(c).lower(): str(c) for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)
    if close:
        return lower[close[0]]
    containing = [c for low, c in lower.items() if name.lower() in low]
    return containing[0] if len(containing) == 1 else None

"""Clinical covariates for modelling: typing, standardisation, imputation with a missing indicator.

:class:`ClinicalSchema` is fitted on the training rows of a fold only and then applied to the
test rows, so no statistic of a test fold leaks into training. It is plain data (``to_dict``)
so that checkpoints can store it and prediction on new patients uses the training statistics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ctsurv.errors import CohortError
from ctsurv.io.tables import MAX_LISTED, as_text

MISSING_LEVEL = "<missing>"


def level_text(value: Any) -> str | None:
    """A categorical cell as the level it names: stripped, inner spaces collapsed, case-folded; None when missing."""
    text = as_text(value)
    return None if text is None else " ".join(text.split()).casefold()


@dataclass(frozen=True)
class ClinicalSchema:
    """How clinical columns become a float32 design matrix, with statistics fitted on training rows only.

    - numeric: standardised with the training mean and (population) std (std 0 -> 1); a missing value
      becomes the training mean, i.e. 0 after standardising.
    - a 0/1 missing-indicator column for each numeric column that had missing values in training (a column
      with no missingness in training would give an all-zero column, which makes a Cox fit singular).
    - categorical: reference coding. The most frequent training level (ties: alphabetical) is the reference
      and gets no column, because a full one-hot sums to 1 and a Cox model has no intercept to absorb it.
      Missing values get a '<missing>' column when training had missing values; otherwise they fall on the
      reference level (mode imputation, as the mean is for numerics).
    - levels are compared as :func:`level_text`: spellings that differ only in case or spacing ("Adenocarcinoma",
      "adenocarcinoma ", "large  cell" / "Large cell") are one level, as a registry's hand-typed columns mean.
    - a level never seen in training is an error at transform time, never silently zeroed.
    """

    numeric: tuple[str, ...] = ()
    means: tuple[float, ...] = ()
    stds: tuple[float, ...] = ()
    missing_indicators: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    levels: tuple[tuple[str, ...], ...] = ()  # per categorical column, the reference level first
    missing_levels: tuple[str, ...] = ()

    @classmethod
    def fit(cls, df: pd.DataFrame, numeric: Sequence[str] = (), categorical: Sequence[str] = ()) -> ClinicalSchema:
        """Learn means, stds and levels from the training rows ``df``."""
        _require(df, [*numeric, *categorical])
        means, stds, indicators = [], [], []
        for col in numeric:
            x = _numeric(df, col)
            if x.notna().sum() == 0:
                raise CohortError(f"clinical column {col!r} has no values in the training rows; "
                                  f"fill it or remove it from data.numeric_columns")
            std = float(x.std(ddof=0))
            means.append(float(x.mean()))
            stds.append(std if std > 0 else 1.0)
            if x.isna().any():
                indicators.append(col)
        levels, missing_levels = [], []
        for col in categorical:
            x, spelled = df[col].map(level_text), df[col].map(as_text)
            counts = x.value_counts(dropna=True)
            if counts.empty:
                raise CohortError(f"clinical column {col!r} has no values in the training rows; "
                                  f"fill it or remove it from data.categorical_columns")
            # each level is named by its most frequent spelling in training (ties: alphabetical)
            names = spelled.groupby(x).agg(lambda s: min(s.value_counts().items(), key=lambda kv: (-kv[1], kv[0]))[0])
            order = sorted(counts.index, key=lambda level: (-counts[level], names[level]))
            levels.append(tuple(names[level] for level in order))
            if x.isna().any():
                missing_levels.append(col)
        return cls(tuple(numeric), tuple(means), tuple(stds), tuple(indicators), tuple(categorical),
                   tuple(levels), tuple(missing_levels))

    @property
    def feature_names(self) -> list[str]:
        names = [*self.numeric, *(f"{col}__missing" for col in self.missing_indicators)]
        for col, levels in zip(self.categorical, self.levels, strict=True):
            names += [f"{col}={level}" for level in levels[1:]]
            if col in self.missing_levels:
                names.append(f"{col}={MISSING_LEVEL}")
        return names

    def check(self, df: pd.DataFrame) -> None:
        """Raise if ``df`` lacks a column, has non-numeric numerics, or has categorical levels unseen in training."""
        _require(df, [*self.numeric, *self.categorical])
        for col in self.numeric:
            _numeric(df, col)
        problems = []
        for col, levels in zip(self.categorical, self.levels, strict=True):
            x = df[col].map(level_text)
            unseen = np.flatnonzero((x.notna() & ~x.isin([level_text(level) for level in levels])).to_numpy(bool))
            if len(unseen):
                where = ", ".join(f"{as_text(df[col].iloc[p])!r} at row {df.index[p]!r}" for p in unseen[:MAX_LISTED])
                more = f" and {len(unseen) - MAX_LISTED} more" if len(unseen) > MAX_LISTED else ""
                problems.append(f"clinical column {col!r} has levels never seen in training: {where}{more}; "
                                f"known levels: {', '.join(map(repr, levels))}. "
                                f"Map them to a known level or leave them empty")
        if problems:
            raise CohortError("; ".join(problems))

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Design matrix float32 (n, len(feature_names)) using the training statistics only."""
        self.check(df)
        blocks = []
        for col, mean, std in zip(self.numeric, self.means, self.stds, strict=True):
            z = (_numeric(df, col).to_numpy(np.float64) - mean) / std
            blocks.append(np.nan_to_num(z, nan=0.0))
        blocks += [_numeric(df, col).isna().to_numpy(np.float64) for col in self.missing_indicators]
        for col, levels in zip(self.categorical, self.levels, strict=True):
            x = df[col].map(level_text)
            blocks += [(x == level_text(level)).to_numpy(np.float64) for level in levels[1:]]
            if col in self.missing_levels:
                blocks.append(x.isna().to_numpy(np.float64))
        if not blocks:
            return np.zeros((len(df), 0), np.float32)
        return np.stack(blocks, axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, for checkpoints."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ClinicalSchema:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or set(raw) != names:
            raise CohortError(f"malformed clinical schema {raw!r}: expected keys {sorted(names)}; "
                              f"was the checkpoint written by ctsurv?")
        schema = cls(**{k: tuple(tuple(v) if isinstance(v, list) else v for v in raw[k]) for k in names})
        numeric_ok = len(schema.numeric) == len(schema.means) == len(schema.stds)
        if not (numeric_ok and len(schema.categorical) == len(schema.levels)):
            raise CohortError(f"malformed clinical schema {raw!r}: column and statistic lists differ in length")
        return schema


def _require(df: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [col for col in columns if col not in df.columns]
    if missing:
        raise CohortError(f"clinical columns {missing} are missing; the data has columns {list(map(str, df.columns))}")


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    x = pd.to_numeric(df[col], errors="coerce").astype(np.float64)
    bad = df[col].notna() & x.isna()
    if bad.any():
        raise CohortError(f"clinical column {col!r} has non-numeric values {df[col][bad].head(MAX_LISTED).tolist()} "
                          f"at rows {df.index[bad][:MAX_LISTED].tolist()}; fix them or leave them empty")
    return x


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value

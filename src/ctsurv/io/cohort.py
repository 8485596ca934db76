"""The cohort table: one row per study, validated once at load, and the typing of its clinical columns.

A cohort is a CSV, TSV or Parquet table. Column names come from :class:`~ctsurv.config.DataConfig`:

- ``id``: unique study id, kept as text (``"007"`` stays ``"007"``).
- ``volume``: the CT: a NIfTI / NRRD / MHA file, a ``.npy``/``.npz`` array, or a DICOM series folder.
  Relative paths are relative to the table's folder, so a cohort folder can be moved as a whole.
- ``findings``, ``impression``: optional report text (pretraining needs at least one of them).
- ``time``, ``event``: optional outcome: time > 0 (one unit throughout; the adapters write days),
  event 1 = the event was observed, 0 = censored.
- clinical columns declared in ``data.numeric_columns`` / ``data.categorical_columns``; missing values
  are allowed and kept (imputation is fitted on training rows only, see :class:`ClinicalSchema`).
- ``spacing_z``, ``spacing_y``, ``spacing_x`` (``data.spacing_columns``): optional voxel spacing in mm.
  When filled they override the file's own spacing: ``.npy``/``.npz`` carry none, and CT-RATE's NIfTI
  headers are not reliable.
- ``patient_id`` (:data:`PATIENT_COLUMN`): optional; studies of one patient share it so that
  cross-validation keeps them in one fold. Without it every study is its own patient.
- ``mask`` (``data.mask_column``): optional region mask per study (a tumour, an organ) in any volume format;
  relative paths as for ``volume``. An empty cell means no mask for that study. Without the column, an ``.npz``
  volume that also holds a mask array (``mask``, or ``data.mask_key``) gives it (:meth:`Cohort.mask_path`).
- ``rescale_slope``, ``rescale_intercept`` (:data:`RESCALE_COLUMNS`): optional; when filled the volume
  reader applies ``HU = stored * slope + intercept`` (CT-RATE's metadata), unless the volume holds HU already
  (:func:`ctsurv.io.volumes.to_hu`).

Every check runs at load and all problems are reported together, each naming the table, the column, the
rows (numbered from 1, header excluded, with their ids) and the fix, so a bad table fails before training.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctsurv.config import DataConfig
from ctsurv.errors import CohortError
from ctsurv.io.tables import as_text, describe_rows, did_you_mean
from ctsurv.io.volumes import MASK_KEYS, npz_keys

PATIENT_COLUMN = "patient_id"
RESCALE_COLUMNS: tuple[str, str] = ("rescale_slope", "rescale_intercept")
ARRAY_SUFFIXES = (".npy", ".npz")
SEPARATORS: dict[str, str | None] = {".csv": ",", ".tsv": "\t", ".parquet": None}  # None: Parquet
TABLE_SUFFIXES: tuple[str, ...] = tuple(SEPARATORS)  # what a cohort table may be


# --------------------------------------------------------------------------- the validated cohort


@dataclass(frozen=True, eq=False)
class Cohort:
    """A validated cohort table (index 0..n-1, ids as text) and the folder its relative paths start from."""

    table: pd.DataFrame
    root: Path
    config: DataConfig

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ids(self) -> list[str]:
        return self.table[self.config.id_column].tolist()

    @property
    def volume_paths(self) -> list[Path]:
        """Absolute paths of the volumes (files, or folders for DICOM series)."""
        return [_resolve(self.root, v) for v in self.table[self.config.volume_column]]

    @property
    def has_outcomes(self) -> bool:
        return {self.config.time_column, self.config.event_column} <= set(self.table.columns)

    @property
    def has_reports(self) -> bool:
        return bool(self._report_columns())

    @property
    def times(self) -> np.ndarray:
        """Survival times, float64 (n,)."""
        self._need_outcomes()
        return self.table[self.config.time_column].to_numpy(np.float64)

    @property
    def events(self) -> np.ndarray:
        """Event indicators, bool (n,): True = event observed, False = censored."""
        self._need_outcomes()
        return self.table[self.config.event_column].to_numpy(bool)

    @property
    def patient_ids(self) -> list[str]:
        """Patient of each study (the ``patient_id`` column, else the study id): the CV grouping key."""
        column = PATIENT_COLUMN if PATIENT_COLUMN in self.table.columns else self.config.id_column
        return self.table[column].tolist()

    def reports(self) -> list[str]:
        """Report text per study: findings and impression joined by a blank line, or whichever exists."""
        columns = self._report_columns()
        if not columns:
            raise CohortError(
                f"the cohort in {self.root} has no report text: add a {self.config.findings_column!r} or "
                f"{self.config.impression_column!r} column (or set data.findings_column / data.impression_column)"
            )
        parts = self.table[columns].astype(object).where(self.table[columns].notna(), None)
        return ["\n\n".join(p for p in row if p) for row in parts.itertuples(index=False)]

    def clinical(self) -> pd.DataFrame:
        """The declared clinical columns, indexed by study id (numeric float64, categorical 'string')."""
        columns = [*self.config.numeric_columns, *self.config.categorical_columns]
        return self.table[columns].set_index(self.table[self.config.id_column].rename(None))

    def spacing_zyx(self, i: int) -> tuple[float, float, float] | None:
        """Voxel spacing (Z, Y, X) in mm for row ``i``: the row's spacing columns, else
        ``data.array_spacing_zyx`` for arrays, else None (the volume file's own spacing applies)."""
        columns = list(self.config.spacing_columns)
        if set(columns) <= set(self.table.columns):
            z, y, x = (float(v) for v in self.table.loc[i, columns])
            if not np.isnan(z):
                return (z, y, x)
        if _is_array(self.table.at[i, self.config.volume_column]):
            return self.config.array_spacing_zyx
        return None

    def mask_path(self, i: int) -> Path | None:
        """The region mask of row ``i``: its mask column's path, else its ``.npz`` volume when that also holds a
        mask array (``data.mask_key``, or one named like :data:`~ctsurv.io.volumes.MASK_KEYS`), else None."""
        c = self.config
        if c.mask_column in self.table.columns:
            value = as_text(self.table.at[i, c.mask_column])
            return None if value is None else _resolve(self.root, value)
        volume = self.table.at[i, c.volume_column]
        if not volume.lower().endswith(".npz"):
            return None
        path = _resolve(self.root, volume)
        keys = npz_keys(path) if path.is_file() else []
        has_mask = c.mask_key in keys if c.mask_key is not None else any(k in MASK_KEYS for k in keys)
        return path if len(keys) > 1 and has_mask else None

    def rescale(self, i: int) -> tuple[float, float] | None:
        """(slope, intercept) the volume reader must apply to row ``i`` (HU = stored * slope + intercept), or None."""
        if not set(RESCALE_COLUMNS) <= set(self.table.columns):
            return None
        slope, intercept = (float(v) for v in self.table.loc[i, list(RESCALE_COLUMNS)])
        return None if np.isnan(slope) else (slope, intercept)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Cohort:
        """The cohort restricted to the given row positions (or boolean mask), re-indexed from 0."""
        rows = self.table.iloc[np.asarray(indices)].reset_index(drop=True)
        return dataclasses.replace(self, table=rows)

    def _report_columns(self) -> list[str]:
        c = self.config
        return [col for col in (c.findings_column, c.impression_column) if col in self.table.columns]

    def _need_outcomes(self) -> None:
        if not self.has_outcomes:
            raise CohortError(
                f"the cohort in {self.root} has no outcome: it needs columns {self.config.time_column!r} and "
                f"{self.config.event_column!r} (set data.time_column / data.event_column if they are named otherwise)"
            )


# --------------------------------------------------------------------------- reading and writing


def load_cohort(
    path: str | Path,
    config: DataConfig,
    require_outcomes: bool = False,
    require_reports: bool = False,
    check_files: bool = True,
) -> Cohort:
    """Read and validate a cohort table; raise :class:`CohortError` listing every problem found.

    Outcome columns are validated whenever both are present (not only when required), so a table that
    one command accepts is never rejected by the next. Nothing on disk is modified.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CohortError(f"cohort table {path} does not exist; pass the path of a .csv, .tsv or .parquet table")
    if path.is_dir():
        raise CohortError(f"cohort table {path} is a folder; pass the table file in it (e.g. {path / 'cohort.csv'})")
    raw = _read_table(path, config)
    if len(raw) == 0:
        raise CohortError(f"cohort table {path} has a header but no rows; add one row per study")
    _check_columns(raw, path, config, require_outcomes, require_reports)
    root = path.parent.resolve()
    table, problems = _validate(raw, root, config, require_reports, check_files)
    if len(problems) == 1:
        raise CohortError(f"cohort table {path}: {problems[0]}")
    if problems:
        raise CohortError(f"cohort table {path} has {len(problems)} problems:\n- " + "\n- ".join(problems))
    return Cohort(table=table, root=root, config=config)


def save_cohort(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as CSV, TSV or Parquet (by extension) atomically: a crash never leaves half a table."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SEPARATORS:
        raise CohortError(f"cannot write cohort table {path}: use a .csv, .tsv or .parquet file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, sep=SEPARATORS[suffix], index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read_table(path: Path, config: DataConfig) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in SEPARATORS:
        raise CohortError(f"cohort table {path} has unsupported extension {path.suffix!r}; "
                          f"save it as .csv, .tsv or .parquet")
    text = {config.id_column, config.volume_column, config.findings_column, config.impression_column,
            PATIENT_COLUMN, *config.categorical_columns}  # read as text so "007" and "1" stay as written
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        sep = SEPARATORS[suffix]
        header = pd.read_csv(path, sep=sep, nrows=0).columns
        return pd.read_csv(path, sep=sep, dtype={c: str for c in header if c in text})
    except pd.errors.EmptyDataError:
        raise CohortError(f"cohort table {path} is empty; it needs a header row and one row per study") from None
    except (OSError, ValueError, NotImplementedError) as e:
        raise CohortError(f"cannot read cohort table {path} as {suffix}: {e}") from None


def _check_columns(raw: pd.DataFrame, path: Path, c: DataConfig, require_outcomes: bool, require_reports: bool) -> None:
    """Raise one error naming every missing column, the columns present, and close matches."""
    have = [str(col) for col in raw.columns]
    need = {c.id_column: "study id", c.volume_column: "volume path"}
    if require_outcomes:
        need |= {c.time_column: "survival time", c.event_column: "event indicator 0/1"}
    need |= {col: "declared in data.numeric_columns" for col in c.numeric_columns}
    need |= {col: "declared in data.categorical_columns" for col in c.categorical_columns}
    missing = [f"{col!r} ({why})" for col, why in need.items() if col not in have]
    lacking = [col for col in need if col not in have]
    if require_reports and c.findings_column not in have and c.impression_column not in have:
        missing.append(f"{c.findings_column!r} or {c.impression_column!r} (report text, needed for pretraining)")
        lacking += [c.findings_column, c.impression_column]
    for group, config_key in ((c.spacing_columns, "data.spacing_columns"), (RESCALE_COLUMNS, "")):
        present = [col for col in group if col in have]
        if present and len(present) < len(group):
            why = f"the table has {present} but these come together"
            why += f" (names set by {config_key})" if config_key else ""
            missing += [f"{col!r} ({why})" for col in group if col not in have]
            lacking += [col for col in group if col not in have]
    if not missing:
        return
    known = {*need, *c.spacing_columns, *RESCALE_COLUMNS, c.time_column, c.event_column, c.findings_column,
             c.impression_column, PATIENT_COLUMN, c.mask_column}
    spare = [col for col in have if col not in known]  # only unclaimed columns can be what was meant
    hints = [f"{close!r} for {col!r}" for col in lacking if (close := did_you_mean(col, spare))]
    hint = f" Did you mean {', '.join(hints)}?" if hints else ""
    raise CohortError(
        f"cohort table {path} lacks column(s) {', '.join(missing)}. It has columns: {', '.join(have)}.{hint} "
        f"Rename the columns in the table, or set the names in the data section of the config."
    )


# --------------------------------------------------------------------------- row checks


def _validate(
    raw: pd.DataFrame, root: Path, c: DataConfig, require_reports: bool, check_files: bool
) -> tuple[pd.DataFrame, list[str]]:
    """Type every known column and collect one message per problem."""
    t = raw.reset_index(drop=True).copy()
    problems: list[str] = []
    ids = t[c.id_column].map(as_text)
    t[c.id_column] = ids.astype(object)

    def rows(mask: pd.Series | np.ndarray, values: pd.Series | None = None) -> str:
        return describe_rows(ids, np.flatnonzero(np.asarray(mask, dtype=bool)), values)

    if ids.isna().any():
        problems.append(f"column {c.id_column!r} is empty in {rows(ids.isna())}; give every study an id")
    dup = ids.notna() & ids.duplicated(keep=False)
    if dup.any():
        problems.append(f"column {c.id_column!r} has duplicate ids in {rows(dup)}; "
                        f"ids must be unique (one row per study)")

    volumes = t[c.volume_column].map(as_text)
    t[c.volume_column] = volumes.astype(object)
    if volumes.isna().any():
        problems.append(f"column {c.volume_column!r} is empty in {rows(volumes.isna())}; "
                        f"give every study a volume path")

    if {c.time_column, c.event_column} <= set(t.columns):
        time = pd.to_numeric(t[c.time_column], errors="coerce").astype(np.float64)
        given = t[c.time_column].notna()
        for mask, what in ((given & time.isna(), "non-numeric values"), (~given, "missing values"),
                           (time.notna() & ~(time > 0), "values <= 0"), (np.isinf(time), "infinite values")):
            if mask.any():
                shown = rows(mask, None if what == "missing values" else t[c.time_column])
                problems.append(f"column {c.time_column!r} (survival time) has {what} in {shown}; "
                                f"every time must be a number > 0")
        event = t[c.event_column].map(_parse_event)
        if event.isna().any():
            problems.append(f"column {c.event_column!r} (event indicator) has values other than 0/1 in "
                            f"{rows(event.isna(), t[c.event_column])}; use 1 = event observed, 0 = censored")
        t[c.time_column] = time
        t[c.event_column] = event.fillna(0).astype(bool)

    reports = [col for col in (c.findings_column, c.impression_column) if col in t.columns]
    for col in reports:
        t[col] = t[col].map(as_text).astype("string")
    if require_reports and reports:
        empty = t[reports].isna().all(axis=1)
        if empty.any():
            problems.append(f"columns {reports} (report text) are all empty in {rows(empty)}; pretraining needs "
                            f"a report for every study: fill them or remove these rows")

    for col in c.numeric_columns:
        num = pd.to_numeric(t[col], errors="coerce").astype(np.float64)
        bad = t[col].notna() & (num.isna() | np.isinf(num))
        if bad.any():
            problems.append(f"column {col!r} (declared in data.numeric_columns) has non-numeric values in "
                            f"{rows(bad, t[col])}; fix them, leave missing values empty, or declare {col!r} in "
                            f"data.categorical_columns if it is a category")
        t[col] = num
    for col in c.categorical_columns:
        t[col] = t[col].map(as_text).astype("string")

    filled = pd.Series(False, index=t.index)
    if set(c.spacing_columns) <= set(t.columns):
        spacing = t[list(c.spacing_columns)].apply(pd.to_numeric, errors="coerce").astype(np.float64)
        bad = (t[list(c.spacing_columns)].notna() & ~(spacing > 0) | np.isinf(spacing)).any(axis=1)
        if bad.any():
            problems.append(f"spacing columns {list(c.spacing_columns)} have values that are not positive numbers "
                            f"(mm) in {rows(bad)}; fix them or leave all three empty to use the file's spacing")
        partial = spacing.notna().any(axis=1) & spacing.isna().any(axis=1)
        if partial.any():
            problems.append(f"spacing columns {list(c.spacing_columns)} are only partly filled in {rows(partial)}; "
                            f"fill all three or none")
        t[list(c.spacing_columns)] = spacing
        filled = spacing.notna().all(axis=1)

    if set(RESCALE_COLUMNS) <= set(t.columns):
        slope, intercept = (pd.to_numeric(t[col], errors="coerce").astype(np.float64) for col in RESCALE_COLUMNS)
        bad = (t[list(RESCALE_COLUMNS)].notna() & pd.concat([slope, intercept], axis=1).isna().to_numpy()).any(axis=1)
        bad |= slope.isna() != intercept.isna()
        bad |= slope == 0
        if bad.any():
            problems.append(f"columns {list(RESCALE_COLUMNS)} must both be numbers (slope != 0) or both empty; "
                            f"see {rows(bad)}")
        t[RESCALE_COLUMNS[0]], t[RESCALE_COLUMNS[1]] = slope, intercept

    if PATIENT_COLUMN in t.columns:
        patients = t[PATIENT_COLUMN].map(as_text)
        if patients.isna().any():
            problems.append(f"column {PATIENT_COLUMN!r} is empty in {rows(patients.isna())}; fill it, or drop the "
                            f"column to treat every study as its own patient")
        t[PATIENT_COLUMN] = patients.astype(object)

    arrays = volumes.map(lambda v: v is not None and _is_array(v)).astype(bool)
    if c.array_spacing_zyx is None and (arrays & ~filled).any():
        z, y, x = c.spacing_columns
        problems.append(f"volumes in {rows(arrays & ~filled, t[c.volume_column])} are .npy/.npz arrays, which carry "
                        f"no voxel spacing; add columns {z!r}, {y!r}, {x!r} (mm) to the table or set "
                        f"data.array_spacing_zyx in the config")

    if c.mask_column in t.columns:
        t[c.mask_column] = t[c.mask_column].map(as_text).astype(object)
    if check_files:
        for column, what in ((c.volume_column, "volumes"), (c.mask_column, "masks")):
            if column not in t.columns:
                continue
            paths = t[column].map(lambda v: None if v is None else str(_resolve(root, v)))
            absent = paths.notna() & ~paths.map(lambda p: p is not None and os.path.exists(p)).astype(bool)
            if absent.any():
                problems.append(f"{what} do not exist for {rows(absent, paths)}; fix column {column!r} "
                                f"(relative paths are resolved against {root})")
    return t, problems








def _parse_event(value: Any) -> int | None:
    """0/1 from ints, floats, bools and the strings '0'/'1'/'true'/'false'; None for anything else."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return int(value) if value in (0, 1) else None
    if isinstance(value, str):
        return {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}.get(value.strip().lower())
    return None


def _is_array(volume: str) -> bool:
    return volume.lower().endswith(ARRAY_SUFFIXES)


def _resolve(root: Path, volume: str) -> Path:
    return Path(os.path.normpath(root / Path(volume).expanduser()))

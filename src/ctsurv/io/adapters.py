"""Turn the tables of public CT datasets into cohort tables (schema: :mod:`ctsurv.io.cohort`).

Each adapter reads the dataset's own files with their published column names, checks that they agree
with each other, resolves every volume path, and returns a DataFrame in the cohort schema (written with
:func:`save_cohort` when ``out`` is given). Volume paths are absolute, so the table may be written anywhere.

CT-RATE (chest CT + reports; Hugging Face ``ibrahimhamamci/CT-RATE``)
    ``*_reports.csv``: ``VolumeName, ClinicalInformation_EN, Technique_EN, Findings_EN, Impressions_EN``;
    ``*_metadata.csv``: ``VolumeName, RescaleSlope, RescaleIntercept, XYSpacing, ZSpacing, ...``.
    Volumes live at ``<root>/<split>/<split>_<patient>/<split>_<patient>_<scan>/<VolumeName>``.
    The NIfTIs hold raw stored values and unreliable spacing: the cohort carries ``rescale_slope`` /
    ``rescale_intercept`` (the volume reader must apply HU = stored * slope + intercept) and spacing columns
    taken from the metadata (XYSpacing is DICOM PixelSpacing, [row = Y, column = X]).

INSPECT v2 (CTPA + impressions + EHR outcomes; Stanford AIMI, release files dated 20250611)
    ``impressions_*.tsv``: ``impression_id, impressions``;
    ``labels_*.tsv``: ``impression_id, pe_positive_nlp, 1_month_mortality, ..., tte_<outcome>, is_censored_<outcome>``
    with outcome in mortality, readmission, PH, Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural_Effusion;
    ``study_mapping_*.tsv``: ``impression_id, person_id, image_id, procedure_DATETIME, ...``;
    ``splits_*.tsv`` (optional): ``impression_id, split``.
    Volumes are ``<root>/<image_id>.nii.gz`` (the release's ``CTPA/`` folder). ``tte_*`` are in minutes.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctsurv.config import DataConfig
from ctsurv.errors import CohortError
from ctsurv.io.cohort import PATIENT_COLUMN, RESCALE_COLUMNS, save_cohort
from ctsurv.io.tables import MAX_LISTED, did_you_mean

CTRATE_NAME = re.compile(r"^(?P<split>[A-Za-z]+)_(?P<patient>\d+)_(?P<scan>[A-Za-z0-9]+)_(?P<recon>\d+)\.nii(?:\.gz)?$")
MINUTES_PER: dict[str, float] = {"days": 1440.0, "hours": 60.0, "minutes": 1.0, "seconds": 1 / 60}
TEXT_COLUMNS = ("person_id", "image_id", "split")  # ids read as text, never as floats
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


# --------------------------------------------------------------------------- CT-RATE


def ctrate_to_cohort(
    reports_csv: str | Path,
    metadata_csv: str | Path,
    volume_root: str | Path,
    out: str | Path | None = None,
    *,
    split_folders: Mapping[str, str] | None = None,
    skip_missing_volumes: bool = False,
    config: DataConfig | None = None,
) -> pd.DataFrame:
    """CT-RATE reports + metadata -> cohort table (one row per volume, id = name without '.nii.gz').

    ``split_folders`` renames split folders (e.g. ``{"train": "train_fixed"}`` for the re-saved volumes);
    ``skip_missing_volumes`` keeps only volumes present under ``volume_root`` (for partial downloads).
    """
    c = config or DataConfig()
    key = "VolumeName"
    reports = _read_source(reports_csv, [key, "Findings_EN", "Impressions_EN"], key)
    meta = _read_source(metadata_csv, [key, "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"], key)
    _check_same_keys(reports, meta, key, Path(reports_csv), Path(metadata_csv))
    df = reports.merge(meta, on=key, validate="one_to_one")

    parts = df[key].str.extract(CTRATE_NAME)
    _fail_rows(parts["split"].isna(), df[key], Path(reports_csv), f"column {key!r} has names that are not of the form "
               f"<split>_<patient>_<scan>_<reconstruction>.nii.gz (e.g. train_1_a_1.nii.gz)")
    folders = parts["split"].map(lambda s: (split_folders or {}).get(s, s))
    patient = parts["split"] + "_" + parts["patient"]
    root = Path(volume_root).expanduser().resolve()
    layout = zip(folders, patient, parts["scan"], df[key], strict=True)  # <split>/<split>_<patient>/<..>_<scan>/<name>
    volumes = [str(root / folder / p / f"{p}_{scan}" / name) for folder, p, scan, name in layout]

    xy = df["XYSpacing"].map(_parse_xy)
    z = pd.to_numeric(df["ZSpacing"], errors="coerce")
    slope = pd.to_numeric(df["RescaleSlope"], errors="coerce")
    intercept = pd.to_numeric(df["RescaleIntercept"], errors="coerce")
    _fail_rows(xy.isna() | ~(z > 0), df[key], Path(metadata_csv), "columns 'XYSpacing' / 'ZSpacing' are not positive "
               "spacings (XYSpacing like '[0.75, 0.75]', ZSpacing a number)",
               df["XYSpacing"].astype(str) + " / " + df["ZSpacing"].astype(str))
    _fail_rows(slope.isna() | intercept.isna() | (slope == 0), df[key], Path(metadata_csv),
               "columns 'RescaleSlope' / 'RescaleIntercept' are not numbers (slope != 0)")

    sz, sy, sx = c.spacing_columns
    table = pd.DataFrame({
        c.id_column: df[key].str.replace(r"\.nii(\.gz)?$", "", regex=True),
        PATIENT_COLUMN: patient,
        c.volume_column: volumes,
        c.findings_column: df["Findings_EN"],
        c.impression_column: df["Impressions_EN"],
        sz: z.astype(np.float64),
        sy: xy.map(lambda v: v[0]).astype(np.float64),
        sx: xy.map(lambda v: v[1]).astype(np.float64),
        RESCALE_COLUMNS[0]: slope.astype(np.float64),
        RESCALE_COLUMNS[1]: intercept.astype(np.float64),
    })
    extras = [("ClinicalInformation_EN", "clinical_information"), ("Technique_EN", "technique")]
    for source, column in reversed(extras):  # context for instruction data; not part of the report text
        if source in df.columns:
            table.insert(table.columns.get_loc(c.impression_column) + 1, column, df[source])
    return _finish(table, c, skip_missing_volumes, out)


def _parse_xy(value: Any) -> tuple[float, float] | float:
    """'[0.75, 0.75]' -> (0.75, 0.75) as (Y, X); a single number applies to both; NaN when unparseable."""
    numbers = [float(m) for m in _NUMBER.findall(str(value))] if not pd.isna(value) else []
    if len(numbers) == 1:
        numbers *= 2
    if len(numbers) != 2 or min(numbers) <= 0:
        return np.nan
    return (numbers[0], numbers[1])


# --------------------------------------------------------------------------- INSPECT


def inspect_to_cohort(
    impressions_tsv: str | Path,
    labels_tsv: str | Path,
    mapping_tsv: str | Path,
    volume_root: str | Path,
    out: str | Path | None = None,
    *,
    outcome: str | None = "mortality",
    time_unit: str = "minutes",
    splits_tsv: str | Path | None = None,
    min_time_days: float | None = None,
    drop_invalid_outcomes: bool = False,
    skip_missing_volumes: bool = False,
    config: DataConfig | None = None,
) -> pd.DataFrame:
    """INSPECT impressions + labels + study mapping -> cohort table (one row per impression_id).

    time = ``tte_<outcome>`` converted from ``time_unit`` to days; event = not ``is_censored_<outcome>``.
    ``outcome=None`` gives a pretraining table (impressions, no outcome). Rows whose outcome is missing or
    not > 0 are an error unless ``drop_invalid_outcomes``; ``min_time_days`` raises times in
    (-1 day, min_time_days) to min_time_days (deaths dated at midnight of the scan day give times <= 0).
    """
    c = config or DataConfig()
    key = "impression_id"
    if time_unit not in MINUTES_PER:
        raise CohortError(f"time_unit {time_unit!r} is not one of {list(MINUTES_PER)}")
    impressions = _read_source(impressions_tsv, [key, "impressions"], key)
    mapping = _read_source(mapping_tsv, [key, "person_id", "image_id"], key)
    _check_covers(impressions, mapping, key, Path(impressions_tsv), Path(mapping_tsv))
    df = impressions.merge(mapping[[key, "person_id", "image_id"]], on=key, how="left", validate="one_to_one")
    image = df["image_id"].astype("string").str.strip().str.replace(r"\.nii\.gz$", "", regex=True)
    _fail_rows(image.isna() | (image == ""), df[key], Path(mapping_tsv), "column 'image_id' is empty")
    _fail_rows(df["person_id"].isna(), df[key], Path(mapping_tsv), "column 'person_id' is empty")
    root = Path(volume_root).expanduser().resolve()
    table = pd.DataFrame({
        c.id_column: df[key],
        PATIENT_COLUMN: df["person_id"].astype(str),
        c.volume_column: [str(root / f"{i}.nii.gz") for i in image],
        c.impression_column: df["impressions"],
        "image_id": image.astype(object),
    })
    if splits_tsv is not None:
        splits = _read_source(splits_tsv, [key, "split"], key)
        _check_covers(impressions, splits, key, Path(impressions_tsv), Path(splits_tsv))
        table["split"] = df[[key]].merge(splits[[key, "split"]], on=key, how="left")["split"].to_numpy()
    if outcome is not None:
        time, event = _inspect_outcome(df[[key]], labels_tsv, key, outcome, time_unit, min_time_days)
        table[c.time_column], table[c.event_column] = time, event
        invalid = time.isna() | ~(time > 0) | event.isna()
        if invalid.any() and drop_invalid_outcomes:
            warnings.warn(f"dropped {int(invalid.sum())} of {len(table)} INSPECT studies whose {outcome} outcome is "
                          f"missing or not > 0", stacklevel=2)
            table = table[~invalid.to_numpy()].reset_index(drop=True)
        else:
            _fail_rows(invalid, df[key], Path(labels_tsv), f"outcome {outcome!r} is missing or its time is not > 0 "
                       f"(pass drop_invalid_outcomes=True to drop these rows, "
                       f"or min_time_days=0.5 to keep same-day events)",
                       time.round(3).astype(str) + " days, event " + event.astype(str))
        table[c.event_column] = table[c.event_column].astype(int)
    return _finish(table, c, skip_missing_volumes, out)


def _inspect_outcome(ids: pd.DataFrame, labels_tsv: str | Path, key: str, outcome: str, time_unit: str,
                     min_time_days: float | None) -> tuple[pd.Series, pd.Series]:
    """(time in days, event 0/1 with NA where unknown) aligned with ``ids``."""
    tte, censored = f"tte_{outcome}", f"is_censored_{outcome}"
    labels = _read_source(labels_tsv, [key, tte, censored], key)
    _check_covers(ids, labels, key, None, Path(labels_tsv))
    rows = ids.merge(labels[[key, tte, censored]], on=key, how="left")
    time = pd.to_numeric(rows[tte], errors="coerce") * MINUTES_PER[time_unit] / MINUTES_PER["days"]
    if min_time_days is not None:
        time = time.mask((time > -1) & (time < min_time_days), min_time_days)
    flag = rows[censored].map(_parse_flag)
    event = (1 - flag).astype("Int64")
    return time.astype(np.float64), event


def _parse_flag(value: Any) -> float:
    """True/False, 1/0 and their spellings -> 1.0/0.0; NaN otherwise."""
    text = str(value).strip().lower()
    return {"true": 1.0, "1": 1.0, "1.0": 1.0, "t": 1.0, "false": 0.0, "0": 0.0, "0.0": 0.0, "f": 0.0}.get(text, np.nan)


# --------------------------------------------------------------------------- shared steps


def _read_source(path: str | Path, required: Sequence[str], key: str) -> pd.DataFrame:
    """Read a dataset CSV/TSV (tab when the name ends in .tsv), keys as text; check columns and unique keys."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CohortError(f"{path} does not exist; pass the dataset's table file")
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        df = pd.read_csv(path, sep=sep, dtype={col: str for col in (key, *TEXT_COLUMNS)}, low_memory=False)
    except (OSError, ValueError) as e:
        raise CohortError(f"cannot read {path}: {e}") from None
    missing = [col for col in required if col not in df.columns]
    if missing:
        hints = [f"{m!r} for {col!r}" for col in missing if (m := did_you_mean(col, list(map(str, df.columns))))]
        raise CohortError(f"{path} lacks column(s) {missing}; it has {list(map(str, df.columns))}"
                          + (f"; did you mean {', '.join(hints)}?" if hints else "")
                          + "; is this the right file of the right dataset release?")
    df = df.drop_duplicates().reset_index(drop=True)  # releases repeat some identical rows
    df[key] = df[key].str.strip()
    _fail_rows(df[key].isna() | (df[key] == ""), df[key], path, f"column {key!r} is empty")
    dup = df[key].duplicated(keep=False)
    _fail_rows(dup, df[key], path, f"column {key!r} has the same key on rows that differ")
    return df


def _check_same_keys(a: pd.DataFrame, b: pd.DataFrame, key: str, path_a: Path, path_b: Path) -> None:
    """Both tables must list exactly the same keys."""
    only_a, only_b = _difference(a[key], b[key]), _difference(b[key], a[key])
    if only_a or only_b:
        raise CohortError(
            f"{path_a} and {path_b} disagree on {key!r}: {_listing(only_a)} only in the first, "
            f"{_listing(only_b)} only in the second; use the reports and metadata files of the same split and release"
        )


def _check_covers(base: pd.DataFrame, other: pd.DataFrame, key: str, base_path: Path | None, other_path: Path) -> None:
    """Every key of ``base`` must be in ``other`` (extra keys in ``other`` are ignored)."""
    lacking = _difference(base[key], other[key])
    if lacking:
        source = f" (listed in {base_path})" if base_path else ""
        raise CohortError(f"{other_path} has no row for {key} {_listing(lacking)}{source}; use files of the same "
                          f"dataset release")


def _difference(a: pd.Series, b: pd.Series) -> list[str]:
    return sorted(set(a) - set(b))


def _listing(values: list[str]) -> str:
    shown = ", ".join(map(repr, values[:MAX_LISTED]))
    more = f" and {len(values) - MAX_LISTED} more" if len(values) > MAX_LISTED else ""
    return f"{len(values)} ({shown}{more})" if values else "0"


def _fail_rows(mask: pd.Series | np.ndarray, keys: pd.Series, path: Path, problem: str,
               values: Iterable[Any] | None = None) -> None:
    """Raise naming the keys (and values) of the rows where ``mask`` holds."""
    positions = np.flatnonzero(np.asarray(mask, dtype=bool))
    if len(positions) == 0:
        return
    vals = list(values) if values is not None else None
    shown = [f"{keys.iloc[p]!r}" + (f" = {vals[p]}" if vals is not None else "") for p in positions[:MAX_LISTED]]
    more = f" and {len(positions) - MAX_LISTED} more" if len(positions) > MAX_LISTED else ""
    raise CohortError(f"{path}: {problem} in {len(positions)} row(s): {', '.join(shown)}{more}")


def _finish(table: pd.DataFrame, c: DataConfig, skip_missing_volumes: bool, out: str | Path | None) -> pd.DataFrame:
    """Optionally drop rows whose volume is absent, then write the table when ``out`` is given."""
    if skip_missing_volumes:
        present = table[c.volume_column].map(lambda p: Path(p).exists()).astype(bool)
        if not present.any():
            raise CohortError(f"none of the {len(table)} volumes exist (first: {table[c.volume_column].iloc[0]}); "
                              f"check volume_root")
        if not present.all():
            absent = int((~present).sum())
            warnings.warn(f"skipped {absent} of {len(table)} studies whose volume file is absent", stacklevel=3)
        table = table[present.to_numpy()].reset_index(drop=True)
    if out is not None:
        save_cohort(table, out)
    return table

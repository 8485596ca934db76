"""``ctsurv cohort ct-rate`` and ``ctsurv cohort inspect``: the cohort table of a downloaded public dataset.

The adapters (:mod:`ctsurv.io.adapters`) as commands: the dataset's files are found under the folder the user
downloaded (each can be overridden by an option), and every problem names the path and the option to pass.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from ctsurv.cli.common import console, user_errors
from ctsurv.errors import CtsurvError
from ctsurv.outputs import check_output_file

cohort_app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Cohort tables from downloaded public datasets (CT-RATE, INSPECT), ready for `ctsurv pretrain`.",
)
CTRATE_TABLE_SPLIT = {"train": "train", "valid": "validation"}  # --split -> the word in CT-RATE's table names
# the adapters' hints name Python arguments; on the command line they are options
_ADAPTER_HINTS = {
    "drop_invalid_outcomes=True": "--drop-invalid-outcomes",
    "min_time_days=0.5": "--min-time-days 0.5",
}


# the options both commands have
OUT = typer.Option(..., "--out", help="Cohort table to write (.csv, .tsv or .parquet).")
SKIP_MISSING_VOLUMES = typer.Option(False, "--skip-missing-volumes", help="Write only the studies whose volume file is "
                                    "present (a partial download); otherwise an absent volume is an error.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing --out table.")


@cohort_app.command("ct-rate")
@user_errors
def cohort_ct_rate(
    root: Path = typer.Argument(..., metavar="ROOT", help="The downloaded CT-RATE dataset/ folder (Hugging Face ibrahimhamamci/CT-RATE), or the folder holding it."),
    out: Path = OUT,
    split: str = typer.Option("train", "--split", help="train or valid."),
    reports: Path | None = typer.Option(None, "--reports", help="Reports CSV (default: ROOT/radiology_text_reports/train_reports.csv, validation_reports.csv for --split valid)."),
    metadata: Path | None = typer.Option(None, "--metadata", help="Metadata CSV (default: ROOT/metadata/train_metadata.csv, validation_metadata.csv for --split valid)."),
    volumes: Path | None = typer.Option(None, "--volumes", help="Folder holding the split's patient folders (train_1/, train_2/, ...) (default: ROOT/train_fixed, else ROOT/train; valid_fixed, valid for --split valid)."),
    skip_missing_volumes: bool = SKIP_MISSING_VOLUMES,
    overwrite: bool = OVERWRITE,
) -> None:
    """CT-RATE -> cohort table: one row per volume with its path, report, patient, spacing and rescale."""
    from ctsurv.io.adapters import ctrate_to_cohort

    if split not in CTRATE_TABLE_SPLIT:
        raise CtsurvError(f"--split {split!r} is not one of {list(CTRATE_TABLE_SPLIT)}")
    base = _dataset_root(root, "CT-RATE", "dataset/ folder", marker="radiology_text_reports", parent="dataset")
    word = CTRATE_TABLE_SPLIT[split]
    reports = _dataset_path(reports, base / "radiology_text_reports" / f"{word}_reports.csv", "--reports", "CSV")
    metadata = _dataset_path(metadata, base / "metadata" / f"{word}_metadata.csv", "--metadata", "CSV")
    if volumes is None:
        candidates = [base / f"{split}_fixed", base / split]
        found = [c for c in candidates if c.is_dir()]
        if not found:
            raise CtsurvError(f"no volume folder for --split {split}: neither {candidates[0]} nor {candidates[1]} "
                              f"exists; pass --volumes with the folder that holds {split}_1/, {split}_2/, ...")
        volumes = found[0]
    volumes = _dataset_path(volumes, volumes, "--volumes", "folder")
    _check_table_out(out, [reports, metadata], overwrite)

    volume_root = volumes.resolve()
    table = ctrate_to_cohort(reports, metadata, volume_root.parent, split_folders={split: volume_root.name})
    other = table["id"][~table["id"].str.startswith(f"{split}_")]
    if len(other):
        named = other.iloc[0].split("_")[0]
        hint = f"pass --split {named}" if named in CTRATE_TABLE_SPLIT else "pass the reports of one split"
        raise CtsurvError(f"{reports} lists volumes of another split than {split!r} ({len(other)} of {len(table)}, "
                          f"e.g. {other.iloc[0]!r}); {hint}, or --reports and --metadata of split {split!r}")
    table, absent = _present_volumes(table, volume_root, reports, skip_missing_volumes)
    _write_cohort(table, out, require_outcomes=False)
    console.print(f"CT-RATE {split}: {len(table)} volumes of {table['patient_id'].nunique()} patients from "
                  f"{escape(str(reports))} and {escape(str(metadata))}, volumes under {escape(str(volumes))}")
    _print_written(table, out, absent, volumes)


@cohort_app.command("inspect")
@user_errors
def cohort_inspect(
    root: Path = typer.Argument(..., metavar="ROOT", help="The downloaded INSPECT release folder (Stanford AIMI; the one holding impressions_*.tsv, labels_*.tsv, study_mapping_*.tsv and CTPA/), or the folder holding it as full/."),
    out: Path = OUT,
    outcome: str = typer.Option("mortality", "--outcome", help="Outcome for time/event: mortality, readmission, PH, Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural_Effusion (labels' tte_<outcome>, is_censored_<outcome>), or none for a pretraining table."),
    time_unit: str = typer.Option("minutes", "--time-unit", help="Unit of the labels' tte_* columns (minutes in the 20250611 release): days, hours, minutes or seconds; the cohort's time is in days."),
    impressions: Path | None = typer.Option(None, "--impressions", help="Impressions TSV (default: the one ROOT/impressions_*.tsv)."),
    labels_tsv: Path | None = typer.Option(None, "--labels", help="Labels TSV (default: the one ROOT/labels_*.tsv)."),
    mapping: Path | None = typer.Option(None, "--mapping", help="Study mapping TSV (default: the one ROOT/study_mapping_*.tsv)."),
    splits: Path | None = typer.Option(None, "--splits", help="Splits TSV, copied into a split column (default: the one ROOT/splits_*.tsv, if any)."),
    volumes: Path | None = typer.Option(None, "--volumes", help="Folder of the <image_id>.nii.gz volumes (default: ROOT/CTPA)."),
    min_time_days: float | None = typer.Option(None, "--min-time-days", help="Raise times in (-1 day, this) to this (events dated at midnight of the scan day give times <= 0)."),
    drop_invalid_outcomes: bool = typer.Option(False, "--drop-invalid-outcomes", help="Drop studies whose outcome is missing or not > 0 instead of failing."),
    skip_missing_volumes: bool = SKIP_MISSING_VOLUMES,
    overwrite: bool = OVERWRITE,
) -> None:
    """INSPECT -> cohort table: one row per study with its volume, impression, patient and outcome (days, event)."""
    from ctsurv.io.adapters import MINUTES_PER, inspect_to_cohort

    if time_unit not in MINUTES_PER:
        raise CtsurvError(f"--time-unit {time_unit!r} is not one of {list(MINUTES_PER)}")
    base = _dataset_root(root, "INSPECT", "release folder", marker="CTPA", parent="full")
    tables = {}
    for name, given, option in [("impressions", impressions, "--impressions"), ("labels", labels_tsv, "--labels"),
                                ("study_mapping", mapping, "--mapping"), ("splits", splits, "--splits")]:
        tables[name] = _release_table(base, name, given, option, required=name != "splits")
    volumes = _dataset_path(volumes, base / "CTPA", "--volumes", "folder")
    _check_table_out(out, [t for t in tables.values() if t is not None], overwrite)

    chosen = None if outcome.lower() == "none" else outcome
    with _adapter_notes() as notes:
        table = inspect_to_cohort(tables["impressions"], tables["labels"], tables["study_mapping"], volumes,
                                  outcome=chosen, time_unit=time_unit, splits_tsv=tables["splits"],
                                  min_time_days=min_time_days, drop_invalid_outcomes=drop_invalid_outcomes)
    table, absent = _present_volumes(table, volumes.resolve(), tables["study_mapping"], skip_missing_volumes)
    _write_cohort(table, out, require_outcomes=chosen is not None)
    what = "no outcome (a pretraining table)" if chosen is None else (
        f"outcome {chosen}: {int(table['event'].sum())} events, time in days")
    console.print(f"INSPECT: {len(table)} studies of {table['patient_id'].nunique()} patients, {escape(what)}")
    for note in notes:
        console.print(f"note: {escape(note)}", soft_wrap=True, highlight=False)
    _print_written(table, out, absent, volumes)


def _dataset_root(root: Path, dataset: str, what: str, *, marker: str, parent: str) -> Path:
    """``root``, or ``root/parent`` when the user named the folder above the dataset's own folder."""
    if not root.is_dir():
        raise CtsurvError(f"{root} is not a folder; pass the downloaded {dataset} {what}")
    if not (root / marker).exists() and (root / parent).is_dir():
        return root / parent
    return root


def _dataset_path(given: Path | None, default: Path, option: str, kind: str) -> Path:
    """The path an option gives, or the dataset's default one; it must exist as a file ("CSV"/"TSV") or folder."""
    path = default if given is None else given
    if not path.exists():
        raise CtsurvError(f"{option} {path} does not exist" if given is not None
                          else f"{path} does not exist; pass {option} with the path of the {kind}")
    if path.is_dir() != (kind == "folder"):
        raise CtsurvError(f"{option} {path} is {'not a folder' if kind == 'folder' else 'a folder'}; pass the "
                          f"{kind} with {option}")
    return path


def _release_table(base: Path, name: str, given: Path | None, option: str, *, required: bool) -> Path | None:
    """The one ``<name>_*.tsv`` in ``base`` (INSPECT dates its release files), or the path ``option`` gives."""
    if given is not None:
        return _dataset_path(given, given, option, "TSV")
    found = sorted(base.glob(f"{name}_*.tsv"))
    if len(found) > 1:
        raise CtsurvError(f"{len(found)} files match {base / f'{name}_*.tsv'} ({', '.join(p.name for p in found)}); "
                          f"pass {option} with the one to use")
    if not found and required:
        raise CtsurvError(f"no {base / f'{name}_*.tsv'} found; pass {option} with the path of the TSV")
    return found[0] if found else None


def _check_table_out(out: Path, inputs: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, an --out that is not a table name, is a folder or an input, or holds a table."""
    from ctsurv.io.cohort import TABLE_SUFFIXES

    if out.suffix.lower() not in TABLE_SUFFIXES:
        raise CtsurvError(f"--out {out} must end in {', '.join(TABLE_SUFFIXES)}")
    check_output_file(out, inputs, "--out")
    if out.exists() and out.stat().st_size > 0 and not overwrite:
        raise CtsurvError(f"--out {out} already exists; pass --overwrite to replace it, or choose a new --out")


@contextlib.contextmanager
def _adapter_notes() -> Iterator[list[str]]:
    """Collect the adapters' UserWarnings (rows dropped) as notes to print; other warnings go on as usual."""
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield notes
        except CtsurvError as e:
            message = str(e)
            for hint, option in _ADAPTER_HINTS.items():
                message = message.replace(hint, option)
            raise CtsurvError(message) from None
    for w in caught:
        if w.category is UserWarning:
            notes.append(str(w.message))
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _present_volumes(table: Any, volumes: Path, listed_in: Path, skip: bool) -> tuple[Any, list[str]]:
    """Keep the rows whose volume exists (``skip``), or refuse absent volumes; return the table and the absent paths."""
    present = table["volume"].map(os.path.exists).astype(bool)
    absent = table["volume"][~present].tolist()
    if not present.any():
        raise CtsurvError(f"none of the {len(table)} volumes listed in {listed_in} is under {volumes} (the first "
                          f"would be {absent[0]}); pass --volumes with the folder that holds them")
    if absent and not skip:
        raise CtsurvError(f"{len(absent)} of the {len(table)} volumes listed in {listed_in} are not under {volumes} "
                          f"(e.g. {absent[0]}); pass --skip-missing-volumes to write the {int(present.sum())} "
                          f"studies present (a partial download), or --volumes with the folder that holds them all")
    return table[present.to_numpy()].reset_index(drop=True), absent


def _write_cohort(table: Any, out: Path, *, require_outcomes: bool) -> None:
    """Check ``table`` as ``ctsurv pretrain`` / ``survival`` will load it, then write it to ``out`` atomically."""
    import tempfile

    from ctsurv.config import DataConfig
    from ctsurv.io.cohort import load_cohort, save_cohort

    with tempfile.TemporaryDirectory(prefix="ctsurv-cohort-") as tmp:
        draft = save_cohort(table, Path(tmp) / out.name)
        try:
            load_cohort(draft, DataConfig(), require_outcomes=require_outcomes, require_reports=True, check_files=False)
        except CtsurvError as e:  # e.g. a study without report text: pretrain would refuse the table
            raise CtsurvError(f"{str(e).replace(str(draft), str(out))}; nothing was written") from None
    save_cohort(table, out)


def _print_written(table: Any, out: Path, absent: list[str], volumes: Path) -> None:
    if absent:
        console.print(f"skipped {len(absent)} of {len(table) + len(absent)} studies: their volume is not under {escape(str(volumes))} "
                      f"(e.g. {escape(absent[0])})", soft_wrap=True, highlight=False)
    console.print(f"cohort: [bold]{escape(str(out))}[/] ({len(table)} rows)")
    console.print(f"next: ctsurv pretrain --config FILE --cohort {escape(str(out))} --out RUN", soft_wrap=True,
                  highlight=False)

"""The ``ctsurv`` command line: parse, load config, call one function per command.

Heavy imports (torch, MONAI) happen inside the commands so that ``ctsurv --help`` is instant.
Errors the user can fix (:class:`ctsurv.errors.CtsurvError`, and a file that cannot be read or
written) end the command with a one-line reason on stderr and exit status 2, without a traceback.
Commands write through :mod:`ctsurv.outputs`: their outputs appear whole or not at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from ctsurv.errors import CtsurvError
from ctsurv.outputs import check_output_file, staged_output

app = typer.Typer(
    name="ctsurv",
    help="3D-CT vision-language model and survival prediction from CT plus clinical data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _setup() -> None:
    """Offline by design: Hugging Face libraries never reach a hub, and their progress bars stay quiet."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# errno -> (what failed, what to do) for a file or folder the command cannot read or write
_FILE_ERRORS = {
    errno.EACCES: ("permission denied", "choose a path you may read and write"),
    errno.EPERM: ("operation not permitted", "choose a path you may read and write"),
    errno.EROFS: ("read-only file system", "choose a writable location"),
    errno.ENOSPC: ("no space left on the device", "free some space or choose another location"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another location"),
    errno.EISDIR: ("it is a folder", "pass a file path"),
    errno.ENOTDIR: ("a part of the path is not a folder", "check the path"),
    errno.EEXIST: ("a file is in the way of a folder", "check the path"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
}


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a CtsurvError, or an OSError on a file (permission, space, a folder for a file...), into a one-line
    message and exit status 2. Other exceptions are bugs and keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CtsurvError as e:
            _fail("; ".join([str(e), *getattr(e, "__notes__", ())]))
        except OSError as e:
            if e.errno not in _FILE_ERRORS or e.filename is None:
                raise
            reason, hint = _FILE_ERRORS[e.errno]
            _fail("; ".join([f"cannot read or write {e.filename}: {reason}", hint, *getattr(e, "__notes__", ())]))
        except KeyboardInterrupt as e:  # click prints "Aborted!" only: say where a kept partial run is
            for note in getattr(e, "__notes__", ()):
                err_console.print(escape(note), soft_wrap=True, highlight=False)
            raise

    return wrapper


def _fail(message: str) -> NoReturn:
    """Print ``message`` as one ``error:`` line on stderr and exit with status 2."""
    line = " ".join(part.strip() for part in message.splitlines())
    err_console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2) from None


@app.command()
@_user_errors
def simulate(
    out: Path = typer.Option(..., "--out", help="Folder to create for cohort.csv, volumes/ and truth.csv."),
    n: int = typer.Option(600, "--n", help="Number of patients."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same cohort."),
    image_signal: float = typer.Option(1.0, "--image-signal", help="SD of the image part of the true log-hazard."),
    clinical_signal: float = typer.Option(0.3, "--clinical-signal", help="SD of the clinical part of the true log-hazard."),
    shape: tuple[int, int, int] = typer.Option((48, 64, 64), "--shape", help="Volume shape Z Y X (voxels)."),
    spacing: tuple[float, float, float] = typer.Option((6.0, 5.0, 5.0), "--spacing", help="Voxel spacing Z Y X (mm)."),
    workers: int | None = typer.Option(None, "--workers", help="Processes for rendering (default: all cores)."),
) -> None:
    """Simulate a synthetic chest-CT cohort with reports, clinical data and survival (true risk known)."""
    from ctsurv.synthetic.simulate import refuse_existing
    from ctsurv.synthetic.simulate import simulate as run_simulation

    refuse_existing(out)  # the message that names an existing cohort.csv
    with staged_output(out) as folder:
        summary = run_simulation(
            folder,
            n=n,
            seed=seed,
            image_signal=image_signal,
            clinical_signal=clinical_signal,
            shape_zyx=shape,
            spacing_zyx=spacing,
            workers=workers,
            progress=True,
        )
    summary = dataclasses.replace(summary, out_dir=out)
    console.print(summary.to_table())
    console.print(f"cohort: [bold]{summary.out_dir / 'cohort.csv'}[/]  volumes: {summary.out_dir / 'volumes'}  "
                  f"truth (evaluation only): {summary.out_dir / 'truth.csv'}")


@app.command()
@_user_errors
def inspect(
    volume: Path = typer.Argument(..., help="A CT volume: NIfTI, DICOM series folder, NRRD/MHA, or .npy/.npz."),
    png: Path | None = typer.Option(None, "--png", help="Write an axial/coronal/sagittal montage to this PNG."),
    spacing: tuple[float, float, float] | None = typer.Option(
        None, "--spacing", help="Spacing Z Y X in mm, needed for .npy/.npz arrays only."
    ),
) -> None:
    """Print shape, spacing, orientation and HU statistics of a CT volume; optionally save a montage."""
    from rich.table import Table

    from ctsurv.io.inspect import describe, save_montage
    from ctsurv.io.volumes import read_volume

    if png is not None:
        check_output_file(png, [volume], "--png")  # before anything is printed
    vol = read_volume(volume, spacing_zyx=spacing)
    table = Table(title=escape(str(volume)), show_header=False)
    for key, value in describe(vol).items():
        table.add_row(key, escape(_fmt(value)))
    console.print(table)
    if png is not None:
        save_montage(vol, png)
        console.print(f"montage: [bold]{png}[/]")


@app.command()
@_user_errors
def labels(
    reports: Path = typer.Argument(..., help="CSV table of free-text chest CT reports."),
    text_column: str = typer.Option(..., "--text-column", help="Column holding the report text."),
    out: Path = typer.Option(..., "--out", help="CSV to write: the input columns plus one 0/1 column per label."),
) -> None:
    """Extract the 18 CT-RATE abnormality labels from free-text chest CT reports."""
    from ctsurv.text.labels import label_reports_csv

    n = label_reports_csv(reports, text_column, out)
    console.print(f"labelled {n} reports: [bold]{out}[/]")


# ------------------------------------------------------------------------------------- ctsurv cohort ...

cohort_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.add_typer(
    cohort_app,
    name="cohort",
    help="Cohort tables from downloaded public datasets (CT-RATE, INSPECT), ready for `ctsurv pretrain`.",
)
CTRATE_TABLE_SPLIT = {"train": "train", "valid": "validation"}  # --split -> the word in CT-RATE's table names
# the adapters' hints name Python arguments; on the command line they are options
_ADAPTER_HINTS = {
    "drop_invalid_outcomes=True": "--drop-invalid-outcomes",
    "min_time_days=0.5": "--min-time-days 0.5",
}


@cohort_app.command("ct-rate")
@_user_errors
def cohort_ct_rate(
    root: Path = typer.Argument(..., metavar="ROOT", help="The downloaded CT-RATE dataset/ folder (Hugging Face ibrahimhamamci/CT-RATE), or the folder holding it."),
    out: Path = typer.Option(..., "--out", help="Cohort table to write (.csv, .tsv or .parquet)."),
    split: str = typer.Option("train", "--split", help="train or valid."),
    reports: Path | None = typer.Option(None, "--reports", help="Reports CSV (default: ROOT/radiology_text_reports/train_reports.csv, validation_reports.csv for --split valid)."),
    metadata: Path | None = typer.Option(None, "--metadata", help="Metadata CSV (default: ROOT/metadata/train_metadata.csv, validation_metadata.csv for --split valid)."),
    volumes: Path | None = typer.Option(None, "--volumes", help="Folder holding the split's patient folders (train_1/, train_2/, ...) (default: ROOT/train_fixed, else ROOT/train; valid_fixed, valid for --split valid)."),
    skip_missing_volumes: bool = typer.Option(False, "--skip-missing-volumes", help="Write only the studies whose volume file is present (a partial download); otherwise an absent volume is an error."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out table."),
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
@_user_errors
def cohort_inspect(
    root: Path = typer.Argument(..., metavar="ROOT", help="The downloaded INSPECT release folder (Stanford AIMI; the one holding impressions_*.tsv, labels_*.tsv, study_mapping_*.tsv and CTPA/), or the folder holding it as full/."),
    out: Path = typer.Option(..., "--out", help="Cohort table to write (.csv, .tsv or .parquet)."),
    outcome: str = typer.Option("mortality", "--outcome", help="Outcome for time/event: mortality, readmission, PH, Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural_Effusion (labels' tte_<outcome>, is_censored_<outcome>), or none for a pretraining table."),
    time_unit: str = typer.Option("minutes", "--time-unit", help="Unit of the labels' tte_* columns (minutes in the 20250611 release): days, hours, minutes or seconds; the cohort's time is in days."),
    impressions: Path | None = typer.Option(None, "--impressions", help="Impressions TSV (default: the one ROOT/impressions_*.tsv)."),
    labels_tsv: Path | None = typer.Option(None, "--labels", help="Labels TSV (default: the one ROOT/labels_*.tsv)."),
    mapping: Path | None = typer.Option(None, "--mapping", help="Study mapping TSV (default: the one ROOT/study_mapping_*.tsv)."),
    splits: Path | None = typer.Option(None, "--splits", help="Splits TSV, copied into a split column (default: the one ROOT/splits_*.tsv, if any)."),
    volumes: Path | None = typer.Option(None, "--volumes", help="Folder of the <image_id>.nii.gz volumes (default: ROOT/CTPA)."),
    min_time_days: float | None = typer.Option(None, "--min-time-days", help="Raise times in (-1 day, this) to this (events dated at midnight of the scan day give times <= 0)."),
    drop_invalid_outcomes: bool = typer.Option(False, "--drop-invalid-outcomes", help="Drop studies whose outcome is missing or not > 0 instead of failing."),
    skip_missing_volumes: bool = typer.Option(False, "--skip-missing-volumes", help="Write only the studies whose volume file is present (a partial download); otherwise an absent volume is an error."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out table."),
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


@app.command()
@_user_errors
def pretrain(
    config: Path = typer.Option(..., "--config", help="Experiment YAML (see configs/)."),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort table (CSV/Parquet) with volumes and reports."),
    out: Path = typer.Option(..., "--out", help="Folder to create for the checkpoints and evaluation."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run (kept as .NAME.partial beside --out), or rerun in a finished --out: finished stages are kept (their settings must not change), an interrupted one continues from its last epoch."),
    overrides: list[str] | None = typer.Argument(None, help="Config overrides, e.g. pretrain.instruct.epochs=5."),
) -> None:
    """Stages 0-2: a scratch encoder learns the report findings, the projector aligns it to the LM,
    then instruction tuning on the predefined questions."""
    from ctsurv.config import load_config
    from ctsurv.training.pretrain import pretrain as run_pretrain

    cfg = load_config(config, overrides or [])
    with staged_output(out, [config, cohort], resumable=True, resume=resume) as folder:
        summary = run_pretrain(cfg, cohort, folder, resume=resume)
    presence = summary.metrics["presence"]["macro"]
    scored = (
        f"yes/no macro accuracy {presence['accuracy']:.3f}, macro F1 {presence['f1']:.3f} over the "
        f"{len(presence['labels_in_macro'])} findings with positives"
        if presence["accuracy"] is not None else "no finding is positive in the test reports, so no macro score"
    )
    console.print(
        f"test split ({summary.n_test} studies; {summary.n_val} validation studies chose settings): {scored}; "
        f"times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in summary.seconds.items())
    )
    console.print(f"checkpoints: [bold]{out / 'align'}[/], [bold]{out / 'instruct'}[/]  evaluation: {out / 'instruct' / 'eval.md'}")


@app.command()
@_user_errors
def ask(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help="A checkpoint folder from `ctsurv pretrain` (or its run folder)."),
    target: Path = typer.Argument(..., metavar="VOLUME_OR_COHORT", help="A CT volume (any format `ctsurv inspect` reads), or a cohort table (.csv/.tsv/.parquet) with id and volume columns."),
    question: str | None = typer.Option(None, "--question", help="Ask this instead of the predefined questions."),
    spacing: tuple[float, float, float] | None = typer.Option(None, "--spacing", help="Spacing Z Y X (mm) for .npy/.npz."),
    as_json: bool = typer.Option(False, "--json", help='Print [{"id", "answers": {question: answer}, "p_yes": {finding: p}}] to stdout.'),
) -> None:
    """Answer the predefined clinical questions (or one free question) about a CT volume or every study of a cohort."""
    import json

    from rich.table import Table

    from ctsurv.inference import ask as ask_studies
    from ctsurv.io.cohort import TABLE_SUFFIXES

    results = ask_studies(checkpoint, target, [question] if question else None, spacing_zyx=spacing)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    for study in results:
        table = Table(title=escape(study.id if target.suffix.lower() in TABLE_SUFFIXES else str(target)))
        table.add_column("question")
        table.add_column("answer")
        for q, a in study.answers.items():  # generated text and the user's question are not rich markup
            table.add_row(escape(q), escape(a))
        console.print(table)


@app.command()
@_user_errors
def survival(
    config: Path = typer.Option(..., "--config", help="Experiment YAML naming the clinical columns (see configs/)."),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort table with volumes, clinical columns, time and event."),
    out: Path = typer.Option(..., "--out", help="Folder to create for results, figures and the fitted model."),
    pretrained: Path | None = typer.Option(None, "--pretrained", help="A `ctsurv pretrain` output folder."),
    encoder: str | None = typer.Option(None, "--encoder", help="Or a pretrained encoder without instruction tuning (i3resnet152); scratch encoders are refused."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds."),
    repeats: int = typer.Option(1, "--repeats", help="Repeats of the k-fold split."),
    seed: int = typer.Option(0, "--seed", help="Seed of the folds and the heads."),
    overrides: list[str] | None = typer.Argument(None, help="Config overrides, e.g. survival.l2=0.1."),
) -> None:
    """Stage 3: survival head on the pretrained model + clinical data, cross-validated against baselines."""
    from ctsurv.config import load_config
    from ctsurv.evaluation.report import terminal_table
    from ctsurv.training.survival_run import run_survival

    cfg = load_config(config, [*(overrides or []), f"seed={seed}"])
    with staged_output(out, [cohort, config, pretrained]) as folder:
        run = run_survival(cfg, cohort, folder, pretrained=pretrained, encoder=encoder, folds=folds, repeats=repeats)
    console.print(terminal_table(run.results))
    model = f"; model: {out / run.model_dir.relative_to(run.out_dir)}" if run.model_dir is not None else ""
    console.print(f"results: [bold]{out / 'results.md'}[/] (and .json, .csv); figures: {out}/*.png{model}")


@app.command()
@_user_errors
def predict(
    checkpoint: Path = typer.Argument(..., help="A `ctsurv survival` output folder (it holds the fitted model)."),
    target: Path = typer.Argument(..., help="A cohort table (.csv/.parquet) or one volume (file or DICOM folder)."),
    out: Path = typer.Option(..., "--out", help="Folder to create for predictions.csv, curves.csv and curves/*.png."),
    spacing: tuple[float, float, float] | None = typer.Option(None, "--spacing", help="Spacing Z Y X (mm) for a .npy/.npz volume."),
) -> None:
    """Risk score, its percentile in the training cohort, survival curve and answers for new patients."""
    from ctsurv.prediction import predict as run_predict

    with staged_output(out, [checkpoint, target]) as folder:
        table = run_predict(checkpoint, target, folder, spacing_zyx=spacing)
    for _, row in table.head(10).iterrows():
        console.print(f"{escape(str(row['id']))}: risk {row['risk']:+.3f} (percentile {row['risk_percentile']:.0f})")
    console.print(f"predictions: [bold]{escape(str(out / 'predictions.csv'))}[/]  curves: {escape(str(out / 'curves'))}")


@app.command()
@_user_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder to create for everything the demo writes."),
    n_pretrain: int = typer.Option(400, "--n-pretrain", help="Patients with CT + reports for pretraining."),
    n_survival: int = typer.Option(600, "--n-survival", help="Patients in the survival cohort."),
    image_signal: float = typer.Option(1.0, "--image-signal", help="SD of the image part of the true log-hazard."),
    clinical_signal: float = typer.Option(
        0.3, "--clinical-signal", help="SD of the clinical part of the true log-hazard (the main cohort's)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic cohorts."),
    language: str = typer.Option(
        "tiny", "--language", help="tiny (trained from scratch, configs/demo.yaml) or smollm2-135m (pretrained, "
        'LoRA, configs/smol.yaml; pip install -e ".[smol]"; hours on a laptop CPU).'
    ),
) -> None:
    """Simulate, pretrain, cross-validate survival against baselines, sweep the clinical signal: one command."""
    from ctsurv.demo import DemoSettings, run_demo

    settings = DemoSettings(n_pretrain=n_pretrain, n_survival=n_survival, image_signal=image_signal,
                            clinical_signal=clinical_signal, seed=seed, language=language)
    with staged_output(out) as folder:
        run_demo(folder, settings, console=console)
    console.print(f"report: [bold]{escape(str(out / 'REPORT.md'))}[/]  sweep figure: {escape(str(out / 'sweep.png'))}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (tuple, list)):
        return " × ".join(_fmt(v) for v in value)
    return str(value)


def main() -> None:  # pragma: no cover - console-script entry for `python -m ctsurv`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

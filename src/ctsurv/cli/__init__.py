"""The ``ctsurv`` command line: parse, load config, call one function per command.

Heavy imports (torch, MONAI) happen inside the commands so that ``ctsurv --help`` is instant.
Errors the user can fix (:class:`ctsurv.errors.CtsurvError`, and a file that cannot be read or
written) end the command with a one-line reason on stderr and exit status 2, without a traceback.
Commands write through :mod:`ctsurv.outputs`: their outputs appear whole or not at all.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from ctsurv.cli.cohort import cohort_app
from ctsurv.cli.common import console, pin_threads, user_errors
from ctsurv.outputs import check_output_file, staged_output

app = typer.Typer(
    name="ctsurv",
    help="3D-CT vision-language model and survival prediction from CT plus clinical data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(cohort_app, name="cohort")


@app.callback()
@user_errors
def _setup(
    threads: int | None = typer.Option(
        None, "--threads", envvar="CTSURV_THREADS",
        help="torch's CPU threads (default: torch's, capped by the CPUs this process may use; 1 helps on a busy machine).",
    ),
) -> None:
    """Offline by design: Hugging Face libraries never reach a hub, and their progress bars stay quiet."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    pin_threads(threads)


@app.command()
@user_errors
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
@user_errors
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
@user_errors
def labels(
    reports: Path = typer.Argument(..., help="CSV table of free-text chest CT reports."),
    text_column: str = typer.Option(..., "--text-column", help="Column holding the report text."),
    out: Path = typer.Option(..., "--out", help="CSV to write: the input columns plus one 0/1 column per label."),
) -> None:
    """Extract the 18 CT-RATE abnormality labels from free-text chest CT reports."""
    from ctsurv.text.labels import label_reports_csv

    n = label_reports_csv(reports, text_column, out)
    console.print(f"labelled {n} reports: [bold]{out}[/]")


@app.command()
@user_errors
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
@user_errors
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
@user_errors
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
@user_errors
def predict(
    checkpoint: Path = typer.Argument(..., help="A `ctsurv survival` output folder (it holds the fitted model)."),
    target: Path = typer.Argument(..., help="A cohort table (.csv/.parquet) or one volume (file or DICOM folder)."),
    out: Path = typer.Option(..., "--out", help="Folder to create for predictions.csv, curves.csv and curves/*.png."),
    spacing: tuple[float, float, float] | None = typer.Option(None, "--spacing", help="Spacing Z Y X (mm) for a .npy/.npz volume."),
    evidence: bool = typer.Option(
        False, "--evidence", help="Also write evidence/<id>.png and .npz: occlusion maps of the risk and of the findings "
        "answered Yes (one read of the scan per block: 384 with the default blocks)."
    ),
    blocks: tuple[int, int, int] = typer.Option((6, 8, 8), "--evidence-blocks", help="Evidence-map blocks Z Y X."),
) -> None:
    """Risk score, its percentile in the training cohort, survival curve, answers and out-of-distribution score for
    new patients."""
    from ctsurv.errors import CtsurvError
    from ctsurv.prediction import predict as run_predict

    if min(blocks) < 1:
        raise CtsurvError(f"--evidence-blocks must be three integers >= 1 (Z Y X), got {blocks}")
    with staged_output(out, [checkpoint, target]) as folder:
        table = run_predict(checkpoint, target, folder, spacing_zyx=spacing, evidence=evidence, blocks_zyx=blocks)
    for _, row in table.head(10).iterrows():
        ood = "" if "ood" not in row else ("  [bold yellow]unlike the training scans[/]" if row["ood"] else "")
        console.print(f"{escape(str(row['id']))}: risk {row['risk']:+.3f} (percentile {row['risk_percentile']:.0f}){ood}")
    extra = f"  evidence: {escape(str(out / 'evidence'))}" if evidence else ""
    console.print(f"predictions: [bold]{escape(str(out / 'predictions.csv'))}[/]  curves: {escape(str(out / 'curves'))}{extra}")


@app.command()
@user_errors
def serve(
    run: Path = typer.Argument(..., metavar="RUN_DIR", help="A `ctsurv survival` output folder (it holds the fitted model)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 exposes the page to your network)."),
    port: int = typer.Option(7860, "--port", help="Port to listen on."),
    blocks: tuple[int, int, int] = typer.Option(
        (6, 8, 8), "--evidence-blocks", help="Evidence-map blocks Z Y X (one read of the scan per block: fewer for a "
        "large encoder on a CPU)."
    ),
) -> None:
    """A local web page to read one patient: slices, answers with evidence maps, risk and survival curve, OOD warning."""
    from ctsurv.errors import CtsurvError
    from ctsurv.serve import launch

    if min(blocks) < 1:
        raise CtsurvError(f"--evidence-blocks must be three integers >= 1 (Z Y X), got {blocks}")
    launch(run, host=host, port=port, blocks_zyx=blocks)


@app.command()
@user_errors
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

"""`ctsurv predict`: risk, survival curve and answers for new patients from a `ctsurv survival` run.

    out/predictions.csv    id, risk, risk percentile in the training cohort, survival at the
                           training cohort's horizon times, P(yes) and the answer per finding
    out/curves.csv         id, time, survival (the Breslow curve of the training cohort)
    out/curves/<id>.png    one survival curve per patient
    out/evidence/<id>.png  with ``evidence``: the evidence maps (ctsurv.evaluation.explain) of the risk and of every finding
                           answered "Yes", over the axial, coronal and sagittal slices through their peaks;
    out/evidence/<id>.npz  every map (risk and every finding) as blocks (bx, by, bz), and the block grid

predictions.csv also holds the out-of-distribution score of each scan (``ood_score``: Mahalanobis distance of its
pooled encoder features from the training cohort's; ``ood_percentile``; ``ood``: 1 when further than 99% of the
training scans' cross-fitted distances), for runs that saved the reference (``model/ood.safetensors``).

The model reads the scans as in `ctsurv survival`: encoder features pooled by the projector, then the
answers. model.json names its checkpoint relative to the model folder when it lies inside it (a fine-tuned
``model/vlm``), so a run folder can be moved; a stage-0 (vision) checkpoint is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ctsurv.config import load_config
from ctsurv.errors import CtsurvError
from ctsurv.evaluation.explain import pooled_features
from ctsurv.evaluation.figures import patient_curve
from ctsurv.evaluation.vlm_eval import SHORT_ANSWER_TOKENS, answer_questions
from ctsurv.features import cells_all, encode_all, volume_store
from ctsurv.io.cohort import TABLE_SUFFIXES, load_cohort
from ctsurv.reading import DEFAULT_BLOCKS_ZYX, DETAIL_QUESTIONS, RISK, FittedModel, PatientReader
from ctsurv.text.questions import PRESENCE_LABELS
from ctsurv.training.survival import vlm_features


def predict(
    run_dir: str | Path, target: str | Path, out_dir: str | Path, spacing_zyx: tuple[float, float, float] | None = None,
    evidence: bool = False, blocks_zyx: tuple[int, int, int] = DEFAULT_BLOCKS_ZYX,
) -> pd.DataFrame:
    """Predictions for a cohort table or a single volume (whose clinical data are then all missing); with
    ``evidence``, the evidence maps of every study too (one occluded read per block of ``blocks_zyx``)."""
    run_dir, target, out_dir = Path(run_dir), Path(target), Path(out_dir)
    fitted = FittedModel.load(run_dir)
    fitted.checkpoint()  # a missing or stage-0 checkpoint is refused before any work
    cfg = load_config(run_dir / "config.yaml")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CtsurvError(f"{out_dir} already exists and is not empty; choose a new --out folder")
    if target.suffix.lower() in TABLE_SUFFIXES:
        cohort = load_cohort(target, cfg.data)
    else:
        cohort = _single_volume_cohort(target, cfg, out_dir, spacing_zyx)
    clinical_frame = cohort.clinical()
    fitted.schema.check(clinical_frame)  # unseen categorical levels -> a clear error before any work
    reader = PatientReader(run_dir, fitted)  # the model, its OOD reference; evidence maps read scans through it
    vlm = reader.vlm
    volumes = volume_store(cohort, cfg.data, progress=True)  # streamed from disk batch by batch
    grids = encode_all(vlm, volumes)  # read as `ctsurv survival` reads them: from the pooled encoder grids
    answers = vlm_features(vlm, grids, kind="features", cells=cells_all(vlm, volumes), visual_tokens=False)
    image = torch.as_tensor(fitted.image_features(answers.p_yes, answers.hidden), dtype=torch.float32)
    clinical = torch.as_tensor(fitted.schema.transform(clinical_frame))
    risk = fitted.head.predict_risk(image, clinical).numpy().astype(np.float64)

    training = np.asarray(fitted.meta["training_risk"])
    times = np.asarray(fitted.meta["horizon_times"])
    grid = np.asarray(fitted.baseline.to_dict()["times"])
    table = pd.DataFrame({"id": cohort.ids, "risk": risk, "risk_percentile": [100 * float(np.mean(training <= r)) for r in risk]})
    for t, column in zip(times, fitted.baseline.survival_function(risk, times).T):
        table[f"survival_at_{t:g}"] = column
    for j, label in enumerate(PRESENCE_LABELS):
        table[f"p_yes: {label}"] = answers.p_yes[:, j]
    for j, label in enumerate(PRESENCE_LABELS):
        table[f"answer: {label}"] = np.where(answers.p_yes[:, j] >= 0.5, "Yes.", "No.")
    ood = reader.ood
    if ood is not None:
        distance = ood.distance(pooled_features(grids))
        table["ood_score"], table["ood_percentile"] = distance, ood.percentile(distance)
        table["ood"] = (distance > ood.threshold).astype(int)
    generated = answer_questions(vlm, volumes, "images", list(DETAIL_QUESTIONS), max_new_tokens=SHORT_ANSWER_TOKENS)
    volumes.close()  # removes a temporary cache (data.cache_dir unset)
    for j, q in enumerate(DETAIL_QUESTIONS):
        table[f"answer: {q}"] = [g[j] for g in generated]

    out_dir.mkdir(parents=True, exist_ok=True)
    curves = fitted.baseline.survival_function(risk, grid)  # (n, T)
    pd.DataFrame(
        {"id": np.repeat(cohort.ids, len(grid)), "time": np.tile(grid, len(risk)), "survival": curves.ravel()}
    ).to_csv(out_dir / "curves.csv", index=False)
    (out_dir / "curves").mkdir(exist_ok=True)
    for i, study in enumerate(cohort.ids):
        fig = patient_curve(grid, curves[i], f"{study}: risk percentile {table.risk_percentile[i]:.0f}")
        fig.savefig(out_dir / "curves" / f"{study}.png", dpi=120, bbox_inches="tight")
    if evidence:
        _evidence_files(reader, cohort, clinical_frame, answers.p_yes, blocks_zyx, out_dir / "evidence")
    table.to_csv(out_dir / "predictions.csv", index=False)
    return table


def _evidence_files(
    reader: PatientReader, cohort, clinical: pd.DataFrame, p_yes: np.ndarray, blocks_zyx, folder: Path
) -> None:
    """evidence/<id>.png and .npz for every study (see the module docstring)."""
    from ctsurv.evaluation.explain import to_voxels
    from ctsurv.evaluation.viewer import evidence_panel

    folder.mkdir(exist_ok=True)
    for i, study in enumerate(cohort.ids):
        scan = reader.scan(cohort.volume_paths[i], cohort.spacing_zyx(i), study)
        values = {k: (None if pd.isna(v) else v) for k, v in clinical.iloc[i].items()}
        blocks = reader.evidence(scan, values, blocks_zyx)
        shown = [RISK, *(label for j, label in enumerate(PRESENCE_LABELS) if p_yes[i, j] >= 0.5)]
        maps = {name: to_voxels(blocks[name], scan.hu.shape) for name in shown}
        evidence_panel(scan.hu, scan.spacing_xyz, maps, folder / f"{study}.png")
        np.savez_compressed(folder / f"{study}.npz", blocks_zyx=np.asarray(blocks_zyx), **blocks)


def _single_volume_cohort(volume: Path, cfg, out_dir: Path, spacing_zyx):
    """A one-row cohort for a volume given directly (clinical values missing, imputed by the schema)."""
    if not volume.exists():
        raise CtsurvError(f"{volume} does not exist; pass a cohort table (.csv/.parquet) or a volume file/DICOM folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    row = {cfg.data.id_column: volume.name.split(".")[0], cfg.data.volume_column: str(volume.resolve())}
    row.update({c: np.nan for c in (*cfg.data.numeric_columns, *cfg.data.categorical_columns)})
    if spacing_zyx is not None:
        row.update(dict(zip(cfg.data.spacing_columns, spacing_zyx)))
    table = out_dir / "input.csv"
    pd.DataFrame([row]).to_csv(table, index=False)
    return load_cohort(table, cfg.data)

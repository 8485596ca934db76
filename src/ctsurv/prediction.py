"""`ctsurv predict`: risk, survival curve and answers for new patients from a `ctsurv survival` run.

    out/predictions.csv    id, risk, risk percentile in the training cohort, survival at the
                           training cohort's horizon times, P(yes) and the answer per finding
    out/curves.csv         id, time, survival (the Breslow curve of the training cohort)
    out/curves/<id>.png    one survival curve per patient

The model reads the scans as in `ctsurv survival`: encoder features pooled by the projector, then the
answers. model.json names its checkpoint relative to the model folder when it lies inside it (a fine-tuned
``model/vlm``), so a run folder can be moved; a stage-0 (vision) checkpoint is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file

from ctsurv.config import load_config
from ctsurv.errors import CtsurvError
from ctsurv.evaluation.vlm_eval import SHORT_ANSWER_TOKENS, answer_questions
from ctsurv.features import cells_all, encode_all, volume_store
from ctsurv.io.clinical import ClinicalSchema
from ctsurv.io.cohort import TABLE_SUFFIXES, load_cohort
from ctsurv.models.survival import BreslowBaseline, SurvivalHead
from ctsurv.text.questions import PRESENCE_LABELS, QUESTIONS
from ctsurv.training.checkpoint import load_checkpoint, refuse_untrained_language
from ctsurv.training.survival import vlm_features


@dataclass(frozen=True)
class FittedModel:
    """Everything `ctsurv survival` saved in ``<run>/model``."""

    meta: dict
    head: SurvivalHead
    schema: ClinicalSchema
    baseline: BreslowBaseline
    model_dir: Path

    @classmethod
    def load(cls, run_dir: Path) -> FittedModel:
        model_dir = run_dir / "model" if (run_dir / "model" / "model.json").is_file() else run_dir
        if not (model_dir / "model.json").is_file():
            raise CtsurvError(f"{run_dir} holds no fitted survival model (model/model.json); pass a `ctsurv survival` --out folder")
        meta = json.loads((model_dir / "model.json").read_text())
        head = SurvivalHead(**meta["head"])
        head.load_state_dict(load_file(model_dir / "head.safetensors"), strict=True)
        return cls(
            meta, head.eval(), ClinicalSchema.from_dict(meta["clinical_schema"]), BreslowBaseline.from_dict(meta["breslow"]),
            model_dir,
        )

    def checkpoint(self) -> Path:
        """The VLM checkpoint the head reads: model.json's path relative to the model folder, else (the run folder
        moved without it) its absolute path when that still holds a checkpoint; a stage-0 (vision) checkpoint is refused."""
        path = self.model_dir / self.meta["checkpoint"]  # an absolute path (older runs) stays as it is
        fallback = self.meta.get("checkpoint_absolute")
        if not (path / "config.yaml").is_file() and fallback and (Path(fallback) / "config.yaml").is_file():
            path = Path(fallback)
        refuse_untrained_language(path)
        return path

    def image_features(self, p_yes: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        pca = self.meta["pca"]
        if pca is None:
            return p_yes
        projected = (hidden - np.asarray(pca["mean"])) @ np.asarray(pca["components"]).T
        return np.concatenate([p_yes, projected], 1)


def predict(run_dir: str | Path, target: str | Path, out_dir: str | Path, spacing_zyx: tuple[float, float, float] | None = None) -> pd.DataFrame:
    """Predictions for a cohort table or a single volume (whose clinical data are then all missing)."""
    run_dir, target, out_dir = Path(run_dir), Path(target), Path(out_dir)
    fitted = FittedModel.load(run_dir)
    checkpoint = fitted.checkpoint()
    cfg = load_config(run_dir / "config.yaml")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CtsurvError(f"{out_dir} already exists and is not empty; choose a new --out folder")
    if target.suffix.lower() in TABLE_SUFFIXES:
        cohort = load_cohort(target, cfg.data)
    else:
        cohort = _single_volume_cohort(target, cfg, out_dir, spacing_zyx)
    clinical_frame = cohort.clinical()
    fitted.schema.check(clinical_frame)  # unseen categorical levels -> a clear error before any work
    vlm, _ = load_checkpoint(checkpoint)
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
    details = [q for q in QUESTIONS if q.kind not in ("presence", "report")]
    generated = answer_questions(vlm, volumes, "images", [q.text for q in details], max_new_tokens=SHORT_ANSWER_TOKENS)
    volumes.close()  # removes a temporary cache (data.cache_dir unset)
    for j, q in enumerate(details):
        table[f"answer: {q.text}"] = [g[j] for g in generated]

    out_dir.mkdir(parents=True, exist_ok=True)
    curves = fitted.baseline.survival_function(risk, grid)  # (n, T)
    pd.DataFrame(
        {"id": np.repeat(cohort.ids, len(grid)), "time": np.tile(grid, len(risk)), "survival": curves.ravel()}
    ).to_csv(out_dir / "curves.csv", index=False)
    (out_dir / "curves").mkdir(exist_ok=True)
    for i, study in enumerate(cohort.ids):
        _curve_png(grid, curves[i], f"{study}: risk percentile {table.risk_percentile[i]:.0f}", out_dir / "curves" / f"{study}.png")
    table.to_csv(out_dir / "predictions.csv", index=False)
    return table


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


def _curve_png(times: np.ndarray, survival: np.ndarray, title: str, png: Path) -> None:
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    ax.step(np.r_[0, times], np.r_[1, survival], where="post")
    ax.set(xlabel="time", ylabel="survival probability", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    fig.savefig(png, dpi=120, bbox_inches="tight")

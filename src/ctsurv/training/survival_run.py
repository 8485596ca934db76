"""`ctsurv survival`: read the cohort, compute frozen image features once, cross-validate every
method in the same folds, write the results and figures, and fit the final model for `predict`.

    out/config.yaml, out/results.{json,csv,md}, out/oof.csv
    out/km_risk_groups.png, out/cindex.png, out/calibration.png
    out/model/   the model fitted on the whole cohort (head, clinical schema, PCA, Breslow baseline)
"""

from __future__ import annotations

import dataclasses
import json
import time as clock
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from ctsurv.config import ExperimentConfig, VisionConfig, save_config
from ctsurv.data.cohort import Cohort, load_cohort
from ctsurv.errors import CtsurvError
from ctsurv.evaluation import report
from ctsurv.evaluation.crossval import compare_methods, cross_validate, make_folds
from ctsurv.evaluation.metrics import choose_horizons
from ctsurv.models.survival import BreslowBaseline, SurvivalHead, fit_survival_head
from ctsurv.models.vision import build_vision_encoder
from ctsurv.training.checkpoint import load_checkpoint, save_checkpoint
from ctsurv.training.pretrain import encode_all, preprocess_all
from ctsurv.training.survival import (
    PRESENCE_LABELS,
    PRESENCE_QUESTIONS,
    FoldData,
    ImageFeatures,
    answer_matrix,
    at_horizon,
    encoder_features,
    fit_answer_pca,
    survival_methods,
    vlm_features,
)
from ctsurv.training.survival_finetune import Tuning, tuned_model


@dataclass(frozen=True)
class SurvivalRun:
    out_dir: Path
    results: dict
    seconds: dict[str, float]


def pretrained_checkpoints(path: Path) -> tuple[Path, Path | None]:
    """(instruct checkpoint, checkpoint of the encoder before instruction tuning or None) from a `ctsurv
    pretrain` folder or a checkpoint. The latter is stage 0's (a scratch encoder trained on the report
    labels) or else stage 1's: the ablation reads the encoder before the language model was taught to answer."""
    if (path / "instruct" / "model.safetensors").is_file():
        before = [path / stage for stage in ("vision", "align") if (path / stage / "model.safetensors").is_file()]
        return path / "instruct", before[0] if before else None
    if (path / "model.safetensors").is_file():
        return path, None
    raise CtsurvError(f"--pretrained {path} is neither a `ctsurv pretrain` output folder nor a checkpoint")


def with_preprocessing(cfg: ExperimentConfig, model_cfg: ExperimentConfig) -> ExperimentConfig:
    """The user's config (cohort columns) with the model's preprocessing (what its encoder expects)."""
    data = dataclasses.replace(cfg.data, **model_cfg.data.preprocessing())
    return dataclasses.replace(cfg, data=data, vision=model_cfg.vision)


def truth_risk(cohort: Cohort) -> np.ndarray | None:
    """The true log-hazard from ``truth.csv`` beside a synthetic cohort table, in cohort order."""
    path = cohort.root / "truth.csv"
    if not path.is_file():
        return None
    truth = pd.read_csv(path, dtype={"id": str}).set_index("id")
    missing = sorted(set(cohort.ids) - set(truth.index))
    if missing:
        raise CtsurvError(f"{path} lacks {len(missing)} cohort ids (e.g. {missing[:3]}); it belongs to another cohort")
    return truth.loc[cohort.ids, "log_hazard"].to_numpy(np.float64)


@dataclass(frozen=True)
class Features:
    """Frozen image features of a cohort's scans, reusable for new outcomes on the same scans."""

    ids: list[str]
    answers: ImageFeatures | None
    pooled: np.ndarray | None
    checkpoint: Path | None
    grids: torch.Tensor | None = None  # cached encoder features pooled to the token grid, for stage-3 fine-tuning
    cells: torch.Tensor | None = None  # the volumes' cells, with grids, for a findings head that reads them

    def for_cohort(self, cohort: Cohort) -> Features:
        """These features in ``cohort``'s row order (same scans); an error if a study is missing."""
        if cohort.ids == self.ids:
            return self
        where = {study: i for i, study in enumerate(self.ids)}
        missing = [s for s in cohort.ids if s not in where]
        if missing:
            raise CtsurvError(f"no image features for {len(missing)} studies (e.g. {missing[:3]}); recompute them")
        order = np.array([where[s] for s in cohort.ids])
        answers = None if self.answers is None else self.answers.rows(order)
        rows = torch.as_tensor(order)
        return Features(
            cohort.ids, answers, None if self.pooled is None else self.pooled[order], self.checkpoint,
            None if self.grids is None else self.grids[rows], None if self.cells is None else self.cells[rows],
        )


def prepare(
    cfg: ExperimentConfig, cohort_path: str | Path, pretrained: str | Path | None, encoder: str | None, progress: bool = True
) -> tuple[ExperimentConfig, Cohort, Features]:
    """The config with the model's preprocessing, the validated cohort, and its frozen image features."""
    if (pretrained is None) == (encoder is None):
        raise CtsurvError("give exactly one of --pretrained CHECKPOINT (a `ctsurv pretrain` folder) or --encoder NAME")
    instruct = align = None
    if pretrained is not None:
        instruct, align = pretrained_checkpoints(Path(pretrained))
        vlm, model_cfg = load_checkpoint(instruct)
        cfg = with_preprocessing(cfg, model_cfg)
    else:
        cfg = dataclasses.replace(cfg, vision=VisionConfig(encoder=encoder))  # type: ignore[arg-type]
    cohort = load_cohort(cohort_path, cfg.data, require_outcomes=True)
    volumes = preprocess_all(cohort, cfg, progress)
    answers = grids = cells = None
    if instruct is not None:
        if cfg.survival.finetune != "none":  # the encoder stays frozen in stage 3: encode once, read from the grids
            grids, cells = encode_all(vlm, volumes), vlm.projector.cells(volumes)
            answers = vlm_features(vlm, grids, kind="features", cells=cells)
        else:
            answers = vlm_features(vlm, volumes)
        pooled = encoder_features(load_checkpoint(align)[0].vision_encoder, volumes) if align is not None else None
    else:
        torch.manual_seed(cfg.seed)
        size_xyz = tuple(reversed(cfg.data.target_shape_zyx))
        encoder = build_vision_encoder(  # type: ignore[arg-type]
            cfg.vision, size_xyz, in_channels=cfg.data.in_channels, skip_channels=cfg.data.n_blob_channels
        )
        pooled = encoder_features(encoder, volumes)
    return cfg, cohort, Features(cohort.ids, answers, pooled, instruct, grids, cells)


def run_survival(
    cfg: ExperimentConfig, cohort_path: str | Path, out_dir: str | Path, pretrained: str | Path | None = None,
    encoder: str | None = None, folds: int = 5, repeats: int = 1, progress: bool = True,
) -> SurvivalRun:
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CtsurvError(f"{out_dir} already exists and is not empty; choose a new --out folder")
    t0 = clock.perf_counter()
    cfg, cohort, features = prepare(cfg, cohort_path, pretrained, encoder, progress)
    seconds = {"features": clock.perf_counter() - t0}
    run = evaluate(cfg, cohort, features, out_dir, folds=folds, repeats=repeats, progress=progress)
    return SurvivalRun(out_dir, run.results, {**seconds, **run.seconds})


def evaluate(
    cfg: ExperimentConfig, cohort: Cohort, features: Features, out_dir: Path, folds: int = 5, repeats: int = 1,
    progress: bool = True, final_model: bool = True, only: Collection[str] | None = None,
) -> SurvivalRun:
    """Cross-validate every method (or the ``only`` ones) in the same folds; write results, figures and
    (optionally) the final model."""
    t0 = clock.perf_counter()
    features = features.for_cohort(cohort)
    time, event = cohort.times, cohort.events
    fold_list = make_folds(time, event, groups=cohort.patient_ids, n_splits=folds, n_repeats=repeats, seed=cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    data = FoldData(cohort, time, event)
    horizons = choose_horizons(time, event)
    horizon = float(np.quantile(time[event], cfg.survival.horizon_quantile))
    tuning = None
    if features.checkpoint is not None and features.grids is not None:
        tuning = Tuning(features.checkpoint, features.grids, features.cells)
    methods = survival_methods(data, cfg, features.answers, features.pooled, truth_risk(cohort), tuning)
    if only is not None:
        methods = {name: fit for name, fit in methods.items() if name in only}
    main = "model" if "model" in methods else "encoder_no_instruction"
    methods[main], surv_at_horizon = at_horizon(methods[main], horizon, len(time))
    oofs = {
        name: cross_validate(fold_list, fit, time, event, horizons=horizons, tau=horizon, progress=progress, description=name)
        for name, fit in methods.items()
    }
    results = {
        "cohort": {
            "n": len(cohort), "events": int(event.sum()), "horizon": horizon, "times": horizons,
            "folds": folds, "repeats": repeats, "patients": len(set(cohort.patient_ids)),
            "pretrained": str(features.checkpoint) if features.checkpoint else None, "encoder": cfg.vision.encoder,
        },
        "methods": compare_methods(time, event, oofs, n_boot=cfg.survival.bootstrap, seed=cfg.seed),
        "notes": {name: oof.notes() for name, oof in oofs.items() if oof.notes()},
    }
    oof = pd.DataFrame({"id": cohort.ids, "time": time, "event": event.astype(int), "risk": oofs[main].risk[0],
                        "surv_at_horizon": surv_at_horizon})
    for name, o in oofs.items():
        oof[f"risk_{name}"] = o.risk[0]
    oof.to_csv(out_dir / "oof.csv", index=False)
    results["figures"] = {
        "km": report.km_by_risk_group(oof, out_dir / "km_risk_groups.png"),
        "calibration": report.calibration_plot(oof, horizon, out_dir / "calibration.png"),
    }
    report.cindex_forest(results, out_dir / "cindex.png")
    report.write_results(results, out_dir)
    if final_model and features.answers is not None and features.checkpoint is not None:
        fit_final_model(cfg, data, features.answers, features.checkpoint, out_dir / "model", tuning)
    return SurvivalRun(out_dir, results, {"crossval": clock.perf_counter() - t0})


def fit_final_model(
    cfg: ExperimentConfig, data: FoldData, answers: ImageFeatures, checkpoint: Path, out: Path,
    tuning: Tuning | None = None,
) -> None:
    """The model method fitted on the whole cohort, saved for `ctsurv predict` (no pickle). With
    ``survival.finetune``, the model tuned on the whole cohort is saved as ``out/vlm`` and read instead."""
    everyone = np.arange(len(data.time))
    schema = data.schema(everyone)
    if cfg.survival.finetune != "none" and tuning is not None:
        vlm, model_cfg = tuned_model(
            checkpoint, tuning.grids, data.clinical(everyone, schema), data.time, data.event, answers.p_yes,
            PRESENCE_QUESTIONS, cfg, cfg.seed, cells=tuning.cells,
        )
        checkpoint = save_checkpoint(out / "vlm", vlm, model_cfg)
        answers = vlm_features(vlm, tuning.grids, kind="features", cells=tuning.cells)
    pca = fit_answer_pca(answers, everyone, cfg.survival.hidden_components)
    image = torch.as_tensor(answer_matrix(answers, everyone, pca), dtype=torch.float32)
    clinical = torch.as_tensor(schema.transform(data.cohort.clinical()))
    head = SurvivalHead(image_dim=image.shape[1], n_clinical=clinical.shape[1], kind=cfg.survival.head)
    fit_survival_head(
        head, image, clinical, torch.as_tensor(data.time), torch.as_tensor(data.event),
        epochs=cfg.survival.epochs, lr=cfg.survival.lr, seed=cfg.seed, l2=cfg.survival.l2,
    )
    risk = head.predict_risk(image, clinical).numpy()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, out / "head.safetensors")
    meta = {
        "head": head.config,
        "checkpoint": str(checkpoint.resolve()),
        "clinical_schema": schema.to_dict(),
        "pca": None if pca is None else {"mean": pca.mean_.tolist(), "components": pca.components_.tolist()},
        "breslow": BreslowBaseline().fit(data.time, data.event, risk.astype(np.float64)).to_dict(),
        "training_risk": sorted(float(r) for r in risk),
        "presence_labels": PRESENCE_LABELS,
        "horizon_times": choose_horizons(data.time, data.event),
    }
    (out / "model.json").write_text(json.dumps(meta))
    save_config(cfg, out / "config.yaml")

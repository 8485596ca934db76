"""`ctsurv survival`: read the cohort, compute frozen image features once, cross-validate every
method in the same folds, write the results and figures, and fit the final model for `predict`.

    out/config.yaml, out/results.{json,csv,md}
    out/oof.csv  one row per study and repeat: id, repeat, fold, time, event, risk and surv_at_horizon (the
                 main method's, ``model`` or else ``encoder_no_instruction``), risk_<method> for every method
    out/km_risk_groups.png, out/cindex.png, out/calibration.png   (the figures of repeat 0; with --repeats R > 1
                 also calibration_repeat1.png ... calibration_repeat{R-1}.png)
    out/model/   the model fitted on the whole cohort (head, clinical schema, PCA, Breslow baseline, the cohort's
                 risks and Kaplan-Meier curve; model.json names its checkpoint relative to out/model, e.g. the
                 fine-tuned model/vlm, absolute as a fallback), and ood.safetensors: the out-of-distribution
                 reference of the encoder's features (ctsurv.evaluation.explain)

results.json: "methods" (see ``training.survival``), "ladder" (the methods of ``LADDER`` present, bottom rung
first; each is compared with the rung below it), "cohort" (with "bootstrap": resamples, unit, p_floor),
"notes" (per method: folds a metric skipped, or why a ladder rung is absent), "chosen" (per method, what its folds
chose on their training rows, counted: penalty, image columns, tuned epochs), "figures".
"""

from __future__ import annotations

import dataclasses
import json
import os
import time as clock
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lifelines import KaplanMeierFitter
from safetensors.torch import save_file

from ctsurv.config import ExperimentConfig, save_config
from ctsurv.errors import CtsurvError
from ctsurv.evaluation import figures, report
from ctsurv.evaluation.crossval import Fold, OutOfFold, compare_methods, cross_validate, make_folds
from ctsurv.evaluation.explain import OOD_FOLDS, OutOfDistribution, pooled_features
from ctsurv.evaluation.metrics import choose_horizons, p_floor
from ctsurv.features import Volumes, cells_all, encode_all, volume_store
from ctsurv.features.extract import RowBuffer
from ctsurv.features.preprocess import zyx_to_xyz
from ctsurv.features.radiomics import cohort_radiomics
from ctsurv.io.cohort import Cohort, load_cohort
from ctsurv.models.i3resnet import LastBlock
from ctsurv.models.survival import BreslowBaseline, SurvivalHead, fit_survival_head
from ctsurv.models.vision import build_vision_encoder
from ctsurv.models.vlm import CTVLM
from ctsurv.text.questions import PRESENCE_LABELS, PRESENCE_QUESTIONS
from ctsurv.training.checkpoint import checkpoint_stage, load_checkpoint, refuse_untrained_language, save_checkpoint
from ctsurv.training.encoder_finetune import BlockTuning, region_weight_rows
from ctsurv.training.survival import (
    LADDER,
    FoldData,
    ImageFeatures,
    answer_image,
    answer_matrix,
    at_horizon,
    choose_head,
    encoder_region_features,
    findings_probabilities,
    fit_answer_pca,
    projector_input_blocks,
    survival_methods,
    vlm_features,
)
from ctsurv.training.survival_finetune import Tuning, tuned_model

SCRATCH_ENCODERS = ("vit3d", "cnn3d")


@dataclass(frozen=True)
class SurvivalRun:
    out_dir: Path
    results: dict
    seconds: dict[str, float]
    model_dir: Path | None = None  # the fitted model (out_dir / "model"), None when none was written


@dataclass(frozen=True)
class PretrainedCheckpoints:
    """The checkpoints of a `ctsurv pretrain` run that `ctsurv survival` reads."""

    instruct: Path  # the model (or the one checkpoint given)
    vision: Path | None = None  # stage 0: a scratch encoder trained on the report labels
    align: Path | None = None  # stage 1: captioning only

    @property
    def before(self) -> Path | None:
        """The checkpoint of the encoder before instruction tuning: stage 0's, else stage 1's."""
        return self.vision or self.align


def pretrained_checkpoints(path: Path) -> PretrainedCheckpoints:
    """The checkpoints of a `ctsurv pretrain` folder, or of its ``instruct`` folder (its siblings are read
    too), or a single checkpoint; a stage-0 (vision) checkpoint, whose language model never trained, is refused."""
    if not (path / "instruct" / "model.safetensors").is_file() and (path / "model.safetensors").is_file():
        refuse_untrained_language(path)
        if not (path.name == "instruct" and checkpoint_stage(path) == "instruct"):
            return PretrainedCheckpoints(path)
        path = path.parent
    if (path / "instruct" / "model.safetensors").is_file():
        found = [path / stage if (path / stage / "model.safetensors").is_file() else None for stage in ("vision", "align")]
        return PretrainedCheckpoints(path / "instruct", *found)
    raise CtsurvError(f"--pretrained {path} is neither a `ctsurv pretrain` output folder nor a checkpoint")


def with_preprocessing(cfg: ExperimentConfig, model_cfg: ExperimentConfig) -> ExperimentConfig:
    """The user's config (cohort columns) with the model's preprocessing (what its encoder expects)."""
    data = dataclasses.replace(cfg.data, **model_cfg.data.preprocessing())
    return dataclasses.replace(cfg, data=data, vision=model_cfg.vision)


def check_bare_encoder(encoder: str) -> None:
    """A CtsurvError unless ``encoder`` (--encoder) is an encoder with pretrained weights."""
    if encoder in SCRATCH_ENCODERS:
        raise CtsurvError(
            f"--encoder {encoder} is a scratch encoder with random weights, so its features are noise; pretrain it "
            "with `ctsurv pretrain` and pass --pretrained, or use --encoder i3resnet152 (pretrained weights)"
        )
    if encoder != "i3resnet152":
        raise CtsurvError(f"unknown --encoder {encoder!r}; use i3resnet152, or --pretrained with a `ctsurv pretrain` folder")


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
    answers: ImageFeatures | None  # the instruction-tuned model's (``model``)
    encoder: tuple[np.ndarray, ...] | None  # column blocks of the encoder before instruction tuning
    checkpoint: Path | None
    grids: torch.Tensor | None = None  # cached encoder features pooled to the token grid, for stage-3 fine-tuning
    cells: torch.Tensor | None = None  # the volumes' cells, with grids, for a findings head that reads them
    findings: np.ndarray | None = None  # (n, P) the findings classifier's probabilities
    align: ImageFeatures | None = None  # the stage-1 checkpoint's answers (``model_align``)
    absent: dict[str, str] = field(default_factory=dict)  # ladder rung -> why it is absent
    sources: dict[str, str] = field(default_factory=dict)  # method -> the checkpoint (or encoder) it reads
    radiomics: np.ndarray | None = None  # (n, F) the masked regions' radiomics (``radiomics_cox``), NaN without a mask
    encoder_region: tuple[np.ndarray, ...] | None = None  # a bare encoder's whole / inside / around pools (``encoder_region``)
    notes: dict[str, list[str]] = field(default_factory=dict)  # method -> what the results should say of its input
    block_tuning: BlockTuning | None = None  # a bare encoder's last block and its cached inputs (``encoder_finetuned``)

    def for_cohort(self, cohort: Cohort) -> Features:
        """These features in ``cohort``'s row order (same scans); an error if a study is missing."""
        if cohort.ids == self.ids:
            return self
        where = {study: i for i, study in enumerate(self.ids)}
        missing = [s for s in cohort.ids if s not in where]
        if missing:
            raise CtsurvError(f"no image features for {len(missing)} studies (e.g. {missing[:3]}); recompute them")
        order = np.array([where[s] for s in cohort.ids])
        rows = torch.as_tensor(order)
        return dataclasses.replace(
            self, ids=cohort.ids,
            answers=None if self.answers is None else self.answers.rows(order),
            encoder=None if self.encoder is None else tuple(b[order] for b in self.encoder),
            grids=None if self.grids is None else self.grids[rows], cells=None if self.cells is None else self.cells[rows],
            findings=None if self.findings is None else self.findings[order],
            align=None if self.align is None else self.align.rows(order),
            radiomics=None if self.radiomics is None else self.radiomics[order],
            encoder_region=None if self.encoder_region is None else tuple(b[order] for b in self.encoder_region),
            block_tuning=None if self.block_tuning is None else self.block_tuning.rows(order),
        )


def same_encoder(a: CTVLM, b: CTVLM) -> bool:
    """Whether two models' vision encoders hold the same tensors (an encoder frozen between their stages)."""
    sa, sb = a.vision_encoder.state_dict(), b.vision_encoder.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def model_features(vlm: CTVLM, checkpoints: PretrainedCheckpoints, volumes: Volumes, ids: list[str]) -> Features:
    """Every pretrained rung's features of ``volumes``, read once: the model's answers from its cached encoder
    grids (as stage 3 and `ctsurv predict` read them), its findings classifier's probabilities, the stage-1
    checkpoint's answers, and what the projector receives from the encoder before instruction tuning."""
    grids, cells = encode_all(vlm, volumes), cells_all(vlm, volumes)
    answers = vlm_features(vlm, grids, kind="features", cells=cells)
    absent, sources = {}, {"model": str(checkpoints.instruct)}
    findings = None
    if vlm.projector.findings is not None:
        findings = findings_probabilities(vlm.projector, grids, cells)
        sources["findings_classifier"] = str(checkpoints.instruct)
    else:
        absent["findings_classifier"] = (
            f"absent: {checkpoints.instruct} has no findings classifier (projector.findings_token: false)"
        )

    def grids_of(other: CTVLM) -> torch.Tensor:
        return grids if same_encoder(other, vlm) else encode_all(other, volumes)

    # the stage-1 checkpoint is loaded and encoded once, also when it is the encoder before instruction tuning
    stage1 = load_checkpoint(checkpoints.align)[0] if checkpoints.align is not None else None
    stage1_grids = grids_of(stage1) if stage1 is not None else None
    encoder = align = None
    if checkpoints.before is not None:
        if checkpoints.before == checkpoints.align:
            before_grids = stage1_grids
        else:
            before_grids = grids_of(load_checkpoint(checkpoints.before)[0])
        encoder = projector_input_blocks(vlm.projector, before_grids, cells)
        sources["encoder_no_instruction"] = str(checkpoints.before)
    else:
        absent["encoder_no_instruction"] = (
            f"absent: no stage-0 (vision) or stage-1 (align) checkpoint beside {checkpoints.instruct}"
        )
    if stage1 is not None:
        align = vlm_features(stage1, stage1_grids, kind="features", cells=cells, visual_tokens=False)
        sources["model_align"] = str(checkpoints.align)
    else:
        absent["model_align"] = f"absent: no stage-1 (align) checkpoint beside {checkpoints.instruct}"
    return Features(ids, answers, encoder, checkpoints.instruct, grids, cells, findings, align, absent, sources)


def prepare(
    cfg: ExperimentConfig, cohort_path: str | Path, pretrained: str | Path | None, encoder: str | None, progress: bool = True
) -> tuple[ExperimentConfig, Cohort, Features]:
    """The config with the model's preprocessing, the validated cohort, and its frozen image features."""
    if (pretrained is None) == (encoder is None):
        raise CtsurvError("give exactly one of --pretrained CHECKPOINT (a `ctsurv pretrain` folder) or --encoder NAME")
    mode = cfg.survival.finetune
    if pretrained is not None and mode == "last_block":
        raise CtsurvError("survival.finetune=last_block tunes a bare encoder (--encoder i3resnet152); with --pretrained "
                          "use survival.finetune=projector or projector+lora")
    if encoder is not None and mode in ("projector", "projector+lora"):
        raise CtsurvError(f"survival.finetune={mode} tunes a pretrained CT-VLM (--pretrained); with --encoder use "
                          "survival.finetune=last_block")
    if pretrained is not None:
        checkpoints = pretrained_checkpoints(Path(pretrained))
        vlm, model_cfg = load_checkpoint(checkpoints.instruct)
        cfg = with_preprocessing(cfg, model_cfg)
    else:
        check_bare_encoder(encoder)  # type: ignore[arg-type]
        cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, encoder=encoder))
    cohort = load_cohort(cohort_path, cfg.data, require_outcomes=True)
    with volume_store(cohort, cfg.data, progress) as volumes:  # streamed from disk batch by batch
        if pretrained is not None:
            features = model_features(vlm, checkpoints, volumes, cohort.ids)
        else:
            features = bare_encoder_features(cfg, encoder, volumes, cohort.ids)  # type: ignore[arg-type]
    return cfg, cohort, with_radiomics(features, cohort, progress)


def with_radiomics(features: Features, cohort: Cohort, progress: bool = False) -> Features:
    """``features`` with the masked regions' radiomics, or with a note that ``radiomics_cox`` is absent."""
    if not any(cohort.mask_path(i) is not None for i in range(len(cohort))):
        absent = {**features.absent, "radiomics_cox": "absent: no study has a mask (a mask column, or .npz volumes "
                  "that hold a mask array)"}
        return dataclasses.replace(features, absent=absent)
    sources = {**features.sources, "radiomics_cox": "the cohort's masks"}
    radiomics = cohort_radiomics(cohort, progress)
    notes = dict(features.notes)
    empty = [cohort.ids[i] for i in range(len(cohort)) if cohort.mask_path(i) is not None and np.isnan(radiomics[i]).all()]
    if empty:
        note = (f"{len(empty)} studies have an empty mask (e.g. {', '.join(empty[:5])}): they read as studies without "
                "one (radiomics imputed from the training fold, region pools equal to the whole-volume pool)")
        for name in ("radiomics_cox", "encoder_region", "encoder_finetuned"):
            notes[name] = [*notes.get(name, []), note]
    return dataclasses.replace(features, radiomics=radiomics, sources=sources, notes=notes)


def bare_encoder_features(cfg: ExperimentConfig, encoder: str, volumes: Volumes, ids: list[str]) -> Features:
    """A pretrained encoder (--encoder) without a language model: its mean-pooled grid (``encoder_no_instruction``),
    with masks also pooled inside and around them (``encoder_region``), and with ``survival.finetune: last_block``
    what its last block receives from every study, for ``encoder_finetuned``; all in one pass over the volumes."""
    size_xyz = tuple(reversed(cfg.data.target_shape_zyx))
    bare = build_vision_encoder(  # type: ignore[arg-type]
        cfg.vision, size_xyz, in_channels=cfg.data.in_channels, skip_channels=cfg.data.n_blob_channels
    )
    absent = {name: f"absent: --encoder {encoder} has no language model" for name in ("findings_classifier", "model_align", "model")}
    sources = {"encoder_no_instruction": str(encoder)}
    has_masks = bool(getattr(volumes, "has_masks", False))
    tune = cfg.survival.finetune == "last_block"
    spacing = zyx_to_xyz(cfg.data.target_spacing_zyx)
    inputs = RowBuffer(len(volumes), np.float16) if tune else None
    per_study: list[torch.Tensor | None] | None = [] if tune else None  # each study's region weights, for the tuning
    whole, inside, around = encoder_region_features(  # type: ignore[arg-type]
        bare, volumes, spacing, masks=has_masks, block_inputs=inputs, weights=per_study,
    )
    region = None
    if has_masks:
        sources["encoder_region"] = f"{encoder} and the cohort's masks"
        region = (whole, inside, around)
    else:
        absent["encoder_region"] = "absent: no study has a mask to pool the encoder's grid in"
    tuning = None
    if tune:
        cells = int(np.prod(bare.grid_shape(*size_xyz)))
        tuning = BlockTuning(LastBlock(bare), inputs.tensor(), region_weight_rows(per_study, cells))  # type: ignore[union-attr, arg-type]
        sources["encoder_finetuned"] = f"{encoder}, its last block tuned per fold"
    else:
        absent["encoder_finetuned"] = (f"absent: survival.finetune is {cfg.survival.finetune!r}; set it to last_block to "
                                       f"tune {encoder}'s last block per training fold")
    return Features(ids, None, (whole,), None, absent=absent, sources=sources, encoder_region=region, block_tuning=tuning)


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
    return dataclasses.replace(run, seconds={**seconds, **run.seconds})


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
    methods = survival_methods(
        data, cfg, features.answers, features.encoder, truth_risk(cohort), tuning, findings=features.findings,
        align=features.align, radiomics=features.radiomics, encoder_region=features.encoder_region,
        block_tuning=features.block_tuning,
    )
    if only is not None:
        methods = {name: fit for name, fit in methods.items() if name in only}
    main = "model" if "model" in methods else "encoder_no_instruction"
    methods[main], surv_at_horizon = at_horizon(methods[main], horizon, fold_list, len(time))
    oofs = {
        name: cross_validate(fold_list, fit, time, event, horizons=horizons, tau=horizon, progress=progress, description=name)
        for name, fit in methods.items()
    }
    ladder = [name for name in LADDER if name in oofs]
    boot = cfg.survival.bootstrap
    results = {
        "cohort": {
            "n": len(cohort), "events": int(event.sum()), "horizon": horizon, "times": horizons,
            "folds": folds, "repeats": repeats, "patients": len(set(cohort.patient_ids)),
            "pretrained": str(features.checkpoint) if features.checkpoint else None, "encoder": cfg.vision.encoder,
            "bootstrap": {"resamples": boot, "unit": "patient", "p_floor": p_floor(boot)},
            "sources": {name: source for name, source in features.sources.items() if name in oofs},
        },
        "ladder": ladder,
        "methods": compare_methods(time, event, oofs, n_boot=boot, seed=cfg.seed, groups=cohort.patient_ids, ladder=ladder),
        "notes": {name: oof.notes() for name, oof in oofs.items() if oof.notes()},
        # what the folds chose on their training rows (survival.nested, survival.finetune: last_block), counted
        "chosen": {name: oof.chosen() for name, oof in oofs.items() if oof.chosen()},
    }
    for name, said in features.notes.items():
        if name in oofs:
            results["notes"][name] = [*said, *results["notes"].get(name, [])]
    for name, why in features.absent.items():
        if name not in oofs and (only is None or name in only):
            results["notes"][name] = [why]
    oof = oof_table(cohort, fold_list, oofs, main, surv_at_horizon)
    oof.to_csv(out_dir / "oof.csv", index=False)
    first = oof[oof["repeat"] == 0]
    results["figures"] = {
        "km": figures.km_by_risk_group(first, out_dir / "km_risk_groups.png"),
        "calibration": figures.calibration_plot(first, horizon, out_dir / "calibration.png"),
    }
    if repeats > 1:  # one calibration figure per repeat (repeat 0's is calibration.png)
        results["figures"]["calibration_by_repeat"] = [results["figures"]["calibration"]] + [
            figures.calibration_plot(oof[oof["repeat"] == r], horizon, out_dir / f"calibration_repeat{r}.png")
            for r in range(1, repeats)
        ]
    figures.cindex_forest(results, out_dir / "cindex.png")
    report.write_results(results, out_dir)
    model_dir = None
    if final_model and features.answers is not None and features.checkpoint is not None:
        model_dir = out_dir / "model"
        fit_final_model(cfg, data, features.answers, features.checkpoint, model_dir, tuning, grids=features.grids)
    return SurvivalRun(out_dir, results, {"crossval": clock.perf_counter() - t0}, model_dir)


def oof_table(
    cohort: Cohort, folds: Sequence[Fold], oofs: dict[str, OutOfFold], main: str, surv_at_horizon: np.ndarray
) -> pd.DataFrame:
    """oof.csv: one row per study and repeat (repeat-major, cohort order within a repeat), every value that
    repeat's: its fold, the main method's risk and predicted survival at the horizon, every method's risk."""
    repeats = len(surv_at_horizon)
    fold_of = np.full((repeats, len(cohort)), -1)
    for f in folds:
        fold_of[f.repeat, f.test_idx] = f.fold
    frames = []
    for r in range(repeats):
        frame = pd.DataFrame({
            "id": cohort.ids, "repeat": r, "fold": fold_of[r], "time": cohort.times, "event": cohort.events.astype(int),
            "risk": oofs[main].risk[r], "surv_at_horizon": surv_at_horizon[r],
        })
        for name, o in oofs.items():
            frame[f"risk_{name}"] = o.risk[r]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def fit_final_model(
    cfg: ExperimentConfig, data: FoldData, answers: ImageFeatures, checkpoint: Path, out: Path,
    tuning: Tuning | None = None, grids: torch.Tensor | None = None,
) -> None:
    """The model method fitted on the whole cohort, saved for `ctsurv predict` (no pickle): head, schema, PCA,
    Breslow baseline, the cohort's risks (for percentiles) and Kaplan-Meier curve, and, from the encoder's pooled
    ``grids`` (n, Dv, N), the out-of-distribution reference (``ood.safetensors``, :mod:`ctsurv.evaluation.explain`). With
    ``survival.finetune``, the model tuned on the whole cohort is saved as ``out/vlm`` (stage "survival") and
    read instead; model.json names it relative to ``out``, so the run folder can move."""
    everyone = np.arange(len(data.time))
    schema = data.schema(everyone)
    if cfg.survival.finetune != "none" and tuning is not None:
        vlm, model_cfg = tuned_model(
            checkpoint, tuning.grids, data.clinical(everyone, schema), data.time, data.event, answers.p_yes,
            PRESENCE_QUESTIONS, cfg, cfg.seed, cells=tuning.cells,
        )
        checkpoint = save_checkpoint(out / "vlm", vlm, model_cfg, stage="survival")
        answers = vlm_features(vlm, tuning.grids, kind="features", cells=tuning.cells)
    components, l2 = cfg.survival.hidden_components, cfg.survival.l2
    if cfg.survival.nested:  # the penalty and the components chosen as in each fold, here on the whole cohort
        q, widest = len(PRESENCE_QUESTIONS), fit_answer_pca(answers, everyone, components)
        budget = 0 if widest is None else int(widest.n_components_)
        choice = choose_head(data, cfg, answer_image(answers, components), True, cfg.seed, everyone, kept=q, budget=budget)
        l2, components = choice.l2, components if choice.width is None else choice.width - q
    pca = fit_answer_pca(answers, everyone, components)
    image = torch.as_tensor(answer_matrix(answers, everyone, pca), dtype=torch.float32)
    clinical = torch.as_tensor(schema.transform(data.cohort.clinical()))
    head = SurvivalHead(image_dim=image.shape[1], n_clinical=clinical.shape[1], kind=cfg.survival.head)
    fit_survival_head(
        head, image, clinical, torch.as_tensor(data.time), torch.as_tensor(data.event),
        epochs=cfg.survival.epochs, lr=cfg.survival.lr, seed=cfg.seed, l2=l2,
    )
    risk = head.predict_risk(image, clinical).numpy()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, out / "head.safetensors")
    meta = {
        "head": head.config,
        "checkpoint": checkpoint_reference(checkpoint, out),
        "checkpoint_absolute": str(checkpoint.resolve()),
        "clinical_schema": schema.to_dict(),
        "pca": None if pca is None else {"mean": pca.mean_.tolist(), "components": pca.components_.tolist()},
        "breslow": BreslowBaseline().fit(data.time, data.event, risk.astype(np.float64)).to_dict(),
        "training_risk": sorted(float(r) for r in risk),
        "presence_labels": PRESENCE_LABELS,
        "horizon_times": choose_horizons(data.time, data.event),
        "l2": l2,
        "km": kaplan_meier(data.time, data.event),
    }
    if grids is not None and len(set(data.groups.tolist())) >= 2 * OOD_FOLDS:
        ood = OutOfDistribution.fit(pooled_features(grids), seed=cfg.seed, groups=data.groups)
        ood.save(out / "ood.safetensors")
        meta["ood"] = {"features": "pooled encoder features, mean over tokens", "quantile": ood.quantile,
                       "threshold": ood.threshold, "folds": OOD_FOLDS}
    (out / "model.json").write_text(json.dumps(meta))
    save_config(cfg, out / "config.yaml")


def kaplan_meier(time: np.ndarray, event: np.ndarray) -> dict[str, list[float]]:
    """The Kaplan-Meier curve (lifelines) at the cohort's distinct times: {"times", "survival"}."""
    kmf = KaplanMeierFitter().fit(np.asarray(time, float), np.asarray(event, bool))
    curve = kmf.survival_function_.iloc[:, 0]
    keep = curve.index > 0
    return {"times": curve.index[keep].tolist(), "survival": curve[keep].tolist()}


def checkpoint_reference(checkpoint: Path, model_dir: Path) -> str:
    """How model.json names ``checkpoint``: relative to ``model_dir`` (POSIX), so that a run folder that moves
    with its checkpoint (a fine-tuned ``model/vlm``; the demo's ``pretrain/`` beside its ``survival/``, both
    renamed from a staging folder) still finds it; ``checkpoint_absolute`` is the fallback when only the run moved."""
    return Path(os.path.relpath(checkpoint.resolve(), model_dir.resolve())).as_posix()

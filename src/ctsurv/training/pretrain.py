"""`ctsurv pretrain`: stages 0 (vision, for a scratch encoder), 1 (align) and 2 (instruct) on a
cohort of CT volumes with reports (see ``training.stages`` for what each stage trains).

    out/config.yaml, out/split.csv        the config and the train/val/test split (by patient)
    out/tokenizer/                         fitted on the training reports only
    out/vision/, out/align/, out/instruct/ checkpoints (see ``training.checkpoint``)
    out/instruct/eval.json, eval.md        the test studies' answers vs report labels, text metrics
    out/<stage>_run/train_state/           resume state while a stage runs

The split is three-way, by patient (``pretrain.val_fraction`` and ``pretrain.test_fraction``, at least one
patient each): training studies train; validation studies choose what the run chooses; test studies are only
scored, in eval.json, so that no choice is made on the studies that measure it. Validation studies are kept
out of training even where nothing is chosen on them (a findings head without cells, or none), so that the
training set does not depend on such settings.

With ``projector.findings_token`` the findings classifier is fitted on the cached features before stage 1
(``training.findings``), and stages 1-2 see the training studies' out-of-fold logits (folds of patients).
With ``projector.findings_cells_channel`` the validation studies choose, per finding, whether it reads the
cells; the choice and its log-losses are in the stage's metrics.json (``findings_head``).

``--resume`` skips finished stages and continues an interrupted one from its last epoch; the split is drawn
again from the seed and must equal the saved split.csv.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoTokenizer

from ctsurv.config import ExperimentConfig, config_differences, load_config, save_config
from ctsurv.errors import ConfigError, CtsurvError
from ctsurv.features import cells_all, encode_all, volume_store
from ctsurv.features.store import default_workers
from ctsurv.io.cohort import load_cohort
from ctsurv.models.language import train_tokenizer
from ctsurv.models.vlm import build_vlm
from ctsurv.text.answers import instruction_pairs
from ctsurv.text.questions import PRESENCE_LABELS, PRESENCE_QUESTIONS
from ctsurv.training.checkpoint import load_checkpoint, save_checkpoint
from ctsurv.training.datasets import (
    StudyDataset,
    align_pairs,
    finding_collate,
    presence_labels,
    study_collate,
)
from ctsurv.training.findings import FOLDS, HeldOut, fit_findings_head
from ctsurv.training.loop import resolve_precision, train
from ctsurv.training.stages import FindingLoss, InstructionLoss, set_trainable, vision_stage_runs, vision_trains

STAGES = ("vision", "align", "instruct")


@dataclass(frozen=True)
class PretrainSummary:
    out_dir: Path
    n_train: int  # studies of each part of the split
    n_val: int
    n_test: int  # the studies scored in metrics (eval.json)
    seconds: dict[str, float]
    metrics: dict


def split_patients(patient_ids: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """"train", "val" or "test" per study; all studies of a patient fall in one part.

    ``seed`` permutes the sorted patients: the first ``round(test_fraction · patients)`` (at least one) are
    test, the next ``round(val_fraction · patients)`` (at least one) validation, the rest training.
    """
    patients = np.array(sorted(set(patient_ids)))
    n_test, n_val = (max(1, round(f * len(patients))) for f in (test_fraction, val_fraction))
    if n_test + n_val >= len(patients):
        raise CtsurvError(
            f"{len(patients)} patients cannot be split three ways: pretrain.test_fraction={test_fraction} holds out "
            f"{n_test} and pretrain.val_fraction={val_fraction} {n_val}, leaving none to train on; add patients "
            f"(at least 3) or lower pretrain.val_fraction or pretrain.test_fraction"
        )
    order = np.random.default_rng(seed).permutation(patients)
    part = {p: "test" for p in order[:n_test]} | {p: "val" for p in order[n_test : n_test + n_val]}
    return np.array([part.get(p, "train") for p in patient_ids])


# settings a finished stage does not depend on: --resume may change them (those of the stages still to run)
_LATER_SETTINGS: dict[str, tuple[str, ...]] = {
    "vision": ("pretrain.align.", "pretrain.instruct.", "pretrain.finetune_vision", "pretrain.loss_weighting",
               "pretrain.finding_loss_weight", "pretrain.pack_questions"),
    "align": ("pretrain.instruct.", "pretrain.finetune_vision", "pretrain.finding_loss_weight", "pretrain.pack_questions"),
    "instruct": (),
}


def check_resumed_stage(saved: ExperimentConfig, cfg: ExperimentConfig, stage: str, stage_dir: Path) -> None:
    """Refuse to resume past a finished ``stage`` whose checkpoint was trained with other settings than ``cfg``.

    ``--resume`` keeps a finished stage as it is and rebuilds the model from its checkpoint, so a changed
    setting of that stage (or of the model, e.g. ``projector.max_token``) would silently not apply. Settings
    of the stages still to run, the evaluation's ``pretrain.max_new_tokens``, ``survival.*``, ``name`` and where or
    how fast volumes are preprocessed (``data.cache_dir``, ``data.workers``) may change.
    """
    free = (*_LATER_SETTINGS[stage], "pretrain.max_new_tokens", "survival.", "name", "data.cache_dir", "data.workers")
    changed = {k: v for k, v in config_differences(saved, cfg).items() if not k.startswith(free)}
    if changed:
        listed = "; ".join(f"{k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in sorted(changed.items()))
        raise CtsurvError(
            f"cannot resume: the finished stage {stage_dir} was trained with other settings ({listed}). "
            f"--resume keeps finished stages as they are; restore those settings, or remove {stage_dir} "
            "(and the stages after it) to train it again, or start a new --out folder"
        )


def pretrain(
    cfg: ExperimentConfig, cohort_path: str | Path, out_dir: str | Path, resume: bool = False, progress: bool = True
) -> PretrainSummary:
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not resume:
        raise CtsurvError(f"{out_dir} already exists and is not empty; choose a new --out folder or pass --resume")
    if resume:  # before anything is written: a refused resume leaves the folder as it was
        for stage in STAGES:
            if (out_dir / stage / "model.safetensors").is_file():
                check_resumed_stage(load_config(out_dir / stage / "config.yaml"), cfg, stage, out_dir / stage)
    if cfg.projector.findings_token and (vision_trains(cfg, "align") or vision_trains(cfg, "instruct")):
        raise ConfigError(
            "projector.findings_token is fitted on the frozen encoder's features, but the vision encoder trains in "
            "stages 1-2 here; keep stage 0 (pretrain.vision.epochs > 0) for a scratch encoder and "
            "pretrain.finetune_vision=false, or set projector.findings_token=false"
        )
    # pretraining reads volumes and reports, never clinical data: a CT-RATE table has none of the columns a
    # survival config declares
    reading = dataclasses.replace(cfg.data, numeric_columns=(), categorical_columns=())
    cohort = load_cohort(cohort_path, reading, require_reports=True)
    patients = cohort.patient_ids
    part = split_patients(patients, cfg.pretrain.val_fraction, cfg.pretrain.test_fraction, cfg.seed)
    train_idx, val_idx, test_idx = (np.flatnonzero(part == name) for name in ("train", "val", "test"))
    train_patients = [patients[i] for i in train_idx]
    if len(train_idx) < 2:
        raise CtsurvError(
            f"{cohort_path}: only {len(train_idx)} training studies after the validation and test split; add studies"
        )
    if cfg.projector.findings_token and len(set(train_patients)) < FOLDS:
        raise CtsurvError(
            f"{cohort_path}: only {len(set(train_patients))} training patients ({len(train_idx)} studies) after the "
            f"validation and test split, and projector.findings_token cross-fits its classifier in {FOLDS} folds of "
            "patients; add patients, lower pretrain.val_fraction or pretrain.test_fraction, or set "
            "projector.findings_token=false"
        )
    split = pd.DataFrame({"id": [str(i) for i in cohort.ids], "split": part})
    saved_split = out_dir / "split.csv"
    if resume and saved_split.is_file() and saved_split.read_text() != split.to_csv(index=False):
        raise CtsurvError(
            f"cannot resume: {saved_split} differs from the split of {cohort_path} with this seed and "
            "pretrain.val_fraction/test_fraction (another cohort, or a run of an older ctsurv); start a new --out folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    split.to_csv(out_dir / "split.csv", index=False)

    table = cohort.table
    # either report column may be absent (load_cohort asks for one of them): an absent one reads as empty
    findings, impressions = (
        table[column].fillna("").astype(str).tolist() if column in table else [""] * len(cohort)
        for column in (cfg.data.findings_column, cfg.data.impression_column)
    )
    reports = cohort.reports()

    def question_answers(i: int) -> list[tuple[str, str]]:
        return [(q.text, a) for q, a in instruction_pairs(findings[i], impressions[i])]

    answers = [question_answers(i) for i in train_idx]
    # stage 0 learns the presence answers among them (report-derived, like everything here)
    stage_pairs = {"vision": answers, "align": [align_pairs(findings[i], impressions[i]) for i in train_idx], "instruct": answers}
    tokenizer_dir = out_dir / "tokenizer"
    tokenizer = None
    if cfg.language.model == "tiny":
        if tokenizer_dir.exists():
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        else:  # the training studies' reports and their question-answer texts: no test-fold text
            texts = [reports[i] for i in train_idx] + [f"{q} {a}" for pairs in stage_pairs["instruct"] for q, a in pairs]
            tokenizer = train_tokenizer(texts, cfg.language.vocab_size)
            tokenizer.save_pretrained(tokenizer_dir)
    torch.manual_seed(cfg.seed)
    vlm = build_vlm(cfg, tokenizer=tokenizer)
    if cfg.pretrain.pack_questions and not vlm.chat:
        raise ConfigError(
            f"pretrain.pack_questions needs a language model with a chat template; {cfg.language.model!r} has none "
            "(set pretrain.pack_questions=false)"
        )

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    # on disk (data.cache_dir, else a temporary folder removed at the end): stage 0 and the encoding read it
    # batch by batch, never all at once
    volumes = volume_store(cohort, cfg.data, progress)
    seconds["preprocess"] = time.perf_counter() - t0

    features = None
    cells = cells_all(vlm, volumes)  # (n, K) what the findings head reads besides the grid, or None
    finding_logits = None  # the findings token's out-of-fold logits of the training studies
    findings_choice: dict = {}
    for stage in STAGES:
        stage_dir = out_dir / stage
        if (stage == "vision" and not vision_stage_runs(cfg)) or getattr(cfg.pretrain, stage).epochs == 0:
            continue
        if resume and (stage_dir / "model.safetensors").is_file():
            vlm, _ = load_checkpoint(stage_dir)
            continue
        t0 = time.perf_counter()
        set_trainable(vlm, cfg, stage)
        frozen_vision = not vision_trains(cfg, stage)
        if frozen_vision and features is None:
            features = encode_all(vlm, volumes)
        if stage != "vision" and cfg.projector.findings_token and finding_logits is None:
            # deterministic, so a resumed run fits the same head (and overwrites a loaded one with equal values)
            labels = torch.tensor([presence_labels(pairs) for pairs in answers], dtype=torch.long)
            held_out = None
            if cells is not None:  # the validation studies, which stage 0 never saw, choose where cells are read
                val_labels = [presence_labels(question_answers(i)) for i in val_idx]
                held_out = HeldOut(features[val_idx], cells[val_idx], torch.tensor(val_labels, dtype=torch.long))
            finding_logits, choice = fit_findings_head(
                vlm.projector.findings, features[train_idx], labels, seed=cfg.seed,
                cells=None if cells is None else cells[train_idx], held_out=held_out, groups=train_patients,
            )
            findings_choice = {PRESENCE_LABELS[j]: c for j, c in choice.items()}
        inputs, kind = (features, "features") if frozen_vision else (volumes, "images")
        logits = finding_logits if stage != "vision" else None
        dataset = StudyDataset(inputs[train_idx], stage_pairs[stage], kind, logits)
        if stage == "vision":
            loss, collate = FindingLoss(vlm, len(PRESENCE_QUESTIONS), cfg.pretrain.vision_augment), finding_collate
        else:
            loss = InstructionLoss(
                vlm, frozen_vision, cfg.pretrain.loss_weighting,
                finding_weight=cfg.pretrain.finding_loss_weight if stage == "instruct" else 0.0,
                n_findings=len(PRESENCE_QUESTIONS),
            )
            collate = study_collate(vlm, kind, packed=cfg.pretrain.pack_questions and stage == "instruct")
        # stage 0 reads volumes from disk: with a GPU, worker processes read them while the model trains (its collate
        # is deterministic; the other stages' shuffle questions, so they collate here). On a CPU the workers compete
        # with the training threads: stage 0 of the demo took 296 s with 2 of them against 262 s without
        on_gpu = torch.cuda.is_available()
        readers = (cfg.data.workers or default_workers()) if stage == "vision" and kind == "images" and on_gpu else 0
        history = train(
            loss, dataset, collate, getattr(cfg.pretrain, stage), seed=cfg.seed,
            out_dir=out_dir / f"{stage}_run", resume=resume, description=stage, progress=progress,
            loader_workers=readers,
        )
        seconds[stage] = time.perf_counter() - t0
        stage_metrics = _stage_metrics(history, seconds[stage], len(dataset))
        stage_metrics["mixed_precision"] = resolve_precision(getattr(cfg.pretrain, stage).mixed_precision)
        if stage != "vision" and findings_choice:
            stage_metrics["findings_head"] = findings_choice
        save_checkpoint(stage_dir, vlm, cfg, metrics=stage_metrics, stage=stage)

    from ctsurv.evaluation.vlm_eval import evaluate_vlm

    t0 = time.perf_counter()
    inputs = features if (features is not None and not vision_trains(cfg, "instruct")) else volumes
    kind = "features" if inputs is features else "images"
    metrics = evaluate_vlm(  # on the test studies only: nothing was chosen on them
        vlm.eval(), inputs[test_idx], kind, [findings[i] for i in test_idx], [impressions[i] for i in test_idx],
        max_new_tokens=cfg.pretrain.max_new_tokens, out_dir=out_dir / "instruct", progress=progress,
        cells=None if (cells is None or kind == "images") else cells[test_idx],
    )
    seconds["evaluate"] = time.perf_counter() - t0
    volumes.close()  # (on an error, the temporary cache goes when the store is collected or Python exits)
    return PretrainSummary(out_dir, len(train_idx), len(val_idx), len(test_idx), seconds, metrics)


def _stage_metrics(history: list[dict[str, float]], seconds: float, n_studies: int) -> dict:
    epochs = int(history[-1]["epoch"]) if history else 0
    last = [h["loss"] for h in history if h["epoch"] == epochs]
    return {
        "epochs": epochs,
        "final_epoch_loss": float(np.mean(last)) if last else None,
        "first_step_loss": history[0]["loss"] if history else None,
        "seconds": round(seconds, 1),
        "studies": n_studies,
        "history": history,
    }

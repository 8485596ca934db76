"""Checkpoints: a folder that rebuilds the model with no flags.

    config.yaml        the ExperimentConfig the model was built from
    model.safetensors  every tensor except those of untouched pretrained parts (no pickle)
    tokenizer/         the tokenizer (the tiny model's is trained on the reports)
    metrics.json       whatever the stage measured
    checkpoint.json    {"stage": ...}: the stage that wrote it (vision, align, instruct, survival) or null

Pretrained parts that were never trained (the frozen I3ResNet-152, the base weights of a local
LM under LoRA) are not copied: ``load_checkpoint`` rebuilds them from their source and checks
that exactly those tensors, and no others, were missing. Folders are written to a temporary
sibling and swapped in, so a crash never leaves half a checkpoint.

A stage-0 (``vision``) checkpoint holds a trained encoder and a language model that never trained: its
answers are noise, so ``ask``, ``survival --pretrained`` and ``predict`` refuse it
(:func:`refuse_untrained_language`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from ctsurv.config import ExperimentConfig, load_config, save_config
from ctsurv.errors import CtsurvError
from ctsurv.models.vlm import CTVLM, build_vlm
from ctsurv.training.stages import language_is_pretrained, vision_is_pretrained

WEIGHTS = "model.safetensors"
STAGE_FILE = "checkpoint.json"
CHECKPOINT_STAGES = ("vision", "align", "instruct", "survival")  # pretraining stages 0-2, stage-3 fine-tuning


def from_pretrained_source(name: str, cfg: ExperimentConfig) -> bool:
    """Whether tensor ``name`` of a CTVLM comes unchanged from a pretrained source."""
    if name.startswith("vision_encoder.") and vision_is_pretrained(cfg) and not cfg.pretrain.finetune_vision:
        return True
    return name.startswith("language_model.") and language_is_pretrained(cfg) and "lora_" not in name


def save_checkpoint(
    out_dir: str | Path, model: CTVLM, cfg: ExperimentConfig, metrics: dict[str, Any] | None = None,
    stage: str | None = None,
) -> Path:
    """Write ``model`` as a checkpoint folder ``out_dir`` (replacing an older one atomically); ``stage``
    (one of ``CHECKPOINT_STAGES``) is recorded in checkpoint.json."""
    if stage is not None and stage not in CHECKPOINT_STAGES:
        raise ValueError(f"stage must be one of {CHECKPOINT_STAGES} or None, got {stage!r}")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state, aliases, seen = {}, {}, {}
    for name, tensor in model.state_dict().items():
        if from_pretrained_source(name, cfg):
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:  # tied weights (the tiny LM's embedding and output head) are stored once
            aliases[name] = seen[key]
            continue
        seen[key] = name
        state[name] = tensor.detach().contiguous().cpu()
    save_file(state, tmp / WEIGHTS, metadata={"aliases": json.dumps(aliases)})
    model.tokenizer.save_pretrained(tmp / "tokenizer")
    save_config(cfg, tmp / "config.yaml")
    (tmp / "metrics.json").write_text(json.dumps(metrics or {}, indent=2))
    (tmp / STAGE_FILE).write_text(json.dumps({"stage": stage}))
    old = out_dir.with_name(out_dir.name + ".old")
    if out_dir.exists():
        out_dir.replace(old)
    tmp.replace(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def checkpoint_stage(path: str | Path) -> str | None:
    """The stage that wrote checkpoint ``path``: checkpoint.json's, else (checkpoints written before it was
    recorded) the folder's name if it is a pretraining stage's (vision, align, instruct), else None."""
    path = Path(path)
    if (path / STAGE_FILE).is_file():
        stage = json.loads((path / STAGE_FILE).read_text()).get("stage")
        if stage is not None:
            return str(stage)
    return path.name if path.name in ("vision", "align", "instruct") else None


def refuse_untrained_language(path: str | Path) -> None:
    """A CtsurvError naming the checkpoint to use instead if ``path`` is a stage-0 (vision) checkpoint,
    whose language model never trained."""
    path = Path(path)
    if checkpoint_stage(path) != "vision":
        return
    sibling = path.parent / "instruct"
    instead = str(sibling) if (sibling / WEIGHTS).is_file() else "the instruct checkpoint of its `ctsurv pretrain` run"
    raise CtsurvError(
        f"{path} is the stage-0 (vision) checkpoint: its language model never trained, so its answers are noise; "
        f"use {instead}"
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[CTVLM, ExperimentConfig]:
    """The model and config saved in checkpoint folder ``path``."""
    path = Path(path)
    for required in ("config.yaml", WEIGHTS, "tokenizer"):
        if not (path / required).exists():
            raise CtsurvError(
                f"{path} is not a ctsurv checkpoint (no {required}); pass a folder written by `ctsurv pretrain`, "
                "e.g. runs/demo/pretrain/instruct"
            )
    cfg = load_config(path / "config.yaml")
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    model = build_vlm(cfg, tokenizer=tokenizer)
    state = load_file(path / WEIGHTS, device=str(map_location))
    with safe_open(path / WEIGHTS, framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    state.update({alias: state[name] for alias, name in aliases.items()})
    expected = model.state_dict()
    # load_state_dict raises a bare RuntimeError (one line per tensor) on shape mismatches even with
    # strict=False, so shapes are compared first and reported like missing tensors
    reshaped = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if reshaped:
        raise CtsurvError(
            f"checkpoint {path} does not match the model its config.yaml describes: {len(reshaped)} tensors have "
            f"other shapes (saved vs config, e.g. {reshaped[:3]}). Was config.yaml edited?"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    not_pretrained = [k for k in missing if not from_pretrained_source(k, cfg)]
    if unexpected or not_pretrained:
        raise CtsurvError(
            f"checkpoint {path} does not match the model its config.yaml describes: "
            f"{len(not_pretrained)} tensors missing (e.g. {not_pretrained[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}). Was config.yaml edited?"
        )
    return model.eval(), cfg

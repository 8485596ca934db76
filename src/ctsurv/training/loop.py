"""One plain training loop on Hugging Face Accelerate.

The same code runs on a laptop CPU, one GPU, or many under ``accelerate launch`` (DDP, FSDP and
DeepSpeed come from the launcher's config, not from flags here). The model passed in is a *loss
module*: ``model(**batch)`` returns the scalar loss, so Accelerate's wrapper sees every forward.
Trainable parameters are those with ``requires_grad``; the stage decides which.

Resuming is exact at epoch boundaries: the shuffling order and the torch RNG are derived from
``(seed, epoch)``, and the end of every epoch saves the trainable weights (safetensors), the
optimiser and scheduler state, and the history, atomically.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import get_cosine_schedule_with_warmup

from ctsurv.config import TrainConfig
from ctsurv.errors import CtsurvError

STATE_DIR = "train_state"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: the trainable parameters and every buffer (BatchNorm running statistics)."""
    state = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().contiguous().cpu() for n, b in model.named_buffers()})
    return state


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW's parameter groups: matrices decay, biases and norms do not; parameters of a module named
    ``projector`` learn at ``cfg.projector_lr`` when it is set. The groups depend on the model alone (not on
    the learning rates), so that a resumed run's optimiser state fits them."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(("projector" in name.split("."), p.ndim >= 2), []).append(p)
    return [
        {
            "params": params,
            "lr": cfg.projector_lr if projector and cfg.projector_lr is not None else cfg.lr,
            "weight_decay": cfg.weight_decay if decays else 0.0,
        }
        for (projector, decays), params in sorted(groups.items())
    ]


def resolve_precision(mixed_precision: str) -> str:
    """``mixed_precision`` as Accelerate takes it: "auto" is bf16 where the hardware computes in it natively (a CUDA
    GPU that supports it; else a CPU with oneDNN's bf16 kernels, AVX-512 or AMX) and "no" elsewhere, where bf16
    would be emulated and slower than float32."""
    if mixed_precision != "auto":
        return mixed_precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"
    except (AttributeError, RuntimeError):  # a torch without oneDNN
        return "no"


def train(
    model: nn.Module,
    dataset: Dataset,
    collate: Callable[[list[Any]], dict[str, torch.Tensor]],
    cfg: TrainConfig,
    seed: int,
    out_dir: Path | None = None,
    resume: bool = False,
    description: str = "train",
    progress: bool = True,
    loader_workers: int = 0,
) -> list[dict[str, float]]:
    """Train ``model`` (a loss module) on ``dataset``; returns the per-step history of loss and lr.

    With ``out_dir``, the state after each epoch goes to ``out_dir/train_state`` and ``resume``
    continues from it; every ``cfg.log_every`` steps a line goes to ``out_dir/log.jsonl``. The trained weights stay in ``model`` (unwrapped) at the end.
    ``loader_workers`` processes read and collate the batches (the order is drawn here, so the batches do not
    change); only for a ``collate`` that draws no random numbers, as those would come from the workers' generators.
    """
    precision = resolve_precision(cfg.mixed_precision)
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != precision:
        # stages may differ in precision; Accelerate keeps the first stage's unless its state is reset (the
        # process group, in PartialState, stays)
        AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum)
    groups = parameter_groups(model, cfg)
    if not groups:
        raise ValueError(f"{description}: the model has no trainable parameters")
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    batches_per_epoch = math.ceil(len(dataset) / (cfg.batch_size * accelerator.num_processes))
    # Accelerate steps a prepared scheduler once per process per optimiser step, so the schedule
    # is laid out in single-process steps: the same learning rates whatever the process count.
    total_steps = max(1, cfg.epochs * math.ceil(math.ceil(len(dataset) / cfg.batch_size) / cfg.grad_accum))
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_fraction * total_steps), total_steps)

    history: list[dict[str, float]] = []
    start_epoch = 0
    state_dir = out_dir / STATE_DIR if out_dir is not None else None
    if resume and state_dir is not None and (state_dir / "progress.json").is_file():
        start_epoch, history = _load_state(state_dir, model, optimizer, scheduler)

    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    log_file = out_dir / "log.jsonl" if out_dir is not None and accelerator.is_main_process else None
    if log_file is not None and start_epoch == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        log_file.write_text("")
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    with Progress(*columns, disable=not (progress and accelerator.is_main_process), transient=True) as bar:
        task = bar.add_task(description, total=cfg.epochs * batches_per_epoch, completed=start_epoch * batches_per_epoch, info="")
        for epoch in range(start_epoch, cfg.epochs):
            torch.manual_seed(seed * 1000 + epoch)  # dropout etc.: identical on resume
            order = np.random.default_rng([seed, epoch]).permutation(len(dataset)).tolist()
            loader = accelerator.prepare_data_loader(
                DataLoader(dataset, batch_size=cfg.batch_size, sampler=order, collate_fn=collate, num_workers=loader_workers,
                           multiprocessing_context="fork" if loader_workers else None),
                device_placement=True,
            )
            model.train()
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = model(**batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                mean_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
                if not math.isfinite(mean_loss):
                    raise CtsurvError(
                        f"{description}: the loss became {mean_loss} at epoch {epoch + 1}; lower train.lr or enable "
                        "train.max_grad_norm clipping"
                    )
                history.append({"epoch": epoch + 1, "loss": mean_loss, "lr": scheduler.get_last_lr()[0]})
                if log_file is not None and len(history) % cfg.log_every == 0:
                    recent = [h["loss"] for h in history[-cfg.log_every :]]
                    with log_file.open("a") as f:
                        f.write(json.dumps({"step": len(history), **history[-1], "loss_mean": sum(recent) / len(recent)}) + "\n")
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {mean_loss:.4f}")
            if state_dir is not None and accelerator.is_main_process:
                _save_state(state_dir, accelerator.unwrap_model(model), optimizer, scheduler, epoch + 1, history)
            accelerator.wait_for_everyone()
    accelerator.free_memory()
    return history


def _save_state(state_dir: Path, model: nn.Module, optimizer: Any, scheduler: Any, epoch: int, history: list) -> None:
    """Everything needed to continue after ``epoch``, written to a temporary folder then swapped in."""
    tmp = state_dir.with_name(state_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), tmp / "trainable.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "progress.json").write_text(json.dumps({"epoch": epoch, "history": history}))
    old = state_dir.with_name(state_dir.name + ".old")
    if state_dir.exists():
        state_dir.replace(old)
    tmp.replace(state_dir)
    shutil.rmtree(old, ignore_errors=True)


def _load_state(state_dir: Path, model: nn.Module, optimizer: Any, scheduler: Any) -> tuple[int, list]:
    weights = load_file(state_dir / "trainable.safetensors")
    expected = set(trainable_state(model))
    if set(weights) != expected:
        raise CtsurvError(
            f"cannot resume from {state_dir}: it holds {len(weights)} trained tensors but this stage trains "
            f"{len(expected)} (different config?). Start again without --resume, or restore the original config."
        )
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with torch.no_grad():
        for name, value in weights.items():
            tensors[name].copy_(value)
    state = torch.load(state_dir / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    progress = json.loads((state_dir / "progress.json").read_text())
    return int(progress["epoch"]), list(progress["history"])

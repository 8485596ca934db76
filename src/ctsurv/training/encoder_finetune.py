"""Stage 3 for a bare pretrained encoder (``--encoder i3resnet152``, ``survival.finetune: last_block``): its last
residual block tuned with the Cox loss on each training fold, the ``encoder_finetuned`` rung.

Everything before the last block stays frozen, so what that block receives from every study is computed once
(:func:`block_inputs`, with the frozen grid) and each fold tunes a fresh copy of the block on cached inputs:

1. the training fold is split once more (``survival.finetune_validation`` of its patients held out, stratified by
   event; :func:`~ctsurv.training.survival_finetune.validation_split`) into a fitting part and a validation part
   for early stopping; without one (share 0, or too few events) the pretrained block is kept;
2. a linear Cox head reads the principal components of the frozen block's pools (whole volume, and inside /
   around the mask where studies have one; :class:`~ctsurv.training.survival.BlockPCA` fitted on the fitting
   part) plus the clinical data; it is first fitted with the block frozen, as ``encoder_region`` is;
3. block and head then train together, full batch (a Cox loss compares patients: the fitting part is one
   batch), BatchNorm statistics frozen, for at most :data:`MAX_EPOCHS` epochs; the block of the epoch with the
   lowest validation loss is kept (epoch 0, the pretrained block, included), patience :data:`PATIENCE`;
4. the kept block reads every study; ``encoder_finetuned`` then fits its head on those pools exactly as
   ``encoder_region`` does on the frozen ones (its own PCA, penalty and budget), so the two rungs differ only
   in the block. The temporary head is discarded.

The test fold never reaches the block: its inputs are read with the tuned block only after tuning.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ctsurv.config import ExperimentConfig
from ctsurv.features.extract import RowBuffer, pooling_weights
from ctsurv.models.survival import SurvivalHead, cox_loss, fit_survival_head
from ctsurv.training.survival_finetune import validation_split

MAX_EPOCHS = 15
PATIENCE = 3


@dataclass(frozen=True)
class BlockTuning:
    """What each fold tunes from: the pretrained last block, its cached inputs and the studies' pooling weights."""

    block: nn.Module  # the pretrained last block (a template: each fold tunes a copy)
    inputs: torch.Tensor  # (n, C, d, h, w): what the block receives for each study (float16)
    weights: torch.Tensor  # (n, R, cells): per study, R pooling regions over the block's output cells

    def rows(self, order: np.ndarray) -> BlockTuning:
        """The same block with the inputs and weights of studies ``order`` (indices)."""
        index = torch.as_tensor(np.asarray(order))
        return BlockTuning(self.block, self.inputs[index], self.weights[index])

    @torch.no_grad()
    def pools(self, block: nn.Module, rows: np.ndarray | None = None, batch_size: int = 32) -> torch.Tensor:
        """(len(rows), R, Dv): the block's output of studies ``rows`` (all: None) pooled over each region."""
        rows = np.arange(len(self.inputs)) if rows is None else np.asarray(rows)
        out = RowBuffer(len(rows))
        for start in range(0, len(rows), batch_size):
            out.put(start, self.pooled(block, rows[start : start + batch_size]))
        return out.tensor()

    def pooled(self, block: nn.Module, rows: np.ndarray) -> torch.Tensor:
        """(len(rows), R, Dv), differentiable in the block: its grids (B, Dv, cells) averaged with the rows' weights."""
        grids = block(self.inputs[rows].float()).flatten(2)
        return torch.einsum("brc,bdc->brd", self.weights[rows].to(grids.dtype), grids)


def region_weight_rows(weights: list[torch.Tensor | None], cells: int) -> torch.Tensor:
    """(n, R, cells) pooling weights from per-study region weights ((2, cells) inside/around, or None without
    a mask): row 0 is the whole volume (every cell alike), then inside and around, normalised to sum to 1;
    a study without a mask, or a region covering no cell, pools the whole volume there too."""
    regions = 1 + (2 if any(w is not None for w in weights) else 0)
    out = torch.full((len(weights), regions, cells), 1.0 / cells)
    for i, w in enumerate(weights):
        if w is not None and regions > 1:
            out[i, 1:] = pooling_weights(w.float())
    return out


def tuned_pools(
    tuning: BlockTuning, cfg: ExperimentConfig, clinical: np.ndarray, time: np.ndarray, event: np.ndarray,
    groups: np.ndarray, train: np.ndarray, budget: int, seed: int,
) -> tuple[torch.Tensor, int]:
    """Tune a copy of the block on the training rows ``train`` (see the module docstring) and return every
    study's pools (n, R, Dv) read with it, and the epoch kept (0: the pretrained block was best on validation).

    ``clinical`` (len(train), p) is the training rows' design matrix; ``time``, ``event`` and ``groups`` are the
    whole cohort's; the head uses ``survival.l2``, ``epochs`` and ``lr``, the block ``survival.finetune_lr``."""
    from ctsurv.training.survival import BlockPCA  # that module builds this rung

    s = cfg.survival
    fit_idx, val_idx = validation_split(time[train], event[train], s.finetune_validation, seed, groups[train])
    if val_idx is None:  # nothing to stop the tuning on: the pretrained block
        return tuning.pools(tuning.block), 0
    fit, val = train[fit_idx], train[val_idx]
    clin = torch.as_tensor(clinical, dtype=torch.float32)
    clin_fit, clin_val = clin[fit_idx], clin[val_idx]
    block = copy.deepcopy(tuning.block).float().eval()  # eval: BatchNorm keeps the pretrained statistics
    frozen = tuning.pools(block, fit)  # (n_fit, R, Dv)
    blocks = tuple(frozen[:, r].double().numpy() for r in range(frozen.shape[1]))
    pca = BlockPCA.fit(blocks, np.arange(len(fit)), budget)
    if pca.kept == 0:
        return tuning.pools(tuning.block), 0
    means = torch.as_tensor(np.concatenate(pca.means), dtype=torch.float32)
    scales = torch.as_tensor(np.repeat(pca.scales, [len(m) for m in pca.means]), dtype=torch.float32)
    axes = torch.as_tensor(pca.axes, dtype=torch.float32)

    def components(rows: np.ndarray) -> torch.Tensor:
        return ((tuning.pooled(block, rows).flatten(1) - means) / scales) @ axes

    t = lambda a: torch.as_tensor(a)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = SurvivalHead(pca.kept, clin.shape[1], kind="linear")
        with torch.no_grad():
            start = components(fit)
        fit_survival_head(head, start, clin_fit, t(time[fit]), t(event[fit]), epochs=s.epochs, lr=s.lr, seed=seed, l2=s.l2)
        head.train()
        block.requires_grad_(True)
        optimizer = torch.optim.AdamW(
            [{"params": list(block.parameters()), "lr": s.finetune_lr}, {"params": list(head.parameters()), "lr": s.finetune_lr}],
            weight_decay=0.0,
        )

        def val_loss() -> float:
            with torch.no_grad():
                return float(cox_loss(head(components(val), clin_val), t(event[val]), t(time[val])))

        best, best_epoch, best_state = val_loss(), 0, copy.deepcopy(block.state_dict())
        for epoch in range(1, MAX_EPOCHS + 1):
            loss = cox_loss(head(components(fit), clin_fit), t(event[fit]), t(time[fit]))
            loss = loss + s.l2 / 2 * head.net.weight.pow(2).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            current = val_loss()
            if current < best:
                best, best_epoch, best_state = current, epoch, copy.deepcopy(block.state_dict())
            elif epoch - best_epoch >= PATIENCE:
                break
    block.load_state_dict(best_state)
    block.requires_grad_(False)
    return tuning.pools(block), best_epoch

"""The training stages: what each one trains and the loss it minimises.

=========  ===========================================================================
stage      trainable
=========  ===========================================================================
align      projector; plus every part that starts from random weights (scratch ViT, tiny LM)
instruct   projector + LoRA adapters (pretrained LM) or the whole tiny LM; the scratch ViT;
           a pretrained vision encoder only with ``pretrain.finetune_vision``
=========  ===========================================================================

A pretrained part that a stage does not train is frozen *and* kept in eval mode, so that
BatchNorm statistics of the pretrained CT encoder are never updated by accident. When the
vision encoder is frozen, its features are computed once and cached (``features`` input).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ctsurv.config import ExperimentConfig
from ctsurv.models.vlm import CTVLM, IGNORE_INDEX

Stage = Literal["align", "instruct"]
LENGTH_BUCKETS = (64, 128, 256)  # sequence lengths (tokens) at which a batch is split for the LM


def vision_is_pretrained(cfg: ExperimentConfig) -> bool:
    return cfg.vision.encoder == "i3resnet152"


def language_is_pretrained(cfg: ExperimentConfig) -> bool:
    return cfg.language.model != "tiny"


def vision_trains(cfg: ExperimentConfig, stage: Stage) -> bool:
    """Whether the vision encoder's weights change in ``stage``."""
    if not vision_is_pretrained(cfg):
        return True
    return stage == "instruct" and cfg.pretrain.finetune_vision


def set_trainable(model: CTVLM, cfg: ExperimentConfig, stage: Stage) -> None:
    """Set ``requires_grad`` on every parameter of ``model`` for ``stage`` (see the table above)."""
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    if vision_trains(cfg, stage):
        model.vision_encoder.requires_grad_(True)
        for name, p in model.vision_encoder.named_parameters():
            if "norm_cross_attn" in name:  # MONAI's unused cross-attention norm
                p.requires_grad_(False)
    if not language_is_pretrained(cfg):
        model.language_model.requires_grad_(True)
    elif stage == "instruct" and cfg.lora.enabled:
        for name, p in model.language_model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)


class InstructionLoss(nn.Module):
    """Loss module for stages 1–2: next-token loss of the answers given the visual tokens.

    A batch holds a few studies and several (prompt, answer) sequences per study; ``image_index``
    maps each sequence to its study so that each volume is encoded once per batch. Give either
    ``images`` (B, 1, X, Y, Z) or cached encoder ``features`` (B, Dv, gx, gy, gz).

    ``weighting="sequence"`` averages the loss per (question, answer) pair and then over pairs, so a
    one-token "Yes."/"No." weighs as much as a 300-token report; with per-token weighting the reports
    dominate and a model trained from scratch learns to answer the prior ("No.") without looking.

    ``finding_weight > 0`` adds an auxiliary loss for a vision encoder that trains: a linear head on
    the mean- and max-pooled feature grid predicts the presence answers (the same report-derived
    labels the LM learns, ``finding_labels`` (B, P), -1 where unknown) with binary cross-entropy.
    It gives the encoder a direct signal that the language model's loss alone passes on too weakly
    when both start from random weights. The head is not part of the CTVLM and is not saved.
    """

    def __init__(
        self,
        vlm: CTVLM,
        frozen_vision: bool,
        weighting: Literal["sequence", "token"] = "sequence",
        finding_weight: float = 0.0,
        n_findings: int = 0,
    ) -> None:
        super().__init__()
        self.vlm = vlm
        self.frozen_vision = frozen_vision
        self.weighting = weighting
        self.finding_weight = finding_weight if not frozen_vision else 0.0
        self.finding_head = nn.Linear(2 * vlm.vision_encoder.out_dim, n_findings) if self.finding_weight > 0 else None

    def train(self, mode: bool = True) -> InstructionLoss:
        """Train mode, except for parts this stage does not train (BatchNorm statistics, dropout stay fixed)."""
        super().train(mode)
        for part in (self.vlm.vision_encoder, self.vlm.language_model):
            if (part is self.vlm.vision_encoder and self.frozen_vision) or not any(p.requires_grad for p in part.parameters()):
                part.eval()
        return self

    def forward(
        self,
        image_index: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        images: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        finding_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if features is None:
            features = self.vlm.vision_encoder.features(images)  # (B, Dv, gx, gy, gz)
        auxiliary = self._finding_loss(features, finding_labels)
        tokens = self.vlm.project_features(features)[image_index]  # (S, N, D), one row per sequence
        # Short answers and long reports share a batch: run the LM per length bucket, each cut to its
        # own longest sequence, instead of padding every yes/no answer to the report's length.
        lengths = attention_mask.sum(1)  # (S,) right-padded
        n_targets = (labels[:, 1:] != IGNORE_INDEX).sum(1)  # (S,) predicted tokens (labels shift by one)
        per_sequence = torch.zeros(len(input_ids), device=input_ids.device)  # summed token losses
        for lo, hi in zip((0, *LENGTH_BUCKETS), (*LENGTH_BUCKETS, None)):
            sel = (lengths > lo) if hi is None else (lengths > lo) & (lengths <= hi)
            if int(n_targets[sel].sum()) == 0:  # nothing to predict here (answers cut by max_length)
                continue
            width = int(lengths[sel].max())
            idx = sel.nonzero().squeeze(1)
            losses, rows = self.vlm.answer_token_losses(
                input_ids[idx, :width], attention_mask[idx, :width], labels[idx, :width], image_tokens=tokens[idx]
            )
            per_sequence = per_sequence.index_add(0, idx[rows], losses)
        if self.weighting == "token":  # every answer token counts the same: long reports dominate
            return per_sequence.sum() / n_targets.sum().clamp(min=1) + auxiliary
        answered = n_targets > 0  # every (question, answer) pair counts the same: a yes/no answer as much as a report
        return (per_sequence[answered] / n_targets[answered]).mean() + auxiliary

    def _finding_loss(self, grid: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.finding_head is None or labels is None or not bool((labels >= 0).any()):
            return grid.new_zeros(())
        pooled = torch.cat([grid.flatten(2).mean(-1), grid.flatten(2).amax(-1)], dim=1)  # (B, 2*Dv)
        logits = self.finding_head(pooled)  # (B, P)
        known = labels >= 0
        return self.finding_weight * F.binary_cross_entropy_with_logits(logits[known], labels[known].float())

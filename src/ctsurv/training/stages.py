"""The training stages: what each one trains and the loss it minimises.

=========  ===========================================================================
stage      trainable
=========  ===========================================================================
vision     (stage 0, scratch encoders only) the vision encoder and a linear presence head,
           on the report-derived presence labels; no language model
align      projector; plus every part that starts from random weights (tiny LM; a scratch
           encoder when stage 0 is skipped)
instruct   projector + LoRA adapters (pretrained LM) or the whole tiny LM; a scratch encoder
           when stage 0 is skipped; a pretrained or stage-0 encoder only with
           ``pretrain.finetune_vision``
=========  ===========================================================================

With ``projector.findings_token`` a linear presence classifier on the frozen encoder's pooled features is
fitted between stage 0 and stage 1 (``training.findings``); it is not trained by any stage.

Why stage 0: a language model trained from scratch passes too weak a signal back to a scratch
encoder (benchmarks/pretrain.md: after 2 + 6 epochs the model read only the large findings). A
presence head on the encoder's pooled grid gives each finding a direct gradient, and the frozen
encoder then lets stages 1–2 run on cached features.

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

Stage = Literal["vision", "align", "instruct"]
LENGTH_BUCKETS = (64, 128, 256)  # sequence lengths (tokens) at which a batch is split for the LM


def vision_is_pretrained(cfg: ExperimentConfig) -> bool:
    return cfg.vision.encoder == "i3resnet152"


def language_is_pretrained(cfg: ExperimentConfig) -> bool:
    return cfg.language.model != "tiny"


def vision_stage_runs(cfg: ExperimentConfig) -> bool:
    """Whether stage 0 trains the vision encoder on the presence labels before stages 1–2."""
    return not vision_is_pretrained(cfg) and cfg.pretrain.vision.epochs > 0


def vision_trains(cfg: ExperimentConfig, stage: Stage) -> bool:
    """Whether the vision encoder's weights change in ``stage``."""
    if stage == "vision":
        return vision_stage_runs(cfg)
    if vision_is_pretrained(cfg) or vision_stage_runs(cfg):
        return stage == "instruct" and cfg.pretrain.finetune_vision
    return True


def set_trainable(model: CTVLM, cfg: ExperimentConfig, stage: Stage) -> None:
    """Set ``requires_grad`` on every parameter of ``model`` for ``stage`` (see the table above)."""
    model.requires_grad_(False)
    if stage == "vision":
        model.vision_encoder.requires_grad_(vision_stage_runs(cfg))
        _freeze_unused_vision_parameters(model)
        return
    model.projector.requires_grad_(True)
    if vision_trains(cfg, stage):
        model.vision_encoder.requires_grad_(True)
        _freeze_unused_vision_parameters(model)
    if not language_is_pretrained(cfg):
        model.language_model.requires_grad_(True)
    elif stage == "instruct" and cfg.lora.enabled:
        for name, p in model.language_model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)


def _freeze_unused_vision_parameters(model: CTVLM) -> None:
    for name, p in model.vision_encoder.named_parameters():
        if "norm_cross_attn" in name:  # MONAI's unused cross-attention norm
            p.requires_grad_(False)


def pooled_grid(grid: torch.Tensor) -> torch.Tensor:
    """Mean- and max-pooled encoder grid (B, Dv, gx, gy, gz) -> (B, 2*Dv): the max keeps small lesions."""
    flat = grid.flatten(2)
    return torch.cat([flat.mean(-1), flat.amax(-1)], dim=1)


def presence_loss(head: nn.Linear, grid: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of ``head`` on the pooled grid against ``labels`` (B, P), -1 where unknown."""
    logits = head(pooled_grid(grid))  # (B, P)
    known = labels >= 0
    if not bool(known.any()):  # nothing to learn from this batch: zero, still attached to the graph
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], labels[known].float())


def random_affine(images: torch.Tensor, rotation: float = 0.08, scale: float = 0.06, shift: float = 0.05) -> torch.Tensor:
    """Each volume of (B, C, X, Y, Z) rotated by up to ``rotation`` rad about each axis, scaled by up to
    ``scale`` per axis and shifted by up to ``shift`` of its extent, resampled trilinearly with border padding.

    The angles are in normalised grid coordinates, so on anisotropic voxels a rotation also shears
    slightly; at these few degrees that is part of the jitter. Draws from torch's global generator,
    which the training loop seeds per epoch: the same epoch gets the same augmentation on resume.
    """
    b, dev = images.shape[0], images.device

    def uniform(bound: float) -> torch.Tensor:  # (b, 3) in [-bound, bound]
        return (torch.rand(b, 3, device=dev) * 2 - 1) * bound

    a = uniform(rotation)
    c, s = a.cos(), a.sin()
    one, zero = torch.ones(b, device=dev), torch.zeros(b, device=dev)

    def mat(*rows: torch.Tensor) -> torch.Tensor:  # 9 (b,) entries, row by row -> (b, 3, 3)
        return torch.stack(rows, dim=1).view(b, 3, 3)

    rx = mat(one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0])
    ry = mat(c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1])
    rz = mat(c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one)
    theta = torch.cat([rz @ ry @ rx * (1 + uniform(scale))[:, None, :], uniform(2 * shift)[..., None]], dim=2)
    x = images.float()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FindingLoss(nn.Module):
    """Loss module for stage 0: the vision encoder and a linear head predict the presence labels.

    The labels are the "Yes."/"No." answers to the presence questions, extracted from the report
    text (never the generator's truth). The head is not part of the CTVLM and is not saved.
    With ``augment`` every training volume is jittered by :func:`random_affine`, so that the encoder
    cannot learn its few hundred training scans by heart (see benchmarks/research/encoder_probe.md).
    (Mirroring half the studies left-right did not help: mean probe AUC 0.814 after 16 epochs with it,
    0.829 after 12 without.)
    """

    def __init__(self, vlm: CTVLM, n_findings: int, augment: bool = False) -> None:
        super().__init__()
        self.vision_encoder = vlm.vision_encoder
        self.head = nn.Linear(2 * vlm.vision_encoder.out_dim, n_findings)
        self.augment = augment

    def forward(self, images: torch.Tensor, finding_labels: torch.Tensor) -> torch.Tensor:
        if self.augment and self.training:
            images = random_affine(images)
        return presence_loss(self.head, self.vision_encoder.features(images), finding_labels)


class InstructionLoss(nn.Module):
    """Loss module for stages 1–2: next-token loss of the answers given the visual tokens.

    A batch holds a few studies and several (prompt, answer) sequences per study; ``image_index``
    maps each sequence to its study so that each volume is encoded once per batch. A packed batch
    (``CTVLM.tokenize_conversations``) holds one sequence per study and ``answer_index`` says which answer
    each label belongs to. Give either
    ``images`` (B, C, X, Y, Z) or cached encoder ``features`` (B, Dv, gx, gy, gz).

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
        finding_logits: torch.Tensor | None = None,
        answer_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if features is None:
            features = self.vlm.vision_encoder.features(images)  # (B, Dv, gx, gy, gz)
        auxiliary = self._finding_loss(features, finding_labels)
        # finding_logits: the findings token's out-of-fold logits of these training studies (projector.findings_token)
        tokens = self.vlm.project_features(features, finding_logits)  # (B, N, D); image_index: the study of each sequence
        # Short answers and long reports share a batch: run the LM per length bucket, each cut to its
        # own longest sequence, instead of padding every yes/no answer to the report's length.
        lengths = attention_mask.sum(1)  # (S,) right-padded
        if answer_index is None:  # one (question, answer) pair per sequence
            rows = torch.arange(len(input_ids), device=input_ids.device)[:, None].expand_as(labels)
            answer_index = torch.where(labels != IGNORE_INDEX, rows, -1)
        target_answer = answer_index[:, 1:]  # (S, L-1): the answer of each predicted token (labels shift by one)
        n_targets = torch.bincount(target_answer[target_answer >= 0], minlength=int(answer_index.max()) + 1)
        per_answer = torch.zeros(len(n_targets), device=input_ids.device)  # summed token losses
        for lo, hi in zip((0, *LENGTH_BUCKETS), (*LENGTH_BUCKETS, None)):
            sel = (lengths > lo) if hi is None else (lengths > lo) & (lengths <= hi)
            if int((labels[sel, 1:] != IGNORE_INDEX).sum()) == 0:  # nothing to predict here (answers cut by max_length)
                continue
            width = int(lengths[sel].max())
            idx = sel.nonzero().squeeze(1)
            losses, _ = self.vlm.answer_token_losses(
                input_ids[idx, :width], attention_mask[idx, :width], labels[idx, :width], tokens, image_index[idx]
            )
            answers = target_answer[idx, : width - 1][labels[idx, 1:width] != IGNORE_INDEX]  # in the order of losses
            per_answer = per_answer.index_add(0, answers, losses)
        if self.weighting == "token":  # every answer token counts the same: long reports dominate
            return per_answer.sum() / n_targets.sum().clamp(min=1) + auxiliary
        answered = n_targets > 0  # every (question, answer) pair counts the same: a yes/no answer as much as a report
        return (per_answer[answered] / n_targets[answered]).mean() + auxiliary

    def _finding_loss(self, grid: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.finding_head is None or labels is None:
            return grid.new_zeros(())
        return self.finding_weight * presence_loss(self.finding_head, grid, labels)

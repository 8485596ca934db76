"""Projector: the vision feature grid -> N visual tokens in the language model's embedding space.

Adaptive average pooling brings any grid (the ViT's 8×8×6, I3ResNet's 7×7×10, ...) to a fixed
``tokens_zyx`` grid so that the number of visual tokens does not depend on the encoder or the
input size; an MLP (LLaVA-1.5's Linear-GELU-Linear) maps each token to the LM's hidden size.

With ``max_token`` one more token carries the channel-wise maximum of the whole grid. Averaging
dilutes a small lesion that lights up one cell; the maximum keeps it, in the form the presence head of
stage 0 was trained to read (a linear read of the mean and max pooled grid), so the language model
can answer from one token instead of learning to search all of them.

With ``findings_token`` one more token carries what a linear presence classifier reads in the grid
(:class:`FindingsHead`, fitted between stage 0 and stage 1; the classifier-guided prompts of PromptMRG
and RaDialog, as a token). A language model trained from scratch reads a finding that lives in one channel
of one token poorly: its normalisations keep a token's direction, not one coordinate's size, and it
prefers channels that the encoder learnt by heart on the training scans (benchmarks/readout_gap.md).
The token gives each finding its own direction, scaled by 2p - 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctsurv.config import ProjectorConfig


def findings_summary(pooled: torch.Tensor, max_token: bool) -> torch.Tensor:
    """Pooled features (B, Dv, N) -> (B, 2*Dv): mean of the grid tokens, then the channel-wise maximum
    (the max token, when there is one): what a findings token's classifier reads."""
    grid = pooled[:, :, :-1] if max_token else pooled
    top = pooled[:, :, -1] if max_token else pooled.amax(-1)
    return torch.cat([grid.mean(-1), top], dim=1)


class FindingsHead(nn.Module):
    """A linear presence classifier on the pooled grid: logits = weight @ ((summary - mean) / scale) + bias.

    ``summary`` is the mean of the grid tokens and the channel-wise maximum (the max token, when there
    is one): what stage 0's head reads. The tensors are buffers, not parameters: they are fitted in closed
    form (L2-regularised logistic regression, :func:`ctsurv.training.findings.fit_findings_head`), saved with
    the checkpoint, and never changed by gradient descent. Zero until fitted.
    """

    def __init__(self, vision_dim: int, n_findings: int, max_token: bool) -> None:
        super().__init__()
        self.max_token = max_token
        self.register_buffer("mean", torch.zeros(2 * vision_dim))
        self.register_buffer("scale", torch.ones(2 * vision_dim))
        self.register_buffer("weight", torch.zeros(n_findings, 2 * vision_dim))
        self.register_buffer("bias", torch.zeros(n_findings))

    def summary(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, Dv, N) -> (B, 2*Dv): :func:`findings_summary`."""
        return findings_summary(pooled, self.max_token)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = (self.summary(pooled).float() - self.mean) / self.scale
        return x @ self.weight.T + self.bias  # (B, P) logits


class Projector(nn.Module):
    def __init__(self, cfg: ProjectorConfig, vision_dim: int, lm_dim: int, n_findings: int = 0) -> None:
        super().__init__()
        self.tokens_xyz = tuple(reversed(cfg.tokens_zyx))
        self.max_token = cfg.max_token
        self.num_tokens = cfg.num_tokens
        self.num_pooled = cfg.num_tokens - int(cfg.findings_token)  # tokens made from the grid
        self.findings: FindingsHead | None = None
        if cfg.findings_token:
            if n_findings < 1:
                raise ValueError("projector.findings_token needs the number of presence findings (n_findings >= 1)")
            self.findings = FindingsHead(vision_dim, n_findings, cfg.max_token)
            self.findings_embed = nn.Linear(n_findings, lm_dim)
        layers: list[nn.Module] = [nn.Linear(vision_dim, lm_dim)]
        for _ in range(cfg.layers - 1):
            layers += [nn.GELU(), nn.Linear(lm_dim, lm_dim)]
        self.mlp = nn.Sequential(*layers)

    def pool(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, Dv, gx, gy, gz) -> (B, Dv, N): the token grid flattened, then the max token if any.

        Already pooled features (B, Dv, N), as ``encode_all`` caches them, pass unchanged.
        """
        if grid.dim() == 3:
            if grid.shape[2] != self.num_pooled:
                raise ValueError(f"pooled features hold {grid.shape[2]} tokens, the projector makes {self.num_pooled}")
            return grid
        pooled = F.adaptive_avg_pool3d(grid, self.tokens_xyz).flatten(2)
        if self.max_token:
            pooled = torch.cat([pooled, grid.flatten(2).amax(-1, keepdim=True)], dim=2)
        return pooled

    def forward(self, grid: torch.Tensor, finding_logits: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Dv, gx, gy, gz), or already pooled (B, Dv, N) -> visual tokens (B, num_tokens, D_lm).

        ``finding_logits`` (B, P) replace the findings head's own logits: in training, the out-of-fold
        logits of the training studies (see :func:`ctsurv.training.findings.fit_findings_head`).
        """
        pooled = self.pool(grid)
        tokens = self.mlp(pooled.transpose(1, 2))  # (B, N, D_lm)
        if self.findings is None:
            return tokens
        logits = self.findings(pooled) if finding_logits is None else finding_logits
        signed = 2 * torch.sigmoid(logits.float()) - 1  # (B, P) in (-1, 1): absent, unsure, present
        return torch.cat([tokens, self.findings_embed(signed.to(tokens.dtype))[:, None]], dim=1)

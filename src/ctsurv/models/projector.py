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
prefers channels that the encoder learnt by heart on the training scans (benchmarks/research/readout_gap.md).
The token gives each finding its own direction, scaled by 2p - 1.

With ``findings_cells_channel`` the classifier may also read where tissue lies: that input channel of the
volume averaged to coarse cells of the central field (:func:`central_cells`). The mean and max pooled grid
keeps what a feature is, not where it is; an enlarged lymph node differs from normal anatomy mainly by where
it is (soft tissue at a nodal station, where there is otherwise fat), and is read from the mediastinal
window's cells (benchmarks/research/node_readout.md). Each finding keeps the cells only where they lower its
log-loss on held-out studies (:func:`ctsurv.training.findings.fit_findings_head`).
"""

from __future__ import annotations

import math

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


CELLS_XYZ = (16, 16, 12)  # cells of the central field: 10 x 10 x 16 mm on the demo's 320 x 320 x 288 mm field


def central_cells(images: torch.Tensor, channel: int) -> torch.Tensor:
    """Volumes (B, C, X, Y, Z) -> (B, 16*16*12): ``channel`` averaged to CELLS_XYZ cells of the central field
    (the central half in x and y, the central two thirds in z: on a chest CT the mediastinum and the hila)."""
    x, y, z = images.shape[2:]
    view = images[:, channel : channel + 1, x // 4 : x - x // 4, y // 4 : y - y // 4, z // 6 : z - z // 6]
    return F.adaptive_avg_pool3d(view.float(), CELLS_XYZ).flatten(1)


class FindingsHead(nn.Module):
    """A linear presence classifier: logits = weight @ ((inputs - mean) / scale) + bias.

    The inputs are the summary of the pooled grid (the mean of the grid tokens and the channel-wise
    maximum, the max token when there is one: what stage 0's head reads), then, with ``cells_channel``, the
    volume's :func:`central_cells`, and a buffer ``reads_cells`` (P,) marks the findings whose weights on them
    are not zero. The tensors are buffers, not parameters: they are fitted in closed form (L2-regularised logistic
    regression, :func:`ctsurv.training.findings.fit_findings_head`), saved with the checkpoint, and never
    changed by gradient descent. Zero until fitted.
    """

    def __init__(self, vision_dim: int, n_findings: int, max_token: bool, cells_channel: int | None = None) -> None:
        super().__init__()
        self.max_token = max_token
        self.cells_channel = cells_channel
        self.n_summary = 2 * vision_dim
        n_in = self.n_summary + (math.prod(CELLS_XYZ) if cells_channel is not None else 0)
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("scale", torch.ones(n_in))
        self.register_buffer("weight", torch.zeros(n_findings, n_in))
        self.register_buffer("bias", torch.zeros(n_findings))
        if cells_channel is not None:  # (a head without cells has no such buffer: older checkpoints load as they are)
            self.register_buffer("reads_cells", torch.zeros(n_findings, dtype=torch.bool))

    def summary(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, Dv, N) -> (B, 2*Dv): :func:`findings_summary`."""
        return findings_summary(pooled, self.max_token)

    def cells(self, images: torch.Tensor) -> torch.Tensor | None:
        """The cells this head reads in preprocessed volumes (B, C, X, Y, Z), or None if it reads none."""
        return None if self.cells_channel is None else central_cells(images, self.cells_channel)

    def forward(self, pooled: torch.Tensor, cells: torch.Tensor | None = None) -> torch.Tensor:
        """(B, P) logits from pooled features (B, Dv, N) and, for a head that reads them, cells (B, K)."""
        k = self.n_summary
        x = (self.summary(pooled).float() - self.mean[:k]) / self.scale[:k]
        logits = x @ self.weight[:, :k].T + self.bias
        if self.cells_channel is None:
            return logits
        if cells is not None:
            logits = logits + ((cells.float() - self.mean[k:]) / self.scale[k:]) @ self.weight[:, k:].T
        elif bool(self.reads_cells.any()):
            raise ValueError(
                "this findings head also reads the volume's cells (projector.findings_cells_channel): give the images, "
                "or the cells of cached features (FindingsHead.cells of the same volumes)"
            )
        return logits


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
            self.findings = FindingsHead(vision_dim, n_findings, cfg.max_token, cfg.findings_cells_channel)
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

    def cells(self, images: torch.Tensor) -> torch.Tensor | None:
        """What the findings head reads in the volumes (B, C, X, Y, Z) besides the grid, or None."""
        return None if self.findings is None else self.findings.cells(images)

    def forward(
        self, grid: torch.Tensor, finding_logits: torch.Tensor | None = None, cells: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, Dv, gx, gy, gz), or already pooled (B, Dv, N) -> visual tokens (B, num_tokens, D_lm).

        ``finding_logits`` (B, P) replace the findings head's own logits: in training, the out-of-fold
        logits of the training studies (see :func:`ctsurv.training.findings.fit_findings_head`). ``cells``
        (B, K) are the volumes' cells for a findings head that reads them (:meth:`cells`).
        """
        pooled = self.pool(grid)
        tokens = self.mlp(pooled.transpose(1, 2))  # (B, N, D_lm)
        if self.findings is None:
            return tokens
        logits = self.findings(pooled, cells) if finding_logits is None else finding_logits
        signed = 2 * torch.sigmoid(logits.float()) - 1  # (B, P) in (-1, 1): absent, unsure, present
        return torch.cat([tokens, self.findings_embed(signed.to(tokens.dtype))[:, None]], dim=1)

"""Projector: the vision feature grid -> N visual tokens in the language model's embedding space.

Adaptive average pooling brings any grid (the ViT's 8×8×6, I3ResNet's 7×7×10, ...) to a fixed
``tokens_zyx`` grid so that the number of visual tokens does not depend on the encoder or the
input size; an MLP (LLaVA-1.5's Linear-GELU-Linear) maps each token to the LM's hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctsurv.config import ProjectorConfig


class Projector(nn.Module):
    def __init__(self, cfg: ProjectorConfig, vision_dim: int, lm_dim: int) -> None:
        super().__init__()
        self.tokens_xyz = tuple(reversed(cfg.tokens_zyx))
        self.num_tokens = cfg.num_tokens
        layers: list[nn.Module] = [nn.Linear(vision_dim, lm_dim)]
        for _ in range(cfg.layers - 1):
            layers += [nn.GELU(), nn.Linear(lm_dim, lm_dim)]
        self.mlp = nn.Sequential(*layers)

    def pool(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, Dv, gx, gy, gz) -> (B, Dv, tx, ty, tz); the identity on an already pooled grid."""
        return F.adaptive_avg_pool3d(grid, self.tokens_xyz)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        # grid: (B, Dv, gx, gy, gz), or already pooled (B, Dv, tx, ty, tz)
        tokens = self.pool(grid).flatten(2).transpose(1, 2)  # (B, N, Dv)
        return self.mlp(tokens)  # (B, N, D_lm)

"""Projector: the vision feature grid -> N visual tokens in the language model's embedding space.

Adaptive average pooling brings any grid (the ViT's 8×8×6, I3ResNet's 7×7×10, ...) to a fixed
``tokens_zyx`` grid so that the number of visual tokens does not depend on the encoder or the
input size; an MLP (LLaVA-1.5's Linear-GELU-Linear) maps each token to the LM's hidden size.

With ``max_token`` one more token carries the channel-wise maximum of the whole grid. Averaging
dilutes a small lesion that lights up one cell; the maximum keeps it, in the form the presence head of
stage 0 was trained to read (a linear read of the mean and max pooled grid), so the language model
can answer from one token instead of learning to search all of them.
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
        self.max_token = cfg.max_token
        self.num_tokens = cfg.num_tokens
        layers: list[nn.Module] = [nn.Linear(vision_dim, lm_dim)]
        for _ in range(cfg.layers - 1):
            layers += [nn.GELU(), nn.Linear(lm_dim, lm_dim)]
        self.mlp = nn.Sequential(*layers)

    def pool(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, Dv, gx, gy, gz) -> (B, Dv, N): the token grid flattened, then the max token if any.

        Already pooled features (B, Dv, N), as ``encode_all`` caches them, pass unchanged.
        """
        if grid.dim() == 3:
            if grid.shape[2] != self.num_tokens:
                raise ValueError(f"pooled features hold {grid.shape[2]} tokens, the projector makes {self.num_tokens}")
            return grid
        pooled = F.adaptive_avg_pool3d(grid, self.tokens_xyz).flatten(2)
        if self.max_token:
            pooled = torch.cat([pooled, grid.flatten(2).amax(-1, keepdim=True)], dim=2)
        return pooled

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        # grid: (B, Dv, gx, gy, gz), or already pooled (B, Dv, N)
        tokens = self.pool(grid).transpose(1, 2)  # (B, N, Dv)
        return self.mlp(tokens)  # (B, N, D_lm)

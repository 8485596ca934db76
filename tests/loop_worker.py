"""A toy regression trained by ctsurv's loop; run directly or under `accelerate launch` by test_loop.py.

Usage: python loop_worker.py OUT_JSON BATCH_SIZE [EPOCHS]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ctsurv.config import TrainConfig
from ctsurv.training.loop import train


class Regression(nn.Module):
    """A loss module: forward returns the mean squared error of a small MLP."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(self.net(x).squeeze(-1), y)


def data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(n, generator=g)
    return TensorDataset(x, y)


def collate(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {"x": torch.stack([r[0] for r in rows]), "y": torch.stack([r[1] for r in rows])}


if __name__ == "__main__":
    out, batch_size = Path(sys.argv[1]), int(sys.argv[2])
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.05, warmup_fraction=0.0, weight_decay=0.0)
    model = Regression()
    history = train(model, data(), collate, cfg, seed=0, progress=False)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        out.write_text(json.dumps({"history": history, "weights": [p.tolist() for p in model.parameters()]}))

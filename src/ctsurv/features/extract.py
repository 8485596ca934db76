"""Volumes -> preprocessed tensors -> frozen encoder features: the step that pretrain, survival and predict share.

    cohort.volume_paths --Preprocessor (ctsurv.features.preprocess, cached on disk)--> (N, C, X, Y, Z) float16
                        --vision encoder + the projector's parameter-free pooling-->    (N, Dv, tokens) float32
"""

from __future__ import annotations

import torch
from rich.progress import track

from ctsurv.config import ExperimentConfig
from ctsurv.features.preprocess import Preprocessor
from ctsurv.io.cohort import Cohort
from ctsurv.models.vlm import CTVLM


def preprocess_all(cohort: Cohort, cfg: ExperimentConfig, progress: bool) -> torch.Tensor:
    """All volumes of ``cohort`` preprocessed, (N, C, X, Y, Z) float16 (half the memory; exact enough)."""
    pre = Preprocessor(cfg.data)
    paths = cohort.volume_paths
    volumes = [
        pre.load(p, spacing_zyx=cohort.spacing_zyx(i)).to(torch.float16)
        for i, p in track(list(enumerate(paths)), description="preprocessing volumes", disable=not progress)
    ]
    return torch.stack(volumes)


@torch.no_grad()
def encode_all(vlm: CTVLM, volumes: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Features of a frozen vision encoder for every volume, computed once: (n, Dv, N tokens), on the CPU.

    They are stored already pooled by the projector (the token grid, and the max token if any): the
    pooling has no parameters, so this is exact, and it shrinks the I3ResNet-152 grid (2048×7×7×10 at
    full size) by an order of magnitude. The encoder runs where it is (a GPU after Accelerate's stage 0).
    """
    vlm.vision_encoder.eval()
    device = next(vlm.vision_encoder.parameters()).device
    chunks = [
        vlm.projector.pool(vlm.vision_encoder.features(volumes[i : i + batch_size].to(device).float())).cpu()
        for i in range(0, len(volumes), batch_size)
    ]
    return torch.cat(chunks)

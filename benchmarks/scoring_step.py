"""Cost of the survival features of one scan: P(yes) and the answer-position states of the 20 presence questions.

Scores a batch of studies' visual tokens with ``answer_features`` twice: reading the prompts' shared prefix (system
turn + image) once per scan and continuing every question and answer from its key/value cache (what ctsurv does),
and one whole sequence per question and answer (what it did before). Prints seconds per study and the largest
difference between the two P(yes).

    python benchmarks/scoring_step.py [--config configs/smol.yaml] [--studies 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ctsurv.config import load_config
from ctsurv.models import representation
from ctsurv.models import vlm as vlm_module
from ctsurv.models.vlm import build_vlm
from ctsurv.text.questions import PRESENCE_QUESTIONS

HERE = Path(__file__).parent


def seconds_per_study(vlm: torch.nn.Module, tokens: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        p, _ = representation.answer_features(vlm, tokens, PRESENCE_QUESTIONS)
        times.append(time.perf_counter() - t0)
    return min(times) / len(tokens), p


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=HERE.parent / "configs" / "smol.yaml")
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(args.config)
    torch.manual_seed(0)
    texts = ["A nodule in the right upper lobe.\n\nNodule."] * 20 if cfg.language.model == "tiny" else None
    vlm = build_vlm(cfg, texts=texts).eval()
    width = vlm.language_model.get_input_embeddings().embedding_dim
    tokens = 0.05 * torch.randn(args.studies, vlm.num_image_tokens, width)
    cached, p_cached = seconds_per_study(vlm, tokens, args.repeats)
    whole_prefix = vlm_module.shared_prefix
    vlm_module.shared_prefix = lambda *_: 0  # every question and answer one whole sequence
    try:
        whole, p_whole = seconds_per_study(vlm, tokens, args.repeats)
    finally:
        vlm_module.shared_prefix = whole_prefix
    print(json.dumps({
        "config": args.config.name, "language": cfg.language.model, "visual_tokens": vlm.num_image_tokens,
        "questions": len(PRESENCE_QUESTIONS), "studies": args.studies, "threads": torch.get_num_threads(),
        "seconds_per_study_shared_prefix": round(cached, 3), "seconds_per_study_whole_sequences": round(whole, 3),
        "speedup": round(whole / cached, 2), "max_abs_p_difference": float((p_cached - p_whole).abs().max()),
    }, indent=2))


if __name__ == "__main__":
    main()

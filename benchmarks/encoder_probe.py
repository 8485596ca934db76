"""Can a vision encoder trained from scratch see the synthetic findings? A direct probe, no LM.

    python benchmarks/encoder_probe.py --train DIR --test DIR [--epochs 8] [--encoders vit3d cnn3d]

Each encoder (configs/demo.yaml's vision settings) gets a linear head on its mean- and max-pooled
feature grid and is trained with binary cross-entropy on the presence labels extracted from the
training reports (what stage 2's auxiliary loss uses). It is scored by AUC against the generator's
truth on a cohort from another seed. Writes benchmarks/encoder_probe.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from ctsurv.config import load_config
from ctsurv.data.cohort import load_cohort
from ctsurv.data.datasets import PRESENCE_QUESTIONS, presence_labels
from ctsurv.data.instructions import QUESTIONS, instruction_pairs
from ctsurv.models.vision import build_vision_encoder
from ctsurv.training.pretrain import preprocess_all

HERE = Path(__file__).parent
LABELS = [str(q.label) for q in QUESTIONS if q.kind == "presence"]


def pooled(grid: torch.Tensor) -> torch.Tensor:
    return torch.cat([grid.flatten(2).mean(-1), grid.flatten(2).amax(-1)], 1)


def probe(encoder_name: str, cfg, x_train, y_train, x_test, epochs: int, seed: int = 0) -> tuple[np.ndarray, float]:
    torch.manual_seed(seed)
    encoder = build_vision_encoder(dataclasses.replace(cfg.vision, encoder=encoder_name), tuple(reversed(cfg.data.target_shape_zyx)))
    head = nn.Linear(2 * encoder.out_dim, y_train.shape[1])
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-3, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        encoder.train()
        for batch in np.array_split(rng.permutation(len(x_train)), max(1, len(x_train) // 8)):
            logits = head(pooled(encoder.features(x_train[batch].float())))
            y = y_train[batch]
            known = y >= 0
            loss = nn.functional.binary_cross_entropy_with_logits(logits[known], y[known].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    per_epoch = (time.perf_counter() - t0) / epochs
    encoder.eval()
    with torch.no_grad():
        scores = torch.cat([head(pooled(encoder.features(x_test[i : i + 16].float()))) for i in range(0, len(x_test), 16)])
    return scores.numpy(), per_epoch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--encoders", nargs="+", default=["vit3d", "cnn3d"])
    args = parser.parse_args()
    cfg = load_config(HERE.parent / "configs" / "demo.yaml")
    train = load_cohort(args.train / "cohort.csv", cfg.data, require_reports=True)
    test = load_cohort(args.test / "cohort.csv", cfg.data)
    x_train, x_test = preprocess_all(train, cfg, progress=False), preprocess_all(test, cfg, progress=False)
    t = train.table
    y_train = torch.tensor(
        [presence_labels([(q.text, a) for q, a in instruction_pairs(f, i)]) for f, i in zip(t.findings, t.impression.fillna(""))]
    )
    truth = pd.read_csv(args.test / "truth.csv", dtype={"id": str}).set_index("id").loc[test.ids]
    rows = {}
    timing = {}
    for name in args.encoders:
        scores, timing[name] = probe(name, cfg, x_train, y_train, x_test, args.epochs)
        rows[name] = {
            label: roc_auc_score(truth[label], scores[:, j])
            for j, label in enumerate(LABELS)
            if label in truth.columns and truth[label].nunique() > 1
        }
    table = pd.DataFrame(rows)
    lines = [
        "# Encoder probe: findings seen by a vision encoder trained from scratch (no language model)",
        "",
        f"Reproduce: `python benchmarks/encoder_probe.py --train {args.train} --test {args.test} --epochs {args.epochs}`.",
        f"Training: {len(train)} volumes, labels extracted from their reports; test: {len(test)} volumes of another seed, "
        f"AUC against the generator's truth. {len(PRESENCE_QUESTIONS)} presence labels, linear head on mean+max pooling.",
        "",
        "| finding | " + " | ".join(f"{n} AUC" for n in table.columns) + " |",
        "|---|" + "---|" * len(table.columns),
        *[f"| {label} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for label, row in table.iterrows()],
        "| **mean** | " + " | ".join(f"**{v:.3f}**" for v in table.mean()) + " |",
        "",
        "Seconds per epoch: " + ", ".join(f"{n} {s:.0f}" for n, s in timing.items()) + " (machine shared with other runs).",
        "",
    ]
    (HERE / "encoder_probe.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Can a vision encoder trained from scratch see the synthetic findings? A direct probe, no LM.

    python benchmarks/research/encoder_probe.py --train DIR --test DIR [--epochs 12] [--encoder cnn3d]
                                       [--single-window] [--mirror] [--augment] [--threads N]
                                       [--save FILE] [key=value ...]

The encoder (configs/demo.yaml's vision and data settings: three HU windows unless --single-window)
gets a linear head on its mean- and max-pooled feature grid, trained with binary cross-entropy on the
presence labels extracted from the training reports: what stage 0 of `ctsurv pretrain` does, here with
a one-cycle schedule and an AUC check every 4 epochs. ``--mirror`` flips every other training study
left-right; ``--augment`` jitters each training study with MONAI's RandAffine (``ctsurv pretrain``'s own
``pretrain.vision_augment`` uses a batched equivalent, ``training.stages.random_affine``). Scored by AUC against the generator's truth on a cohort from another seed. Prints one line
per check and appends the last to benchmarks/research/encoder_probe.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.transforms import RandAffine
from sklearn.metrics import roc_auc_score
from torch import nn

from ctsurv.config import load_config
from ctsurv.features import preprocess_all
from ctsurv.io.cohort import load_cohort
from ctsurv.models.vision import build_vision_encoder
from ctsurv.text.answers import instruction_pairs
from ctsurv.text.questions import QUESTIONS
from ctsurv.training.datasets import presence_labels
from ctsurv.training.stages import pooled_grid

HERE = Path(__file__).parent
ROOT = HERE.resolve().parents[1]  # the repository root
LABELS = [str(q.label) for q in QUESTIONS if q.kind == "presence"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--encoder", default="cnn3d", choices=["cnn3d", "vit3d"])
    parser.add_argument("--single-window", action="store_true", help="only data.hu_window, no extra channels")
    parser.add_argument("--mirror", action="store_true", help="flip every other training study left-right")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--augment", action="store_true", help="random affine (MONAI RandAffine) per training study")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", type=Path, help="write the trained encoder and head here (torch.save)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.target_shape_zyx=[64,96,96]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    single = ["data.extra_hu_windows=[]", "data.blob_windows=[0]"]
    overrides = [*(single if args.single_window else []), *args.overrides]
    cfg = load_config(ROOT / "configs" / "demo.yaml", overrides)
    train = load_cohort(args.train / "cohort.csv", cfg.data, require_reports=True)
    test = load_cohort(args.test / "cohort.csv", cfg.data)
    x_train = preprocess_all(train, cfg, progress=False).float()
    x_test = preprocess_all(test, cfg, progress=False).float()
    t = train.table
    y_train = torch.tensor(
        [presence_labels([(q.text, a) for q, a in instruction_pairs(f, i)]) for f, i in zip(t.findings, t.impression.fillna(""))]
    )
    truth = pd.read_csv(args.test / "truth.csv", dtype={"id": str}).set_index("id").loc[test.ids]

    torch.manual_seed(0)
    vision = dataclasses.replace(cfg.vision, encoder=args.encoder)
    encoder = build_vision_encoder(vision, tuple(reversed(cfg.data.target_shape_zyx)), in_channels=x_train.shape[1],
                                   skip_channels=len(cfg.data.blob_sigmas_mm))
    head = nn.Linear(2 * encoder.out_dim, y_train.shape[1])
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=args.lr, weight_decay=0.01)
    per_epoch = len(x_train) // 8
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * per_epoch, pct_start=0.1)
    rng = np.random.default_rng(0)
    augment = RandAffine(prob=1.0, rotate_range=(0.08, 0.08, 0.08), scale_range=(0.06, 0.06, 0.06),
                         translate_range=(3, 3, 2), padding_mode="border")
    augment.set_random_state(0)
    t0 = time.perf_counter()
    line = ""
    for epoch in range(args.epochs):
        encoder.train()
        for batch in np.array_split(rng.permutation(len(x_train)), per_epoch):
            x = x_train[batch]
            if args.mirror:
                x = x.clone()
                x[1::2] = x[1::2].flip(2)  # (B, C, X, Y, Z): X is left-right
            if args.augment:
                x = torch.stack([augment(v) for v in x])
            y = y_train[batch]
            known = y >= 0
            loss = nn.functional.binary_cross_entropy_with_logits(head(pooled_grid(encoder.features(x)))[known], y[known].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 4 == 0 or epoch + 1 == args.epochs:
            encoder.eval()
            with torch.no_grad():
                scores = torch.cat([head(pooled_grid(encoder.features(x_test[i : i + 16]))) for i in range(0, len(x_test), 16)])
            aucs = {
                label: roc_auc_score(truth[label], scores[:, j].numpy())
                for j, label in enumerate(LABELS)
                if label in truth.columns and truth[label].nunique() > 1
            }
            line = (
                f"| {args.encoder}{' augment' if args.augment else ''} {' '.join(args.overrides)} | {x_train.shape[1]} | {'yes' if args.mirror else 'no'} | {epoch + 1} | "
                + " | ".join(f"{v:.2f}" for v in aucs.values())
                + f" | **{np.mean(list(aucs.values())):.3f}** | {time.perf_counter() - t0:.0f} |"
            )
            print(line, flush=True)
    with (HERE / "encoder_probe.md").open("a") as f:
        f.write(line + "\n")
    if args.save:
        torch.save({"encoder": encoder.state_dict(), "head": head.state_dict()}, args.save)


if __name__ == "__main__":
    main()

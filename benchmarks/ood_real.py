"""The OOD score on real CT with a real pretrained encoder: the 100 real lung-cancer crops as the training scans.

`ctsurv serve` needs a VLM run, and no VLM can be trained on real CT here (no GPU, no real reports for these
scans), so this checks the score itself (:class:`ctsurv.evaluation.explain.OutOfDistribution`) on the features the
real-cohort recipe reads: I3ResNet-152 (pretrained, ``configs/nsclc.yaml``'s preprocessing), pooled over its grid.

- Held-out real chest crops: 5-fold cross-validation over patients; in each fold the score (with its own
  cross-fitted 99th-percentile threshold) is fitted on 80 patients and flags the 20 held out; the share flagged.
- Other volumes, each through the same preprocessing, scored by the score fitted on all 100: a real abdomen CT, two
  real chest CT angiography crops, a synthetic head, a noise volume, a synthetic chest phantom.

    python benchmarks/ood_real.py --cohort ../shared/realcohort/cohort.csv --realdata ../shared/realdata
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from evidence_ood import emit, head_phantom, real_volumes
from sklearn.model_selection import KFold

from ctsurv.config import load_config
from ctsurv.evaluation.explain import OutOfDistribution
from ctsurv.features import volume_store
from ctsurv.features.preprocess import Preprocessor
from ctsurv.io.cohort import load_cohort
from ctsurv.io.volumes import Volume
from ctsurv.models.vision import build_vision_encoder
from ctsurv.synthetic.geometry import affine_for
from ctsurv.synthetic.patients import draw_cohort, stream
from ctsurv.synthetic.phantom import render_phantom

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "nsclc.yaml"


@torch.no_grad()
def pooled(encoder: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """(n, C, X, Y, Z) -> (n, Dv): the encoder's grid averaged, as the OOD score reads pooled features."""
    rows = [encoder.features(images[i : i + 4].float()).mean(dim=(2, 3, 4)) for i in range(0, len(images), 4)]
    return torch.cat(rows).double().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--realdata", type=Path, default=Path("../shared/realdata"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    cfg = load_config(CONFIG)
    cohort = load_cohort(args.cohort, cfg.data)
    encoder = build_vision_encoder(cfg.vision, tuple(reversed(cfg.data.target_shape_zyx)), in_channels=cfg.data.in_channels)
    encoder.eval()
    with volume_store(cohort, cfg.data, progress=True) as volumes:
        chest = pooled(encoder, volumes[:])
    groups = np.asarray(cohort.patient_ids)
    flagged = np.zeros(len(chest), bool)
    for train, held in KFold(5, shuffle=True, random_state=args.seed).split(chest):
        ood = OutOfDistribution.fit(chest[train], seed=args.seed, groups=groups[train])
        flagged[held] = ood.distance(chest[held]) > ood.threshold
    whole = OutOfDistribution.fit(chest, seed=args.seed, groups=groups)

    pre = Preprocessor(cfg.data)
    rng = np.random.default_rng(args.seed)
    phantom_findings = draw_cohort(10, 1000 + args.seed, 1.0, 0.3).findings[0]
    others: dict[str, Volume] = {
        "synthetic head": head_phantom(rng),
        "noise volume": Volume(rng.uniform(-1000, 1000, (96, 96, 48)).astype(np.float32), np.diag([1.0, 1.0, 1.5, 1.0])),
        "synthetic chest phantom": Volume(
            render_phantom(phantom_findings, (48, 64, 64), (6.0, 5.0, 5.0), stream(1000 + args.seed, 0, "phantom")),
            affine_for((48, 64, 64), (6.0, 5.0, 5.0)),
        ),
    }
    others.update(real_volumes(args.realdata))
    scores = {}
    for name, volume in others.items():
        d = float(whole.distance(pooled(encoder, pre(volume)[None]))[0])
        scores[name] = {"distance": round(d, 1), "flagged": bool(d > whole.threshold)}
    result = {
        "encoder": "i3resnet152", "config": "configs/nsclc.yaml", "patients": len(chest), "features": chest.shape[1],
        "held_out_real_chest_crops_flagged": float(flagged.mean()), "threshold_all_100": round(whole.threshold, 1),
        "median_reference_distance": round(float(np.median(whole.reference)), 1), "others": scores,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()

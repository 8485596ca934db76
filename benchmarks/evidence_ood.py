"""Do the evidence maps point at the finding, and does the OOD score flag scans unlike the training scans?

For a `ctsurv survival` run on a synthetic cohort (e.g. the demo's ``survival/``), on fresh phantoms drawn with a
seed that chose nothing:

- Localisation: for every patient whose phantom has a pleural effusion (and, separately, a consolidation), the
  evidence map of that finding (:meth:`ctsurv.reading.PatientReader.evidence`, occlusion blocks of the default grid)
  plays the pointing game against the phantom's truth mask, taken onto the model's grid by the same preprocessing:
  a hit when the block of largest evidence touches the mask. Chance: the share of blocks that touch it (a block
  drawn at random). Reported with a one-sided test of hits against the patients' own chances (Poisson-binomial,
  normal approximation).
- OOD: the share flagged among the fresh chest phantoms (the training distribution, unseen), and the flag and
  distance of a real abdomen CT and two real chest CTA crops (../shared/realdata), a synthetic head (skull, brain,
  ventricles) and a noise volume.

    python benchmarks/evidence_ood.py --run runs/demo/survival --seed 11 --n 120 --realdata ../shared/realdata

A run saved before the OOD reference existed gets one fitted on its training cohort (``--cohort``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from ctsurv.evaluation.explain import OutOfDistribution, pointing_hit, pooled_features
from ctsurv.io.volumes import Volume, read_volume
from ctsurv.reading import PatientReader, Scan
from ctsurv.synthetic.geometry import affine_for
from ctsurv.synthetic.patients import draw_cohort, stream
from ctsurv.synthetic.phantom import render_phantom_full

SHAPE_ZYX, SPACING_ZYX = (48, 64, 64), (6.0, 5.0, 5.0)  # ctsurv simulate's defaults
TARGETS = {"Pleural effusion": "pleural_effusion", "Consolidation": "consolidation"}


def ensure_ood(reader: PatientReader, cohort: Path | None) -> None:
    if reader.ood is not None:
        return
    if cohort is None:
        raise SystemExit("this run has no model/ood.safetensors; pass --cohort (its training cohort.csv)")
    from ctsurv.features import encode_all, volume_store
    from ctsurv.io.cohort import load_cohort

    rows = load_cohort(cohort, reader.cfg.data, require_outcomes=True)
    with volume_store(rows, reader.cfg.data) as volumes:
        reader.ood = OutOfDistribution.fit(pooled_features(encode_all(reader.vlm, volumes)), seed=reader.cfg.seed)


def head_phantom(rng: np.random.Generator) -> Volume:
    """A synthetic head CT: air, a skull shell (bone), brain, two ventricles (CSF), noise; 1 mm x 1 mm x 3 mm."""
    shape, spacing = (180, 200, 60), (1.0, 1.0, 3.0)
    x, y, z = np.meshgrid(*[(np.arange(n) - n / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    r = np.sqrt((x / 70) ** 2 + (y / 90) ** 2 + (z / 80) ** 2)
    hu = np.full(shape, -1000.0, np.float32)
    hu[r < 1.0] = 1200.0  # skull
    hu[r < 0.92] = 35.0  # brain
    ventricles = (((x - 12) / 8) ** 2 + (y / 25) ** 2 + (z / 20) ** 2 < 1) | (((x + 12) / 8) ** 2 + (y / 25) ** 2 + (z / 20) ** 2 < 1)
    hu[ventricles] = 5.0
    hu += rng.normal(0, 15, shape).astype(np.float32)
    return Volume(hu, np.diag([*spacing, 1.0]))


def as_scan(reader: PatientReader, volume: Volume, name: str, mask: np.ndarray | None = None) -> tuple[Scan, torch.Tensor | None]:
    image, region = reader.preprocessor.with_mask(volume, mask)
    return Scan(name, image, reader.preprocessor.hu_on_grid(volume), reader.preprocessor.spacing_xyz), region


def ood_of(reader: PatientReader, scan: Scan) -> tuple[float, bool]:
    with torch.no_grad():
        grids = reader.vlm.projector.pool(reader.vlm.vision_encoder.features(scan.image[None]))
    d = float(reader.ood.distance(pooled_features(grids))[0])
    return d, d > reader.ood.threshold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--cohort", type=Path, help="the run's training cohort.csv, when the run has no OOD reference")
    ap.add_argument("--seed", type=int, required=True, help="a fresh seed (never used for training or choices)")
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--realdata", type=Path, default=Path("../shared/realdata"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    reader = PatientReader(args.run)
    ensure_ood(reader, args.cohort)
    draw = draw_cohort(args.n, args.seed, 1.0, 0.3)
    hits: dict[str, list[tuple[bool, float, float]]] = {t: [] for t in TARGETS}
    chest_flags, chest_d, seconds = [], [], []
    for i, findings in enumerate(draw.findings):
        phantom = render_phantom_full(findings, SHAPE_ZYX, SPACING_ZYX, stream(args.seed, i, "phantom"))
        volume = Volume(phantom.hu, affine_for(SHAPE_ZYX, SPACING_ZYX))
        scan, _ = as_scan(reader, volume, f"P{i}")
        d, flagged = ood_of(reader, scan)
        chest_d.append(d)
        chest_flags.append(flagged)
        present = [t for t, key in TARGETS.items() if key in phantom.masks and phantom.masks[key].any()]
        if not present:
            continue
        t0 = time.perf_counter()
        blocks = reader.evidence(scan)
        seconds.append(time.perf_counter() - t0)
        for t in present:
            _, region = as_scan(reader, volume, f"P{i}", phantom.masks[TARGETS[t]])
            if region is None or not bool(region.any()):
                continue
            hit, chance = pointing_hit(blocks[t], region.numpy())
            p_yes = float(reader.scores(scan.image[None], reader.clinical())[0, list(blocks).index(t)])
            hits[t].append((hit, chance, p_yes))

    out: dict = {"run": str(args.run), "seed": args.seed, "n": args.n, "blocks_per_scan": int(np.prod(next(iter(blocks.values())).shape)),
                 "seconds_per_evidence": float(np.median(seconds)) if seconds else None, "localisation": {}, "ood": {}}
    for t, rows in hits.items():
        if not rows:
            continue
        h = np.array([r[0] for r in rows], float)
        c = np.array([r[1] for r in rows])
        said_yes = np.array([r[2] >= 0.5 for r in rows])
        z = (h.sum() - c.sum()) / math.sqrt(max((c * (1 - c)).sum(), 1e-12))
        out["localisation"][t] = {
            "patients": len(rows), "hit_rate": float(h.mean()), "chance": float(c.mean()),
            "p_one_sided": float(stats.norm.sf(z)),
            "hit_rate_when_answered_yes": float(h[said_yes].mean()) if said_yes.any() else None,
            "answered_yes": int(said_yes.sum()),
        }
    out["ood"]["threshold"] = reader.ood.threshold
    out["ood"]["fresh_chest_phantoms"] = {"n": len(chest_flags), "flagged": float(np.mean(chest_flags)),
                                          "median_distance": float(np.median(chest_d))}
    others = {"synthetic head": head_phantom(np.random.default_rng(args.seed)),
              "noise volume": Volume(np.random.default_rng(args.seed).uniform(-1000, 1000, (64, 64, 48)).astype(np.float32),
                                     np.diag([5.0, 5.0, 6.0, 1.0]))}
    others.update(real_volumes(args.realdata))
    for name, volume in others.items():
        d, flagged = ood_of(reader, as_scan(reader, volume, name)[0])
        out["ood"][name] = {"distance": d, "flagged": bool(flagged)}
    emit(out, args.out)


def real_volumes(folder: Path) -> dict[str, Volume]:
    """The real non-training volumes of ../shared/realdata that the OOD checks score, by name (those present)."""
    names = ("abdomen_ct_small.nii.gz", "chest_cta_pulmonary_crop.nii.gz", "chest_cta_aorta_crop.nii.gz")
    return {f"real {name.split('.')[0]}": read_volume(folder / name) for name in names if (folder / name).is_file()}


def emit(result: dict, out: Path | None) -> None:
    """Print the result as JSON, and write it to ``out`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.write_text(text)


if __name__ == "__main__":
    main()

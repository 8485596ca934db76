"""The survival targets of issue 4 on a pretrained model, in two regimes of fresh synthetic cohorts.

    python benchmarks/survival_targets.py --pretrained DIR [--work /tmp/ctsurv-survival-targets]

DIR is a `ctsurv pretrain` output folder (e.g. the one `benchmarks/pretrain.py` writes under
--work/pretrain). Simulates (or reuses) two 600-patient cohorts from seeds never used in pretraining:

- weak clinical, strong image signal (clinical 0, image 1, seed 7): the model should beat the
  clinical-only Cox model (paired bootstrap p < 0.05) and come within 0.05 of the oracle's C;
- strong clinical, weak image signal (clinical 1, image 0.3, seed 11): it should not be worse than the
  clinical-only model beyond noise.

Runs `ctsurv survival` (5-fold CV, configs/demo.yaml) on each and writes benchmarks/survival_targets.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ctsurv.config import load_config
from ctsurv.evaluation.report import results_markdown
from ctsurv.synthetic.simulate import simulate
from ctsurv.training.survival_run import run_survival

HERE = Path(__file__).parent
REGIMES = {  # name: (seed, image signal, clinical signal)
    "weak clinical, strong image": (7, 1.0, 0.0),
    "strong clinical, weak image": (11, 0.3, 1.0),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pretrained", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctsurv-survival-targets"))
    args = parser.parse_args()
    cfg = load_config(HERE.parent / "configs" / "demo.yaml")
    lines = [
        "# Survival targets (issue 4) on a pretrained model",
        "",
        f"Reproduce: `python benchmarks/survival_targets.py --pretrained {args.pretrained} --work {args.work}`.",
        "",
    ]
    for name, (seed, image, clinical) in REGIMES.items():
        cohort = args.work / f"cohort_seed{seed}"
        if not (cohort / "cohort.csv").exists():
            simulate(cohort, n=600, seed=seed, image_signal=image, clinical_signal=clinical, progress=False)
        out = args.work / f"survival_seed{seed}"
        t0 = time.perf_counter()
        run = run_survival(cfg, cohort / "cohort.csv", out, pretrained=args.pretrained, progress=False)
        methods = run.results["methods"]
        model, oracle = methods["model"], methods["oracle"]
        lines += [
            f"## {name} (image signal {image}, clinical signal {clinical}, seed {seed})",
            "",
            (
                f"Model C {model['harrell_c']:.3f} vs clinical Cox {methods['clinical_cox']['harrell_c']:.3f}: "
                f"ΔC {model['delta_c_vs_clinical']:+.3f} (95% CI {model['delta_c_ci'][0]:+.3f} to "
                f"{model['delta_c_ci'][1]:+.3f}), p {model['p_vs_clinical']:.3f}; oracle C {oracle['harrell_c']:.3f}, "
                f"gap to the oracle {oracle['harrell_c'] - model['harrell_c']:.3f}. {time.perf_counter() - t0:.0f} s."
            ),
            "",
            results_markdown(run.results).replace("# Survival results", "### Results"),
            "",
        ]
    (HERE / "survival_targets.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""A/B of `ctsurv demo` recipes over fresh seeds: does a faster recipe keep the demo's accuracy?

    python benchmarks/demo_ab.py --work /tmp/ctsurv-ab --seeds 101 202 303 \\
        --arm base= --arm fast=channels_last,pretrain.vision.epochs=15,pretrain.instruct.epochs=10

Per seed s the demo's two cohorts are simulated once and shared by the arms (pretraining: seed s + 1, 400
studies; survival: seed s, 600 patients, as `ctsurv demo --seed s`); the training seed (config ``seed``) is s
too, so seeds vary the data and the training alike. Each arm then runs the demo's pretraining (configs/demo.yaml
with the arm's overrides) and its main survival cross-validation (no sweep), and is scored on:

- the yes/no presence answers on the 600 survival patients, which no pretraining step saw: accuracy of
  P(yes) > 0.5 and AUC of P(yes) against the generator's truth, per finding;
- the pretraining's own test split (macro accuracy, as `ctsurv demo` reports it);
- ΔC of the model (CT + clinical) against clinical Cox, with its bootstrap CI;
- the wall time of each pretraining stage (the machine's other load included: compare arms run alike).

An arm is ``name=override,override,...``; ``channels_last`` is not a config key but runs the 3D CNN on
channels-last activations (the same network; oneDNN skips a layout reorder per convolution). The arms of
one seed run back to back. Writes demo_ab.json and demo_ab.md into benchmarks/ (or --name).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from ctsurv.config import load_config
from ctsurv.models.vision import CNN3D
from ctsurv.synthetic.simulate import simulate
from ctsurv.text.questions import QUESTIONS
from ctsurv.training.pretrain import pretrain
from ctsurv.training.survival_run import evaluate, prepare

HERE = Path(__file__).parent
CONFIG = HERE.parent / "configs" / "demo.yaml"
PRESENCE = [q for q in QUESTIONS if q.kind == "presence"]
CONTIGUOUS_FEATURES = CNN3D.features


def channels_last_features(self: CNN3D, x: torch.Tensor) -> torch.Tensor:
    return CONTIGUOUS_FEATURES(self, x.contiguous(memory_format=torch.channels_last_3d))


def parse_arm(text: str) -> tuple[str, bool, list[str]]:
    name, _, rest = text.partition("=")
    parts = [p for p in rest.split(",") if p]
    return name, "channels_last" in parts, [p for p in parts if p != "channels_last"]


def run_arm(work: Path, seed: int, arm: str, channels_last: bool, overrides: list[str]) -> dict:
    CNN3D.features = channels_last_features if channels_last else CONTIGUOUS_FEATURES
    cfg = load_config(CONFIG, [f"seed={seed}", *overrides])
    run = work / f"seed{seed}" / arm
    t0 = time.perf_counter()
    pre = pretrain(cfg, work / f"seed{seed}" / "pretrain_cohort" / "cohort.csv", run / "pretrain", resume=True, progress=False)
    pretrain_s = time.perf_counter() - t0
    cfg_s, cohort, features = prepare(cfg, work / f"seed{seed}" / "cohort" / "cohort.csv", run / "pretrain", None, progress=False)
    results = evaluate(cfg_s, cohort, features, run / "survival", progress=False).results
    truth = pd.read_csv(work / f"seed{seed}" / "cohort" / "truth.csv", dtype={"id": str}).set_index("id").loc[cohort.ids]
    p_yes = features.for_cohort(cohort).answers.p_yes
    unseen = {}
    for j, q in enumerate(PRESENCE):
        if q.label in truth.columns and 0 < truth[q.label].sum() < len(truth):
            y = truth[q.label].astype(int).to_numpy()
            unseen[q.label] = {"accuracy": float(((p_yes[:, j] > 0.5) == y).mean()), "auc": float(roc_auc_score(y, p_yes[:, j]))}
    model = results["methods"]["model"]
    return {
        "seed": seed, "arm": arm, "channels_last": channels_last, "overrides": overrides,
        "pretrain_seconds": round(pretrain_s, 1), "stage_seconds": {k: round(v, 1) for k, v in pre.seconds.items()},
        "test_split_macro_accuracy": pre.metrics["presence"]["macro"]["accuracy"],
        "unseen": unseen,
        "unseen_macro_accuracy": float(np.mean([v["accuracy"] for v in unseen.values()])),
        "unseen_macro_auc": float(np.mean([v["auc"] for v in unseen.values()])),
        "model_c": model["harrell_c"], "clinical_c": results["methods"]["clinical_cox"]["harrell_c"],
        "delta_c": model["delta_c_vs_clinical"], "delta_c_ci": model["delta_c_ci"],
    }


def write_markdown(rows: list[dict], path: Path, command: str) -> None:
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    lines = ["# `ctsurv demo` recipe A/B over fresh seeds", "", f"Reproduce: `{command}`", "",
             "| seed | arm | pretrain s | stage 0 s | stage 2 s | test-split macro acc | unseen macro acc | unseen macro AUC | ΔC vs clinical (95% CI) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["delta_c_ci"]
        lines.append(f"| {r['seed']} | {r['arm']} | {r['pretrain_seconds']:.0f} | {r['stage_seconds'].get('vision', float('nan')):.0f} "
                     f"| {r['stage_seconds'].get('instruct', float('nan')):.0f} | {r['test_split_macro_accuracy']:.3f} "
                     f"| {r['unseen_macro_accuracy']:.3f} | {r['unseen_macro_auc']:.3f} | {r['delta_c']:+.3f} ({lo:+.3f} to {hi:+.3f}) |")
    lines += ["", "Per finding, unseen accuracy (AUC), mean ± SD over seeds:", "",
              "| finding | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    findings = list(dict.fromkeys(f for r in rows for f in r["unseen"]))
    for f in findings:
        cells = []
        for a in arms:
            acc = [r["unseen"][f]["accuracy"] for r in rows if r["arm"] == a and f in r["unseen"]]
            auc = [r["unseen"][f]["auc"] for r in rows if r["arm"] == a and f in r["unseen"]]
            cells.append(f"{np.mean(acc):.3f} ± {np.std(acc, ddof=1) if len(acc) > 1 else 0:.3f} ({np.mean(auc):.3f})")
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    lines += ["", "Mean ± SD over seeds:", "", "| arm | pretrain s | unseen macro acc | unseen macro AUC | ΔC vs clinical |", "|---|---|---|---|---|"]
    for a in arms:
        sel = [r for r in rows if r["arm"] == a]
        cells = [_mean_sd([r[key] for r in sel], fmt) for key, fmt in
                 (("pretrain_seconds", ".0f"), ("unseen_macro_accuracy", ".3f"), ("unseen_macro_auc", ".3f"), ("delta_c", "+.3f"))]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def _mean_sd(values: list[float], fmt: str) -> str:
    sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):{fmt}} ± {sd:{fmt.lstrip('+')}}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctsurv-ab"))
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--arm", action="append", required=True, help="name=override,... (channels_last: see above)")
    parser.add_argument("--name", default="demo_ab")
    parser.add_argument("--n-pretrain", type=int, default=400)  # the demo's sizes; smaller only to try the script
    parser.add_argument("--n-survival", type=int, default=600)
    args = parser.parse_args()
    arms = [parse_arm(a) for a in args.arm]
    out_json = HERE / f"{args.name}.json"
    rows = json.loads(out_json.read_text()) if out_json.exists() else []
    done = {(r["seed"], r["arm"]) for r in rows}
    command = "python benchmarks/demo_ab.py --work DIR --seeds " + " ".join(map(str, args.seeds)) + "".join(f" --arm {a}" for a in args.arm)
    for seed in args.seeds:
        for d, n, s in (("pretrain_cohort", args.n_pretrain, seed + 1), ("cohort", args.n_survival, seed)):
            if not (args.work / f"seed{seed}" / d / "cohort.csv").exists():
                simulate(args.work / f"seed{seed}" / d, n=n, seed=s, progress=False)
        for name, channels_last, overrides in arms:
            if (seed, name) in done:
                continue
            rows.append(run_arm(args.work, seed, name, channels_last, overrides))
            out_json.write_text(json.dumps(rows, indent=1))  # after every arm: an interrupted A/B keeps what it has
            write_markdown(rows, HERE / f"{args.name}.md", command)
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()

"""Pretraining benchmark: time, throughput, memory and machine utilisation of stages 0-2 with
configs/demo.yaml, and yes/no accuracy on a synthetic cohort from a seed never used in training.

    python benchmarks/pretrain.py [--work /tmp/ctsurv-bench] [--n-train 600] [--n-test 200]

Simulates (or reuses) a training cohort (seed 0) and a test cohort (seed 1000) under --work, runs
`pretrain`, then answers the predefined presence questions on every test scan and scores them
against the generator's truth (truth.csv) and against the labels extracted from the test reports.
Also a linear readout of the final model's frozen vision encoder: a logistic regression per finding on
the mean- and max-pooled grid of the training studies (against their report labels), scored on the test
scans. When it reads a finding that the answers miss, the language model is what loses it.
Writes benchmarks/pretrain.md and benchmarks/pretrain.json; another --n-train or config overrides add them to
the name (pretrain_n1800.md; pretrain_pretrain.vision_augment-true.md, run J's record, now in research/), so the
shipped run's record stays.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.flop_counter import FlopCounterMode

from ctsurv.config import load_config
from ctsurv.evaluation.text_metrics import binary_scores
from ctsurv.evaluation.vlm_eval import answer_questions
from ctsurv.features import encode_all, preprocess_all
from ctsurv.io.cohort import load_cohort
from ctsurv.synthetic.simulate import simulate
from ctsurv.text.answers import instruction_pairs, parse_answer
from ctsurv.text.questions import QUESTIONS
from ctsurv.training.checkpoint import load_checkpoint
from ctsurv.training.datasets import presence_labels, study_collate
from ctsurv.training.pretrain import pretrain
from ctsurv.training.stages import InstructionLoss, pooled_grid, set_trainable, vision_trains
from ctsurv.training.survival import vlm_features

HERE = Path(__file__).parent
CONFIG = HERE.parent / "configs" / "demo.yaml"


def peak_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n×n matmul on all threads (the machine's practical fp32 peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def step_flops_and_seconds(checkpoint: Path, cfg, cohort, volumes) -> tuple[float, float, int, int]:
    """FLOPs (forward + backward) and wall time of one instruct training step with the demo batch size."""
    model, _ = load_checkpoint(checkpoint)
    set_trainable(model, cfg, "instruct")
    table = cohort.table
    bs = cfg.pretrain.instruct.batch_size
    pairs = [[(q.text, a) for q, a in instruction_pairs(f, i)] for f, i in zip(table.findings[:bs], table.impression[:bs])]
    frozen = not vision_trains(cfg, "instruct")  # then stage 2 trains on cached encoder features, as here
    inputs, kind = (encode_all(model, volumes[:bs]), "features") if frozen else (volumes, "images")
    rows = [(inputs[i], pairs[i]) for i in range(bs)]
    if frozen and model.projector.findings is not None:  # stage 2 is given the findings token's logits, as in training
        logits = model.projector.findings(inputs, model.projector.cells(volumes[:bs].float()))
        rows = [(*row, logits[i]) for i, row in enumerate(rows)]
    batch = study_collate(model, kind)(rows)
    loss_module = InstructionLoss(model, frozen_vision=frozen).train()
    with FlopCounterMode(display=False) as counter:
        loss_module(**batch).backward()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        loss_module(**batch).backward()
        times.append(time.perf_counter() - t0)
    tokens = int(batch["attention_mask"].sum())
    return counter.get_total_flops(), min(times), tokens, bs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctsurv-bench"))
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. pretrain.instruct.epochs=20")
    args = parser.parse_args()
    train_dir, test_dir, out = args.work / "train", args.work / "test", args.work / "pretrain"
    for d, n, seed in ((train_dir, args.n_train, 0), (test_dir, args.n_test, 1000)):
        if not (d / "cohort.csv").exists():
            simulate(d, n=n, seed=seed, progress=False)
    cfg = load_config(CONFIG, args.overrides)

    t0 = time.perf_counter()
    summary = pretrain(cfg, train_dir / "cohort.csv", out, resume=True, progress=False)
    wall = time.perf_counter() - t0
    stages = [s for s in ("vision", "align", "instruct") if (out / s / "metrics.json").is_file()]
    stage_metrics = {s: json.loads((out / s / "metrics.json").read_text()) for s in stages}

    model, cfg = load_checkpoint(out / "instruct")
    test = load_cohort(test_dir / "cohort.csv", cfg.data, require_reports=True)
    volumes = preprocess_all(test, cfg, progress=False)
    presence = [q for q in QUESTIONS if q.kind == "presence"]
    t1 = time.perf_counter()
    answers = answer_questions(model, volumes, "images", [q.text for q in presence], max_new_tokens=4)
    answer_seconds = time.perf_counter() - t1
    truth = pd.read_csv(test_dir / "truth.csv", dtype={"id": str}).set_index("id").loc[test.ids]
    p_yes = vlm_features(model, volumes).p_yes  # (N, Q): how the model ranks the scans, whatever its answer
    readout = linear_readout(model, cfg, train_dir, out / "split.csv", volumes)
    head = model.projector.findings  # the findings token's classifier, if any: what the LM is given to read
    head_p = None if head is None else torch.sigmoid(head(encode_all(model, volumes), model.projector.cells(volumes))).numpy()
    rows = []
    for j, q in enumerate(presence):
        pred = [int(bool(parse_answer(q, a[j]))) for a in answers]
        from_reports = [int(bool(parse_answer(q, r))) for r in _report_answers(test, q)]
        row = {"finding": q.label, "vs_reports": binary_scores(from_reports, pred)}
        if q.label in truth.columns:
            row["vs_truth"] = binary_scores(truth[q.label].astype(int).tolist(), pred)
            row["vs_truth"]["auc_p_yes"] = float(roc_auc_score(truth[q.label], p_yes[:, j]))
            if not np.isnan(readout[:, j]).any():
                row["encoder_readout"] = {
                    "accuracy": float(((readout[:, j] > 0.5) == truth[q.label].to_numpy()).mean()),
                    "auc": float(roc_auc_score(truth[q.label], readout[:, j])),
                }
            if head_p is not None:
                row["findings_head"] = {
                    "accuracy": float(((head_p[:, j] > 0.5) == truth[q.label].to_numpy()).mean()),
                    "auc": float(roc_auc_score(truth[q.label], head_p[:, j])),
                    "reads_cells": head.cells_channel is not None and bool(head.reads_cells[j]),
                }
        rows.append(row)

    flops, step_s, step_tokens, step_studies = step_flops_and_seconds(out / "instruct", cfg, test, volumes)
    peak = peak_matmul_gflops()
    result = {
        "cohort": {"train_studies": summary.n_train, "val_studies": summary.n_val, "test_studies": len(test)},
        "seconds": {**{k: round(v, 1) for k, v in summary.seconds.items()}, "pretrain_wall": round(wall, 1)},
        "throughput": {
            s: {
                "volumes_per_s": round(stage_metrics[s]["studies"] * stage_metrics[s]["epochs"] / stage_metrics[s]["seconds"], 2),
            }
            for s in stages
        },
        "instruct_step": {
            "studies": step_studies, "tokens": step_tokens, "seconds": round(step_s, 3),
            "gflop": round(flops / 1e9, 1), "achieved_gflops": round(flops / step_s / 1e9, 1),
            "peak_matmul_gflops": round(peak, 1), "share_of_peak": round(flops / step_s / 1e9 / peak, 3),
            "tokens_per_s": round(step_tokens / step_s, 1),
        },
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "answer_seconds_per_study": round(answer_seconds / len(test), 3),
        "final_losses": {s: stage_metrics[s]["final_epoch_loss"] for s in stages},
        "held_out_eval": summary.metrics["presence"]["macro"],
        "test_presence": rows,
    }
    parts = ([f"n{args.n_train}"] if args.n_train != 600 else []) + [o.replace("=", "-") for o in args.overrides]
    name = "_".join(["pretrain", *parts])
    (HERE / f"{name}.json").write_text(json.dumps(result, indent=2))
    (HERE / f"{name}.md").write_text(_markdown(result, " ".join(sys.argv[1:])))
    print((HERE / f"{name}.md").read_text())


@torch.no_grad()
def _pooled(vlm, volumes: torch.Tensor) -> np.ndarray:
    enc = vlm.vision_encoder.eval()
    return torch.cat([pooled_grid(enc.features(volumes[i : i + 16].float())) for i in range(0, len(volumes), 16)]).numpy()


def linear_readout(vlm, cfg, train_dir: Path, split_csv: Path, test_volumes: torch.Tensor) -> np.ndarray:
    """(n_test, Q) P(yes) of a logistic regression per presence question on the frozen encoder's pooled grid,
    fitted on the training split's studies and their report labels; NaN where a label has one class."""
    split = pd.read_csv(split_csv, dtype={"id": str})
    train = load_cohort(train_dir / "cohort.csv", cfg.data, require_reports=True)
    train = train.subset(np.flatnonzero(np.isin(train.ids, split.id[split.split == "train"])))
    t = train.table
    y = np.array([presence_labels([(q.text, a) for q, a in instruction_pairs(f, i)])
                  for f, i in zip(t.findings, t.impression.fillna(""))])  # (n, Q), -1 unknown
    x_train, x_test = _pooled(vlm, preprocess_all(train, cfg, progress=False)), _pooled(vlm, test_volumes)
    out = np.full((len(x_test), y.shape[1]), np.nan)
    for j in range(y.shape[1]):
        known = y[:, j] >= 0
        if len(np.unique(y[known, j])) == 2:
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train[known], y[known, j])
            out[:, j] = model.predict_proba(x_test)[:, 1]
    return out


def _report_answers(cohort, question) -> list[str]:
    from ctsurv.text.answers import answers_from_report

    t = cohort.table
    return [answers_from_report(f, i)[question.key] for f, i in zip(t.findings, t.impression.fillna(""))]


def _markdown(r: dict, argv: str) -> str:
    st = r["instruct_step"]
    lines = [
        "# Pretraining benchmark (stages 0-2, configs/demo.yaml, CPU)",
        "",
        f"Reproduce: `python benchmarks/pretrain.py {argv}`. Machine: {torch.get_num_threads()} torch threads.",
        "",
        f"- cohort: {r['cohort']}",
        f"- time (s): {r['seconds']}",
        f"- throughput: {r['throughput']}",
        (
            f"- one instruct step ({st['studies']} studies, {st['tokens']} tokens): {st['seconds']} s, {st['gflop']} GFLOP, "
            f"{st['achieved_gflops']} GFLOP/s = {st['share_of_peak']:.1%} of the fp32 matmul peak "
            f"({st['peak_matmul_gflops']} GFLOP/s measured in the same run); {st['tokens_per_s']} tokens/s"
        ),
        f"- peak memory (RSS): {r['peak_rss_gb']} GB",
        f"- final epoch losses: {r['final_losses']}",
        "",
        "## Yes/no answers on a test cohort from an unseen seed (1000)",
        "",
        "Encoder readout: a logistic regression on the frozen encoder's pooled grid, fitted on the training studies'",
        "report labels, against the truth. Findings head: the findings token's classifier (P > 0.5), against the truth,",
        "and whether it reads the mediastinal cells (`projector.findings_cells_channel`).",
        "",
        (
            "| finding | accuracy vs truth | F1 vs truth | AUC of P(yes) vs truth | positives (truth) | accuracy vs report labels "
            "| F1 vs report labels | encoder readout accuracy | encoder readout AUC | findings head accuracy "
            "| findings head AUC | head reads cells |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["test_presence"]:
        t, rep = row.get("vs_truth"), row["vs_reports"]
        truth_cells = f"{t['accuracy']:.3f} | {t['f1']:.3f} | {t['auc_p_yes']:.3f} | {t['support']}" if t else "– | – | – | –"
        ro = row.get("encoder_readout")
        ro_cells = f"{ro['accuracy']:.3f} | {ro['auc']:.3f}" if ro else "– | –"
        fh = row.get("findings_head")
        fh_cells = f"{fh['accuracy']:.3f} | {fh['auc']:.3f} | {'yes' if fh['reads_cells'] else 'no'}" if fh else "– | – | –"
        lines.append(f"| {row['finding']} | {truth_cells} | {rep['accuracy']:.3f} | {rep['f1']:.3f} | {ro_cells} | {fh_cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

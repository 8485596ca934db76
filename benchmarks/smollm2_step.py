"""Instruction-tuning step cost of SmolLM2-135M-Instruct with LoRA (configs/smol.yaml) on this machine,
and of the tiny LM (``--config configs/demo.yaml``) for comparison.

One step = forward + backward of stage 2's loss on a batch of studies (every predefined question, the impression
and the report of each), from cached encoder features, as `ctsurv pretrain` runs it. Reports tokens per second
(all tokens of the batch, prompts and visual tokens included), seconds per study, and the share of this machine's
float32 matmul peak (measured in the same run, as `pretrain.py` does) that a step's FLOPs reach. FLOPs are counted
by torch's ``FlopCounterMode`` on the warm-up step: what runs, so LoRA's frozen weights get no weight gradients and
gradient checkpointing's recomputed forward counts (hardware, not model, FLOP utilisation there).

    python benchmarks/smollm2_step.py --studies 4 --steps 3 [--config configs/demo.yaml] [key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ctsurv.config import load_config
from ctsurv.models.vlm import build_vlm
from ctsurv.synthetic.patients import draw_cohort
from ctsurv.synthetic.reports import write_report
from ctsurv.text.answers import instruction_pairs
from ctsurv.training.datasets import align_pairs, study_collate
from ctsurv.training.stages import InstructionLoss, set_trainable

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from pretrain import peak_matmul_gflops  # the same peak as the tiny LM's benchmark

CONFIG = HERE.parent / "configs" / "smol.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=4, help="studies per batch")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    parser.add_argument("--stage", choices=["align", "instruct"], default="instruct")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    draw = draw_cohort(max(args.studies * (args.steps + 1), 200), seed=1000, image_signal=1.0, clinical_signal=0.3)
    rng = np.random.default_rng(0)
    reports = [write_report(f, rng) for f in draw.findings]  # (findings, impression)
    torch.manual_seed(0)
    vlm = build_vlm(cfg, texts=[f"{f}\n\n{i}" for f, i in reports] if cfg.language.model == "tiny" else None)
    set_trainable(vlm, cfg, args.stage)
    pairs = [align_pairs(*r) if args.stage == "align"
             else [(q.text, a) for q, a in instruction_pairs(*r)] for r in reports]
    with torch.no_grad():
        grid = vlm.vision_encoder.eval().features(torch.rand(1, cfg.data.in_channels, *reversed(cfg.data.target_shape_zyx)))
    collate = study_collate(vlm, "features", packed=cfg.pretrain.pack_questions and args.stage == "instruct")
    loss_fn = InstructionLoss(vlm, frozen_vision=True).train()
    optimizer = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=1e-4)
    times, tokens, sequences = [], [], []
    for step in range(args.steps + 1):
        rows = [(grid[0], pairs[step * args.studies + i]) for i in range(args.studies)]
        batch = collate(rows)
        counter = FlopCounterMode(display=False) if step == 0 else None  # the warm-up step counts the FLOPs
        t0 = time.perf_counter()
        with counter or contextlib.nullcontext():
            loss = loss_fn(**batch)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if counter is not None:
            flops_per_token = counter.get_total_flops() / int(batch["attention_mask"].sum())
        else:
            times.append(time.perf_counter() - t0)
            tokens.append(int(batch["attention_mask"].sum()))
            sequences.append(len(batch["input_ids"]))
    seconds = float(np.mean(times))
    step_flops = flops_per_token * float(np.mean(tokens))
    peak = peak_matmul_gflops() * 1e9
    result = {
        "config": args.config.name, "language": cfg.language.model, "stage": args.stage, "studies_per_batch": args.studies, "steps": args.steps, "threads": args.threads,
        "overrides": args.overrides, "packed": cfg.pretrain.pack_questions and args.stage == "instruct", "seconds_per_step": round(seconds, 2),
        "seconds_per_study": round(seconds / args.studies, 2), "tokens_per_step": int(np.mean(tokens)),
        "sequences_per_step": int(np.mean(sequences)), "tokens_per_second": round(float(np.mean(tokens)) / seconds, 1),
        "trainable_parameters": sum(p.numel() for p in vlm.parameters() if p.requires_grad),
        "gflop_per_step": round(step_flops / 1e9, 1), "matmul_peak_gflops": round(peak / 1e9, 1),
        "share_of_peak": round(step_flops / seconds / peak, 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
    }
    print(json.dumps(result, indent=2))
    with (HERE / "smollm2_step.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")
    _write_markdown([json.loads(line) for line in (HERE / "smollm2_step.jsonl").read_text().splitlines()])


def _write_markdown(rows: list[dict]) -> None:
    """smollm2_step.md: every measurement of smollm2_step.jsonl, newest last, above the notes kept after ``## Notes``."""
    md = HERE / "smollm2_step.md"
    notes = md.read_text().split("## Notes", 1)[1] if md.is_file() and "## Notes" in md.read_text() else "\n"
    lines = [
        "# SmolLM2-135M-Instruct + LoRA: one training step on this machine",
        "",
        ("`python benchmarks/smollm2_step.py --studies S --steps N [key=value ...]` (configs/smol.yaml; one step = "
         "forward + backward + AdamW on a batch of S studies from cached encoder features, one warm-up step first)."),
        "",
        ("| config | stage | packed | overrides | studies/step | sequences/step | tokens/step | s/step | s/study | tokens/s "
        "| share of matmul peak | peak RSS GB | threads |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.get('config', 'smol.yaml')} | {r['stage']} | {r.get('packed', False)} | {' '.join(r['overrides']) or '–'} | "
            f"{r['studies_per_batch']} | {r['sequences_per_step']} | {r['tokens_per_step']} | {r['seconds_per_step']} | "
            f"{r['seconds_per_study']} | {r['tokens_per_second']} | {r.get('share_of_peak', '–')} | {r.get('peak_rss_gb', '–')} | "
            f"{r['threads']} |"
        )
    md.write_text("\n".join(lines) + "\n\n## Notes" + notes)


if __name__ == "__main__":
    main()

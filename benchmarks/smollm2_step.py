"""Instruction-tuning step cost of SmolLM2-135M-Instruct with LoRA (configs/smol.yaml) on this machine.

One step = forward + backward of stage 2's loss on a batch of studies (every predefined question, the impression
and the report of each), from cached encoder features, as `ctsurv pretrain` runs it. Reports tokens per second
(all tokens of the batch, prompts and visual tokens included) and seconds per study, and the projected stage times.

    python benchmarks/smollm2_step.py --studies 4 --steps 3 [key=value ...]   # writes benchmarks/smollm2_step.md
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from ctsurv.config import load_config
from ctsurv.models.vlm import build_vlm
from ctsurv.synthetic.patients import draw_cohort
from ctsurv.synthetic.reports import write_report
from ctsurv.text.answers import instruction_pairs
from ctsurv.training.datasets import align_pairs, study_collate
from ctsurv.training.stages import InstructionLoss, set_trainable

HERE = Path(__file__).parent
CONFIG = HERE.parent / "configs" / "smol.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=4, help="studies per batch")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    parser.add_argument("--stage", choices=["align", "instruct"], default="instruct")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(CONFIG, args.overrides)
    torch.manual_seed(0)
    vlm = build_vlm(cfg)
    set_trainable(vlm, cfg, args.stage)
    draw = draw_cohort(args.studies * (args.steps + 1), seed=1000, image_signal=1.0, clinical_signal=0.3)
    rng = np.random.default_rng(0)
    reports = [write_report(f, rng) for f in draw.findings]  # (findings, impression)
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
        t0 = time.perf_counter()
        loss = loss_fn(**batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms up
            times.append(time.perf_counter() - t0)
            tokens.append(int(batch["attention_mask"].sum()))
            sequences.append(len(batch["input_ids"]))
    seconds = float(np.mean(times))
    result = {
        "stage": args.stage, "studies_per_batch": args.studies, "steps": args.steps, "threads": args.threads,
        "overrides": args.overrides, "packed": cfg.pretrain.pack_questions and args.stage == "instruct", "seconds_per_step": round(seconds, 2),
        "seconds_per_study": round(seconds / args.studies, 2), "tokens_per_step": int(np.mean(tokens)),
        "sequences_per_step": int(np.mean(sequences)), "tokens_per_second": round(float(np.mean(tokens)) / seconds, 1),
        "trainable_parameters": sum(p.numel() for p in vlm.parameters() if p.requires_grad),
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
        "| stage | packed | overrides | studies/step | sequences/step | tokens/step | s/step | s/study | tokens/s | peak RSS GB | threads |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r.get('packed', False)} | {' '.join(r['overrides']) or '–'} | {r['studies_per_batch']} | "
            f"{r['sequences_per_step']} | {r['tokens_per_step']} | {r['seconds_per_step']} | {r['seconds_per_study']} | "
            f"{r['tokens_per_second']} | {r.get('peak_rss_gb', '–')} | {r['threads']} |"
        )
    md.write_text("\n".join(lines) + "\n\n## Notes" + notes)


if __name__ == "__main__":
    main()

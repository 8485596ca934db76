"""The tiny LM against SmolLM2-135M-Instruct + LoRA: the same demo story, encoder recipe, cohorts and seeds.

For each language and seed, ``ctsurv demo --language L --seed S --n-pretrain P --n-survival N`` runs in its own
folder (kept, so that an interrupted comparison continues where it stopped). The seeds draw the cohorts and the
training; none of them chose a setting. Read back per run:

* the held-out pretraining evaluation (``pretrain/instruct/eval.json``): per finding the accuracy of the generated
  yes/no answers and the ROC AUC of P(yes); the macro means; impression and report BLEU-4, ROUGE-L and embedding
  similarity;
* the survival ladder (``survival/results.json``): Harrell's C of each method, and the model's gain over
  clinical data alone;
* wall times: the whole demo and each pretraining stage.

    python benchmarks/lm_compare.py --seeds 5051 6061 7071   # the demo's sizes, 400 + 600 patients
        # writes benchmarks/lm_compare.jsonl (one row per run) and benchmarks/lm_compare.md (mean ± SD per language)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
LANGUAGES = ("tiny", "smollm2-135m")
STAGES = ("vision", "align", "instruct")
TEXT_SCORES = ("bleu_4", "rouge_l", "embedding_similarity")


def run(language: str, seed: int, n_pretrain: int, n_survival: int, work: Path) -> dict:
    """One demo (skipped when its folder holds a finished one) and what it measured."""
    out = work / f"{language}_seed{seed}_{n_pretrain}_{n_survival}"
    seconds = None
    if not (out / "REPORT.md").is_file():
        t0 = time.perf_counter()
        subprocess.run(["ctsurv", "demo", "--language", language, "--seed", str(seed), "--n-pretrain", str(n_pretrain),
                        "--n-survival", str(n_survival), "--out", str(out)], check=True)
        seconds = round(time.perf_counter() - t0, 1)
    evaluation = json.loads((out / "pretrain" / "instruct" / "eval.json").read_text())
    results = json.loads((out / "survival" / "results.json").read_text())
    presence = {label: scores for label, scores in evaluation["presence"].items() if label != "macro"}
    macro = evaluation["presence"]["macro"]
    return {
        "language": language, "seed": seed, "n_pretrain": n_pretrain, "n_survival": n_survival, "demo_seconds": seconds,
        "stage_seconds": {s: json.loads((out / "pretrain" / s / "metrics.json").read_text())["seconds"]
                          for s in STAGES if (out / "pretrain" / s / "metrics.json").is_file()},
        "test_studies": evaluation["n_studies"],
        "presence_macro": {k: macro.get(k) for k in ("accuracy", "f1", "auc")},
        "presence": {label: {k: s.get(k) for k in ("positives", "accuracy", "f1", "auc")} for label, s in presence.items()},
        "impression": {k: evaluation["impression"][k] for k in TEXT_SCORES},
        "report": {k: evaluation["report"][k] for k in TEXT_SCORES},
        "harrell_c": {m: r["harrell_c"] for m, r in results["methods"].items()},
        "delta_c_model_vs_clinical": results["methods"]["model"]["delta_c_vs_clinical"],
    }


def _mean_sd(values: list[float | None]) -> str:
    kept = [v for v in values if v is not None]
    if not kept:
        return "–"
    if len(kept) == 1:
        return f"{kept[0]:.3f}"
    return f"{np.mean(kept):.3f} ± {np.std(kept, ddof=1):.3f}" + ("" if len(kept) == len(values) else f" ({len(kept)})")


def write_markdown(rows: list[dict]) -> None:
    """lm_compare.md: mean ± SD over seeds, one column per language, above the notes kept after ``## Notes``."""
    md = HERE / "lm_compare.md"
    notes = md.read_text().split("## Notes", 1)[1] if md.is_file() and "## Notes" in md.read_text() else "\n"
    languages = [lang for lang in LANGUAGES if any(r["language"] == lang for r in rows)]
    by = {lang: [r for r in rows if r["language"] == lang] for lang in languages}
    seeds = {lang: sorted(r["seed"] for r in by[lang]) for lang in languages}

    def line(name: str, get: object) -> str:
        return f"| {name} | " + " | ".join(_mean_sd([get(r) for r in by[lang]]) for lang in languages) + " |"

    lines = ["# The tiny LM against SmolLM2-135M-Instruct + LoRA", "",
             "`python benchmarks/lm_compare.py` (see its docstring): the demo with each LM on the same cohorts of "
             f"{rows[0]['n_pretrain']} pretraining and {rows[0]['n_survival']} survival patients; mean ± SD over seeds " + ", ".join(f"{lang}: {seeds[lang]}" for lang in languages) + ".", "",
             "| measure | " + " | ".join(languages) + " |", "|---|" + "---|" * len(languages)]
    lines.append(line("demo wall time, s", lambda r: r["demo_seconds"]))
    for stage in STAGES:
        lines.append(line(f"pretraining stage {stage}, s", lambda r, s=stage: r["stage_seconds"].get(s)))
    for key in ("accuracy", "f1", "auc"):
        lines.append(line(f"presence macro {key} (held-out)", lambda r, k=key: r["presence_macro"][k]))
    for kind in ("impression", "report"):
        for key in TEXT_SCORES:
            lines.append(line(f"{kind} {key}", lambda r, k=kind, s=key: r[k][s]))
    methods = [m for m in rows[0]["harrell_c"]]
    for method in methods:
        lines.append(line(f"Harrell's C: {method}", lambda r, m=method: r["harrell_c"].get(m)))
    lines.append(line("ΔC model vs clinical", lambda r: r["delta_c_model_vs_clinical"]))
    labels = list(rows[0]["presence"])
    lines += ["", "## P(yes) AUC per finding (held-out studies; – where a seed's test studies lack a class)", "",
              "| finding | " + " | ".join(languages) + " |", "|---|" + "---|" * len(languages)]
    for label in labels:
        lines.append(line(label, lambda r, x=label: r["presence"][x]["auc"]))
    md.write_text("\n".join(lines) + "\n\n## Notes" + notes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[5051, 6061, 7071])
    parser.add_argument("--languages", nargs="+", default=list(LANGUAGES), choices=LANGUAGES)
    parser.add_argument("--n-pretrain", type=int, default=400)
    parser.add_argument("--n-survival", type=int, default=600)
    parser.add_argument("--work", type=Path, default=Path("/work/runs/lm-compare"))
    args = parser.parse_args()
    log = HERE / "lm_compare.jsonl"
    for seed in args.seeds:
        for language in args.languages:
            row = run(language, seed, args.n_pretrain, args.n_survival, args.work)
            rows = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
            same = [r for r in rows if (r["language"], r["seed"], r["n_pretrain"], r["n_survival"])
                    == (language, seed, args.n_pretrain, args.n_survival)]
            if same:  # a rerun over a kept folder measured no wall time: keep the first run's
                row["demo_seconds"] = row["demo_seconds"] or same[0]["demo_seconds"]
            rows = [r for r in rows if r not in same] + [row]
            log.write_text("".join(json.dumps(r) + "\n" for r in rows))
            print(json.dumps({k: row[k] for k in ("language", "seed", "demo_seconds", "presence_macro")}))
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    write_markdown([r for r in rows if (r["n_pretrain"], r["n_survival"]) == (args.n_pretrain, args.n_survival)])


if __name__ == "__main__":
    main()

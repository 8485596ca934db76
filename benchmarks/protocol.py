"""The claim under the fixed protocol: the demo's flow on fresh seeds, the ablation ladder, the survival
targets, and the null canary, with the spread over pretraining seeds.

    python benchmarks/protocol.py [--work /tmp/ctsurv-protocol] [--seeds 2027 3037 4047] [--shuffles 10]
                                  [--only pretrain]

Per seed S (none of them ever used to choose a setting; seed 0, the demo's default, and the unseen-seed
cohort 1000 of ``pretrain.md`` are the development sets), exactly the demo's steps with configs/demo.yaml:

1. ``simulate`` a 400-patient pretraining cohort (seed S + 1) and a 600-patient survival cohort (seed S,
   image signal 1.0, clinical signal 0.3);
2. ``pretrain`` (stages 0-2; ``instruct/eval.json`` scores the test split only);
3. ``survival``: the ladder in 5-fold CV, cluster bootstrap over patients (1000 resamples);
4. the survival targets on the same scans with outcomes redrawn (``resample_outcomes``): weak clinical /
   strong image (image 1.0, clinical 0.0) and strong clinical / weak image (image 0.3, clinical 1.0);
5. the null canary: ``--shuffles`` permutations of (time, event) across patients, each cross-validated
   like the main run (the ladder's methods); the false-positive rate of each paired test (every rung
   against ``clinical_cox`` and against the rung below) at alpha = 0.05 over all seeds' shuffles (target
   <= 0.08).

Every step is skipped when its output exists, so an interrupted run continues (``--only pretrain`` stops
after step 2). Writes benchmarks/protocol.md and benchmarks/protocol.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ctsurv.config import load_config
from ctsurv.evaluation.formatting import fmt_p
from ctsurv.evaluation.metrics import corrected_fold_t_test, harrell_c
from ctsurv.evaluation.report import results_markdown
from ctsurv.io.cohort import load_cohort
from ctsurv.synthetic.simulate import resample_outcomes, simulate
from ctsurv.training.pretrain import pretrain
from ctsurv.training.survival_run import evaluate, prepare

HERE = Path(__file__).parent
TARGETS = {  # name: (image signal, clinical signal)
    "weak clinical, strong image": (1.0, 0.0),
    "strong clinical, weak image": (0.3, 1.0),
}
NULL_METHODS = ("clinical_cox", "encoder_no_instruction", "findings_classifier", "model_align", "model")  # the ladder
ALPHA = 0.05


def shuffled_cohort(cohort_dir: Path, dest: Path, seed: int) -> Path:
    """A copy of ``cohort_dir``'s table with (time, event) permuted jointly across patients (volumes by
    absolute path; no truth.csv, so no oracle)."""
    table = pd.read_csv(cohort_dir / "cohort.csv", dtype=str, keep_default_na=False)
    order = np.random.default_rng(seed).permutation(len(table))
    table[["time", "event"]] = table[["time", "event"]].to_numpy()[order]
    table["volume"] = [str((cohort_dir / v).resolve()) for v in table["volume"]]
    dest.mkdir(parents=True, exist_ok=True)
    table.to_csv(dest / "cohort.csv", index=False)
    return dest / "cohort.csv"


def with_fold_tests(results: dict, folder: Path) -> dict:
    """``results`` with the fold t-tests (``p_vs_clinical_cv``, ``p_vs_previous_cv``) filled in from ``oof.csv``
    where a run from before those fields lacks them: the same per-fold Harrell's C differences, repeat 0."""
    oof = pd.read_csv(folder / "oof.csv")
    oof = oof[oof["repeat"] == 0]
    folds = [oof[oof["fold"] == f] for f in sorted(oof["fold"].unique())]
    n_test = float(np.mean([len(f) for f in folds]))

    def test(a: str, b: str | None) -> float | None:
        if b is None:
            return None
        diffs = [harrell_c(f["time"], f["event"], f[f"risk_{a}"]) - harrell_c(f["time"], f["event"], f[f"risk_{b}"])
                 for f in folds]
        return 1.0 if a == b else corrected_fold_t_test(diffs, n_test / (len(oof) - n_test))

    for name, m in results["methods"].items():
        if "p_vs_clinical_cv" not in m:
            m["p_vs_clinical_cv"], m["p_vs_previous_cv"] = test(name, "clinical_cox"), test(name, m.get("previous_rung"))
    return results


def run_seed(seed: int, work: Path, shuffles: int, only_pretrain: bool) -> dict | None:
    """Every step of one seed (those whose output exists are skipped); the seconds of the steps that ran are
    kept in ``seed{S}/seconds.json``, so that a rerun reports what each step took when it ran."""
    cfg = load_config(HERE.parent / "configs" / "demo.yaml")
    root = work / f"seed{seed}"
    root.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = json.loads((root / "seconds.json").read_text()) if (root / "seconds.json").is_file() else {}

    def timed(step: str, fn: Callable[[], object]) -> object:
        t0 = time.perf_counter()
        value = fn()
        seconds[step] = round(seconds.get(step, 0.0) + time.perf_counter() - t0, 1)
        (root / "seconds.json").write_text(json.dumps(seconds))
        return value

    if not (root / "pretrain_cohort" / "cohort.csv").is_file():
        timed("simulate", lambda: simulate(root / "pretrain_cohort", n=400, seed=seed + 1, progress=False))
    if not (root / "cohort" / "cohort.csv").is_file():
        timed("simulate", lambda: simulate(root / "cohort", n=600, seed=seed, image_signal=1.0, clinical_signal=0.3,
                                           progress=False))
    if not (root / "pretrain" / "instruct" / "eval.json").is_file():
        timed("pretrain", lambda: pretrain(cfg, root / "pretrain_cohort" / "cohort.csv", root / "pretrain",
                                           resume=(root / "pretrain").exists(), progress=False))
    if only_pretrain:
        return None
    pre_eval = json.loads((root / "pretrain" / "instruct" / "eval.json").read_text())
    prepared: dict = {}  # the survival cohort's image features, computed when a step first needs them

    def results_of(step: str, folder: Path, cohort_csv: Path, only: tuple[str, ...] | None = None) -> dict:
        if not (folder / "results.json").is_file():
            if not prepared:
                prepared["cfg"], _, prepared["features"] = timed("features", lambda: prepare(
                    cfg, root / "cohort" / "cohort.csv", root / "pretrain", None, progress=False))
            data = load_cohort(cohort_csv, prepared["cfg"].data, require_outcomes=True)
            timed(step, lambda: evaluate(prepared["cfg"], data, prepared["features"], folder, progress=False,
                                         final_model=False, only=only))
        return with_fold_tests(json.loads((folder / "results.json").read_text()), folder)

    main = results_of("survival", root / "survival", root / "cohort" / "cohort.csv")
    targets = {}
    for name, (image, clinical) in TARGETS.items():
        folder = root / f"target_image{image:g}_clinical{clinical:g}"
        if not (folder / "cohort" / "cohort.csv").is_file():
            resample_outcomes(root / "cohort", image, clinical, seed, out_dir=folder / "cohort")
        targets[name] = results_of("targets", folder / "survival", folder / "cohort" / "cohort.csv")
    null = []
    for k in range(shuffles):
        folder = root / f"null{k}"
        csv = folder / "cohort" / "cohort.csv"
        if not csv.is_file():
            shuffled_cohort(root / "cohort", folder / "cohort", seed=10_000 * seed + k)
        r = results_of("null", folder / "survival", csv, only=NULL_METHODS)["methods"]
        keys = ("harrell_c", "delta_c_vs_clinical", "p_vs_clinical", "p_vs_previous", "p_vs_clinical_cv", "p_vs_previous_cv")
        null.append({name: {key: m[key] for key in keys} for name, m in r.items()})
    stages = {stage: json.loads((root / "pretrain" / stage / "metrics.json").read_text()).get("seconds")
              for stage in ("vision", "align", "instruct") if (root / "pretrain" / stage / "metrics.json").is_file()}
    return {"seed": seed, "pretrain_eval": pre_eval, "main": main, "targets": targets, "null": null,
            "seconds": seconds | {f"pretrain stage {k}": v for k, v in stages.items()}}


def _mean_sd(values: list[float | None]) -> str:
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return "–"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def _signed_mean_sd(values: list[float | None]) -> str:
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return "–"
    return f"{v.mean():+.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:+.3f}"


def _p_pairs(rows: list[dict], results: list[dict], key: str) -> str:
    """Per seed, "bootstrap p; fold t-test p" of ``key`` (and ``key``_cv)."""
    return ", ".join(f"{fmt_p(row.get(key), floor=res['cohort']['bootstrap']['p_floor'])}; {fmt_p(row.get(key + '_cv'))}"
                     for row, res in zip(rows, results))


def ladder_table(runs: list[dict], key: str) -> list[str]:
    """Mean ± SD over seeds of each method's C and its step over the rung below, from ``run[key]`` results."""
    results = [r[key] if key == "main" else r["targets"][key] for r in runs]
    ladder = results[0].get("ladder") or []
    names = [*ladder, *[m for m in results[0]["methods"] if m not in ladder]]
    lines = [("| method | C (mean ± SD over seeds) | per seed | ΔC vs rung below | p per seed (bootstrap; fold t-test) "
              "| ΔC vs clinical | p per seed (bootstrap; fold t-test) |"),
             "|---|---|---|---|---|---|---|"]
    for name in names:
        rows = [res["methods"].get(name, {}) for res in results]
        cs = [row.get("harrell_c") for row in rows]
        lines.append(
            f"| `{name}` | {_mean_sd(cs)} | {', '.join('–' if c is None else f'{c:.3f}' for c in cs)} | "
            f"{_signed_mean_sd([row.get('delta_c_vs_previous') for row in rows])} | "
            f"{_p_pairs(rows, results, 'p_vs_previous')} | "
            f"{_signed_mean_sd([row.get('delta_c_vs_clinical') for row in rows])} | "
            f"{_p_pairs(rows, results, 'p_vs_clinical')} |"
        )
    return lines


def null_table(null: list[dict], per_seed: int) -> list[str]:
    """Per ladder method under shuffled outcomes: C, and how often each paired test is significant at ALPHA."""

    def rate(name: str, key: str) -> str:
        ps = [n[name][key] for n in null if n[name][key] is not None]
        return f"{sum(p < ALPHA for p in ps)} / {len(ps)} ({sum(p < ALPHA for p in ps) / len(ps):.3f})" if ps else "–"

    lines = [(f"{len(null)} shuffles ({per_seed} per seed), each the whole cross-validation of the ladder. False-positive "
              f"rate of the paired tests at α = {ALPHA} (target ≤ 0.08):"), "",
             ("| method | C (mean ± SD over shuffles) | ΔC vs clinical | bootstrap: vs clinical Cox | bootstrap: vs rung below "
              "| fold t-test: vs clinical Cox | fold t-test: vs rung below |"),
             "|---|---|---|---|---|---|---|"]
    for name in NULL_METHODS:
        cells = [rate(name, key) if name != "clinical_cox" else "–" for key in
                 ("p_vs_clinical", "p_vs_previous", "p_vs_clinical_cv", "p_vs_previous_cv")]
        lines.append(f"| `{name}` | {_mean_sd([n[name]['harrell_c'] for n in null])} | "
                     f"{_signed_mean_sd([n[name]['delta_c_vs_clinical'] for n in null])} | " + " | ".join(cells) + " |")
    lines.append("")
    for label, keys in (("bootstrap", ("p_vs_clinical", "p_vs_previous")), ("fold t-test", ("p_vs_clinical_cv", "p_vs_previous_cv"))):
        tests = [n[name][key] for n in null for name in NULL_METHODS[1:] for key in keys]
        hits = sum(p is not None and p < ALPHA for p in tests)
        lines.append(f"- {label}: all {len(tests)} paired tests together, {hits} significant ({hits / max(len(tests), 1):.3f}).")
    return lines


def write_report(runs: list[dict], args: argparse.Namespace) -> None:
    seeds = " ".join(str(r["seed"]) for r in runs)
    null = [n for r in runs for n in r["null"]]
    lines = [
        "# The claim under the fixed protocol: ladder, survival targets, null canary",
        "",
        f"Reproduce: `python benchmarks/protocol.py --work {args.work} --seeds {seeds} --shuffles {args.shuffles}`.",
        "Seeds never used to choose a setting (seed 0 and the unseen-seed cohort 1000 are development sets); each seed",
        "pretrains its own model (400 studies of seed S + 1) and cross-validates on 600 patients of seed S.",
        "",
        "## Pretraining (test split of the pretraining cohort, yes/no answers against report labels)",
        "",
        "| seed | test studies | macro accuracy | macro F1 | labels in the macro |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        macro = r["pretrain_eval"]["presence"]["macro"]
        lines.append(f"| {r['seed']} | {r['pretrain_eval'].get('n_studies', '–')} | {macro['accuracy']:.3f} | "
                     f"{macro['f1']:.3f} | {len(macro.get('labels_in_macro', []))} |")
    lines += ["", "## Survival, main cohort (image signal 1.0, clinical signal 0.3)", "", *ladder_table(runs, "main"), ""]
    for name in TARGETS:
        lines += [f"## Survival target: {name}", "", *ladder_table(runs, name), ""]
    lines += [
        "## Null canary (outcomes shuffled across patients)",
        "",
        *null_table(null, args.shuffles),
        "",
        "## Time per seed (s)",
        "",
        *[f"- seed {r['seed']}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()) for r in runs],
        "",
        "## Seed " + str(runs[0]["seed"]) + ": the full results table",
        "",
        results_markdown(runs[0]["main"]).replace("# Survival results", "### Results"),
        "",
    ]
    (HERE / "protocol.md").write_text("\n".join(lines))
    (HERE / "protocol.json").write_text(json.dumps(
        [{k: r[k] for k in ("seed", "seconds", "null")} | {"main": r["main"]["methods"],
          "targets": {n: t["methods"] for n, t in r["targets"].items()}} for r in runs], indent=1))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctsurv-protocol"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[2027, 3037, 4047])
    parser.add_argument("--shuffles", type=int, default=10)
    parser.add_argument("--only", choices=["pretrain"], default=None)
    args = parser.parse_args()
    runs = [run_seed(s, args.work, args.shuffles, args.only == "pretrain") for s in args.seeds]
    if args.only is None:
        write_report([r for r in runs if r is not None], args)


if __name__ == "__main__":
    main()

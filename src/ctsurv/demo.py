"""`ctsurv demo`: the whole flow on fresh synthetic data, one command, a report at the end.

    out/pretrain_cohort/  CT + reports for pretraining (its own patients, as open CT-report data would be)
    out/cohort/           the survival cohort: CT + clinical + outcomes (+ truth.csv for the oracle)
    out/pretrain/         stages 0-2 (vision, align, instruct) and their evaluation on the test split
    out/survival/         stage 3: cross-validated comparison against the baselines, figures, final model
    out/sweep/            the same scans and model with outcomes redrawn at other clinical signal strengths
                          (model, clinical Cox and oracle only: what the sweep plot compares)
    out/sweep.png         gain of the model over clinical-only Cox against the clinical signal strength
    out/REPORT.md         what was run, the results table, the sweep, and where everything is
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from rich.console import Console

from ctsurv.config import ExperimentConfig, load_config
from ctsurv.errors import CtsurvError
from ctsurv.evaluation import figures, formatting, report
from ctsurv.io.cohort import load_cohort
from ctsurv.models.language import PACKAGED, packaged_gguf
from ctsurv.synthetic.simulate import check_simulation_args, resample_outcomes, simulate
from ctsurv.training.pretrain import pretrain
from ctsurv.training.survival_run import evaluate, prepare

SWEEP_CLINICAL_SIGNALS = (0.0, 0.3, 0.6, 1.0)  # the main cohort's 0.3 is one of them
SWEEP_METHODS = ("model", "clinical_cox", "oracle")  # what the sweep plots; the other baselines run once


@dataclass(frozen=True)
class DemoSettings:
    n_pretrain: int = 400  # 500 would take the demo past 15 min (estimated from benchmarks/pretrain.md stage times)
    n_survival: int = 600
    image_signal: float = 1.0
    clinical_signal: float = 0.3
    seed: int = 0
    language: str = "tiny"  # a key of LANGUAGE_CONFIGS


LANGUAGE_CONFIGS = {"tiny": "demo.yaml", "smollm2-135m": "smol.yaml"}  # --language -> the config shipped for it


def demo_config(language: str = "tiny") -> ExperimentConfig:
    """The laptop-CPU config shipped with the package for ``language``: configs/demo.yaml (the tiny LM trained
    from scratch) or configs/smol.yaml (SmolLM2-135M-Instruct with LoRA)."""
    return load_config(Path(str(files("ctsurv") / "configs" / LANGUAGE_CONFIGS[language])))


def run_demo(out_dir: str | Path, settings: DemoSettings = DemoSettings(), console: Console | None = None) -> dict:
    console = console or Console()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise CtsurvError(f"{out} already exists and is not empty; choose a new --out folder (or delete it)")
    for option, n in (("--n-pretrain", settings.n_pretrain), ("--n-survival", settings.n_survival)):  # before any writing
        check_simulation_args(n, settings.seed, settings.image_signal, settings.clinical_signal, n_option=option)
    if settings.language not in LANGUAGE_CONFIGS:
        raise CtsurvError(f"--language must be one of {', '.join(LANGUAGE_CONFIGS)}, got {settings.language!r}")
    if settings.language in PACKAGED:
        packaged_gguf(settings.language)  # a missing package is named before anything is written
    cfg = demo_config(settings.language)
    seconds: dict[str, float] = {}

    def step(name: str, t0: float) -> None:
        seconds[name] = round(time.perf_counter() - t0, 1)
        console.print(f"[green]✓[/] {name} ({seconds[name]:.0f} s)")

    t0 = time.perf_counter()
    simulate(out / "pretrain_cohort", n=settings.n_pretrain, seed=settings.seed + 1, progress=True)
    simulate(out / "cohort", n=settings.n_survival, seed=settings.seed, image_signal=settings.image_signal,
             clinical_signal=settings.clinical_signal, progress=True)
    step("simulate", t0)

    t0 = time.perf_counter()
    pre = pretrain(cfg, out / "pretrain_cohort" / "cohort.csv", out / "pretrain", progress=True)
    step("pretrain", t0)

    t0 = time.perf_counter()
    cfg_s, cohort, features = prepare(cfg, out / "cohort" / "cohort.csv", out / "pretrain", None, progress=True)
    main = evaluate(cfg_s, cohort, features, out / "survival", progress=True)
    step("survival", t0)

    t0 = time.perf_counter()
    sweep = []
    for signal in SWEEP_CLINICAL_SIGNALS:
        if signal == settings.clinical_signal:
            results = main.results
        else:
            folder = out / "sweep" / f"clinical_{signal:g}"
            resample_outcomes(out / "cohort", settings.image_signal, signal, settings.seed, out_dir=folder)
            sweep_cohort = load_cohort(folder / "cohort.csv", cfg_s.data, require_outcomes=True)
            results = evaluate(
                cfg_s, sweep_cohort, features, folder, progress=False, final_model=False, only=SWEEP_METHODS
            ).results
        sweep.append(_sweep_point(signal, results))
    figures.signal_sweep_plot(sweep, out / "sweep.png")
    (out / "sweep.json").write_text(json.dumps(sweep, indent=2))
    step("sweep", t0)

    summary = {"seconds": seconds, "pretrain": pre.metrics["presence"]["macro"], "survival": main.results, "sweep": sweep}
    (out / "REPORT.md").write_text(_report(summary, out))
    console.print(report.terminal_table(main.results))
    return summary


def _sweep_point(signal: float, results: dict) -> dict:
    model, oracle = results["methods"]["model"], results["methods"].get("oracle", {})
    return {
        "clinical_signal": signal,
        "delta_c": model["delta_c_vs_clinical"],
        "delta_ci": model["delta_c_ci"],
        "p": model["p_vs_clinical"],
        "model_c": model["harrell_c"],
        "clinical_c": results["methods"]["clinical_cox"]["harrell_c"],
        "oracle_delta_c": oracle.get("delta_c_vs_clinical"),
        "oracle_delta_ci": oracle.get("delta_c_ci"),
    }


def _report(summary: dict, out: Path) -> str:
    s = summary["seconds"]
    lines = [
        "# ctsurv demo",
        "",
        f"Time: {sum(s.values()):.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in s.items())}).",
        "",
        (
            f"Pretraining (the test split's studies, which chose nothing; yes/no answers vs report labels, macro over the "
            f"{len(summary['pretrain']['labels_in_macro'])} findings with positives): macro accuracy "
            f"{_f(summary['pretrain']['accuracy'])}, macro F1 {_f(summary['pretrain']['f1'])} — see pretrain/instruct/eval.md."
        ),
        "",
        "## Survival (5-fold cross-validation, out-of-fold)",
        "",
        report.results_markdown(summary["survival"]),
        "",
        "## Sweep over the clinical signal strength (same scans and model, outcomes redrawn)",
        "",
        "| clinical signal | model C | clinical Cox C | ΔC (95% CI) | p | oracle ΔC |",
        "|---|---|---|---|---|---|",
    ]
    floor = report.p_floor(summary["survival"])
    for p in summary["sweep"]:
        ci = p["delta_ci"] or [None, None]
        lines.append(
            f"| {p['clinical_signal']:g} | {_f(p['model_c'])} | {_f(p['clinical_c'])} | {_f(p['delta_c'], True)} "
            f"({_f(ci[0], True)} to {_f(ci[1], True)}) | {formatting.fmt_p(p['p'], floor=floor)} | {_f(p['oracle_delta_c'], True)} |"
        )
    lines += ["", "Figures: survival/km_risk_groups.png, survival/cindex.png, survival/calibration.png, sweep.png.", ""]
    return "\n".join(lines)


def _f(x: float | None, sign: bool = False) -> str:
    return "–" if x is None else (f"{x:+.3f}" if sign else f"{x:.3f}")

"""The survival run's tables, from plain data: the ``results.json`` dict.

Tables (``write_results``): ``results.json`` (the contract in DESIGN.md, numbers rounded, no NaN),
``results.csv`` (one row per method, machine-readable) and ``results.md`` (what a clinician reads:
C-index with its 95% CI, the per-fold C as mean ± SD, Uno's C, td-AUC, IBS, ΔC over the clinical-only
Cox model and over the rung below on the ablation ladder, each with CI and p, and one sentence saying
which rung carries the gain, ``ladder_sentence``). ``terminal_table`` is the same table as a rich
``Table`` for the closing summary. A p at the bootstrap's floor 2 / (B + 1) prints as "≤ 0.002" when
``results["cohort"]["bootstrap"]["p_floor"]`` gives the floor. Numbers are cleaned and formatted by
``formatting``; the figures are in ``figures``.

Every file is written to a hidden ``.NAME.partial-PID`` in the same folder and moved into place with
``os.replace`` (``write_atomic``, which the figures use too), so a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from ctsurv.evaluation.formatting import (
    DASH,
    as_float,
    ci_bounds,
    clean,
    dumps,
    finite,
    fmt_estimate,
    fmt_mean_sd,
    fmt_num,
    fmt_p,
    fmt_time,
    json_key,
    p_phrase,
)
from ctsurv.outputs import staged_file

REFERENCE = "clinical_cox"  # the method ΔC and p are computed against
ORACLE = "oracle"
LABELS = {  # method key -> (short display name, one-line description for the legend)
    "model": ("Model: CT + clinical", "survival head on the instruction-tuned CT-VLM, fused with clinical data"),
    "model_frozen": ("Model, not fine-tuned", "the frozen model's answers + clinical (stage 3 without fine-tuning)"),
    "model_image_only": ("Model: CT only", "the same survival head without clinical data"),
    "model_risk_query": ("Model: risk query + clinical", "a learned query over the LM's visual-token states instead of the answers"),
    "model_align": ("Aligned model (stage 1) + clinical", "the captioning-only model, read like the model"),
    "findings_classifier": ("Findings classifier + clinical",
                            ("the model's findings classifier (fitted before stage 1 on the pretraining studies): "
                             "P(finding) per finding, no language model")),
    "encoder_no_instruction": ("Encoder w/o instruction tuning",
                               "ablation: the projector's inputs from the frozen encoder, no language model"),
    "encoder_region": ("Encoder, region-aware", ("the pretrained encoder's grid pooled over the whole volume, inside "
                                                 "the mask and in a 10 mm ring around it, same budget + clinical")),
    "encoder_finetuned": ("Encoder, last block fine-tuned", ("the region-aware encoder with its last residual block tuned "
                                                         "for survival on each training fold (early stopping on a fifth of it)")),
    "clinical_cox": ("Clinical Cox", "Cox proportional hazards on the clinical variables; the reference for ΔC"),
    "radiomics_cox": ("Radiomics + clinical Cox", ("Cox on the clinical variables and the masked region's shape and "
                                                   "intensity features; ridge penalty survival.l2, or chosen inside each training fold with survival.nested")),
    "oracle": ("Oracle (true risk)", "the true simulated risk score; synthetic data only, an upper bound"),
}
LEGEND = (
    "C-index: Harrell's concordance of the out-of-fold risk. td-AUC: cumulative/dynamic AUC at time t. "
    "IBS: integrated Brier score (lower is better). ΔC: difference in Harrell's C against the clinical-only "
    "Cox model on the same patients; p: two-sided test of ΔC = 0. C per fold: mean ± SD of Harrell's C within "
    "each test fold. ΔC vs rung below: against the method one rung below on the ablation ladder, on the same "
    "bootstrap resamples. Missing values ({dash}) could not be computed."
)
ALPHA = 0.05  # significance level of the ladder sentence


def label(method: str) -> str:
    return LABELS.get(method, (method, ""))[0]


def p_floor(results: Mapping[str, Any]) -> float | None:
    """The bootstrap's smallest p, ``results["cohort"]["bootstrap"]["p_floor"]``; None when absent."""
    cohort = results.get("cohort") if isinstance(results, Mapping) else None
    boot = cohort.get("bootstrap") if isinstance(cohort, Mapping) else None
    return finite(boot.get("p_floor")) if isinstance(boot, Mapping) else None


# ============================================================================================
# Tables
# ============================================================================================


def methods_of(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    methods = results.get("methods") if isinstance(results, Mapping) else None
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError("results must hold a non-empty 'methods' mapping {name: {harrell_c, ...}} (see DESIGN.md)")
    return {str(k): dict(v or {}) for k, v in methods.items()}


def _td_times(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The td-AUC time keys over all methods, in time order."""
    keys: dict[str, None] = {}
    for m in methods.values():
        for t in (m.get("td_auc") or {}):
            keys[json_key(t)] = None
    try:
        return sorted(keys, key=float)
    except ValueError:
        return list(keys)


def _td_auc(m: Mapping[str, Any], t: str) -> Any:
    return {json_key(k): v for k, v in (m.get("td_auc") or {}).items()}.get(t)


def _shown_times(times: list[str], horizon: Any = None, at_most: int = 4) -> list[str]:
    """At most ``at_most`` td-AUC times for the human tables: evenly spread, the horizon always in."""
    if len(times) <= at_most:
        return times
    idx = set(np.round(np.linspace(0, len(times) - 1, at_most)).astype(int).tolist())
    at_horizon = [i for i, t in enumerate(times) if finite(horizon) is not None and as_float(t) == float(horizon)]
    if at_horizon and at_horizon[0] not in idx:
        idx.remove(min(idx - {0, len(times) - 1}, key=lambda i: abs(i - at_horizon[0])))
        idx.add(at_horizon[0])
    return [times[i] for i in sorted(idx)]


def results_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat, cleaned row per method with the CSV's columns (None where missing)."""
    methods = clean(methods_of(results))
    rows = []
    for name, m in methods.items():
        lo, hi = ci_bounds(m.get("harrell_c_ci"))
        dlo, dhi = ci_bounds(m.get("delta_c_ci"))
        row = {"method": name, "harrell_c": m.get("harrell_c"), "ci_lo": lo, "ci_hi": hi, "uno_c": m.get("uno_c")}
        row |= {f"td_auc@{t}": _td_auc(m, t) for t in _td_times(methods)}
        row |= {"ibs": m.get("ibs"), "delta_c_vs_clinical": m.get("delta_c_vs_clinical"),
                "delta_ci_lo": dlo, "delta_ci_hi": dhi, "p_vs_clinical": m.get("p_vs_clinical")}
        plo, phi = ci_bounds(m.get("delta_c_vs_previous_ci"))
        row |= {"harrell_c_folds_mean": m.get("harrell_c_folds_mean"), "harrell_c_folds_sd": m.get("harrell_c_folds_sd"),
                "previous_rung": m.get("previous_rung"), "delta_c_vs_previous": m.get("delta_c_vs_previous"),
                "delta_prev_ci_lo": plo, "delta_prev_ci_hi": phi, "p_vs_previous": m.get("p_vs_previous"),
                "p_vs_clinical_cv": m.get("p_vs_clinical_cv"), "p_vs_previous_cv": m.get("p_vs_previous_cv")}
        rows.append({k: (v if k in _TEXT_COLUMNS else finite(v)) for k, v in row.items()})
    return rows


_TEXT_COLUMNS = ("method", "previous_rung")


def _bottom_rungs(methods: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Methods that are some method's previous rung but have none themselves."""
    return {m.get("previous_rung") for m in methods.values()} - {k for k, m in methods.items() if m.get("previous_rung")}


def _vs_previous(name: str, m: Mapping[str, Any], bottom: set[str], floor: float | None) -> tuple[str, str]:
    """The ΔC-vs-rung-below cell and its p: "bottom rung" at the bottom, blank off the ladder."""
    if name in bottom:
        return "bottom rung", ""
    if not m.get("previous_rung"):
        return "", ""
    return fmt_estimate(m.get("delta_c_vs_previous"), m.get("delta_c_vs_previous_ci"), sign=True), \
        _p_cell(m, "p_vs_previous", floor)


def _p_cell(m: Mapping[str, Any], key: str, floor: float | None) -> str:
    """The bootstrap p of ``key``, then the fold t-test's (``key``_cv) where results.json has it: "0.004; 0.03"."""
    cv = finite(m.get(f"{key}_cv"))
    return fmt_p(m.get(key), floor) + ("" if cv is None else f"; {fmt_p(cv)}")


def _human_rows(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the readable table (markdown and terminal)."""
    methods = methods_of(results)
    times = _shown_times(_td_times(methods), (results.get("cohort") or {}).get("horizon"))
    header = ["Method", "C-index (95% CI)", "C per fold (mean ± SD)", "Uno's C", *[f"td-AUC at t={t}" for t in times],
              "IBS", "ΔC vs clinical (95% CI)", "p (bootstrap; fold t-test)", "ΔC vs rung below (95% CI)",
              "p (bootstrap; fold t-test)"]
    floor, bottom = p_floor(results), _bottom_rungs(methods)
    rows = []
    for name, m in methods.items():
        delta = fmt_estimate(m.get("delta_c_vs_clinical"), m.get("delta_c_ci"), sign=True)
        if name == REFERENCE and finite(m.get("delta_c_vs_clinical")) in (None, 0.0):
            delta = "reference"
        rows.append([label(name), fmt_estimate(m.get("harrell_c"), m.get("harrell_c_ci")),
                     fmt_mean_sd(m.get("harrell_c_folds_mean"), m.get("harrell_c_folds_sd")), fmt_num(m.get("uno_c")),
                     *[fmt_num(_td_auc(m, t)) for t in times], fmt_num(m.get("ibs")), delta,
                     _p_cell(m, "p_vs_clinical", floor), *_vs_previous(name, m, bottom, floor)])
    return header, rows


def cohort_line(results: Mapping[str, Any]) -> str:
    """ "n = 600 patients, 312 events (52%), horizon t = 3 years" from results["cohort"] (``time_unit`` optional)."""
    cohort = results.get("cohort") or {}
    n, events, horizon = cohort.get("n"), cohort.get("events"), cohort.get("horizon")
    parts = [f"n = {n if n is not None else DASH} patients"]
    if events is not None:
        share = f" ({100 * events / n:.0f}%)" if n else ""
        parts.append(f"{events} events{share}")
    unit = f" {cohort['time_unit']}" if cohort.get("time_unit") and finite(horizon) is not None else ""
    parts.append(f"horizon t = {fmt_time(horizon) if finite(horizon) is not None else DASH}{unit}")
    return ", ".join(parts)


def _steps(results: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(rung below, method, its row) for every method with a previous rung, in ladder order.

    The order is ``results["ladder"]`` (methods not on it after), else the methods' order.
    """
    methods = methods_of(results)
    ladder = results.get("ladder") if isinstance(results.get("ladder"), (list, tuple)) else []
    order = [k for k in ladder if k in methods]
    order += [k for k in methods if k not in order]
    return [(methods[k]["previous_rung"], k, methods[k]) for k in order if methods[k].get("previous_rung") in methods]


def _step_text(below: str, name: str, m: Mapping[str, Any], floor: float | None) -> str:
    """ "b over a (ΔC +0.031, 95% CI +0.010 to +0.052, p ≤ 0.002)"."""
    lo, hi = ci_bounds(m.get("delta_c_vs_previous_ci"))
    ci = f", 95% CI {fmt_num(lo, sign=True)} to {fmt_num(hi, sign=True)}" if lo is not None and hi is not None else ""
    cv = f"; fold t-test {p_phrase(m['p_vs_previous_cv'])}" if finite(m.get("p_vs_previous_cv")) is not None else ""
    return f"{name} over {below} (ΔC {fmt_num(m.get('delta_c_vs_previous'), sign=True)}{ci}, " \
           f"{p_phrase(m.get('p_vs_previous'), floor)}{cv})"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def ladder_sentence(results: Mapping[str, Any]) -> str:
    """One sentence naming the ladder steps that carry the gain; "" when no method has a previous rung.

    A step (a method over the rung below it) carries the gain when ΔC > 0 and p_vs_previous < 0.05 and, where
    results.json has it, the fold t-test's p_vs_previous_cv < 0.05 too (the bootstrap alone runs low).
    When none does, the sentence says so and names the step with the largest ΔC; significant
    losses (p < 0.05, ΔC < 0) are named too. Methods are named by their results.json keys.
    """
    steps = _steps(results)
    if not steps:
        return ""
    floor = p_floor(results)

    def significant(m: Mapping[str, Any], sign: int) -> bool:
        p, d = finite(m.get("p_vs_previous")), finite(m.get("delta_c_vs_previous"))
        p_cv = finite(m.get("p_vs_previous_cv"))
        return p is not None and d is not None and p < ALPHA and sign * d > 0 and (p_cv is None or p_cv < ALPHA)

    gains = [s for s in steps if significant(s[2], 1)]
    losses = [s for s in steps if significant(s[2], -1)]
    chain = " → ".join([steps[0][0], *[name for _, name, _ in steps]])
    text = f"Of the ladder {chain}, "
    if gains:
        verb = "the step that carries the gain is" if len(gains) == 1 else "the steps that carry the gain are"
        text += f"{verb} {_join([_step_text(*s, floor) for s in gains])}"
    else:
        text += f"no step improves significantly on the one below it at α = {ALPHA:g}"
        sized = [s for s in steps if finite(s[2].get("delta_c_vs_previous")) is not None]
        if sized:
            largest = max(sized, key=lambda s: float(s[2]["delta_c_vs_previous"]))
            text += f"; the largest step is {_step_text(*largest, floor)}"
    if losses:
        text += f"; {_join([_step_text(*s, floor) for s in losses])} {'is' if len(losses) == 1 else 'are'} " \
                "significantly lower than the rung below"
    if gains and len(gains) + len(losses) < len(steps):
        text += f"; no other step is significant at α = {ALPHA:g}"
    return text + "."


def _bootstrap_line(results: Mapping[str, Any]) -> str:
    """ "Bootstrap: 1000 resamples of patients; the smallest possible p is 0.002." from results["cohort"]."""
    boot = (results.get("cohort") or {}).get("bootstrap")
    if not isinstance(boot, Mapping) or boot.get("resamples") is None:
        return ""
    unit = f" of {boot['unit']}s" if boot.get("unit") else ""
    floor = p_floor(results)
    return f"Bootstrap: {boot['resamples']} resamples{unit}" + \
        (f"; the smallest possible p is {floor:.2g}." if floor else ".") + \
        (" The bootstrap holds the fitted models fixed, so its p runs low under shuffled outcomes"
         " (benchmarks/protocol.md); the fold t-test (Nadeau and Bengio's corrected resampled t-test of the per-fold"
         " ΔC, results.json's p_*_cv) includes refitting, and a step of the ladder counts as significant only when"
         " both tests agree.")


def results_markdown(results: Mapping[str, Any]) -> str:
    header, rows = _human_rows(results)
    methods = methods_of(results)
    all_times = _td_times(methods)
    lines = ["# Survival results", "", f"Cohort: {cohort_line(results)}.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    sentence = ladder_sentence(results)
    lines += ["", sentence] if sentence else []
    lines += ["", LEGEND.format(dash=DASH)]
    if _bootstrap_line(results):
        lines += ["", _bootstrap_line(results)]
    if len(all_times) > sum(h.startswith("td-AUC") for h in header):
        lines += ["", f"td-AUC at all {len(all_times)} times is in results.csv."]
    lines += ["", "Methods:", ""]
    lines += [f"- `{k}`: {label(k)}" + (f" ({LABELS[k][1]})" if k in LABELS else "")
              + (f"; rung below: `{m['previous_rung']}`" if m.get("previous_rung") else "") for k, m in methods.items()]
    notes = results.get("notes") or {}
    if notes:  # why a rung is absent, folds a metric skipped, what a method's input lacked
        lines += ["", "Notes:", ""] + [f"- `{k}`: {note}" for k, said in notes.items() for note in said]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a hidden temporary file next to ``path``, then move it into place
    (:func:`ctsurv.outputs.staged_file`)."""
    with staged_file(path) as tmp:
        write(tmp)
    return path


def _write_text(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_results(results: dict, out_dir: Path) -> list[Path]:
    """Write ``results.json``, ``results.csv`` and ``results.md`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods_of(results)  # fail before writing anything
    text = dumps(clean(results)) + "\n"
    rows = results_rows(results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    return [_write_text(out_dir / "results.json", text), _write_text(out_dir / "results.csv", buf.getvalue()),
            _write_text(out_dir / "results.md", results_markdown(results))]


def terminal_table(results: dict) -> Table:
    """A compact results table for the terminal (method keys as in results.json; Uno's C, td-AUC and
    IBS are in results.md). The model's row is bold, the oracle's dim."""

    def ci(m: Mapping[str, Any], key: str, ci_key: str, sign: bool = False) -> str:
        v, lo_hi = finite(m.get(key)), m.get(ci_key)
        if v is None:
            return DASH
        text = f"{v:+.3f}" if sign else f"{v:.3f}"
        if lo_hi and all(finite(x) is not None for x in lo_hi):
            text += f" ({lo_hi[0]:.2f}–{lo_hi[1]:.2f})"
        return text

    table = Table(title=f"Survival, out-of-fold: {cohort_line(results)}", title_justify="left",
                  caption=ladder_sentence(results) or None, caption_justify="left")
    for name, justify in (("method", "left"), ("C (95% CI)", "right"), ("C per fold", "right"),
                          ("ΔC vs clinical (95% CI)", "right"), ("p", "right"), ("vs rung below", "left"),
                          ("ΔC vs rung below (95% CI)", "right"), ("p", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    floor, methods = p_floor(results), methods_of(results)
    bottom = _bottom_rungs(methods)
    for name, m in methods.items():
        delta = "reference" if name == REFERENCE else ci(m, "delta_c_vs_clinical", "delta_c_ci", sign=True)
        below = m.get("previous_rung") or ""
        prev = (ci(m, "delta_c_vs_previous", "delta_c_vs_previous_ci", sign=True),
                fmt_p(m.get("p_vs_previous"), floor)) if below else ("bottom rung" if name in bottom else "", "")
        table.add_row(name, ci(m, "harrell_c", "harrell_c_ci"), fmt_mean_sd(m.get("harrell_c_folds_mean"),
                      m.get("harrell_c_folds_sd")), delta, DASH if name == REFERENCE else fmt_p(m.get("p_vs_clinical"), floor),
                      below, *prev, style="bold" if name == "model" else "dim" if name == ORACLE else None)
    return table

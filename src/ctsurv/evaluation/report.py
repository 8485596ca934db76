"""The survival run's tables and figures, from plain data: the ``results.json`` dict and out-of-fold predictions.

Tables (``write_results``): ``results.json`` (the contract in DESIGN.md, numbers rounded, no NaN),
``results.csv`` (one row per method, machine-readable) and ``results.md`` (what a clinician reads:
C-index with its 95% CI, the per-fold C as mean ± SD, Uno's C, td-AUC, IBS, ΔC over the clinical-only
Cox model and over the rung below on the ablation ladder, each with CI and p, and one sentence saying
which rung carries the gain, ``ladder_sentence``). ``terminal_table`` is the same table as a rich
``Table`` for the closing summary. A p at the bootstrap's floor 2 / (B + 1) prints as "≤ 0.002" when
``results["cohort"]["bootstrap"]["p_floor"]`` gives the floor.

Figures (PNG): Kaplan–Meier curves of out-of-fold risk groups with an at-risk table and the log-rank
p-value (``km_by_risk_group``), a forest plot of C-indices (``cindex_forest``), calibration at the
horizon (``calibration_plot``) and the ΔC-vs-clinical-signal sweep (``signal_sweep_plot``).

Survival statistics come from lifelines (Kaplan–Meier, its Greenwood CI, the multivariate log-rank
test, the at-risk table); figures are ``matplotlib.figure.Figure`` objects, never pyplot's global
state. Every file is written to a hidden ``.NAME.tmp`` in the same folder and moved into place with
``os.replace``, so a crash never leaves half a file. Missing values (None, NaN) render as "–" and
are written as ``null`` (JSON) or an empty cell (CSV).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.plotting import add_at_risk_counts
from lifelines.statistics import multivariate_logrank_test
from matplotlib.figure import Figure
from rich.table import Table

DASH = "–"
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
    "clinical_cox": ("Clinical Cox", "Cox proportional hazards on the clinical variables; the reference for ΔC"),
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
OKABE_ITO = ["#0072B2", "#E69F00", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


# ============================================================================================
# Numbers: cleaning for JSON/CSV, formatting for humans
# ============================================================================================


def _finite(x: Any) -> float | None:
    """``x`` as a Python float, or None when it is missing, not a number or not finite."""
    if x is None or isinstance(x, (bool, str)):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _is_p_value(key: str | None) -> bool:
    k = (key or "").lower()
    return k == "p" or k.startswith("p_") or k.endswith("_p") or "pvalue" in k or "p_value" in k


def _key(k: Any) -> str:
    """A JSON object key: strings as given, numbers in their shortest form (365.0 -> "365", 1.5 -> "1.5")."""
    if isinstance(k, str):
        return k
    v = float(k)
    return str(int(v)) if v.is_integer() else repr(v)


def clean(obj: Any, key: str | None = None) -> Any:
    """Plain JSON data from ``obj``: numpy -> Python, non-finite -> None, floats rounded.

    Floats keep 4 decimals; p-values (keys ``p``, ``p_*``, ``*_p``) keep 4 significant digits
    instead, so that p = 2e-6 does not become 0.
    """
    if isinstance(obj, Mapping):
        return {_key(k): clean(v, _key(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray, pd.Series)):
        return [clean(v, key) for v in (obj.tolist() if hasattr(obj, "tolist") else obj)]
    if obj is None or isinstance(obj, (bool, np.bool_, str)):
        return bool(obj) if isinstance(obj, np.bool_) else obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    v = _finite(obj)
    if v is None:
        if isinstance(obj, (float, np.floating)):
            return None
        raise TypeError(f"cannot write {type(obj).__name__} {obj!r} (under key {key!r}) to results.json")
    return float(f"{v:.4g}") if _is_p_value(key) else round(v, 4)


def fmt_num(x: Any, digits: int = 3, sign: bool = False) -> str:
    v = _finite(x)
    if v is None:
        return DASH
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _ceil_text(x: float) -> str:
    """``x`` > 0 rounded up to 3 decimals (to 2 significant digits below 0.001), as text."""

    def digits(v: float) -> int:
        return 3 if v >= 0.001 else 1 - math.floor(round(math.log10(v), 9))

    up = math.ceil(x * 10 ** digits(x) * (1 - 1e-9)) / 10 ** digits(x)
    return f"{up:.{digits(up)}f}"  # 0.0000999 -> 0.00010, not 0.000100


def fmt_p(p: Any, floor: Any = None) -> str:
    """p as journals print it: "<0.001", 3 decimals below 0.01 or near 0.05, else 2 decimals.

    ``floor``: the smallest p the bootstrap can give (``metrics.p_floor(B)``); a p at it prints as
    "≤ 0.002", the floor rounded up to 3 decimals (2 significant digits below 0.001).
    """
    v, f = _finite(p), _finite(floor)
    if v is None:
        return DASH
    if f is not None and f > 0 and v <= f * (1 + 1e-3) + 1e-12:  # 1e-3: results.json keeps 4 digits of p
        return f"≤ {_ceil_text(f)}"
    if v < 0.001:
        return "<0.001"
    if v < 0.01 or 0.045 <= v < 0.055:
        return f"{v:.3f}"
    return ">0.99" if v > 0.99 else f"{v:.2f}"


def p_phrase(p: Any, floor: Any = None) -> str:
    """ "p < 0.001", "p ≤ 0.002" (at ``floor``, as in :func:`fmt_p`) or "p = 0.03" for titles and sentences."""
    text = fmt_p(p, floor)
    if text.startswith("≤"):
        return f"p {text}"
    return f"p {text[0]} {text[1:]}" if text[0] in "<>" else f"p = {text}"


def p_floor(results: Mapping[str, Any]) -> float | None:
    """The bootstrap's smallest p, ``results["cohort"]["bootstrap"]["p_floor"]``; None when absent."""
    cohort = results.get("cohort") if isinstance(results, Mapping) else None
    boot = cohort.get("bootstrap") if isinstance(cohort, Mapping) else None
    return _finite(boot.get("p_floor")) if isinstance(boot, Mapping) else None


def _pair(ci: Any) -> tuple[float | None, float | None]:
    if isinstance(ci, (list, tuple, np.ndarray)) and len(ci) == 2:
        return _finite(ci[0]), _finite(ci[1])
    return None, None


def fmt_estimate(x: Any, ci: Any, sign: bool = False) -> str:
    """ "0.712 (0.684–0.741)", or for differences "+0.045 (-0.003 to +0.081)"; "–" when x is missing."""
    lo, hi = _pair(ci)
    if _finite(x) is None:
        return DASH
    if lo is None or hi is None:
        return fmt_num(x, sign=sign)
    sep = " to " if sign else "–"
    return f"{fmt_num(x, sign=sign)} ({fmt_num(lo, sign=sign)}{sep}{fmt_num(hi, sign=sign)})"


def fmt_time(t: Any) -> str:
    v = float(t)
    return str(int(v)) if v.is_integer() else f"{v:g}"


def label(method: str) -> str:
    return LABELS.get(method, (method, ""))[0]


def fmt_mean_sd(mean: Any, sd: Any) -> str:
    """ "0.712 ± 0.031"; the mean alone without an SD; "–" without a mean."""
    if _finite(mean) is None:
        return DASH
    return fmt_num(mean) + (f" ± {fmt_num(sd)}" if _finite(sd) is not None else "")


# ============================================================================================
# Tables
# ============================================================================================


def _methods(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    methods = results.get("methods") if isinstance(results, Mapping) else None
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError("results must hold a non-empty 'methods' mapping {name: {harrell_c, ...}} (see DESIGN.md)")
    return {str(k): dict(v or {}) for k, v in methods.items()}


def _td_times(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The td-AUC time keys over all methods, in time order."""
    keys: dict[str, None] = {}
    for m in methods.values():
        for t in (m.get("td_auc") or {}):
            keys[_key(t)] = None
    try:
        return sorted(keys, key=float)
    except ValueError:
        return list(keys)


def _td_auc(m: Mapping[str, Any], t: str) -> Any:
    return {_key(k): v for k, v in (m.get("td_auc") or {}).items()}.get(t)


def _shown_times(times: list[str], horizon: Any = None, at_most: int = 4) -> list[str]:
    """At most ``at_most`` td-AUC times for the human tables: evenly spread, the horizon always in."""
    if len(times) <= at_most:
        return times
    idx = set(np.round(np.linspace(0, len(times) - 1, at_most)).astype(int).tolist())
    at_horizon = [i for i, t in enumerate(times) if _finite(horizon) is not None and _as_float(t) == float(horizon)]
    if at_horizon and at_horizon[0] not in idx:
        idx.remove(min(idx - {0, len(times) - 1}, key=lambda i: abs(i - at_horizon[0])))
        idx.add(at_horizon[0])
    return [times[i] for i in sorted(idx)]


def results_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat, cleaned row per method with the CSV's columns (None where missing)."""
    methods = clean(_methods(results))
    rows = []
    for name, m in methods.items():
        lo, hi = _pair(m.get("harrell_c_ci"))
        dlo, dhi = _pair(m.get("delta_c_ci"))
        row = {"method": name, "harrell_c": m.get("harrell_c"), "ci_lo": lo, "ci_hi": hi, "uno_c": m.get("uno_c")}
        row |= {f"td_auc@{t}": _td_auc(m, t) for t in _td_times(methods)}
        row |= {"ibs": m.get("ibs"), "delta_c_vs_clinical": m.get("delta_c_vs_clinical"),
                "delta_ci_lo": dlo, "delta_ci_hi": dhi, "p_vs_clinical": m.get("p_vs_clinical")}
        plo, phi = _pair(m.get("delta_c_vs_previous_ci"))
        row |= {"harrell_c_folds_mean": m.get("harrell_c_folds_mean"), "harrell_c_folds_sd": m.get("harrell_c_folds_sd"),
                "previous_rung": m.get("previous_rung"), "delta_c_vs_previous": m.get("delta_c_vs_previous"),
                "delta_prev_ci_lo": plo, "delta_prev_ci_hi": phi, "p_vs_previous": m.get("p_vs_previous"),
                "p_vs_clinical_cv": m.get("p_vs_clinical_cv"), "p_vs_previous_cv": m.get("p_vs_previous_cv")}
        rows.append({k: (v if k in _TEXT_COLUMNS else _finite(v)) for k, v in row.items()})
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
    cv = _finite(m.get(f"{key}_cv"))
    return fmt_p(m.get(key), floor) + ("" if cv is None else f"; {fmt_p(cv)}")


def _human_rows(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the readable table (markdown and terminal)."""
    methods = _methods(results)
    times = _shown_times(_td_times(methods), (results.get("cohort") or {}).get("horizon"))
    header = ["Method", "C-index (95% CI)", "C per fold (mean ± SD)", "Uno's C", *[f"td-AUC at t={t}" for t in times],
              "IBS", "ΔC vs clinical (95% CI)", "p (bootstrap; fold t-test)", "ΔC vs rung below (95% CI)",
              "p (bootstrap; fold t-test)"]
    floor, bottom = p_floor(results), _bottom_rungs(methods)
    rows = []
    for name, m in methods.items():
        delta = fmt_estimate(m.get("delta_c_vs_clinical"), m.get("delta_c_ci"), sign=True)
        if name == REFERENCE and _finite(m.get("delta_c_vs_clinical")) in (None, 0.0):
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
    unit = f" {cohort['time_unit']}" if cohort.get("time_unit") and _finite(horizon) is not None else ""
    parts.append(f"horizon t = {fmt_time(horizon) if _finite(horizon) is not None else DASH}{unit}")
    return ", ".join(parts)


def _steps(results: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(rung below, method, its row) for every method with a previous rung, in ladder order.

    The order is ``results["ladder"]`` (methods not on it after), else the methods' order.
    """
    methods = _methods(results)
    ladder = results.get("ladder") if isinstance(results.get("ladder"), (list, tuple)) else []
    order = [k for k in ladder if k in methods]
    order += [k for k in methods if k not in order]
    return [(methods[k]["previous_rung"], k, methods[k]) for k in order if methods[k].get("previous_rung") in methods]


def _step_text(below: str, name: str, m: Mapping[str, Any], floor: float | None) -> str:
    """ "b over a (ΔC +0.031, 95% CI +0.010 to +0.052, p ≤ 0.002)"."""
    lo, hi = _pair(m.get("delta_c_vs_previous_ci"))
    ci = f", 95% CI {fmt_num(lo, sign=True)} to {fmt_num(hi, sign=True)}" if lo is not None and hi is not None else ""
    cv = f"; fold t-test {p_phrase(m['p_vs_previous_cv'])}" if _finite(m.get("p_vs_previous_cv")) is not None else ""
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
        p, d = _finite(m.get("p_vs_previous")), _finite(m.get("delta_c_vs_previous"))
        p_cv = _finite(m.get("p_vs_previous_cv"))
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
        sized = [s for s in steps if _finite(s[2].get("delta_c_vs_previous")) is not None]
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
    methods = _methods(results)
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
    return "\n".join(lines) + "\n"


def dumps(data: Any, indent: int = 2, level: int = 0) -> str:
    """Pretty JSON with lists of plain values on one line (``times`` stays readable); no NaN allowed."""
    pad, inner = " " * indent * level, " " * indent * (level + 1)
    if isinstance(data, dict) and data:
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {dumps(v, indent, level + 1)}" for k, v in data.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        return "[\n" + ",\n".join(f"{inner}{dumps(v, indent, level + 1)}" for v in data) + f"\n{pad}]"
    return json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(", ", ": "))


def _write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a hidden temporary file next to ``path``, then move it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_text(path: Path, text: str) -> Path:
    return _write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_results(results: dict, out_dir: Path) -> list[Path]:
    """Write ``results.json``, ``results.csv`` and ``results.md`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _methods(results)  # fail before writing anything
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
        v, lo_hi = _finite(m.get(key)), m.get(ci_key)
        if v is None:
            return DASH
        text = f"{v:+.3f}" if sign else f"{v:.3f}"
        if lo_hi and all(_finite(x) is not None for x in lo_hi):
            text += f" ({lo_hi[0]:.2f}–{lo_hi[1]:.2f})"
        return text

    table = Table(title=f"Survival, out-of-fold: {cohort_line(results)}", title_justify="left",
                  caption=ladder_sentence(results) or None, caption_justify="left")
    for name, justify in (("method", "left"), ("C (95% CI)", "right"), ("C per fold", "right"),
                          ("ΔC vs clinical (95% CI)", "right"), ("p", "right"), ("vs rung below", "left"),
                          ("ΔC vs rung below (95% CI)", "right"), ("p", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    floor, methods = p_floor(results), _methods(results)
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


# ============================================================================================
# Figures
# ============================================================================================


def _save(fig: Figure, png: Path) -> Path:
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    return _write_atomic(png, lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight"))


def _check_oof(oof: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in oof.columns]
    if missing:
        raise ValueError(f"out-of-fold predictions lack column(s) {missing}; they have {list(oof.columns)}")
    df = oof[list(columns)].astype(float)
    if df.isna().any().any() or not np.isfinite(df.to_numpy()).all():
        raise ValueError(f"out-of-fold predictions hold missing or infinite values in {list(columns)}")
    if (df["time"] < 0).any() or not df["event"].isin([0, 1]).all():
        raise ValueError("out-of-fold predictions need time >= 0 and event in {0, 1}")
    return df


def risk_groups(risk: pd.Series | np.ndarray, groups: int) -> np.ndarray:
    """Equal-sized risk groups 0 (lowest risk) .. groups-1 (highest); ties split by order of appearance."""
    ranks = pd.Series(np.asarray(risk, dtype=float)).rank(method="first")
    return pd.qcut(ranks, groups, labels=False).to_numpy(dtype=int)


def _group_names(groups: int) -> list[str]:
    """Short names, lowest risk first (they also label the at-risk table's rows)."""
    return {2: ["Low", "High"], 3: ["Low", "Mid", "High"]}.get(groups, [f"Q{i + 1}" for i in range(groups)])


def _group_colors(groups: int) -> list[Any]:
    """Colour-blind-safe colours from blue (low risk) to vermillion (high risk)."""
    if groups <= 5:
        return [["#0072B2", "#56B4E9", "#009E73", "#E69F00", "#D55E00"][i] for i in
                {2: [0, 4], 3: [0, 3, 4], 4: [0, 1, 3, 4], 5: [0, 1, 2, 3, 4]}[groups]]
    from matplotlib import colormaps

    return [colormaps["plasma"](x) for x in np.linspace(0.0, 0.85, groups)]


def km_by_risk_group(oof: pd.DataFrame, png: Path, groups: int = 3, *, time_label: str = "Time") -> dict:
    """Kaplan–Meier curves of out-of-fold risk groups (tertiles by default) with at-risk counts.

    Returns ``{"logrank_p": p, "group_sizes": [n_low, ..., n_high]}``; p is lifelines'
    multivariate log-rank test across the groups.
    """
    df = _check_oof(oof, ["time", "event", "risk"])
    if groups < 2 or len(df) < 2 * groups:
        raise ValueError(f"need groups >= 2 and at least 2 patients per group; got groups={groups}, n={len(df)}")
    group = risk_groups(df["risk"], groups)
    test = multivariate_logrank_test(df["time"], group, df["event"])
    names, colors = _group_names(groups), _group_colors(groups)

    fig = Figure(figsize=(7.5, 5.2 + 0.22 * groups))
    ax = fig.add_subplot()
    fitters = []
    for g, (name, color) in enumerate(zip(names, colors, strict=True)):
        sel = group == g
        kmf = KaplanMeierFitter(label=name).fit(df["time"][sel], df["event"][sel])
        extreme = " (lowest)" if g == 0 else " (highest)" if g == groups - 1 else ""
        legend = f"{name} (n={sel.sum()})" if groups <= 3 else f"{name}{extreme} (n={sel.sum()})"
        kmf.plot_survival_function(ax=ax, color=color, ci_show=groups <= 3, ci_alpha=0.12, show_censors=True,
                                   censor_styles={"ms": 4, "marker": "|"}, label=legend)
        fitters.append(kmf)
    ax.set_xlim(0, float(df["time"].max()) * 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(time_label)
    ax.set_ylabel("Survival probability")
    ax.grid(alpha=0.25)
    ax.legend(loc="upper right", frameon=False, title="Out-of-fold risk", alignment="left")
    kind = {2: "halves", 3: "tertiles", 4: "quartiles", 5: "quintiles"}.get(groups, f"{groups} groups")
    ax.set_title(f"Kaplan–Meier by out-of-fold risk {kind}\nlog-rank {p_phrase(test.p_value)}", fontsize=11)
    add_at_risk_counts(*fitters, ax=ax, fig=fig, rows_to_show=["At risk"], ypos=-0.55, fontsize=9)
    _save(fig, png)
    return {"logrank_p": float(test.p_value), "group_sizes": [int((group == g).sum()) for g in range(groups)]}


def cindex_forest(results: dict, png: Path) -> Path:
    """Forest plot of Harrell's C per method with 95% CI; 0.5 dashed, the clinical Cox C dotted, oracle last and grey."""
    methods = _methods(results)
    order = [k for k in methods if k != ORACLE] + ([ORACLE] if ORACLE in methods else [])
    n = len(order)
    fig = Figure(figsize=(8.5, 1.3 + 0.5 * n))
    ax = fig.add_subplot()
    ys = np.arange(n)[::-1]  # first method on top
    for y, name in zip(ys, order, strict=True):
        m = methods[name]
        c, (lo, hi) = _finite(m.get("harrell_c")), _pair(m.get("harrell_c_ci"))
        oracle = name == ORACLE
        color = "0.5" if oracle else OKABE_ITO[0] if name == "model" else "0.15"
        if c is not None:
            xerr = None if lo is None or hi is None else [[c - lo], [hi - c]]
            ax.errorbar(c, y, xerr=xerr, fmt="D" if oracle else "s", color=color, ms=7, capsize=4, lw=1.6)
        ax.text(1.02, y, fmt_estimate(c, m.get("harrell_c_ci")), transform=ax.get_yaxis_transform(),
                va="center", fontsize=9, color=color)
    ax.axvline(0.5, ls="--", color="0.4", lw=1, label="Chance (C = 0.5)")
    ref = _finite(methods.get(REFERENCE, {}).get("harrell_c"))
    if ref is not None:
        ax.axvline(ref, ls=":", color=OKABE_ITO[1], lw=1.2, label=f"{label(REFERENCE)} (C = {ref:.3f})")
    if ORACLE in methods:
        ax.plot([], [], "D", color="0.5", label="* Oracle: the true simulated risk (synthetic data only), an upper bound")
        if n > 1:
            ax.axhline(0.5, color="0.8", lw=0.8)
    ax.set_yticks(ys, [label(k) + (" *" if k == ORACLE else "") for k in order])
    ax.text(1.02, 1.0, "C (95% CI)", transform=ax.transAxes, va="bottom", fontsize=9, weight="bold")
    values = [v for k in order for v in (_finite(methods[k].get("harrell_c")), *_pair(methods[k].get("harrell_c_ci")))
              if v is not None]
    ax.set_xlim(min([0.45, *values]) - 0.02, min(1.0, max([0.55, *values]) + 0.03))
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("Harrell's C-index (out-of-fold)")
    ax.grid(axis="x", alpha=0.25)
    ax.set_title(f"Discrimination by method ({cohort_line(results)})", fontsize=10, loc="left")
    below = 0.6 / (0.77 * fig.get_figheight())  # legend 0.6 inch under the axes, whatever the number of rows
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -below), frameon=False, fontsize=8, ncol=2)
    return _save(fig, png)


def _km_at(kmf: KaplanMeierFitter, t: float) -> tuple[float, float, float]:
    """KM survival and its 95% CI (lifelines' exponential Greenwood) at time t (right-continuous step)."""
    i = int(np.searchsorted(kmf.timeline, t, side="right")) - 1
    s = float(kmf.survival_function_.iloc[i, 0])
    lo, hi = (float(v) for v in kmf.confidence_interval_survival_function_.iloc[i])
    return s, lo, hi


def calibration_plot(oof: pd.DataFrame, horizon: float, png: Path, bins: int = 5) -> dict:
    """Predicted vs observed (Kaplan–Meier) survival at ``horizon`` in risk quantile bins.

    ``oof`` needs ``surv_at_horizon`` (the model's predicted S(horizon)). A bin whose follow-up ends
    censored before the horizon has no observed value (None) and no point. Returns
    ``{"horizon": t, "bins": [{"bin", "n", "predicted", "observed", "observed_lo", "observed_hi"}, ...]}``
    with bin 1 the lowest risk.
    """
    df = _check_oof(oof, ["time", "event", "risk", "surv_at_horizon"])
    horizon = float(horizon)
    group = risk_groups(df["risk"], bins)
    rows = []
    for g in range(bins):
        d = df[group == g]
        kmf = KaplanMeierFitter().fit(d["time"], d["event"])
        last_censored = d["time"].max() < horizon and d.loc[d["time"] == d["time"].max(), "event"].min() == 0
        s, lo, hi = (None, None, None) if last_censored else _km_at(kmf, horizon)
        rows.append({"bin": g + 1, "n": len(d), "predicted": float(d["surv_at_horizon"].mean()),
                     "observed": s, "observed_lo": lo, "observed_hi": hi})

    fig = Figure(figsize=(5.6, 5.6))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="Perfect calibration")
    shown = [r for r in rows if r["observed"] is not None]
    if shown:
        x = np.array([r["predicted"] for r in shown])
        y = np.array([r["observed"] for r in shown])
        err = np.array([[r["observed"] - r["observed_lo"], r["observed_hi"] - r["observed"]] for r in shown]).T
        ax.errorbar(x, y, yerr=err, fmt="o-", color=OKABE_ITO[0], ms=6, capsize=4, lw=1.2,
                    label="Kaplan–Meier in risk bin (95% CI)")
        for r in shown:
            ax.annotate(f"{'Q' if bins == 5 else 'B'}{r['bin']}", (r["predicted"], r["observed"]),
                        xytext=(6, -10), textcoords="offset points", fontsize=8, color="0.3")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel(f"Predicted survival at t = {fmt_time(horizon)}")
    ax.set_ylabel(f"Observed survival at t = {fmt_time(horizon)}")
    ax.grid(alpha=0.25)
    ax.legend(loc="upper left", frameon=False, fontsize=9)
    kind = "quintile" if bins == 5 else f"1/{bins}"
    ax.set_title(f"Calibration at t = {fmt_time(horizon)} by risk {kind} (n = {len(df)})", fontsize=10)
    _save(fig, png)
    return {"horizon": horizon, "bins": rows}


def signal_sweep_plot(sweep: list[dict], png: Path) -> Path:
    """ΔC of the model over clinical-only Cox (with CI) against the simulated clinical signal strength.

    Each entry: ``{"clinical_signal": s, "delta_c": d, "delta_ci": [lo, hi], "oracle_delta_c": od}``
    (``delta_ci``, ``oracle_delta_c`` and ``oracle_delta_ci`` optional, None allowed).
    """
    if not sweep:
        raise ValueError("signal_sweep_plot needs at least one sweep entry")
    pts = sorted(sweep, key=lambda e: float(e["clinical_signal"]))
    s = np.array([float(e["clinical_signal"]) for e in pts])
    fig = Figure(figsize=(7, 4.6))
    ax = fig.add_subplot()
    ax.axhline(0, color="0.3", lw=1)
    series = [("delta_c", "delta_ci", "Model (CT + clinical) − clinical Cox", OKABE_ITO[0], "o", "-")]
    if any(_finite(e.get("oracle_delta_c")) is not None for e in pts):
        series.append(("oracle_delta_c", "oracle_delta_ci", "Oracle − clinical Cox", "0.5", "D", "--"))
    for key, ci_key, name, color, marker, ls in series:
        y = np.array([_finite(e.get(key)) if _finite(e.get(key)) is not None else np.nan for e in pts])
        cis = [_pair(e.get(ci_key)) for e in pts]
        lo = np.array([y[i] - c[0] if c[0] is not None else 0.0 for i, c in enumerate(cis)])
        hi = np.array([c[1] - y[i] if c[1] is not None else 0.0 for i, c in enumerate(cis)])
        ok = np.isfinite(y)
        ax.errorbar(s[ok], y[ok], yerr=[lo[ok], hi[ok]], fmt=marker, ls=ls, color=color, ms=6, capsize=4,
                    lw=1.4, label=name)
    ax.set_xlabel("Clinical signal strength in the simulation")
    ax.set_ylabel("ΔC-index vs clinical-only Cox (95% CI)")
    ax.set_title("Gain of the CT model over clinical data, as clinical signal grows", fontsize=11)
    ax.grid(alpha=0.25)
    ax.legend(frameon=False, fontsize=9)
    return _save(fig, png)

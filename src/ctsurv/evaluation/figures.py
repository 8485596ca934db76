"""The survival run's figures (PNG), from plain data: the ``results.json`` dict and out-of-fold predictions.

Kaplan–Meier curves of out-of-fold risk groups with an at-risk table and the log-rank p-value
(``km_by_risk_group``), a forest plot of C-indices (``cindex_forest``), calibration at the horizon
(``calibration_plot``), the ΔC-vs-clinical-signal sweep (``signal_sweep_plot``), and one patient's predicted
curve (``patient_curve``, for `ctsurv predict` and `ctsurv serve`).

Survival statistics come from lifelines (Kaplan–Meier, its Greenwood CI, the multivariate log-rank
test, the at-risk table); figures are ``matplotlib.figure.Figure`` objects, never pyplot's global
state. Every PNG is written to a hidden ``.NAME.tmp`` in the same folder and moved into place with
``os.replace``, so a crash never leaves half a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.plotting import add_at_risk_counts
from lifelines.statistics import multivariate_logrank_test
from matplotlib.figure import Figure

from ctsurv.evaluation.formatting import ci_bounds, finite, fmt_estimate, fmt_time, p_phrase
from ctsurv.evaluation.report import ORACLE, REFERENCE, cohort_line, label, methods_of, write_atomic

OKABE_ITO = ["#0072B2", "#E69F00", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def _save(fig: Figure, png: Path) -> Path:
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(png, lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight"))


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
    methods = methods_of(results)
    order = [k for k in methods if k != ORACLE] + ([ORACLE] if ORACLE in methods else [])
    n = len(order)
    fig = Figure(figsize=(8.5, 1.3 + 0.5 * n))
    ax = fig.add_subplot()
    ys = np.arange(n)[::-1]  # first method on top
    for y, name in zip(ys, order, strict=True):
        m = methods[name]
        c, (lo, hi) = finite(m.get("harrell_c")), ci_bounds(m.get("harrell_c_ci"))
        oracle = name == ORACLE
        color = "0.5" if oracle else OKABE_ITO[0] if name == "model" else "0.15"
        if c is not None:
            xerr = None if lo is None or hi is None else [[c - lo], [hi - c]]
            ax.errorbar(c, y, xerr=xerr, fmt="D" if oracle else "s", color=color, ms=7, capsize=4, lw=1.6)
        ax.text(1.02, y, fmt_estimate(c, m.get("harrell_c_ci")), transform=ax.get_yaxis_transform(),
                va="center", fontsize=9, color=color)
    ax.axvline(0.5, ls="--", color="0.4", lw=1, label="Chance (C = 0.5)")
    ref = finite(methods.get(REFERENCE, {}).get("harrell_c"))
    if ref is not None:
        ax.axvline(ref, ls=":", color=OKABE_ITO[1], lw=1.2, label=f"{label(REFERENCE)} (C = {ref:.3f})")
    if ORACLE in methods:
        ax.plot([], [], "D", color="0.5", label="* Oracle: the true simulated risk (synthetic data only), an upper bound")
        if n > 1:
            ax.axhline(0.5, color="0.8", lw=0.8)
    ax.set_yticks(ys, [label(k) + (" *" if k == ORACLE else "") for k in order])
    ax.text(1.02, 1.0, "C (95% CI)", transform=ax.transAxes, va="bottom", fontsize=9, weight="bold")
    values = [v for k in order for v in (finite(methods[k].get("harrell_c")), *ci_bounds(methods[k].get("harrell_c_ci")))
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
    if any(finite(e.get("oracle_delta_c")) is not None for e in pts):
        series.append(("oracle_delta_c", "oracle_delta_ci", "Oracle − clinical Cox", "0.5", "D", "--"))
    for key, ci_key, name, color, marker, ls in series:
        y = np.array([finite(e.get(key)) if finite(e.get(key)) is not None else np.nan for e in pts])
        cis = [ci_bounds(e.get(ci_key)) for e in pts]
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


def patient_curve(
    times: np.ndarray, survival: np.ndarray, title: str | None = None,
    km: tuple[np.ndarray, np.ndarray] | None = None,
) -> Figure:
    """One patient's predicted survival step curve (1 at time 0), against the training cohort's Kaplan–Meier curve
    ``km`` = (times, survival) when given."""
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    if km is not None:
        ax.step(np.r_[0, km[0]], np.r_[1, km[1]], where="post", color="0.55", label="training cohort (Kaplan-Meier)")
    ax.step(np.r_[0, times], np.r_[1, survival], where="post", color="C3", lw=2, label="this patient")
    ax.set(xlabel="time", ylabel="survival probability", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    if km is not None:
        ax.legend(loc="lower left", fontsize=8)
    return fig

"""The simulation's report: results.md, plots over days, one offline W&B run per arm, the KL question
(docs/simulate.md, "Reading the results").

Every figure comes from ``days.jsonl``. Over world seeds, a value is the mean and its 95% Student-t interval
(mean +- t_{0.975, n-1} s / sqrt(n), n = seeds; one seed: no interval). A *paired* difference CoEA - arm is
taken per seed (both arms ran on the same world copy) and then summarised the same way.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from coea.config import Config
from coea.simulate import provenance
from coea.simulate.days import DAYS_FILE, DaysLog
from coea.tracking import make_tracker, workdir_group

log = logging.getLogger("coea.simulate")

TABLE_METRICS = (  # (column, label, what it is)
    ("discovery_rate", "discovery", "share of all latent interests discovered by the last day"),
    ("discovery_rate_collab", "discovery collab.", "share of the collaborative latent interests discovered"),
    ("discovery_rate_knowledge", "discovery knowl.", "share of the knowledge latent interests discovered (world v2)"),
    ("gtv_cum", "GTV", "value of clicked items over the A/B days"),
    ("niep_7d", "7D-NIEP", "share of the last 7 days' clicked items in categories new to the user"),
    ("slot_ctr_cum", "slot CTR", "click-through of the served slots over the A/B days"),
    ("novel_slot_ctr_cum", "novel-slot CTR", "click-through of served slots in categories new to the user"),
    ("latent_slot_share", "latent hits", "share of the last day's served slots that were a latent interest"),
    ("tail_coverage", "tail cover", "share of long-tail categories served on the last day"),
)
PLOT_METRICS = (("discovery_rate", "latent-interest discovery rate"), ("gtv", "GTV per day"),
                ("niep_7d", "7D-NIEP"), ("slot_ctr", "slot CTR"))
NOISE_METRICS = ("discovery_rate", "gtv_cum")  # variance components: world seeds vs training seeds
COEA, WO_KL, EXPLOIT = "coea", "wo_kl", "exploitation"
NON_COEA = ("exploitation", "random", "popular", "ucb", "user_knn", "item_knn", "thompson", "linucb",
            "kg_neighbour", "google_v1")  # "best non-CoEA arm" of the targets
COLORS = {"kg_neighbour": "#c49c94", "thompson": "#aec7e8", "linucb": "#98df8a", "exploitation": "#4c4c4c", "random": "#bcbd22", "popular": "#17becf", "ucb": "#9467bd",
          "user_knn": "#e377c2", "item_knn": "#7f7f7f", "google_v1": "#8c564b", "coea": "#d62728", "wo_kl": "#ff7f0e",
          "wo_rllm": "#2ca02c"}


# ------------------------------------------------------------------------------------------------ statistics


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval over seeds: (mean, lo, hi); one value: (v, nan, nan); none: all nan.

    >>> [round(v, 3) for v in mean_ci([1.0, 2.0, 3.0])]  # s = 1, t_{0.975, 2} = 4.303
    [2.0, -0.484, 4.484]
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


def load_rows(out_dir: Path) -> pd.DataFrame:
    rows = DaysLog(Path(out_dir) / DAYS_FILE).rows()
    return pd.DataFrame(rows)


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the last A/B day every run (arm x training seed) of a world seed finished; ``train_seed`` filled
    in (0 for rows written before training seeds existed)."""
    df = df.assign(train_seed=df["train_seed"].fillna(0).astype(int) if "train_seed" in df.columns else 0)
    last = df.groupby(["seed", "arm", "train_seed"])["day"].max().groupby("seed").min()  # common last day per seed
    return df[df["day"] == df["seed"].map(last)]


def final_values(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """(seed x arm) values of ``metric`` on the last A/B day every run of that seed finished, averaged over the
    training seeds that ran on the world (``sim.train_seeds``): the unit of the paired intervals is the world."""
    if metric not in df.columns:
        return pd.DataFrame()
    return final_rows(df).pivot_table(index="seed", columns="arm", values=metric, aggfunc="mean")


def variance_components(values: dict[int, Sequence[float]]) -> dict:
    """World noise and training noise of one arm's final values y[w][t] (world seed w, training seed t).

    A one-way random-effects split (method of moments): the training variance is the pooled within-world sample
    variance over the worlds with >= 2 training seeds, s2_train = sum_w sum_t (y_wt - ybar_w)^2 / sum_w (T_w - 1);
    a world's mean ybar_w holds s2_world + s2_train / T_w, so s2_world = max(0, var_w(ybar_w) - s2_train *
    mean_w(1 / T_w)). Either is NaN when it cannot be estimated (no repeated world; fewer than 2 worlds).

    >>> c = variance_components({0: [1.0, 3.0], 1: [5.0, 7.0], 2: [2.0]})  # s2_train = 2; var(2, 6, 2) = 16/3
    >>> round(c["train_var"], 3), round(c["world_var"], 3)                 # 16/3 - 2 * (1/2 + 1/2 + 1) / 3 = 4
    (2.0, 4.0)
    """
    ys = {w: np.asarray([v for v in vals if v is not None and np.isfinite(v)], float) for w, vals in values.items()}
    ys = {w: y for w, y in ys.items() if len(y)}
    reps = [y for y in ys.values() if len(y) >= 2]
    dof = sum(len(y) - 1 for y in reps)
    train_var = float(sum(((y - y.mean()) ** 2).sum() for y in reps) / dof) if dof else math.nan
    means = np.array([y.mean() for y in ys.values()])
    inv_t = float(np.mean([1.0 / len(y) for y in ys.values()])) if ys else math.nan
    if len(means) >= 2:
        between = float(means.var(ddof=1))
        world_var = max(0.0, between - (train_var if np.isfinite(train_var) else 0.0) * inv_t)
        world_var = world_var if np.isfinite(train_var) else math.nan
    else:
        world_var = math.nan
    return {"world_var": world_var, "train_var": train_var, "worlds": len(ys), "repeated_worlds": len(reps),
            "runs": int(sum(len(y) for y in ys.values()))}


def verdict(lo: float, hi: float, target: float) -> str:
    """A target ``value >= target`` is **met** only when the whole interval clears it; with an interval straddling
    it (or none: one seed) it is **not shown**; an interval wholly below it is **missed**.

    >>> verdict(1.3, 2.0, 1.2), verdict(0.9, 2.0, 1.2), verdict(0.5, 1.0, 1.2), verdict(math.nan, math.nan, 1.2)
    ('met', 'not shown', 'missed', 'not shown')
    """
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "not shown"
    if lo >= target:
        return "met"
    return "missed" if hi < target else "not shown"


def _fmt(m: float, lo: float, hi: float, digits: int) -> str:
    if not np.isfinite(m):
        return "—"
    if not np.isfinite(lo):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _digits(metric: str) -> int:
    return 0 if metric.startswith("gtv") else 4


# ------------------------------------------------------------------------------------------------ tables


def summary(df: pd.DataFrame, arms: Sequence[str]) -> dict:
    """Final-day mean and interval per arm and metric, paired differences CoEA - arm, and the targets."""
    metrics = [m for m, _, _ in TABLE_METRICS] + sorted(c for c in df.columns if c.startswith("a4/"))
    out: dict = {"arms": {}, "paired": {}, "targets": {}}
    for metric in metrics:
        fv = final_values(df, metric)
        if fv.empty:
            continue
        for arm in arms:
            if arm in fv.columns:
                out["arms"].setdefault(arm, {})[metric] = mean_ci(fv[arm].tolist())
        if COEA in fv.columns:
            for arm in arms:
                if arm != COEA and arm in fv.columns:
                    d = (fv[COEA] - fv[arm]).dropna()
                    out["paired"].setdefault(arm, {})[metric] = mean_ci(d.tolist())
    if final_rows(df)["train_seed"].nunique() > 1:
        fr = final_rows(df)
        for arm in arms:
            for metric in NOISE_METRICS:
                sub = fr[fr.arm == arm]
                if metric in sub.columns and len(sub):
                    vals = {int(w): g[metric].tolist() for w, g in sub.groupby("seed")}
                    out.setdefault("noise", {}).setdefault(arm, {})[metric] = variance_components(vals)
    disc = final_values(df, "discovery_rate")
    if COEA in disc.columns:
        others = [a for a in NON_COEA if a in disc.columns]
        if others:
            best = max(others, key=lambda a: disc[a].mean())
            ratio = (disc[COEA] / disc[best]).replace([np.inf, -np.inf], np.nan)
            out["targets"]["discovery_ratio"] = {"best_other": best, "value": mean_ci(ratio.tolist()),
                                                 "target": 1.2}
            per_seed = (disc[COEA] / disc[others].max(axis=1)).replace([np.inf, -np.inf], np.nan)
            out["targets"]["discovery_ratio_per_seed_best"] = {
                "values": {int(k): float(v) for k, v in per_seed.items()}, "min": float(per_seed.min()),
                "ratio_of_means": float(disc[COEA].mean() / disc[best].mean()) if disc[best].mean() else None}
    know = final_values(df, "discovery_rate_knowledge")
    non_llm = [a for a in NON_COEA if a != "google_v1" and a in know.columns]
    if COEA in know.columns and non_llm:
        best = max(non_llm, key=lambda a: know[a].mean())
        ratio = (know[COEA] / know[best]).replace([np.inf, -np.inf], np.nan)
        out["targets"]["knowledge_ratio"] = {"best_other": best, "value": mean_ci(ratio.tolist()), "target": 1.5}
    for metric, key in (("gtv_cum", "gtv_rel"), ("niep_7d", "niep_rel")):
        fv = final_values(df, metric)
        if COEA in fv.columns and EXPLOIT in fv.columns:
            rel = (fv[COEA] / fv[EXPLOIT] - 1.0).replace([np.inf, -np.inf], np.nan)
            out["targets"][key] = {"value": mean_ci(rel.tolist()),
                                   "target": -0.01 if key == "gtv_rel" else 0.0}
    return out


def _target_lines(s: dict) -> list[str]:
    t = s["targets"]
    lines = []
    if "discovery_ratio" in t:
        m, lo, hi = t["discovery_ratio"]["value"]
        ok = verdict(lo, hi, 1.2)
        lines.append(f"- Discovery: CoEA / best non-CoEA arm ({t['discovery_ratio']['best_other']}) = "
                     f"{_fmt(m, lo, hi, 3)} (target >= 1.2x): **{ok}**")
        ps = t.get("discovery_ratio_per_seed_best")
        if ps:
            vals = ", ".join(f"seed {k}: {v:.2f}" for k, v in ps["values"].items())
            rom = f"{ps['ratio_of_means']:.2f}" if ps["ratio_of_means"] is not None else "—"
            lines.append(f"  (stricter: against each seed's own best non-CoEA arm {vals}, minimum {ps['min']:.2f}; "
                         f"ratio of the means {rom})")
    if "knowledge_ratio" in t:
        m, lo, hi = t["knowledge_ratio"]["value"]
        lines.append(f"- Knowledge discovery: CoEA / best non-LLM arm ({t['knowledge_ratio']['best_other']}) = "
                     f"{_fmt(m, lo, hi, 3)} (target >= 1.5x, with the GTV target below): "
                     f"**{verdict(lo, hi, 1.5)}**")
    if "gtv_rel" in t:
        m, lo, hi = t["gtv_rel"]["value"]
        ok = verdict(lo, hi, -0.01 - 1e-12)
        lines.append(f"- GTV: CoEA vs exploitation = {_pct(m, lo, hi)} (target >= -1%): **{ok}**")
    if "niep_rel" in t:
        m, lo, hi = t["niep_rel"]["value"]
        ok = verdict(lo, hi, 1e-12)  # > 0
        lines.append(f"- 7D-NIEP: CoEA vs exploitation = {_pct(m, lo, hi)} (target > 0): **{ok}**")
    if not lines:
        lines.append("- (the targets need the coea and exploitation arms)")
    return lines


def provenance_line(p: dict | None) -> str:
    """results.md's provenance line: the commit(s), and a loud mark when any part ran from uncommitted code."""
    if not p:
        return "Code: provenance not recorded."
    commits = ", ".join(c[:12] if c else "no git commit" for c in p["commits"])
    if p["dirty"]:
        return (f"**Code: UNCOMMITTED CHANGES (--allow-dirty)** on top of {commits}: these results match no commit "
                f"({len(p['changed'])} changed path(s): {', '.join(p['changed'][:5])}).")
    return f"Code: commit {commits}" + (" (a resumed run that spans commits)." if len(p["commits"]) > 1 else ".")


def _pct(m: float, lo: float, hi: float) -> str:
    if not np.isfinite(m):
        return "—"
    if not np.isfinite(lo):
        return f"{100 * m:+.2f}%"
    return f"{100 * m:+.2f}% [{100 * lo:+.2f}%, {100 * hi:+.2f}%]"


def results_markdown(cfg: Config, df: pd.DataFrame, arms: Sequence[str], seeds: Sequence[int],
                     s: dict, *, wall_s: float | None = None, note: str = "", missing: Sequence[str] = ()) -> str:
    sim = cfg.sim
    last = int(df["day"].max()) + 1 if len(df) else 0
    complete = len(df) and all(
        (df[(df.seed == sd) & (df.arm == a)]["day"].max() if len(df[(df.seed == sd) & (df.arm == a)]) else -1)
        >= sim.days - 1 for sd in seeds for a in arms)
    lines = [
        "# Closed-loop A/B simulation (`coea simulate`)", "",
        f"World seeds {', '.join(map(str, seeds))} · {sim.days} A/B days after {sim.warmup_days} warm-up days · "
        f"{sim.n_users} users · {sim.n_categories} categories · {sim.slots} served slots per session · "
        f"arms: {', '.join(arms)}.",
        provenance_line(s.get("provenance")),
        f"Status: {'complete' if complete else f'PARTIAL (days present up to {last})'}"
        + (f"; PARTIAL: arms missing: {', '.join(missing)}." if missing else ".")
        + (f" Wall time {wall_s / 60:.1f} min." if wall_s else ""), "",
        "Values: last A/B day, mean over world seeds (each world's value averaged over its training seeds) and "
        "[95% Student-t interval over world seeds]; GTV and CTRs are cumulative over the A/B days. A target is "
        "**met** only when its whole interval clears the threshold, **missed** when the whole interval is below "
        "it, otherwise **not shown**. docs/simulate.md defines every metric.", "",
        "## Targets (issue 12)", "", *_target_lines(s), "",
        "## Final day, per arm", "",
    ]
    cols = [(m, lab) for m, lab, _ in TABLE_METRICS if any(m in s["arms"].get(a, {}) for a in arms)]
    lines.append("| arm | " + " | ".join(lab for _, lab in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for arm in arms:
        vals = s["arms"].get(arm, {})
        lines.append(f"| {arm} | " + " | ".join(_fmt(*vals.get(m, (math.nan,) * 3), _digits(m)) for m, _ in cols)
                     + " |")
    a4 = sorted({m for a in arms for m in s["arms"].get(a, {}) if m.startswith("a4/") and m.endswith(f"@{sim.slots}")})
    if a4:
        lines += ["", f"## Offline A.4 metrics of the last day's served lists (K = {sim.slots})", "",
                  "| arm | " + " | ".join(m[3:] for m in a4) + " |", "|---|" + "---|" * len(a4)]
        for arm in arms:
            vals = s["arms"].get(arm, {})
            lines.append(f"| {arm} | " + " | ".join(_fmt(*vals.get(m, (math.nan,) * 3), 4) for m in a4) + " |")
    if s["paired"]:
        lines += ["", "## Paired differences CoEA − arm (same world copy per seed)", "",
                  "| arm | " + " | ".join(lab for _, lab in cols) + " |", "|---|" + "---|" * len(cols)]
        for arm in arms:
            if arm in s["paired"]:
                vals = s["paired"][arm]
                lines.append(f"| {arm} | " + " | ".join(_fmt(*vals.get(m, (math.nan,) * 3), _digits(m))
                                                         for m, _ in cols) + " |")
    lines += noise_table(s)
    lines += ["", "## The KL question (CoEA vs CoEA w/o KL)", "", *kl_table(df), "",
              "Plots: `days.png` (every arm over the days), `kl.png` (CoEA vs w/o KL).", ""]
    if note:
        lines += ["## Notes", "", note.strip(), ""]
    return "\n".join(lines)


def noise_table(s: dict) -> list[str]:
    """World noise against training noise per arm (standard deviations; :func:`variance_components`)."""
    if not s.get("noise"):
        return []
    lines = ["", "## Noise: world seeds against training seeds", "",
             "Standard deviations of an arm's final value: between worlds (the world's own effect) and between "
             "training seeds on one world (pooled over the worlds that ran several); method of moments.", "",
             "| arm | " + " | ".join(f"{m} sd world | {m} sd training" for m in NOISE_METRICS)
             + " | worlds (repeated) |", "|---|" + "---|---|" * len(NOISE_METRICS) + "---|"]
    for arm, by_metric in s["noise"].items():
        cells, n = [], ""
        for m in NOISE_METRICS:
            c = by_metric.get(m)
            if c is None:
                cells += ["—", "—"]
                continue
            d = _digits(m)
            cells += [f"{math.sqrt(v):.{d}f}" if np.isfinite(v) else "—" for v in (c["world_var"], c["train_var"])]
            n = f"{c['worlds']} ({c['repeated_worlds']})"
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {n} |")
    return lines


def kl_table(df: pd.DataFrame) -> list[str]:
    """CoEA vs w/o KL at a few days: discovery, GTV per day, 7D-NIEP, and the round KL when the arm logs it."""
    if not len(df) or not {COEA, WO_KL} <= set(df["arm"]):
        return ["(needs both the coea and wo_kl arms)"]
    kl_cols = [c for c in df.columns if c.startswith("policy/") and c.lower().endswith("kl")]
    metrics = ["discovery_rate", "gtv", "niep_7d", *kl_cols[:1]]
    last = int(df[df.arm.isin([COEA, WO_KL])]["day"].max())
    days = sorted({0, last // 3, 2 * last // 3, last})
    head = "| day | " + " | ".join(f"{m} coea | {m} w/o KL" for m in metrics) + " |"
    lines = [head, "|---|" + "---|---|" * len(metrics)]
    for d in days:
        cells = []
        for m in metrics:
            for arm in (COEA, WO_KL):
                v = df[(df.arm == arm) & (df.day == d)][m] if m in df.columns else pd.Series(dtype=float)
                mm, lo, hi = mean_ci(v.tolist())
                cells.append(_fmt(mm, lo, hi, _digits(m)))
        lines.append(f"| {d + 1} | " + " | ".join(cells) + " |")
    if not kl_cols:
        lines.append("")
        lines.append("(no round KL in the rows: the arms did not report a `policy/...kl` figure)")
    return lines


# ------------------------------------------------------------------------------------------------ plots


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, dpi=90, format="png")
    os.replace(tmp, path)
    return path


def plot_days(df: pd.DataFrame, arms: Sequence[str], path: Path,
              metrics: Sequence[tuple[str, str]] = PLOT_METRICS, title: str = "") -> Path:
    """One panel per metric against the A/B day, one line per arm (mean over seeds, band = min..max)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 7))
    axes = fig.subplots(2, 2).ravel()
    for ax, (metric, label) in zip(axes, metrics):
        for arm in arms:
            sub = df[df.arm == arm]
            if metric not in sub.columns or not len(sub):
                continue
            g = sub.groupby("day")[metric]
            m = g.mean()
            ax.plot(m.index + 1, m.values, label=arm, color=COLORS.get(arm), lw=2 if arm == COEA else 1.3)
            if sub["seed"].nunique() > 1:
                ax.fill_between(m.index + 1, g.min().values, g.max().values, color=COLORS.get(arm), alpha=0.12)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("A/B day", fontsize=9)
        ax.tick_params(labelsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels)), fontsize=9, frameon=False)
        fig.subplots_adjust(bottom=0.12)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_kl(df: pd.DataFrame, path: Path) -> Path | None:
    """CoEA vs CoEA w/o KL over the days (discovery, GTV, 7D-NIEP, round KL when logged)."""
    if not len(df) or not {COEA, WO_KL} <= set(df["arm"]):
        return None
    kl_cols = [c for c in df.columns if c.startswith("policy/") and c.lower().endswith("kl")]
    metrics = [("discovery_rate", "discovery rate"), ("gtv", "GTV per day"), ("niep_7d", "7D-NIEP")]
    metrics.append((kl_cols[0], kl_cols[0]) if kl_cols else ("slot_ctr", "slot CTR"))
    return plot_days(df[df.arm.isin([COEA, WO_KL])], [COEA, WO_KL], path, metrics,
                     title="The KL question: CoEA vs CoEA w/o KL (mean over seeds, band = min..max)")


# ------------------------------------------------------------------------------------------------ W&B


def log_runs(cfg: Config, df: pd.DataFrame, arms: Sequence[str], out_dir: Path, s: dict) -> list[str]:
    """One offline W&B run per arm (coea.tracking): the per-day means over seeds, the final-day summary."""
    import dataclasses

    # one W&B group for the whole simulation (the arms' runs side by side)
    tcfg = dataclasses.replace(cfg.tracking, group=cfg.tracking.group or workdir_group(out_dir, cfg.run.name))
    names = []
    for arm in arms:
        sub = df[df.arm == arm]
        if not len(sub):
            continue
        tracker = make_tracker(tcfg, out_dir / "tracking" / arm, 0, run_name=cfg.run.name,
                               config={"sim": cfg.to_dict()["sim"], "arm": arm}, name=f"sim-{arm}",
                               job_type="simulate")
        numeric = [c for c in sub.columns if c not in ("seed", "arm", "day", "sim_day", "date")
                   and pd.api.types.is_numeric_dtype(sub[c])]
        means = sub.groupby("day")[numeric].mean()
        for day, row in means.iterrows():
            tracker.log({f"sim/{k}": float(v) for k, v in row.items() if np.isfinite(v)}, int(day))
        tracker.summary({f"final/{k}": v[0] for k, v in s["arms"].get(arm, {}).items() if np.isfinite(v[0])})
        tracker.finish()
        names.append(arm)
    return names


# ------------------------------------------------------------------------------------------------ entry


def _strict(v):
    """JSON-safe: tuples -> lists, NaN / inf -> None."""
    if isinstance(v, dict):
        return {str(k): _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def write_report(cfg: Config, out_dir: str | Path, *, arms: Sequence[str], seeds: Sequence[int],
                 wall_s: float | None = None, note: str = "", tracking: bool = True,
                 missing: Sequence[str] = (), allow_dirty: bool = False) -> dict:
    """results.md, summary.json, days.png, kl.png and the W&B runs from ``OUT/days.jsonl``; returns the summary.

    Refused (:class:`coea.simulate.provenance.DirtyTreeError`) from uncommitted code unless ``allow_dirty``; the
    commits of the run's invocations and of this report are recorded in summary.json and results.md.
    """
    out = Path(out_dir)
    prov = provenance.check_provenance(allow_dirty)
    prov_summary = provenance.summarise([*provenance.read(out), prov.as_dict()])
    df = load_rows(out)
    if len(df):
        df = df[df.arm.isin(arms) & df.seed.isin(seeds)]
    if not len(df):
        (out / "results.md").write_text("# Closed-loop A/B simulation\n\nNo finished days yet.\n")
        return {}
    arms = [a for a in arms if a in set(df["arm"])]
    s = summary(df, arms)
    s["provenance"] = prov_summary
    plot_days(df, arms, out / "days.png", title="Closed-loop A/B (mean over world seeds, band = min..max)")
    plot_kl(df, out / "kl.png")
    (out / "results.md").write_text(results_markdown(cfg, df, arms, seeds, s, wall_s=wall_s, note=note,
                                                     missing=missing))
    (out / "summary.json").write_text(json.dumps(_strict(s), indent=1))
    if tracking and cfg.tracking.backend != "none":
        log_runs(cfg, df, arms, out, s)
    return s

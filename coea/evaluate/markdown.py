"""Rendering of an evaluation's results: Table 2 and the interval, frontier, target and settings tables
(results.md) and the frontier plot (frontier.png). Everything here reads ``results.json``'s dict and ``meta.json``
(coea/evaluate/report.py computes them)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coea.evaluate.report import GROUPS, LABELS, METRIC_FAMILIES, TEST_FAMILIES, VARIANT_FAMILIES, improvement

# ------------------------------------------------------------------------------------------------ markdown


def _cell(v: Mapping[str, float]) -> str:
    """``mean ± std`` over seeds; the mean alone with one seed (a std over one seed is not a spread)."""
    if v.get("mean") is None:  # undefined for every user (NA@K when nobody adopts a new category)
        return "–"
    return f"{v['mean']:.4f}" if v.get("seeds", 2) < 2 else f"{v['mean']:.4f} ± {v['std']:.4f}"


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def _iv(d: Mapping[str, float] | None) -> str:
    if not d or any(d.get(x) is None for x in ("delta", "lo", "hi")):
        return "–"
    star = "**" if d["lo"] > 0 or d["hi"] < 0 else ""
    return f"{star}{d['delta']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]{star}"


def _label(method: str) -> str:
    return f"**{LABELS.get(method, method)}**" if method == "coea" else LABELS.get(method, method)


def table_markdown(results: Mapping[str, Mapping[str, Mapping[str, float]]], groups: Mapping[str, str],
                   ks: Sequence[int], *, title: str = "", families: Sequence[str] = METRIC_FAMILIES,
                   improv: bool = True) -> str:
    """Table 2's layout: one row per method in groups, metric families x K as columns, then Improv."""
    cols = [f"{fam}@{k}" for fam in families for k in ks]
    lines = [f"### {title}", ""] if title else []
    lines += ["| Group | Method | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for group in GROUPS:
        for method, g in groups.items():
            if g != group or method not in results:
                continue
            r = results[method]
            cells = [_cell(r[c]) if c in r else "–" for c in cols]
            lines.append(f"| {group} | {_label(method)} | " + " | ".join(cells) + " |")
    imp = improvement(results, groups) if improv else {}
    if imp:
        lines.append("| | Improv. | " + " | ".join("–" if imp.get(c) is None else f"{imp[c]:+.2f}%" for c in cols)
                     + " |")
    return "\n".join(lines) + "\n"


def results_markdown(results: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """results.md: Table 2, the intervals, the frontier summary, the targets, variants, chosen settings."""
    ks, k, groups = meta["ks"], meta["budget_k"], meta["groups"]
    seeds = len(meta["seeds"])
    spread = "mean ± std over seeds" if seeds > 1 else "1 seed: means only, no spread"
    split = meta["split"]
    how = (f"per-user split, each user's last {split['test_clicks']} clicks" if split["kind"] == "user"
           else "global temporal split")
    lists = "each method's own ranking" if meta["policy"] == "own" else f"slots {meta['slots']} of {meta['base_model']}"
    out = [table_markdown(results["table"], groups, ks, title=(
        f"Table 2 ({meta['users']} test users, {seeds} seed(s), {spread}; {how}; lists: {lists})"))]
    out.append("Metrics as App. A.4 (docs/metrics.md): C-H@K = hits / K, NCP against every category the user "
               "clicked before the test part, NCP and CLTP divided by |C| = "
               f"{meta['n_categories']}.\n")
    ref = [m for m in groups if m != "coea" and m in results["intervals"]]
    cols = [f"{fam}@{x}" for fam in METRIC_FAMILIES for x in ks]
    conf = int(round(100 * meta["confidence"]))
    out += [f"### CoEA minus each row: paired hierarchical bootstrap {conf}% intervals over seeds and users "
            f"({meta['bootstrap']} resamples; bold = the interval excludes 0)", "",
            "| Method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in ref:
        out.append(f"| {_label(m)} | " + " | ".join(_iv(results["intervals"][m].get(c)) for c in cols) + " |")
    s = results["summary"]
    out += ["", f"### Frontier summary (budgets 0..{k}; matched NCP@{k} = {meta['matched_budget']}/|C| = "
            f"{s['target_ncp']:.4f})", "",
            f"| Method | C-N@{k} at matched NCP@{k} | CoEA minus it | frontier area (mean C-N@{k}) | CoEA minus it |",
            "|---|---:|---:|---:|---:|"]
    for m, v in s["methods"].items():
        iv = s["intervals"].get(m, {})
        out.append(f"| {_label(m)} | {_num(v['cn_at_matched_ncp'])} | {_iv(iv.get('cn_at_matched_ncp'))} | "
                   f"{_num(v['area'])} | {_iv(iv.get('area'))} |")
    fr = {m: v["frontier"] for m, v in s["methods"].items() if v["frontier"] and f"NA@{k}" in v["frontier"][0]}
    if fr:
        budgets = [p["budget"] for p in next(iter(fr.values()))]
        out += ["", f"### Test-based metrics at equal novelty: NA@{k} / C-N-new@{k} along each frontier (b new "
                f"categories in the top {k})", "",
                "| Method | " + " | ".join(f"b = {b}" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
        for m, pts in fr.items():
            out.append(f"| {_label(m)} | " + " | ".join(f"{_num(p[f'NA@{k}'])} / {_num(p[f'C-N-new@{k}'])}"
                                                        for p in pts) + " |")
    eq = s.get("at_matched_budget", {})
    if eq.get("intervals"):
        names = [f"NA@{k}", f"C-N-new@{k}", f"C-H-test@{k}", f"C-N@{k}"]
        out += ["", f"CoEA minus each method at equal novelty (budget {eq['budget']}: {eq['budget']} new categories "
                f"in every top {k}), {conf}% hierarchical intervals:", "",
                "| Method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for m, ivs in eq["intervals"].items():
            out.append(f"| {_label(m)} | " + " | ".join(_iv(ivs.get(n)) for n in names) + " |")
    out.append("")
    out.append(table_markdown(results["table"], groups, ks, families=TEST_FAMILIES, improv=False, title=(
        "Test-based metrics (own names, docs/metrics.md): C-H-test@K = |top-K ∩ categories clicked in the test "
        "part| / K; C-N-new@K = C-N on the test part's new categories; NA@K = novelty adoption, among users who "
        "click a new category in the test part")))
    out += [f"### CoEA minus each row on the test-based metrics ({conf}% hierarchical intervals)", "",
            "| Method | " + " | ".join(f"{fam}@{x}" for fam in TEST_FAMILIES for x in ks) + " |",
            "|---|" + "---:|" * (len(TEST_FAMILIES) * len(ks))]
    for m in ref:
        out.append(f"| {_label(m)} | " + " | ".join(_iv(results["intervals"][m].get(f"{fam}@{x}"))
                                                    for fam in TEST_FAMILIES for x in ks) + " |")
    kept = results.get("kept_candidates", {})
    if kept:
        out += ["", "### Candidates the Relevance filter keeps per test user (C_align's size, pooled over seeds)", "",
                "| Row | mean | median | share with none |", "|---|---:|---:|---:|"]
        out += [f"| {_label(m)} | {v['mean']:.2f} | {v['median']:.1f} | {v['zero_share']:.3f} |"
                for m, v in kept.items()]
    v3 = results.get("targets_v3", {})
    if v3:
        out += ["", f"### Targets (issue 25), as measured: CoEA at its production operating point", ""]
        for name, v in v3.get("production", {}).items():
            out.append(f"- {name}: CoEA {_num(v['coea'])} vs the best exploration baseline "
                       f"{LABELS.get(v['best'], v['best'])} {_num(v['best_value'])}: {_iv(v)} -> "
                       f"**{'met' if v['met'] else 'not met'}**.")
        for name, v in v3.get("matched_cn", {}).items():
            out.append(f"- {name} at matched C-N@{k} = {_num(v['matched_cn'])} "
                       f"({LABELS.get(v['baseline'], v['baseline'])}'s, the best exploration C-N@{k}): CoEA "
                       f"{_num(v['coea'])} vs {_num(v['baseline_value'])}: {_iv(v)} -> "
                       f"**{'met' if v['met'] else 'not met'}**"
                       f"{'' if v['coea'] is not None else f' (CoEA never reaches that C-N@{k})'}.")
        each = v3.get("matched_cn_each", {})
        if each:
            out += ["", f"At each exploration baseline's own C-N@{k} (CoEA's frontier interpolated there; – = "
                    "outside CoEA's frontier):", "",
                    f"| Baseline | its C-N@{k} | NCP@{k}: CoEA vs it | CoEA minus it | CLTP@{k}: CoEA vs it | "
                    "CoEA minus it |", "|---|---:|---:|---:|---:|---:|"]
            for m, per in each.items():
                a, b = per[f"NCP@{k}"], per[f"CLTP@{k}"]
                out.append(f"| {_label(m)} | {_num(a['matched_cn'])} | {_num(a['coea'])} vs {_num(a['baseline_value'])}"
                           f" | {_iv(a)} | {_num(b['coea'])} vs {_num(b['baseline_value'])} | {_iv(b)} |")
    t = results.get("targets", {})
    if t:
        out += ["", "### Targets (issue 13, on A.4's metrics), as measured", ""]
        out.append(f"- C-N@{k} at matched NCP@{k} above every exploration baseline beyond the interval: "
                   f"**{'yes' if t.get('matched_ncp_beats_every_exploration_baseline') else 'no'}**; frontier "
                   f"area: **{'yes' if t.get('area_beats_every_exploration_baseline') else 'no'}**.")
        for name, goal in ((f"NCP@{k}", "target >= +10%"), (f"CLTP@{k}", "target >= +10%"),
                           ("C-H@1", "target >= -1%")):
            v = t.get(f"{name}_vs_best_{'exploitation' if name == 'C-H@1' else 'exploration'}")
            if v and v["gain_percent"] is not None:
                kind = "exploitation row" if name == "C-H@1" else "exploration baseline"
                out.append(f"- Table 2 {name}: CoEA {v['gain_percent']:+.1f}% vs the best {kind} "
                           f"({LABELS.get(v['best'], v['best'])}); {goal}.")
    out += ["", table_markdown(results["table"], groups, ks, families=VARIANT_FAMILIES, improv=False,
                               title="Variants (not the paper's definitions): C-H-any@K = 1[any hit in the top K] "
                                     "(v1's C-H), NCP-recent@K = NCP against the last "
                                     f"{meta.get('hist_k')} clicks' categories (v1's NCP)")]
    chosen = meta.get("chosen", {})
    if chosen:
        out += ["### Settings chosen on the validation part (never on test)", "",
                f"Rule: the value with the largest validation frontier area (mean C-N@{k} over budgets 0..{k}); "
                f"tau_align by its declared objective (in brackets; cn_na = C-N@{k} + NA@{k} of the own list); "
                "ties -> the first value of the grid; CoEA's production row keeps the workdir's tau_align. Item "
                "models: the epoch with the best validation next-item hit@10, early stopping with patience "
                f"{meta.get('eval_config', {}).get('patience', '–')}.", "", "| Method | grid | chosen per seed |",
                "|---|---|---|"]
        for m, per_seed in chosen.items():
            grid = meta.get("grids", {}).get(m, "")
            vals = "; ".join(f"seed {s}: {json.dumps(v, sort_keys=True)}" for s, v in per_seed.items())
            out.append(f"| {_label(m)} | {grid} | {vals} |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------- plot


def plot_frontiers(results: Mapping[str, Any], meta: Mapping[str, Any], out_png: Path) -> Path:
    """Two panels: C-N@k against NCP@k and against CLTP@k, one curve (budgets 0..k) per exploration method and
    ablation; the exploitation rows' own lists as points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = meta["budget_k"]
    fig = Figure(figsize=(12, 5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    from matplotlib import colormaps

    palette = colormaps["tab20"].colors
    for i, (method, v) in enumerate(results["summary"]["methods"].items()):
        pts = v["frontier"]
        style = {"linewidth": 2.5, "color": "black", "zorder": 5} if method == "coea" else (
            {"linestyle": "--", "linewidth": 1, "color": palette[i % 20]} if meta["groups"].get(method) == "ablation"
            else {"linewidth": 1.2, "color": palette[i % 20]})
        for ax, x in zip(axes, (f"NCP@{k}", f"CLTP@{k}")):
            ax.plot([p[x] for p in pts], [p[f"C-N@{k}"] for p in pts], marker="o", markersize=3,
                    label=LABELS.get(method, method), **style)
    for method, g in meta["groups"].items():
        if g == "exploitation" and method in results["table"]:
            r = results["table"][method]
            for ax, x in zip(axes, (f"NCP@{k}", f"CLTP@{k}")):
                ax.scatter([r[x]["mean"]], [r[f"C-N@{k}"]["mean"]], marker="*", s=60)
                ax.annotate(LABELS.get(method, method), (r[x]["mean"], r[f"C-N@{k}"]["mean"]), fontsize=6)
    for ax, x in zip(axes, (f"NCP@{k}", f"CLTP@{k}")):
        ax.set_xlabel(x)
        ax.set_ylabel(f"C-N@{k}")
        ax.grid(alpha=0.3)
    axes[0].axvline(results["summary"]["target_ncp"], color="grey", linewidth=0.8, linestyle=":")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Novelty-budget frontiers ({meta['users']} test users, {len(meta['seeds'])} seed(s); points = "
                 f"0..{k} novel categories in the top {k}; stars = exploitation rows)", fontsize=9)
    fig.tight_layout()
    tmp = Path(out_png).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out_png)
    return Path(out_png)

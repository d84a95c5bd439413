"""From final lists to figures: per-user metrics, means over seeds, frontiers, hierarchical (seed x user) bootstrap
intervals, issue 25's targets (results.json; coea/evaluate/markdown.py renders them).

Everything here is a function of the written files (rankings, truth, meta), so :func:`recompute_from_files`
reproduces ``results.json`` exactly (tested).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coea.exploration import budget_list, own_list, slot_list
from coea.metrics import hierarchical_bootstrap, hierarchical_indices, hierarchical_means, per_user

LABELS = {
    "two_tower": "Two-Tower", "gru4rec": "GRU4Rec", "sasrec": "SASRec", "bert4rec": "BERT4Rec",
    "random": "Random", "popular": "Most popular", "ucb": "UCB", "hucb": "HUCB", "phucb": "pHUCB",
    "nlb": "NLB", "user_knn": "user-kNN", "item_knn": "item-kNN", "google_v1": "Google-v1", "google_v2": "Google-v2",
    "llm_kerec": "LLM-KERec",
    "coea": "CoEA", "wo_long": "CoEA w/o Long", "wo_short": "CoEA w/o Short", "wo_rllm": "CoEA w/o R-LLM",
    "wo_kl": "CoEA w/o KL", "coea@tuned": "CoEA (tau tuned)", "coea@matched_ncp": "CoEA (matched NCP)",
}
GROUPS = ("exploitation", "exploration", "operating_point", "ablation")
METRIC_FAMILIES = ("C-H", "C-N", "NCP", "CLTP")
VARIANT_FAMILIES = ("C-H-any", "NCP-recent")
TEST_FAMILIES = ("C-H-test", "C-N-new", "NA")  # test-based metrics (coea/metrics.py), where claims rest

Lists = dict[tuple[str, int], list[list[str]]]  # (method, seed) -> one list per user


# ----------------------------------------------------------------------------------------------------- lists


def table_lists(rankings: Lists, hist: Sequence[set[str]], meta: Mapping[str, Any]) -> Lists:
    """Table 2's lists: each method's own ranking (``policy: own``) or v1's slots in the base model's ranking."""
    out: Lists = {}
    length, groups = meta["list_length"], meta["groups"]
    for (method, seed), ranks in rankings.items():
        if method not in groups:
            continue
        if meta["policy"] == "slots" and groups[method] != "exploitation":
            base = rankings[(meta["base_model"], seed)]
            out[(method, seed)] = [slot_list(b, r, h, meta["slots"], length) for b, r, h in zip(base, ranks, hist)]
        else:
            out[(method, seed)] = [own_list(r, length) for r in ranks]
    return out


def budget_lists(rankings: Lists, hist: Sequence[set[str]], budget: int, meta: Mapping[str, Any]) -> Lists:
    return {key: [budget_list(r, h, budget, meta["budget_k"], meta["list_length"]) for r, h in zip(ranks, hist)]
            for key, ranks in rankings.items() if key[0] in meta["groups"]}


# ------------------------------------------------------------------------------------------------- metrics


def user_arrays(lists: Lists, truth: Sequence[Mapping], meta: Mapping[str, Any]) -> dict[tuple[str, int], dict]:
    """(method, seed) -> metric -> (U,) per-user values."""
    return {key: per_user(ls, truth, n_categories=meta["n_categories"], tail=set(meta["tail"]), ks=meta["ks"],
                          test_based=True)
            for key, ls in lists.items()}


def over_seeds(arrays: dict[tuple[str, int], dict]) -> dict[str, dict[str, dict[str, float]]]:
    """method -> metric -> {mean, std, seeds}: mean and population std over seeds of the per-seed user means
    (users with an undefined value -- NA for a user who adopts no new category -- are left out of that mean)."""
    by_method: dict[str, list[dict]] = {}
    for (method, _), a in sorted(arrays.items()):
        by_method.setdefault(method, []).append({m: _nanmean(v) for m, v in a.items()})
    return {method: {m: {"mean": float(np.mean([r[m] for r in runs])), "std": float(np.std([r[m] for r in runs])),
                         "seeds": len(runs)} for m in runs[0]} for method, runs in by_method.items()}


def _nanmean(v: np.ndarray) -> float:
    v = np.asarray(v, float)
    return float(v[~np.isnan(v)].mean()) if (~np.isnan(v)).any() else math.nan


def seed_user_arrays(arrays: dict[tuple[str, int], dict]) -> dict[str, dict[str, np.ndarray]]:
    """method -> metric -> (S, U): row s = the s-th seed in sorted order (the hierarchical bootstrap's input)."""
    by_method: dict[str, list[dict]] = {}
    for (method, _), a in sorted(arrays.items()):
        by_method.setdefault(method, []).append(a)
    return {method: {m: np.stack([r[m] for r in runs]) for m in runs[0]} for method, runs in by_method.items()}


def intervals(users: dict[str, dict[str, np.ndarray]], reference: str, idx: tuple[np.ndarray, np.ndarray],
              confidence: float, metrics: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """baseline -> metric -> hierarchical bootstrap {delta, lo, hi} of ``reference`` minus the baseline
    (``users``: method -> metric -> (S, U); ``idx``: the shared (seed, user) resamples)."""
    if reference not in users:
        return {}
    return {m: {name: hierarchical_bootstrap(users[reference][name], users[m][name], *idx, confidence)
                for name in metrics if name in users[m]} for m in users if m != reference}


# ------------------------------------------------------------------------------------------------ frontiers


def frontier_area(ncp: np.ndarray, cn: np.ndarray) -> float:
    """Normalised area under a frontier: trapezoid of C-N over NCP divided by the NCP span (the frontier's mean
    height); the single point's C-N when the span is 0. Points are sorted by NCP first."""
    order = np.argsort(ncp, kind="stable")
    x, y = np.asarray(ncp, float)[order], np.asarray(cn, float)[order]
    span = x[-1] - x[0]
    if span <= 0:
        return float(y.mean())
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0) / span)


def at_matched(ncp: np.ndarray, cn: np.ndarray, target: float) -> float:
    """C-N interpolated linearly on the frontier at NCP = target; NaN outside the frontier's NCP range."""
    order = np.argsort(ncp, kind="stable")
    x, y = np.asarray(ncp, float)[order], np.asarray(cn, float)[order]
    if not x[0] - 1e-12 <= target <= x[-1] + 1e-12:
        return math.nan
    return float(np.interp(target, x, y))


def frontier_summary(frontier_users: dict[str, dict[int, dict[str, np.ndarray]]], meta: Mapping[str, Any],
                     idx: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Per method: the frontier (budget -> mean metrics), its area and C-N at matched NCP; with ``idx`` (the
    shared (seed, user) resamples) also the hierarchical bootstrap of CoEA minus each method on both figures.

    ``frontier_users``: method -> budget -> metric -> (S, U) per-seed, per-user values.
    """
    k = meta["budget_k"]
    ncp_name, cn_name, tail_name = f"NCP@{k}", f"C-N@{k}", f"CLTP@{k}"
    target = meta["matched_budget"] / meta["n_categories"]
    out: dict[str, Any] = {"target_ncp": target, "methods": {}, "intervals": {}}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for method, by_budget in frontier_users.items():
        budgets = sorted(by_budget)
        names = [n for n in (ncp_name, cn_name, tail_name, "C-H@1", f"C-H@{k}", f"C-H-test@{k}", f"C-N-new@{k}",
                             f"NA@{k}") if n in by_budget[budgets[0]]]
        points = [{"budget": b, **{name: _nanmean(by_budget[b][name]) for name in names}} for b in budgets]
        ncp = np.array([p[ncp_name] for p in points])
        cn = np.array([p[cn_name] for p in points])
        out["methods"][method] = {"frontier": points, "area": frontier_area(ncp, cn),
                                  "cn_at_matched_ncp": at_matched(ncp, cn, target)}
        if idx is not None:  # (B, nb) resampled means
            curves[method] = (np.stack([hierarchical_means(by_budget[b][ncp_name], *idx) for b in budgets], 1),
                              np.stack([hierarchical_means(by_budget[b][cn_name], *idx) for b in budgets], 1))
    if idx is not None and "coea" in curves:
        tail = (1.0 - meta["confidence"]) / 2.0

        def boot(method: str, fn) -> np.ndarray:
            x, y = curves[method]
            return np.array([fn(x[i], y[i]) for i in range(len(x))])

        ref_area, ref_cn = boot("coea", frontier_area), boot("coea", lambda x, y: at_matched(x, y, target))
        for method in curves:
            if method == "coea":
                continue
            res = {}
            for name, ref, fn in (("area", ref_area, frontier_area),
                                  ("cn_at_matched_ncp", ref_cn, lambda x, y: at_matched(x, y, target))):
                d = ref - boot(method, fn)
                d = d[~np.isnan(d)]
                delta = out["methods"]["coea"][name] - out["methods"][method][name]
                res[name] = {"delta": float(delta),
                             "lo": float(np.quantile(d, tail)) if d.size else math.nan,
                             "hi": float(np.quantile(d, 1.0 - tail)) if d.size else math.nan}
            out["intervals"][method] = res
        # equal novelty: at budget matched_budget every list holds the same number of new categories, so the
        # test-based metrics compare which new categories each method picks (CoEA minus each method, paired)
        b = meta["matched_budget"]
        ref = frontier_users["coea"].get(b, {})
        out["at_matched_budget"] = {"budget": b, "intervals": {
            m: {name: hierarchical_bootstrap(ref[name], by_budget[b][name], *idx, meta["confidence"])
                for name in (f"NA@{k}", f"C-N-new@{k}", f"C-H-test@{k}", cn_name) if name in ref}
            for m, by_budget in frontier_users.items() if m != "coea" and b in by_budget}}
    return out


# ------------------------------------------------------------------------------------------------- results


def compute_results(rankings: Lists, truth: Sequence[Mapping], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Every figure of results.json from the test rankings, the truth rows and meta (see module docstring)."""
    hist = [set(t["hist"]) for t in truth]
    ks, k = meta["ks"], meta["budget_k"]
    idx = hierarchical_indices(len(meta["seeds"]), len(truth), meta["bootstrap"], meta["bootstrap_seed"])
    names = [f"{fam}@{x}" for fam in (*METRIC_FAMILIES, *TEST_FAMILIES, *VARIANT_FAMILIES) for x in ks]

    table = user_arrays(table_lists(rankings, hist, meta), truth, meta)
    result: dict[str, Any] = {"table": over_seeds(table)}
    stacked = seed_user_arrays(table)
    result["intervals"] = intervals(stacked, "coea", idx, meta["confidence"], names)

    frontier_users: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for b in range(k + 1):
        for method, arrays in seed_user_arrays(user_arrays(budget_lists(rankings, hist, b, meta), truth,
                                                           meta)).items():
            if meta["groups"].get(method) in ("exploration", "ablation"):
                frontier_users.setdefault(method, {})[b] = arrays
    result["summary"] = frontier_summary(frontier_users, meta, idx)
    result["improvement_percent"] = improvement(result["table"], meta["groups"])
    result["targets"] = targets(result, meta)
    result["kept_candidates"] = kept_summary(meta.get("kept", {}))
    result["targets_v3"] = targets_v3(result, stacked, frontier_users, meta, idx)
    return clean(result)


def clean(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars unwrapped, NaN / inf -> None (so results compare equal after a round trip)."""
    if isinstance(obj, Mapping):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def improvement(results: Mapping[str, Mapping[str, Mapping[str, float]]],
                groups: Mapping[str, str]) -> dict[str, float | None]:
    """Improv. (%) of CoEA over the best non-CoEA baseline (exploitation or exploration row) for each metric."""
    if "coea" not in results:
        return {}
    baselines = [m for m, g in groups.items() if g in ("exploitation", "exploration") and m != "coea" and m in results]
    out: dict[str, float | None] = {}
    for metric, v in results["coea"].items():
        best = max((results[m][metric]["mean"] for m in baselines if metric in results[m]), default=None)
        out[metric] = None if not best else 100.0 * (v["mean"] - best) / best
    return out


def targets(result: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's targets, measured on Table 2 (each method's own list) and the frontier summary.

    - CoEA's C-N@k at matched NCP@k (and frontier area) above every exploration baseline's beyond the interval;
    - CoEA's NCP@k and CLTP@k >= 10% above the best exploration baseline's;
    - CoEA's C-H@1 within 1% of the best exploitation row's.
    """
    k = meta["budget_k"]
    groups, table = meta["groups"], result["table"]
    explo = [m for m, g in groups.items() if g == "exploration" and m != "coea" and m in table]
    exploit = [m for m, g in groups.items() if g == "exploitation" and m in table]
    out: dict[str, Any] = {}
    if "coea" not in table:
        return out
    iv = result["summary"]["intervals"]
    out["matched_ncp_beats_every_exploration_baseline"] = bool(explo) and all(
        (iv.get(m, {}).get("cn_at_matched_ncp", {}).get("lo") or -1) > 0 for m in explo)
    out["area_beats_every_exploration_baseline"] = bool(explo) and all(
        (iv.get(m, {}).get("area", {}).get("lo") or -1) > 0 for m in explo)
    for name in (f"NCP@{k}", f"CLTP@{k}"):
        if explo:
            best = max(explo, key=lambda m: table[m][name]["mean"])
            ref = table[best][name]["mean"]
            out[f"{name}_vs_best_exploration"] = {
                "best": best, "gain_percent": 100.0 * (table["coea"][name]["mean"] - ref) / ref if ref else None}
    if exploit:
        best = max(exploit, key=lambda m: table[m]["C-H@1"]["mean"])
        ref = table[best]["C-H@1"]["mean"]
        out["C-H@1_vs_best_exploitation"] = {
            "best": best, "gain_percent": 100.0 * (table["coea"]["C-H@1"]["mean"] - ref) / ref if ref else None}
    return out


def kept_summary(kept: Mapping[str, Mapping[str, Sequence[int]]]) -> dict[str, dict[str, float]]:
    """row -> {"mean", "median", "zero_share"} of the candidates the Relevance filter kept per test user, pooled
    over seeds (``meta["kept"]``: row -> seed -> one count per user)."""
    out = {}
    for row, per_seed in kept.items():
        v = np.concatenate([np.asarray(x, float) for x in per_seed.values()]) if per_seed else np.zeros(0)
        if v.size:
            out[row] = {"mean": float(v.mean()), "median": float(np.median(v)), "zero_share": float((v == 0).mean())}
    return out


def targets_v3(result: Mapping[str, Any], stacked: Mapping[str, Mapping[str, np.ndarray]],
               frontier_users: Mapping[str, Mapping[int, Mapping[str, np.ndarray]]], meta: Mapping[str, Any],
               idx: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Issue 25's targets, on the test-based metrics, each with its hierarchical interval; reported either way.

    - ``production``: CoEA's own list (the served operating point) minus the best exploration baseline on NA@k,
      C-N@k, C-N-new@k and C-H-test@k (k = budget_k; best = the baseline with the highest mean of that metric);
    - ``matched_cn``: CoEA's NCP@k and CLTP@k on its novelty-budget frontier, interpolated at the C-N@k of the
      exploration baseline with the best C-N@k, minus that baseline's own NCP@k and CLTP@k (NaN outside CoEA's
      frontier: CoEA never reaches that accuracy); ``matched_cn_each``: the same against every exploration
      baseline. The interval resamples seeds and users together on both sides.
    """
    k, conf = meta["budget_k"], meta["confidence"]
    table = result["table"]
    explo = [m for m, g in meta["groups"].items() if g == "exploration" and m != "coea" and m in table]
    if "coea" not in table or not explo:
        return {}
    out: dict[str, Any] = {"production": {}, "matched_cn": {}}
    for name in (f"NA@{k}", f"C-N@{k}", f"C-N-new@{k}", f"C-H-test@{k}"):
        best = max(explo, key=lambda m: -math.inf if table[m][name]["mean"] is None or
                   math.isnan(table[m][name]["mean"]) else table[m][name]["mean"])
        iv = result["intervals"].get(best, {}).get(name, {})
        out["production"][name] = {"coea": table["coea"][name]["mean"], "best": best,
                                   "best_value": table[best][name]["mean"], **iv,
                                   "met": bool(iv.get("lo") is not None and iv["lo"] > 0)}
    if "coea" not in frontier_users:
        return out
    cn, tail = f"C-N@{k}", (1.0 - conf) / 2.0
    fr = frontier_users["coea"]
    budgets = sorted(fr)
    bx = np.stack([hierarchical_means(fr[b][cn], *idx) for b in budgets], 1)  # (B, nb) resampled frontier C-N
    curve_x = np.array([_nanmean(fr[b][cn]) for b in budgets])

    def matched(ref: str, name: str) -> dict[str, Any]:
        curve_y = np.array([_nanmean(fr[b][name]) for b in budgets])
        at = at_matched(curve_x, curve_y, table[ref][cn]["mean"])
        by = np.stack([hierarchical_means(fr[b][name], *idx) for b in budgets], 1)
        rx, ry = hierarchical_means(stacked[ref][cn], *idx), hierarchical_means(stacked[ref][name], *idx)
        d = np.array([at_matched(bx[i], by[i], rx[i]) - ry[i] for i in range(len(rx))])
        d = d[~np.isnan(d)]
        lo, hi = (float(np.quantile(d, tail)), float(np.quantile(d, 1 - tail))) if d.size else (math.nan, math.nan)
        return {"baseline": ref, "matched_cn": table[ref][cn]["mean"], "coea": at,
                "baseline_value": table[ref][name]["mean"], "delta": at - table[ref][name]["mean"], "lo": lo, "hi": hi,
                "resamples_in_range": int(d.size), "met": bool(math.isfinite(at) and d.size and lo > 0)}

    best = max(explo, key=lambda m: table[m][cn]["mean"])
    out["matched_cn"] = {name: matched(best, name) for name in (f"NCP@{k}", f"CLTP@{k}")}
    out["matched_cn_each"] = {m: {name: matched(m, name) for name in (f"NCP@{k}", f"CLTP@{k}")} for m in explo}
    return out


# ----------------------------------------------------------------------------------------------------- files


def read_files(out: str | Path) -> tuple[Lists, list[dict], dict]:
    """(rankings, truth rows, meta) from an evaluation directory."""
    out = Path(out)
    meta = json.loads((out / "meta.json").read_text())
    truth = [json.loads(line) for line in (out / "ground_truth.jsonl").read_text().splitlines() if line.strip()]
    row = {t["user"]: i for i, t in enumerate(truth)}
    rows = [{"pref": set(t["pref"]), "hist": set(t["hist"]), "clicked": set(t["clicked"]),
             "recent": set(t["recent"])} for t in truth]
    rankings: Lists = {}
    for line in (out / "rankings.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rankings.setdefault((r["method"], r["seed"]), [[] for _ in truth])[row[r["user"]]] = r["ranking"]
    return rankings, rows, meta


def recompute_from_files(out: str | Path) -> dict[str, Any]:
    """results.json recomputed from rankings.jsonl, ground_truth.jsonl and meta.json alone."""
    rankings, truth, meta = read_files(out)
    return json.loads(json.dumps(compute_results(rankings, truth, meta)))

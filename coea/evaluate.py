"""Offline evaluation (``coea evaluate``): the paper's Table 2 on a temporal split. See docs/evaluation.md.

    split        global cut points t_valid < t_test on the timeline (eval.valid_fraction, eval.test_fraction)
    truth        per test user: C_u^pref (categories of I_long at t_test), C_u^hist (categories of the last
                 hist_k clicks before t_test), clicked (categories clicked at or after t_test); the long tail
                 (bottom eval.tail_fraction of categories by clicks before t_test) and |C|
    exploitation two-tower, GRU4Rec, SASRec, BERT4Rec trained before t_valid, best epoch on [t_valid, t_test),
                 each user's category ranking from the item ranking at t_test (coea/exploitation.py)
    exploration  random, popular, UCB, Google-v1, CoEA and the ablations choose novel categories; each is placed
                 into the same slots of the base model's ranking (coea/exploration.py)
    files        results.json, results.md, recommendations.jsonl, ground_truth.jsonl, meta.json: the metrics can
                 be recomputed from the files alone (:func:`recompute_from_files`)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coea.config import Config
from coea.metrics import evaluate_users, long_tail_categories

log = logging.getLogger("coea.evaluate")

LABELS = {
    "two_tower": "Two-Tower", "gru4rec": "GRU4Rec", "sasrec": "SASRec", "bert4rec": "BERT4Rec",
    "random": "Random", "popular": "Most popular", "ucb": "UCB bandit", "google_v1": "Google-v1 (LLM)",
    "coea": "CoEA", "wo_long": "CoEA w/o Long", "wo_short": "CoEA w/o Short", "wo_rllm": "CoEA w/o R-LLM",
    "wo_kl": "CoEA w/o KL",
}
GROUPS = ("exploitation", "exploration", "ablation")
METRIC_FAMILIES = ("C-H", "C-N", "NCP", "CLTP")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def ks_of(cfg: Config) -> list[int]:
    return sorted({int(k) for k in _csv(cfg.eval.ks)})


def seeds_of(cfg: Config) -> list[int]:
    return [int(s) for s in _csv(cfg.eval.seeds)]


# ------------------------------------------------------------------------------------------------------ protocol


@dataclasses.dataclass
class Split:
    start: int
    valid: int  # t_valid: item models train on clicks before it
    test: int  # t_test: truth = clicks at or after it; every method sees the state before it
    end: int


def temporal_split(cfg: Config, inter) -> Split:
    """Global cut points by time (docs/evaluation.md explains why global, not per user)."""
    ts = inter.events["timestamp"]
    start, end = int(ts.min()), int(ts.max()) + 1
    vf = cfg.eval.valid_fraction or cfg.data.bootstrap_fraction
    valid = start + int(vf * (end - start))
    test = start + int(cfg.eval.test_fraction * (end - start))
    if not start < valid < test < end:
        raise ValueError(f"eval: need 0 < valid_fraction ({vf}) < test_fraction ({cfg.eval.test_fraction}) < 1")
    return Split(start, valid, test, end)


@dataclasses.dataclass
class Truth:
    """Ground truth of the test users (parallel lists) and the catalogue facts the metrics need."""

    users: list[str]
    pref: list[set[str]]
    hist: list[set[str]]
    clicked: list[set[str]]
    tail: set[str]
    categories: list[str]

    def rows(self) -> list[dict[str, set[str]]]:
        return [{"pref": p, "hist": h, "clicked": c} for p, h, c in zip(self.pref, self.hist, self.clicked)]


def ground_truth(cfg: Config, inter, split: Split, seqs_test) -> Truth:
    """Test users = users with a click before t_test and one at or after it (optionally a fixed sample)."""
    from coea.data.sequences import build_sequences, click_categories_by_user

    hist_k = cfg.eval.hist_k or cfg.data.short_k
    hist_seqs = seqs_test if hist_k == cfg.data.short_k else build_sequences(
        inter, dataclasses.replace(cfg.data, short_k=hist_k), cutoff=split.test)
    after = click_categories_by_user(inter, start=split.test)
    before = click_categories_by_user(inter, end=split.test)
    item_cat = {i + 1: inter.item_category.get(v) for i, v in enumerate(seqs_test.item_vocab)}
    row_of = {u: i for i, u in enumerate(seqs_test.user_ids)}
    users = sorted(u for u in after if u in before and u in row_of)
    if cfg.eval.max_users and len(users) > cfg.eval.max_users:
        rng = np.random.default_rng(cfg.run.seed)
        users = sorted(rng.choice(users, cfg.eval.max_users, replace=False).tolist())
    counts = {c: 0 for c in inter.categories}
    for clicks in before.values():
        for _, c in clicks:
            counts[c] = counts.get(c, 0) + 1
    return Truth(
        users=users,
        pref=[{item_cat[j] for j in seqs_test.long_items[row_of[u]]} for u in users],
        hist=[set(hist_seqs.short_categories[row_of[u]]) for u in users],
        clicked=[{c for _, c in after[u]} for u in users],
        tail=long_tail_categories(counts, cfg.eval.tail_fraction),
        categories=list(inter.categories),
    )


def item_data(cfg: Config, inter, split: Split):
    """The item models' sequences (coea/exploitation.py ItemData) and the row of every user."""
    from coea.data.sequences import build_sequences
    from coea.exploitation import ItemData

    data_cfg = cfg.data if cfg.eval.item_sequences == "long" else dataclasses.replace(cfg.data, tau=1)
    train = build_sequences(inter, data_cfg, cutoff=split.valid)
    test = build_sequences(inter, data_cfg, cutoff=split.test)
    code = {v: i + 1 for i, v in enumerate(test.item_vocab)}
    cat_index = {c: i for i, c in enumerate(inter.categories)}
    item_category = [0] + [cat_index.get(inter.item_category.get(v), 0) for v in test.item_vocab]
    ev = inter.events
    clicks = ev[(ev["event"] == "click") & (ev["timestamp"] >= split.valid) & (ev["timestamp"] < split.test)]
    first = clicks.drop_duplicates("user_id")  # events are in time order
    first_item = dict(zip(first["user_id"].astype(str), first["item_id"].astype(str)))
    data = ItemData(
        n_items=len(test.item_vocab), train=[list(s) for s in train.long_items],
        valid_target=[code.get(first_item.get(u, ""), 0) for u in train.user_ids],
        test=[list(s) for s in test.long_items], features=np.asarray(test.features, dtype=np.int64),
        feature_cardinalities=list(test.feature_cardinalities), item_category=item_category,
        n_categories=len(inter.categories))
    return data, {u: i for i, u in enumerate(test.user_ids)}


# ---------------------------------------------------------------------------------------------------- workdirs


def variant_workdir(cfg: Config, workdir: Path, seed: int, variant: str) -> Path | None:
    """Where the CoEA (``variant='coea'``) or an ablation workdir of ``seed`` lives; None when absent.

    Layouts: a benchmark root ``W/seed<S>/<variant>``; or a single CoEA workdir W (used for every seed) with
    ablations at ``eval.variants_dir/<variant>`` or, by default, its siblings ``W-<variant>``.
    """
    workdir = Path(workdir)
    candidates = [workdir / f"seed{seed}" / variant]
    if variant == "coea":
        candidates.append(workdir)
    elif cfg.eval.variants_dir:
        candidates += [Path(cfg.eval.variants_dir) / f"seed{seed}" / variant, Path(cfg.eval.variants_dir) / variant]
    else:
        candidates.append(workdir.parent / f"{workdir.name}-{variant}")
    from coea.exploration import promoted_round

    for c in candidates:
        if (c / "state.json").exists() and promoted_round(c) is not None:
            return c
    return None


def workdir_config(cfg: Config, workdir: Path) -> Config:
    """The config a workdir was trained with (its newest stage's config.yaml), data section from ``cfg``."""
    from coea.config import load_config

    saved = sorted(Path(workdir).glob("rounds/*/*/config.yaml"))
    if not saved:
        return cfg
    wcfg = load_config(saved[-1])
    wcfg.data, wcfg.synthetic, wcfg.eval, wcfg.run = cfg.data, cfg.synthetic, cfg.eval, cfg.run
    return wcfg


# ------------------------------------------------------------------------------------------------- aggregation


def aggregate(recs: dict[tuple[str, int], list[list[str]]], truth_rows: list[dict[str, set[str]]], *,
              n_categories: int, tail: set[str], ks: Sequence[int]) -> dict[str, dict[str, dict[str, float]]]:
    """method -> metric -> {mean, std} over seeds (population std; 0 with one seed) of the per-seed user means."""
    per_seed: dict[str, list[dict[str, float]]] = {}
    for (method, _seed), lists in sorted(recs.items()):
        per_seed.setdefault(method, []).append(
            evaluate_users(lists, truth_rows, n_categories=n_categories, tail=tail, ks=ks))
    out = {}
    for method, runs in per_seed.items():
        out[method] = {m: {"mean": float(np.mean([r[m] for r in runs])), "std": float(np.std([r[m] for r in runs]))}
                       for m in runs[0]}
    return out


def recompute_from_files(out: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    """results.json recomputed from recommendations.jsonl, ground_truth.jsonl and meta.json alone."""
    out = Path(out)
    meta = json.loads((out / "meta.json").read_text())
    truth = [json.loads(line) for line in (out / "ground_truth.jsonl").read_text().splitlines() if line.strip()]
    row = {t["user"]: i for i, t in enumerate(truth)}
    truth_rows = [{"pref": set(t["pref"]), "hist": set(t["hist"]), "clicked": set(t["clicked"])} for t in truth]
    recs: dict[tuple[str, int], list[list[str]]] = {}
    for line in (out / "recommendations.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            recs.setdefault((r["method"], r["seed"]), [[] for _ in truth])[row[r["user"]]] = r["ranked"]
    return aggregate(recs, truth_rows, n_categories=meta["n_categories"], tail=set(meta["tail"]), ks=meta["ks"])


def improvement(results: dict[str, dict[str, dict[str, float]]], groups: dict[str, str]) -> dict[str, float | None]:
    """Improv. (%) of CoEA over the best non-CoEA baseline (exploitation or exploration row) for each metric."""
    if "coea" not in results:
        return {}
    baselines = [m for m, g in groups.items() if g in ("exploitation", "exploration") and m != "coea" and m in results]
    out: dict[str, float | None] = {}
    for metric, v in results["coea"].items():
        best = max((results[m][metric]["mean"] for m in baselines), default=None)
        out[metric] = None if not best else 100.0 * (v["mean"] - best) / best
    return out


def table_markdown(results: dict[str, dict[str, dict[str, float]]], groups: dict[str, str], ks: Sequence[int],
                   *, title: str = "") -> str:
    """Table 2's layout: one row per method in groups, metric families x K as columns, then Improv."""
    cols = [f"{fam}@{k}" for fam in METRIC_FAMILIES for k in ks]
    lines = [f"### {title}", ""] if title else []
    lines += ["| Group | Method | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for group in GROUPS:
        for method, g in groups.items():
            if g != group or method not in results:
                continue
            r = results[method]
            cells = [f"{r[c]['mean']:.4f} ± {r[c]['std']:.4f}" if c in r else "–" for c in cols]
            label = f"**{LABELS.get(method, method)}**" if method == "coea" else LABELS.get(method, method)
            lines.append(f"| {group} | {label} | " + " | ".join(cells) + " |")
    imp = improvement(results, groups)
    if imp:
        lines.append("| | Improv. | " + " | ".join("–" if imp.get(c) is None else f"{imp[c]:+.2f}%" for c in cols)
                     + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ entry point


def run_evaluate(cfg: Config, workdir: Path, out: Path) -> dict[str, Any]:
    """Evaluate every configured method over ``eval.seeds`` and write the result files into ``out``.

    Args:
        cfg: the resolved config (``eval`` section plus the data set).
        workdir: a CoEA workdir, or a benchmark root with ``seed<S>/<variant>/`` workdirs (see
            :func:`variant_workdir`). Rows whose workdir is missing are skipped and listed in meta.json.
        out: output directory (created).

    Returns:
        A summary: users, seeds, the split, results (method -> metric -> {mean, std}), skipped rows, timings.
    """
    import torch

    from coea.data.loaders import load_interactions
    from coea.data.sequences import build_sequences
    from coea.exploitation import MODELS, rank_categories_with
    from coea.exploration import parse_slots, place_in_slots
    from coea.workdir import resolve_device

    t0 = time.perf_counter()
    out, workdir = Path(out), Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if cfg.eval.num_threads:
        torch.set_num_threads(cfg.eval.num_threads)
    try:
        ev = cfg.eval
        ks, seeds = ks_of(cfg), seeds_of(cfg)
        length = max(ev.list_length, max(ks))
        slots = parse_slots(ev.slots, length)
        exploitation, exploration, ablations = _csv(ev.exploitation), _csv(ev.exploration), _csv(ev.ablations)
        for m in exploitation:
            if m not in MODELS:
                raise ValueError(f"eval.exploitation: unknown model {m!r} (known: {', '.join(MODELS)})")
        device = resolve_device(cfg.run.device)

        inter = load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)
        split = temporal_split(cfg, inter)
        seqs_test = build_sequences(inter, cfg.data, cutoff=split.test)
        truth = ground_truth(cfg, inter, split, seqs_test)
        if not truth.users:
            raise ValueError("eval: no user clicks both before and after the test cut")
        log.info("evaluate: %d test users, split %s, %d seeds", len(truth.users), split, len(seeds))
        data, row_of = item_data(cfg, inter, split)
        rows = [row_of[u] for u in truth.users]
        n_novel = len(slots)

        ev_before = inter.events[inter.events["timestamp"] < split.test]
        cats = ev_before["item_id"].map(inter.item_category)
        clicks = cats[ev_before["event"] == "click"].value_counts().to_dict()
        shows = cats.value_counts().to_dict()
        clicks = {c: int(clicks.get(c, 0)) for c in inter.categories}
        shows = {c: int(shows.get(c, 0)) for c in inter.categories}

        groups = {**{m: "exploitation" for m in exploitation}, **{m: "exploration" for m in exploration},
                  **{m: "ablation" for m in ablations}}
        recs: dict[tuple[str, int], list[list[str]]] = {}
        fits: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        sources: dict[str, Any] = {}
        llm_cache: dict[tuple[str, str], list[list[str]]] = {}
        for seed in seeds:
            rankings = {}
            for name in dict.fromkeys([*exploitation, ev.base_model]):
                t = time.perf_counter()
                rankings[name], fit = rank_categories_with(name, data, truth.categories, ev, seed=seed, users=rows)
                fits[f"{name}/seed{seed}"] = {"loss": [round(x, 4) for x in fit.losses], "valid_hit@10": fit.valid_hit,
                                              "best_epoch": fit.best_epoch, "time_s": round(time.perf_counter() - t, 1)}
                log.info("seed %d %s: loss %.3f -> %.3f, valid hit@10 %.3f (epoch %d) in %.0fs", seed, name,
                         fit.losses[0], fit.losses[-1], max(fit.valid_hit or [0]), fit.best_epoch,
                         time.perf_counter() - t)
            for name in exploitation:
                recs[(name, seed)] = [r[:length] for r in rankings[name]]
            base = rankings[ev.base_model]

            novel: dict[str, list[list[str]] | None] = {}
            for method in [*exploration, *ablations]:
                try:
                    novel[method] = _novel(method, cfg, workdir, seed, seqs_test, truth, n_novel, device,
                                           clicks, shows, llm_cache, sources)
                except FileNotFoundError as exc:
                    novel[method] = None
                    skipped[method] = str(exc)
                    log.warning("evaluate: %s skipped (%s)", method, exc)
            for method, lists in novel.items():
                if lists is not None:
                    recs[(method, seed)] = [place_in_slots(b, n, slots, length) for b, n in zip(base, lists)]
        # a row is reported only when every seed produced it
        for method in {m for m, _ in recs}:
            if any((method, s) not in recs for s in seeds):
                for s in seeds:
                    recs.pop((method, s), None)
                skipped.setdefault(method, "missing for some seeds")
        groups = {m: g for m, g in groups.items() if any(k[0] == m for k in recs)}
        results = aggregate(recs, truth.rows(), n_categories=len(truth.categories), tail=truth.tail, ks=ks)
        meta = {"ks": ks, "seeds": seeds, "n_categories": len(truth.categories), "categories": truth.categories,
                "tail": sorted(truth.tail), "split": dataclasses.asdict(split), "users": len(truth.users),
                "groups": groups, "slots": slots, "list_length": length, "base_model": ev.base_model,
                "skipped": skipped, "sources": sources, "fits": fits, "eval_config": dataclasses.asdict(ev),
                "improvement_percent": improvement(results, groups)}
        _write(out, truth, recs, results, meta, ks)
        elapsed = round(time.perf_counter() - t0, 1)
        log.info("evaluate: wrote %s in %.0fs", out, elapsed)
        return {"out": str(out), "users": len(truth.users), "seeds": seeds, "split": dataclasses.asdict(split),
                "results": results, "skipped": skipped, "time_s": elapsed}
    finally:
        torch.set_num_threads(threads)


def _novel(method: str, cfg: Config, workdir: Path, seed: int, seqs_test, truth: Truth, n: int, device: str,
           clicks: dict[str, int], shows: dict[str, int], llm_cache: dict, sources: dict) -> list[list[str]]:
    """Novel categories of one exploration or ablation method for every test user (raises FileNotFoundError)."""
    from coea.exploration import (
        by_score_unexplored,
        random_unexplored,
        round0_unexplored,
        ucb_scores,
    )

    hist = truth.hist
    if method == "random":
        return random_unexplored(hist, truth.categories, n, seed)
    if method == "popular":
        return by_score_unexplored(hist, clicks, n)
    if method == "ucb":
        return by_score_unexplored(hist, ucb_scores(clicks, shows, cfg.eval.ucb_c), n)
    if method in ("google_v1", "wo_rllm"):
        wd = variant_workdir(cfg, workdir, seed, method) if method == "wo_rllm" else None
        if wd is not None:  # a workdir trained with the w/o R-LLM overrides: read it like CoEA's
            return _coea(cfg, wd, seqs_test, truth, n, device, llm_cache, sources, f"{method}/seed{seed}")
        wd = variant_workdir(cfg, workdir, seed, "coea")
        if wd is None:
            raise FileNotFoundError(f"no CoEA workdir for seed {seed} under {workdir}")
        key = (str(wd), method)
        if key not in llm_cache:
            llm_cache[key] = round0_unexplored(workdir_config(cfg, wd), wd, seqs_test, truth.users, hist,
                                               truth.categories, n, device, portrait=method == "wo_rllm")
        sources[f"{method}/seed{seed}"] = {"workdir": str(wd), "round": 0}
        return llm_cache[key]
    if method == "coea" or method.startswith("wo_"):
        wd = variant_workdir(cfg, workdir, seed, method)
        if wd is None:
            raise FileNotFoundError(f"no {method} workdir for seed {seed} (see docs/evaluation.md)")
        return _coea(cfg, wd, seqs_test, truth, n, device, llm_cache, sources, f"{method}/seed{seed}")
    raise ValueError(f"eval: unknown method {method!r}")


def _coea(cfg: Config, wd: Path, seqs_test, truth: Truth, n: int, device: str, llm_cache: dict, sources: dict,
          name: str) -> list[list[str]]:
    from coea.exploration import coea_unexplored

    key = (str(wd), "kv")
    if key not in llm_cache:
        res = coea_unexplored(workdir_config(cfg, wd), wd, seqs_test, truth.users, truth.hist, truth.categories, n,
                              device)
        llm_cache[key] = res.novel
        sources[name] = {"workdir": str(wd), "round": res.round, **res.stats}
    else:
        sources[name] = {"workdir": str(wd), "cached": True}
    return llm_cache[key]


def _write(out: Path, truth: Truth, recs: dict, results: dict, meta: dict, ks: Sequence[int]) -> None:
    from coea.workdir import write_json

    with open(out / "ground_truth.jsonl", "w") as f:
        f.writelines(json.dumps({"user": u, "pref": sorted(p), "hist": sorted(h), "clicked": sorted(c)}) + "\n" for u, p, h, c in zip(truth.users, truth.pref, truth.hist, truth.clicked))
    with open(out / "recommendations.jsonl", "w") as f:
        for (method, seed), lists in sorted(recs.items()):
            f.writelines(json.dumps({"user": u, "method": method, "seed": seed, "ranked": ranked}) + "\n" for u, ranked in zip(truth.users, lists))
    write_json(out / "meta.json", meta)
    write_json(out / "results.json", results)
    title = f"Table 2 ({meta['users']} test users, {len(meta['seeds'])} seed(s), mean ± std)"
    (out / "results.md").write_text(table_markdown(results, meta["groups"], ks, title=title))

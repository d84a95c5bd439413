"""``coea evaluate``: Table 2 under evaluation v3, top to bottom (docs/evaluation.md).

    split        every event is train / valid / test (coea/evaluate/split.py; per user by default)
    phases       "valid" (state = train) chooses every hyper-parameter; "test" (state = train + valid) is reported
    leak check   a workdir whose models trained on a held-out event of a phase is refused (LeakError)
    rankings     every method ranks the whole catalogue for every user at each phase (coea/evaluate/methods.py):
                 exploitation  item models trained on the train part (coea/exploitation.py)
                 exploration   random, popular, UCB, HUCB, pHUCB, NLB, user-kNN, item-kNN, Google-v1, Google-v2,
                               LLM-KERec, CoEA
                 ablations     CoEA w/o Long / Short / R-LLM / KL (their own workdirs)
    tuning       each method's grid value with the best validation frontier area, tau_align by eval.tau_objective
                 (never the test part); CoEA at its operating points (production, tau tuned, matched NCP)
    files        rankings.jsonl, recommendations.jsonl, ground_truth.jsonl, meta.json -> results.json, results.md,
                 frontier.png (coea/evaluate/report.py; results.json is recomputed from the files alone);
                 cache/seed<S>/<method>.json lets an interrupted run resume
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from coea.config import Config
from coea.data.loaders import load_interactions
from coea.data.sequences import build_sequences
from coea.evaluate.markdown import plot_frontiers, results_markdown
from coea.evaluate.methods import (
    DUAL, GRIDS, KNOWN, POINTS, Methods, csv_list, evaluate_method, ks_of, lists_metrics, seeds_of,
)
from coea.evaluate.report import compute_results, table_lists
from coea.evaluate.split import (
    TEST, TRAIN, VALID, Phase, Split, assert_unseen, build_phase, make_split, subset, workdir_config,
)
from coea.exploitation import MODELS, ItemData, fit_model, rank_with
from coea.exploration import own_list, parse_slots
from coea.exploration.llm import dual_ranking, dual_scores, keys_for, load_round
from coea.rounds import read_state
from coea.workdir import progress, resolve_device, write_json

log = logging.getLogger("coea.evaluate")

# -------------------------------------------------------------------------------------------------- item data


def item_data(cfg: Config, inter, split: Split):
    """The item models' data (coea/exploitation.py ItemData): train = train-part clicks, valid_target = each
    user's first valid click, test = train + valid clicks (the test phase's input)."""
    data_cfg = cfg.data if cfg.eval.item_sequences == "long" else dataclasses.replace(cfg.data, tau=1)
    train = build_sequences(subset(inter, split.part == TRAIN), data_cfg)
    test = build_sequences(subset(inter, split.part < TEST), data_cfg)
    code = {v: i + 1 for i, v in enumerate(test.item_vocab)}
    cat_index = {c: i for i, c in enumerate(inter.categories)}
    category_of = inter.item_category  # read once: O(items) for the whole catalogue
    item_category = [0] + [cat_index.get(category_of.get(v), 0) for v in test.item_vocab]
    ev = inter.events
    clicks = ev[(split.part == VALID) & (ev["event"] == "click").to_numpy()]
    first = clicks.drop_duplicates("user_id")  # events are in time order
    first_item = dict(zip(first["user_id"].astype(str), first["item_id"].astype(str)))
    data = ItemData(
        n_items=len(test.item_vocab), train=[list(s) for s in train.long_items],
        valid_target=[code.get(first_item.get(u, ""), 0) for u in train.user_ids],
        test=[list(s) for s in test.long_items], features=np.asarray(test.features, dtype=np.int64),
        feature_cardinalities=list(test.feature_cardinalities), item_category=item_category,
        n_categories=len(inter.categories))
    return data, {u: i for i, u in enumerate(test.user_ids)}


# ------------------------------------------------------------------------------------------------ entry point


def run_evaluate(cfg: Config, workdir: Path, out: Path) -> dict[str, Any]:
    """Evaluate every configured method over ``eval.seeds`` and write the result files into ``out``.

    Args:
        cfg: the resolved config (``eval`` section plus the data set).
        workdir: a CoEA workdir, or a benchmark root with ``seed<S>/<variant>/`` workdirs (see
            :func:`variant_workdir`). Rows whose workdir is missing are skipped and listed in meta.json; a workdir
            whose models saw a held-out event raises :class:`coea.evaluate.split.LeakError`.
        out: output directory (created).

    Returns:
        A summary: users, seeds, the split, Table 2 (method -> metric -> {mean, std}), skipped rows, timings.
    """
    import torch

    t0 = time.perf_counter()
    out, workdir = Path(out), Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if cfg.eval.num_threads:
        torch.set_num_threads(cfg.eval.num_threads)
    try:
        ev = cfg.eval
        ks, seeds = ks_of(cfg), seeds_of(cfg)
        k, length = ev.budget_k, max(ev.list_length, max(ks))
        exploitation, exploration = csv_list(ev.exploitation), csv_list(ev.exploration)
        ablations = csv_list(ev.ablations)
        for m in exploitation:
            if m not in MODELS:
                raise ValueError(f"eval.exploitation: unknown model {m!r} (known: {', '.join(MODELS)})")
        for m in (*exploration, *ablations):
            if m not in KNOWN:
                raise ValueError(f"eval: unknown method {m!r} (known: {', '.join(KNOWN)})")
        device = resolve_device(cfg.run.device)

        inter = load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)
        split = make_split(cfg, inter)
        phases = {name: build_phase(cfg, inter, split, name, ev.max_users) for name in ("valid", "test")}
        if not phases["test"].users:
            raise ValueError("eval: no user has enough clicks for the split (lower eval.test_clicks / "
                             "eval.min_train_clicks, or check the data)")
        log.info("evaluate: %d test users (%s split), %d seeds", len(phases["test"].users), split.kind, len(seeds))
        data, row_of = item_data(cfg, inter, split)
        rows = {name: [row_of[u] for u in p.users] for name, p in phases.items()}

        groups = {**{m: "exploitation" for m in exploitation}, **{m: "exploration" for m in exploration},
                  **{m: "ablation" for m in ablations}}
        rankings: dict[tuple[str, int], list[list[str]]] = {}
        chosen: dict[str, dict[str, Any]] = {}
        areas: dict[str, dict[str, Any]] = {}
        fits: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        kept: dict[str, dict[str, list[int]]] = {}
        sources: dict[str, Any] = {}
        leak_cache: dict = {}
        cache = _Cache(out / "cache", cfg, workdir)
        for seed in seeds:
            for name in dict.fromkeys([*exploitation, *([ev.base_model] if ev.policy == "slots" else [])]):
                got = cache.get(name, seed)
                if got is None:
                    t = time.perf_counter()
                    model, fit = fit_model(name, data, ev, seed=seed)
                    got = {"ranking": rank_with(model, data, data.test, rows["test"], inter.categories, ev),
                           "fit": {"loss": [round(x, 4) for x in fit.losses], "valid_hit@10": fit.valid_hit,
                                   "best_epoch": fit.best_epoch, "epochs_run": len(fit.losses),
                                   "stopped_early": fit.stopped_early,
                                   "popularity_valid_hit@10": fit.popularity_hit,
                                   "below_popularity": bool(fit.popularity_hit is not None and fit.valid_hit and
                                                            max(fit.valid_hit) < fit.popularity_hit),
                                   "category_score": ev.category_score,
                                   "time_s": round(time.perf_counter() - t, 1)}}
                    cache.put(name, seed, got)
                    log.info("seed %d %s: loss %.3f -> %.3f, valid hit@10 %.3f (epoch %d) in %.0fs", seed, name,
                             fit.losses[0], fit.losses[-1], max(fit.valid_hit or [0]), fit.best_epoch,
                             time.perf_counter() - t)
                rankings[(name, seed)] = got["ranking"]
                fits[f"{name}/seed{seed}"] = got["fit"]
            methods = Methods(cfg, workdir, seed, inter, split, phases, device, leak_cache)
            todo = [*exploration, *ablations]
            with progress() as bar:
                task = bar.add_task(f"evaluate seed {seed}", total=len(todo))
                for method in todo:
                    t = time.perf_counter()
                    rows_of = [method, *(f"{method}@{x}" for x in POINTS)] if method == "coea" else [method]
                    gots = {row: cache.get(row, seed) for row in rows_of}
                    if any(g is None for g in gots.values()):
                        try:
                            gots = evaluate_method(methods, method)
                        except FileNotFoundError as exc:
                            skipped[method] = str(exc)
                            log.warning("evaluate: %s skipped (%s)", method, exc)
                            bar.advance(task)
                            continue
                        for row, got in gots.items():
                            cache.put(row, seed, got)
                        log.info("seed %d %s: %s (validation objective %.4f) in %.0fs", seed, method,
                                 gots[method]["setting"] or "no settings", max(gots[method]["areas"].values()),
                                 time.perf_counter() - t)
                    for row, got in gots.items():
                        rankings[(row, seed)] = got["ranking"]
                        chosen.setdefault(row, {})[str(seed)] = got["setting"]
                        areas.setdefault(row, {})[str(seed)] = got["areas"]
                        if got.get("kept") is not None:
                            kept.setdefault(row, {})[str(seed)] = got["kept"]
                        if got.get("source"):
                            sources[f"{row}/seed{seed}"] = got["source"]
                        if row != method:
                            groups[row] = "operating_point"
                    bar.advance(task)
        # a row is reported only when every seed produced it
        for method in {m for m, _ in rankings}:
            if any((method, s) not in rankings for s in seeds):
                for s in seeds:
                    rankings.pop((method, s), None)
                chosen.pop(method, None)
                skipped.setdefault(method, "missing for some seeds")
        groups = {m: g for m, g in groups.items() if any(key[0] == m for key in rankings)}
        test = phases["test"]
        meta = {"ks": ks, "seeds": seeds, "n_categories": len(test.categories), "categories": test.categories,
                "tail": sorted(test.tail), "split": split.info, "users": len(test.users),
                "valid_users": len(phases["valid"].users), "groups": groups, "policy": ev.policy,
                "slots": [int(s) for s in csv_list(ev.slots)], "list_length": length, "base_model": ev.base_model,
                "budget_k": k, "matched_budget": ev.matched_budget,
                "bootstrap": ev.bootstrap, "bootstrap_seed": ev.bootstrap_seed, "confidence": ev.confidence,
                "hist_k": ev.hist_k or cfg.data.short_k, "chosen": chosen,
                "grids": {m: ", ".join(f"{f}: {getattr(ev, f)}" for f in GRIDS.get(m, ())) or
                          (f"tau_align: {ev.tau_align or 'the workdir value'} ({ev.tau_objective})"
                           if m.partition("@")[0] in DUAL else "")
                          for m in chosen}, "validation_area": areas,
                "skipped": skipped, "sources": sources, "fits": fits, "eval_config": dataclasses.asdict(ev),
                "kept": {m: v for m, v in kept.items() if m in groups}}
        if ev.policy == "slots":
            meta["slots"] = parse_slots(ev.slots, length)
        results = compute_results(rankings, test.rows(), meta)
        _write(out, test, rankings, results, meta)
        elapsed = round(time.perf_counter() - t0, 1)
        log.info("evaluate: wrote %s in %.0fs", out, elapsed)
        return {"out": str(out), "users": len(test.users), "seeds": seeds, "split": split.info,
                "results": results["table"], "targets": results["targets"], "skipped": skipped, "time_s": elapsed}
    finally:
        torch.set_num_threads(threads)


class _Cache:
    """``out/cache/seed<S>/<method>.json``: a finished method's test ranking, setting and sources, so a rerun of an
    interrupted evaluation resumes where it stopped. Valid only for the same eval config, data and workdir state
    (a fingerprint of them is stored with each entry; a mismatch recomputes)."""

    def __init__(self, root: Path, cfg: Config, workdir: Path):
        import hashlib

        self.root = root
        states = sorted(str(p) + ":" + json.dumps(read_state(p.parent).get("promoted_round"))
                        for p in Path(workdir).glob("**/state.json"))
        blob = json.dumps([dataclasses.asdict(cfg.eval), dataclasses.asdict(cfg.data), str(workdir), states],
                          sort_keys=True, default=str)
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]

    def get(self, method: str, seed: int) -> dict | None:
        path = self.root / f"seed{seed}" / f"{method}.json"
        if not path.exists():
            return None
        got = json.loads(path.read_text())
        return got if got.get("fingerprint") == self.fingerprint else None

    def put(self, method: str, seed: int, value: dict) -> None:
        (self.root / f"seed{seed}").mkdir(parents=True, exist_ok=True)
        write_json(self.root / f"seed{seed}" / f"{method}.json", {**value, "fingerprint": self.fingerprint})


def _write(out: Path, test: Phase, rankings: dict, results: dict, meta: dict) -> None:
    with open(out / "ground_truth.jsonl", "w") as f:
        f.writelines(json.dumps({"user": u, "pref": sorted(p), "hist": sorted(h), "recent": sorted(r),
                                 "clicked": sorted(c)}) + "\n"
                     for u, p, h, r, c in zip(test.users, test.pref, test.hist, test.recent, test.clicked))
    with open(out / "rankings.jsonl", "w") as f:
        for (method, seed), lists in sorted(rankings.items()):
            f.writelines(json.dumps({"user": u, "method": method, "seed": seed, "ranking": r}) + "\n"
                         for u, r in zip(test.users, lists))
    lists = table_lists(rankings, test.hist, meta)
    with open(out / "recommendations.jsonl", "w") as f:
        for (method, seed), ls in sorted(lists.items()):
            f.writelines(json.dumps({"user": u, "method": method, "seed": seed, "ranked": r}) + "\n"
                         for u, r in zip(test.users, ls))
    write_json(out / "meta.json", meta)
    write_json(out / "results.json", results)
    (out / "results.md").write_text(results_markdown(results, meta))
    plot_frontiers(results, meta, out / "frontier.png")


# ------------------------------------------------------------------------------------------ one round's models


def evaluate_round(cfg: Config, inter, split: Split, phase: Phase, workdir: Path, k: int, device: str = "cpu",
                   *, leak_cache: dict | None = None) -> dict[str, Any]:
    """Round ``k``'s Novelty + Relevance LLMs of a CoEA workdir on one phase, as CoEA's Table-2 row ranks them
    (the workdir's own ``relevance.tau_align``, each user's own list): the means over the phase's users of every
    metric at ``eval.ks`` (benchmarks/figure4.py tracks these over rounds). Refuses leaky models (LeakError)."""
    check = assert_unseen(inter, split, phase.name, workdir, k, leak_cache)
    llm = load_round(workdir_config(workdir, k), workdir, k, device)
    keys, unique = keys_for(llm, phase.state, phase.users)
    ds = dual_scores(llm, unique, phase.categories)
    row = {(key.csid, key.recent): i for i, key in enumerate(unique)}
    length = max(cfg.eval.list_length, max(ks_of(cfg)))
    lists = [own_list(dual_ranking(ds, row[(key.csid, key.recent)], phase.categories, llm.cfg.relevance.tau_align),
                      length) for key in keys]
    means = {name: float(v.mean()) for name, v in lists_metrics(lists, phase, ks_of(cfg)).items()}
    aligned = [sum(s > llm.cfg.relevance.tau_align for s in scores) for scores in ds.scores]
    return {"round": k, "users": len(phase.users), "keys": len(unique), "aligned_per_key": float(np.mean(aligned)),
            "cutoff": check["cutoff"], **means}

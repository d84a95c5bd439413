"""``coea evaluate``: Table 2 under evaluation v3, top to bottom (docs/evaluation.md).

    split        every event is train / valid / test (coea/evaluate/split.py; per user by default)
    phases       "valid" (state = train) chooses every hyper-parameter; "test" (state = train + valid) is reported
    leak check   a workdir whose models trained on a held-out event of a phase is refused (LeakError)
    rankings     every method ranks the whole catalogue for every user at each phase:
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coea.config import Config
from coea.evaluate.report import (
    compute_results,
    frontier_area,
    plot_frontiers,
    results_markdown,
    table_lists,
)
from coea.evaluate.split import (
    TEST,
    TRAIN,
    VALID,
    Phase,
    Split,
    assert_unseen,
    build_phase,
    make_split,
    subset,
    workdir_config,
)
from coea.exploration import budget_list, by_score, own_list, popular_ranking, random_ranking, ucb_ranking
from coea.exploration.knn import knn_ranking
from coea.metrics import kept_candidates, per_user

log = logging.getLogger("coea.evaluate")

DUAL = ("coea", "wo_long", "wo_short", "wo_kl", "google_v1")  # propose + score with a Relevance filter
GRIDS = {"ucb": ("ucb_c",), "hucb": ("hucb_c",), "phucb": ("phucb_c", "phucb_prior"), "nlb": ("nlb_alpha",),
         "llm_kerec": ("kerec_beta",), "user_knn": ("user_knn_k",), "item_knn": ("item_knn_k",)}
KNOWN = ("random", "popular", "ucb", "hucb", "phucb", "nlb", "user_knn", "item_knn", "google_v1", "google_v2",
         "llm_kerec", "coea", "wo_long", "wo_short", "wo_rllm", "wo_kl")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def ks_of(cfg: Config) -> list[int]:
    return sorted({int(float(k)) for k in _csv(cfg.eval.ks)})


def seeds_of(cfg: Config) -> list[int]:
    return [int(float(s)) for s in _csv(cfg.eval.seeds)]


def grid(text: str) -> list[float]:
    return [float(t) for t in _csv(text)]


# ---------------------------------------------------------------------------------------------------- workdirs


def variant_workdir(cfg: Config, workdir: Path, seed: int, variant: str) -> Path | None:
    """Where the CoEA (``variant='coea'``) or a variant workdir of ``seed`` lives; None when absent.

    Layouts: a benchmark root ``W/seed<S>/<variant>``; or a single CoEA workdir W (used for every seed) with
    variants at ``eval.variants_dir/<variant>`` or, by default, its siblings ``W-<variant>``.
    """
    from coea.exploration.llm import promoted_round

    workdir = Path(workdir)
    candidates = [workdir / f"seed{seed}" / variant]
    if variant == "coea":
        candidates.append(workdir)
    elif cfg.eval.variants_dir:
        candidates += [Path(cfg.eval.variants_dir) / f"seed{seed}" / variant, Path(cfg.eval.variants_dir) / variant]
    else:
        candidates.append(workdir.parent / f"{workdir.name}-{variant}")
    for c in candidates:
        if (c / "state.json").exists() and promoted_round(c) is not None:
            return c
    return None


# -------------------------------------------------------------------------------------------------- item data


def item_data(cfg: Config, inter, split: Split):
    """The item models' data (coea/exploitation.py ItemData): train = train-part clicks, valid_target = each
    user's first valid click, test = train + valid clicks (the test phase's input)."""
    from coea.data.sequences import build_sequences
    from coea.exploitation import ItemData

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


# -------------------------------------------------------------------------------------------------- scoring


def _lists_metrics(lists: list[list[str]], phase: Phase, ks: Sequence[int]) -> dict[str, np.ndarray]:
    return per_user(lists, phase.rows(), n_categories=len(phase.categories), tail=phase.tail, ks=ks)


def validation_area(rankings: list[list[str]], phase: Phase, k: int, length: int) -> float:
    """The tuning objective: the validation frontier's area (mean C-N@k over budgets 0..k along NCP@k)."""
    ncp, cn = [], []
    for b in range(k + 1):
        m = _lists_metrics([budget_list(r, h, b, k, length) for r, h in zip(rankings, phase.hist)], phase, (k,))
        ncp.append(m[f"NCP@{k}"].mean())
        cn.append(m[f"C-N@{k}"].mean())
    return frontier_area(np.array(ncp), np.array(cn))


def tau_objective(rankings: list[list[str]], phase: Phase, k: int, length: int) -> float:
    """The declared tau_align objective (``eval.tau_objective: cn_na``): mean C-N@k + mean NA@k of the own lists
    on the validation phase -- clicks in the window rewarded, and among users who adopt a new category, whether
    the list's new categories found it (NaN-free: 0 when no user adopts one)."""
    m = per_user([own_list(r, length) for r in rankings], phase.rows(), n_categories=len(phase.categories),
                 tail=phase.tail, ks=(k,), test_based=True)
    na = m[f"NA@{k}"]
    return float(m[f"C-N@{k}"].mean() + (np.nanmean(na) if np.isfinite(na).any() else 0.0))


class Methods:
    """Rankings of the non-item-model methods for one seed at both phases, with their tuning."""

    def __init__(self, cfg: Config, workdir: Path, seed: int, inter, split: Split, phases: dict[str, Phase],
                 device: str, leak_cache: dict):
        self.cfg, self.workdir, self.seed, self.inter, self.split = cfg, Path(workdir), seed, inter, split
        self.phases, self.device, self.leak_cache = phases, device, leak_cache
        self.k, self.length = cfg.eval.budget_k, max(cfg.eval.list_length, max(ks_of(cfg)))
        self.sources: dict[str, Any] = {}
        self._llm: dict[tuple[str, int, bool], Any] = {}
        self._cluster: dict[str, np.ndarray] = {}
        self._nlb: dict[str, Any] = {}
        self._pool: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._duals: dict[tuple[str, str], tuple[Any, list[int], float]] = {}

    # -- the dispatch: method -> {grid point (json) -> rankings} at a phase
    def candidates(self, method: str, phase: str) -> dict[str, list[list[str]]]:
        p = self.phases[phase]
        n, ev = len(p.users), self.cfg.eval
        if method == "random":
            return {"{}": random_ranking(n, p.categories, self.seed)}
        if method == "popular":
            return {"{}": popular_ranking(n, p.clicks, p.categories)}
        if method == "ucb":
            return {_j(c=c): ucb_ranking(n, p.clicks, p.shows, p.categories, c) for c in grid(ev.ucb_c)}
        if method in ("hucb", "phucb"):
            from coea.exploration.bandits import hucb_ranking, phucb_ranking

            cluster = self._tree(phase)
            if method == "hucb":
                return {_j(c=c): hucb_ranking(n, p.clicks, p.shows, p.categories, cluster, c) for c in grid(ev.hucb_c)}
            return {_j(c=c, prior=m): phucb_ranking(p.user_clicks, p.user_shows, p.clicks, p.shows, p.categories,
                                                   cluster, c, m)
                    for c in grid(ev.phucb_c) for m in grid(ev.phucb_prior)}
        if method == "nlb":
            from coea.exploration.bandits import nlb_ranking

            model = self._neural_linear(phase)
            return {_j(alpha=a): nlb_ranking(model, p.user_clicks, p.user_shows, p.categories, a)
                    for a in grid(ev.nlb_alpha)}
        if method in ("user_knn", "item_knn"):
            pool, self_rows, prior = self._click_matrix(phase)
            targets = pool[self_rows]
            return {_j(k=k): [[p.categories[j] for j in row] for row in
                              knn_ranking(method, targets, pool, int(k), prior, self_rows)]
                    for k in grid(getattr(ev, f"{method}_k"))}
        if method in DUAL:
            return self._dual(method, phase)
        if method in ("google_v2", "wo_rllm"):
            return self._novelty_only(method, phase)
        if method == "llm_kerec":
            return self._kerec(phase)
        raise ValueError(f"eval: unknown method {method!r} (known: {', '.join(KNOWN)})")

    # -- kNN helper
    def _click_matrix(self, phase: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pool (N, C) click counts of every user in the phase's state, (U,) pool row of each phase user,
        (C,) popularity rank for ties: most clicked first, then by name)."""
        if phase not in self._pool:
            p = self.phases[phase]
            ev = p.state.events[(p.state.events["event"] == "click").to_numpy()]
            col = {c: j for j, c in enumerate(p.categories)}
            cat = ev["item_id"].astype(str).map(self.inter.item_category).map(col)
            users = ev["user_id"].astype(str)
            ok = cat.notna().to_numpy()
            names = sorted(set(users) | set(p.users))
            row = {u: i for i, u in enumerate(names)}
            pool = np.zeros((len(names), len(p.categories)), dtype=np.int64)
            np.add.at(pool, (users[ok].map(row).to_numpy(), cat[ok].to_numpy().astype(np.int64)), 1)
            order = by_score({c: float(p.clicks.get(c, 0)) for c in p.categories}, p.categories)
            prior = np.empty(len(p.categories), dtype=np.int64)
            prior[[col[c] for c in order]] = np.arange(len(order))
            self._pool[phase] = (pool, np.array([row[u] for u in p.users], dtype=np.int64), prior)
        return self._pool[phase]

    # -- bandit helpers
    def _tree(self, phase: str) -> np.ndarray:
        from coea.exploration.bandits import category_tree, logged_feedback

        if phase not in self._cluster:
            p = self.phases[phase]
            logged = logged_feedback(p.state.events, p.categories, self.inter.item_category)
            n = self.cfg.eval.hucb_clusters or max(1, round(len(p.categories) ** 0.5))
            self._cluster[phase] = category_tree(logged.user_clicks, n, self.seed)
        return self._cluster[phase]

    def _neural_linear(self, phase: str):
        from coea.exploration.bandits import fit_neural_linear, logged_feedback

        if phase not in self._nlb:
            p, ev = self.phases[phase], self.cfg.eval
            logged = logged_feedback(p.state.events, p.categories, self.inter.item_category)
            self._nlb[phase] = fit_neural_linear(logged, len(p.categories), hidden=ev.nlb_hidden,
                                                 epochs=ev.nlb_epochs, ridge=ev.nlb_ridge, seed=self.seed)
        return self._nlb[phase]

    # -- LLM helpers
    def _source(self, method: str) -> tuple[Path, int]:
        """(workdir, round) whose models serve ``method`` for this seed; FileNotFoundError when absent."""
        from coea.exploration.llm import promoted_round

        variant = {"google_v1": self.cfg.eval.short_term_variant, "google_v2": self.cfg.eval.short_term_variant,
                   "llm_kerec": self.cfg.eval.short_term_variant, "wo_rllm": "coea"}.get(method, method)
        wd = variant_workdir(self.cfg, self.workdir, self.seed, variant)
        if wd is None:
            raise FileNotFoundError(f"no {variant} workdir for seed {self.seed} under {self.workdir} "
                                    "(docs/evaluation.md, Workdirs)")
        k = 0 if method in ("google_v1", "google_v2", "llm_kerec", "wo_rllm") else promoted_round(wd)
        return wd, int(k)

    def _load(self, method: str, phase: str, relevance: bool):
        from coea.exploration.llm import load_round

        wd, k = self._source(method)
        check = assert_unseen(self.inter, self.split, phase, wd, k, self.leak_cache)
        self.sources.setdefault(method, {"workdir": str(wd), "round": k, "checks": {}})["checks"][phase] = check
        key = (str(wd), k, relevance)
        if key not in self._llm:
            self._llm[key] = load_round(workdir_config(wd, k), wd, k, self.device, relevance=relevance)
        return self._llm[key]

    def _dual(self, method: str, phase: str) -> dict[str, list[list[str]]]:
        from coea.exploration.llm import dual_scores, keys_for

        p = self.phases[phase]
        llm = self._load(method, phase, relevance=True)
        keys, unique = keys_for(llm, p.state, p.users)
        ds = dual_scores(llm, unique, p.categories)
        row = {(k.csid, k.recent): i for i, k in enumerate(unique)}
        rows = [row[(k.csid, k.recent)] for k in keys]
        self._duals[(method, phase)] = (ds, rows, float(llm.cfg.relevance.tau_align))
        taus = grid(self.cfg.eval.tau_align) or [llm.cfg.relevance.tau_align]
        self.sources[method].setdefault("keys", {})[phase] = len(unique)
        return {_j(tau_align=t): self.dual_lists(method, phase, t) for t in taus}

    def dual_lists(self, method: str, phase: str, tau: float) -> list[list[str]]:
        """Each user's ranking by a dual method at ``tau`` (its scores computed once per phase)."""
        from coea.exploration.llm import dual_ranking

        ds, rows, _ = self._duals[(method, phase)]
        return [dual_ranking(ds, i, self.phases[phase].categories, tau) for i in rows]

    def kept(self, method: str, phase: str, tau: float) -> list[int]:
        """Candidates the Relevance filter keeps (> tau) for each user of the phase (C_align's size)."""
        ds, rows, _ = self._duals[(method, phase)]
        return [kept_candidates(ds.scores[i], tau) for i in rows]

    def served_tau(self, method: str) -> float:
        """The workdir's own relevance.tau_align: the threshold its cycle serves with."""
        if not any(m == method for m, _ in self._duals):
            self.candidates(method, "test")
        return next(t for (m, _), (_, _, t) in self._duals.items() if m == method)

    def _novelty_only(self, method: str, phase: str) -> dict[str, list[list[str]]]:
        from coea.exploration.llm import keys_for, novelty_logprobs, novelty_ranking

        p = self.phases[phase]
        llm = self._load(method, phase, relevance=False)
        keys, unique = keys_for(llm, p.state, p.users)
        lp = novelty_logprobs(llm, unique, p.categories, portrait=method == "wo_rllm")
        row = {(k.csid, k.recent): i for i, k in enumerate(unique)}
        return {"{}": [novelty_ranking(lp, row[(k.csid, k.recent)], k.recent, p.categories) for k in keys]}

    def _kerec(self, phase: str) -> dict[str, list[list[str]]]:
        from coea.exploration.llm import kerec_graph, kerec_ranking

        p = self.phases[phase]
        llm = self._load("llm_kerec", phase, relevance=False)
        graph = kerec_graph(llm, p.categories, self.cfg.eval.kerec_edges)
        return {_j(beta=b): kerec_ranking(graph, p.user_clicks, p.categories, b)
                for b in grid(self.cfg.eval.kerec_beta)}

    def tuned(self, method: str) -> tuple[dict[str, Any], list[list[str]], dict[str, float]]:
        """(chosen setting, test ranking, validation objective per grid point): the frontier area, or for a dual
        method's tau_align the declared ``eval.tau_objective``."""
        valid = self.candidates(method, "valid")
        areas = {g: self.objective(method, r) for g, r in valid.items()}
        best = max(areas, key=lambda g: (areas[g], -list(areas).index(g)))
        test = self.candidates(method, "test")
        return json.loads(best), test[best], areas

    def objective(self, method: str, rankings: list[list[str]]) -> float:
        """The validation objective of one grid point (docs/evaluation.md, "Tuning")."""
        p = self.phases["valid"]
        if method in DUAL and self.cfg.eval.tau_objective == "cn_na":
            return tau_objective(rankings, p, self.k, self.length)
        return validation_area(rankings, p, self.k, self.length)

    def operating_points(self, method: str = "coea") -> dict[str, dict[str, Any]]:
        """CoEA's rows at declared operating points, each ``{"setting", "ranking", "kept", "areas"}``:

            coea              production: the workdir's own tau_align on the round's calibrated scores (as served)
            coea@tuned        tau_align chosen on validation by eval.tau_objective
            coea@matched_ncp  tau_align whose validation own-list NCP@budget_k is nearest matched_budget / |C|
                              (ties: the larger objective)
        """
        setting, _, objectives = self.tuned(method)
        valid = self.candidates(method, "valid")
        p = self.phases["valid"]
        target = self.cfg.eval.matched_budget / len(p.categories)
        ncp = {g: float(_lists_metrics([own_list(r, self.length) for r in rs], p, (self.k,))[f"NCP@{self.k}"].mean())
               for g, rs in valid.items()}
        matched = min(ncp, key=lambda g: (abs(ncp[g] - target), -objectives[g]))
        taus = {method: self.served_tau(method), f"{method}@tuned": setting["tau_align"],
                f"{method}@matched_ncp": json.loads(matched)["tau_align"]}
        return {row: {"setting": {"tau_align": t, "point": row.partition("@")[2] or "production",
                                  **({"valid_ncp": ncp[matched], "target_ncp": target} if row.endswith("matched_ncp")
                                     else {})},
                      "ranking": self.dual_lists(method, "test", t), "kept": self.kept(method, "test", t),
                      "areas": objectives}
                for row, t in taus.items()}


def _j(**kw: float) -> str:
    return json.dumps(kw, sort_keys=True)


POINTS = ("tuned", "matched_ncp")  # CoEA's rows beside production (Methods.operating_points)


def _evaluate_method(methods: Methods, method: str) -> dict[str, dict[str, Any]]:
    """row -> {"ranking", "setting", "areas", "source", "kept"}: one row, or CoEA's operating points."""
    if method == "coea":
        points = methods.operating_points(method)
        return {row: {**v, "source": methods.sources.get(method)} for row, v in points.items()}
    setting, test_r, grid_areas = methods.tuned(method)
    kept = methods.kept(method, "test", setting["tau_align"]) if method in DUAL else None
    return {method: {"ranking": test_r, "setting": setting, "areas": grid_areas, "source": methods.sources.get(method),
                     "kept": kept}}


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

    from coea.data.loaders import load_interactions
    from coea.exploitation import MODELS, fit_model, rank_with
    from coea.workdir import progress, resolve_device

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
        exploitation, exploration, ablations = _csv(ev.exploitation), _csv(ev.exploration), _csv(ev.ablations)
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
                            gots = _evaluate_method(methods, method)
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
                "slots": [int(s) for s in _csv(ev.slots)], "list_length": length, "base_model": ev.base_model,
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
            from coea.exploration import parse_slots

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

        from coea.rounds import read_state

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
        from coea.workdir import write_json

        (self.root / f"seed{seed}").mkdir(parents=True, exist_ok=True)
        write_json(self.root / f"seed{seed}" / f"{method}.json", {**value, "fingerprint": self.fingerprint})


def _write(out: Path, test: Phase, rankings: dict, results: dict, meta: dict) -> None:
    from coea.workdir import write_json

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
    from coea.exploration import own_list
    from coea.exploration.llm import dual_ranking, dual_scores, keys_for, load_round

    check = assert_unseen(inter, split, phase.name, workdir, k, leak_cache)
    llm = load_round(workdir_config(workdir, k), workdir, k, device)
    keys, unique = keys_for(llm, phase.state, phase.users)
    ds = dual_scores(llm, unique, phase.categories)
    row = {(key.csid, key.recent): i for i, key in enumerate(unique)}
    length = max(cfg.eval.list_length, max(ks_of(cfg)))
    lists = [own_list(dual_ranking(ds, row[(key.csid, key.recent)], phase.categories, llm.cfg.relevance.tau_align),
                      length) for key in keys]
    means = {name: float(v.mean()) for name, v in _lists_metrics(lists, phase, ks_of(cfg)).items()}
    aligned = [sum(s > llm.cfg.relevance.tau_align for s in scores) for scores in ds.scores]
    return {"round": k, "users": len(phase.users), "keys": len(unique), "aligned_per_key": float(np.mean(aligned)),
            "cutoff": check["cutoff"], **means}

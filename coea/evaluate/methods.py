"""Every method's ranking of the catalogue at a phase, its tuning on validation and CoEA's operating points
(docs/evaluation.md, "Methods" and "Settings chosen on validation"); coea/evaluate/run.py calls it per seed.

    Methods.candidates   method -> {grid point (json) -> one ranking per phase user}
    Methods.tuned        the grid point with the best validation objective, and its test ranking
    Methods.operating_points   CoEA at production / tau tuned / matched NCP, with kept candidates per user
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coea.config import Config
from coea.evaluate.report import frontier_area
from coea.evaluate.split import Phase, Split, assert_unseen, workdir_config
from coea.exploration import budget_list, by_score, own_list, popular_ranking, random_ranking, ucb_ranking
from coea.exploration.bandits import (
    category_tree, fit_neural_linear, hucb_ranking, logged_feedback, nlb_ranking, phucb_ranking,
)
from coea.exploration.knn import knn_ranking
from coea.exploration.llm import (
    dual_ranking, dual_scores, kerec_graph, kerec_ranking, keys_for, load_round, novelty_logprobs, novelty_ranking,
    promoted_round,
)
from coea.metrics import kept_candidates, per_user

DUAL = ("coea", "wo_long", "wo_short", "wo_kl", "google_v1")  # propose + score with a Relevance filter
GRIDS = {"ucb": ("ucb_c",), "hucb": ("hucb_c",), "phucb": ("phucb_c", "phucb_prior"), "nlb": ("nlb_alpha",),
         "llm_kerec": ("kerec_beta",), "user_knn": ("user_knn_k",), "item_knn": ("item_knn_k",)}
KNOWN = ("random", "popular", "ucb", "hucb", "phucb", "nlb", "user_knn", "item_knn", "google_v1", "google_v2",
         "llm_kerec", "coea", "wo_long", "wo_short", "wo_rllm", "wo_kl")


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def ks_of(cfg: Config) -> list[int]:
    return sorted({int(float(k)) for k in csv_list(cfg.eval.ks)})


def seeds_of(cfg: Config) -> list[int]:
    return [int(float(s)) for s in csv_list(cfg.eval.seeds)]


def grid(text: str) -> list[float]:
    return [float(t) for t in csv_list(text)]


# ---------------------------------------------------------------------------------------------------- workdirs


def variant_workdir(cfg: Config, workdir: Path, seed: int, variant: str) -> Path | None:
    """Where the CoEA (``variant='coea'``) or a variant workdir of ``seed`` lives; None when absent.

    Layouts: a benchmark root ``W/seed<S>/<variant>``; or a single CoEA workdir W (used for every seed) with
    variants at ``eval.variants_dir/<variant>`` or, by default, its siblings ``W-<variant>``.
    """
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


# -------------------------------------------------------------------------------------------------- scoring


def lists_metrics(lists: list[list[str]], phase: Phase, ks: Sequence[int]) -> dict[str, np.ndarray]:
    return per_user(lists, phase.rows(), n_categories=len(phase.categories), tail=phase.tail, ks=ks)


def validation_area(rankings: list[list[str]], phase: Phase, k: int, length: int) -> float:
    """The tuning objective: the validation frontier's area (mean C-N@k over budgets 0..k along NCP@k)."""
    ncp, cn = [], []
    for b in range(k + 1):
        m = lists_metrics([budget_list(r, h, b, k, length) for r, h in zip(rankings, phase.hist)], phase, (k,))
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
            cluster = self._tree(phase)
            if method == "hucb":
                return {_j(c=c): hucb_ranking(n, p.clicks, p.shows, p.categories, cluster, c) for c in grid(ev.hucb_c)}
            return {_j(c=c, prior=m): phucb_ranking(p.user_clicks, p.user_shows, p.clicks, p.shows, p.categories,
                                                   cluster, c, m)
                    for c in grid(ev.phucb_c) for m in grid(ev.phucb_prior)}
        if method == "nlb":
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
        if phase not in self._cluster:
            p = self.phases[phase]
            logged = logged_feedback(p.state.events, p.categories, self.inter.item_category)
            n = self.cfg.eval.hucb_clusters or max(1, round(len(p.categories) ** 0.5))
            self._cluster[phase] = category_tree(logged.user_clicks, n, self.seed)
        return self._cluster[phase]

    def _neural_linear(self, phase: str):
        if phase not in self._nlb:
            p, ev = self.phases[phase], self.cfg.eval
            logged = logged_feedback(p.state.events, p.categories, self.inter.item_category)
            self._nlb[phase] = fit_neural_linear(logged, len(p.categories), hidden=ev.nlb_hidden,
                                                 epochs=ev.nlb_epochs, ridge=ev.nlb_ridge, seed=self.seed)
        return self._nlb[phase]

    # -- LLM helpers
    def _source(self, method: str) -> tuple[Path, int]:
        """(workdir, round) whose models serve ``method`` for this seed; FileNotFoundError when absent."""
        variant = {"google_v1": self.cfg.eval.short_term_variant, "google_v2": self.cfg.eval.short_term_variant,
                   "llm_kerec": self.cfg.eval.short_term_variant, "wo_rllm": "coea"}.get(method, method)
        wd = variant_workdir(self.cfg, self.workdir, self.seed, variant)
        if wd is None:
            raise FileNotFoundError(f"no {variant} workdir for seed {self.seed} under {self.workdir} "
                                    "(docs/evaluation.md, Workdirs)")
        k = 0 if method in ("google_v1", "google_v2", "llm_kerec", "wo_rllm") else promoted_round(wd)
        return wd, int(k)

    def _load(self, method: str, phase: str, relevance: bool):
        wd, k = self._source(method)
        check = assert_unseen(self.inter, self.split, phase, wd, k, self.leak_cache)
        self.sources.setdefault(method, {"workdir": str(wd), "round": k, "checks": {}})["checks"][phase] = check
        key = (str(wd), k, relevance)
        if key not in self._llm:
            self._llm[key] = load_round(workdir_config(wd, k), wd, k, self.device, relevance=relevance)
        return self._llm[key]

    def _dual(self, method: str, phase: str) -> dict[str, list[list[str]]]:
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
        p = self.phases[phase]
        llm = self._load(method, phase, relevance=False)
        keys, unique = keys_for(llm, p.state, p.users)
        lp = novelty_logprobs(llm, unique, p.categories, portrait=method == "wo_rllm")
        row = {(k.csid, k.recent): i for i, k in enumerate(unique)}
        return {"{}": [novelty_ranking(lp, row[(k.csid, k.recent)], k.recent, p.categories) for k in keys]}

    def _kerec(self, phase: str) -> dict[str, list[list[str]]]:
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
        ncp = {g: float(lists_metrics([own_list(r, self.length) for r in rs], p, (self.k,))[f"NCP@{self.k}"].mean())
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


def evaluate_method(methods: Methods, method: str) -> dict[str, dict[str, Any]]:
    """row -> {"ranking", "setting", "areas", "source", "kept"}: one row, or CoEA's operating points."""
    if method == "coea":
        points = methods.operating_points(method)
        return {row: {**v, "source": methods.sources.get(method)} for row, v in points.items()}
    setting, test_r, grid_areas = methods.tuned(method)
    kept = methods.kept(method, "test", setting["tau_align"]) if method in DUAL else None
    return {method: {"ranking": test_r, "setting": setting, "areas": grid_areas, "source": methods.sources.get(method),
                     "kept": kept}}

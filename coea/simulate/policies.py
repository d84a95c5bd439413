"""What an arm of the simulation may know (:class:`Catalogue`), what it must do (:class:`Policy`), and the
non-LLM arms (docs/simulate.md, "Arms").

An arm serves ``sim.slots`` categories to each user per day. Its inputs are its own log only: the warm-up
events (identical for every arm) and, from then on, what its own serving produced. The latent truth of the
world (core and latent interests, positions) is never visible to a policy.

    exploitation  the base ranking: the user's most clicked categories in the arm's log (ties by the
                  popularity prior); a user with fewer clicked categories gets the most clicked ones overall
    random        uniformly random categories the user has never clicked (a seeded stream per day)
    popular       the most clicked categories overall in the arm's log that the user has never clicked
                  (ties by the popularity prior)
    ucb           global UCB1 over categories on the arm's own served-slot feedback (a pull = a served slot of
                  the category, reward = its click), the best ones the user has never clicked; never-served
                  categories first
    user_knn      the never-clicked categories the user's k most similar users clicked (cosine on category click
                  vectors in the arm's log), weighted by similarity (coea/exploration/knn.py, as the evaluation's
                  user-kNN row)
    item_knn      the never-clicked categories that co-occur most with the user's clicked ones (category
                  co-occurrence cosine over the arm's log; coea/exploration/knn.py, as the evaluation's row)
    thompson      a per-group Thompson sampler: a group = the users sharing all their feature values; per group and
                  category Beta(1 + clicks, 1 + exposures - clicks) on every exposure in the arm's log (organic and
                  served), one sample per user and day; the best-sampled never-clicked categories
    kg_neighbour  the never-clicked categories the world's knowledge relates to the user's clicked ones (read
                  directly: score_c = sum over the user's clicked categories a, weighted by clicks, of [c in rel(a)]);
                  the only arm given the relation
    linucb        disjoint LinUCB (Li et al. 2010) per category on the user's one-hot features (plus a bias), fitted
                  on every exposure in the arm's log (reward = click); the best never-clicked categories by
                  theta_c . x_u + alpha sqrt(x_u' A_c^-1 x_u)

Every arm sees the same things: the catalogue (with the users' sparse features, :attr:`Catalogue.users`), its own
log, and the same ``sim.slots`` (of which ``sim.explore_slots`` are its own).

The LLM arms (google_v1, coea, wo_kl, wo_rllm) live in :mod:`coea.simulate.coea_arm`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from coea.exploration.knn import knn_ranking

NON_LLM_ARMS = ("exploitation", "random", "popular", "ucb", "user_knn", "item_knn", "thompson", "linucb",
                "kg_neighbour")
STREAM_POLICY = 4  # RNG stream of the random arm: np.random.default_rng([seed, day, STREAM_POLICY])


@dataclass
class Catalogue:
    """What every policy may know about the world (not its latent truth).

    Attributes:
        categories: (C,) category names; index = category id.
        items: the items table the logs' source reads: ``item_id``, ``category``, ``price``.
        popularity: (C,) the organic exposure prior (sums to 1), used by the popular arm's ties.
        users: ``user_id`` and the users' sparse features (``feature_<f>`` columns, users.parquet), or None.
    """

    categories: list[str]
    items: pd.DataFrame
    popularity: np.ndarray
    users: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        self.index = {c: i for i, c in enumerate(self.categories)}
        self.item_category = dict(zip(self.items["item_id"], self.items["category"].map(self.index)))


@runtime_checkable
class Policy(Protocol):
    """An arm: fills each user's slots once per day, then learns from that day's events."""

    name: str

    def fill(self, day: int, users: list[str], recent: list[list[str]], slots: int) -> list[list[str]]:
        """Categories to serve in each user's session slots today, ``slots`` per user (a category repeats only
        if fewer are available). ``recent[i]``: user i's clicked categories, oldest first, as logged so far
        (the arm's own log). Called once per day before the day's sessions.

        ``day`` (here and in :meth:`observe`) is the UTC day number since 1970-01-01: the day's log partition is
        ``date=1970-01-01 + day`` and it ends at ``(day + 1) * 86400`` (``coea.simulate.run.policy_day``)."""
        ...

    def observe(self, day: int, log_dir: Path, events: pd.DataFrame) -> None:
        """After day ``day``'s events (this arm's, incl. served-slot exposures/clicks) are appended to
        ``log_dir`` as that day's partition (coea.data.partitions.write_day) and ``events`` holds the same
        rows: update the policy."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, d: dict) -> None: ...


# ----------------------------------------------------------------------------------------------------- helpers


def _pad(chosen: list[int], order: np.ndarray, slots: int) -> list[int]:
    """``chosen`` topped up from ``order`` (skipping repeats) to ``slots`` entries."""
    out = list(dict.fromkeys(chosen))[:slots]
    for c in order:
        if len(out) >= slots:
            break
        if c not in out:
            out.append(int(c))
    while len(out) < slots and out:  # fewer categories than slots: repeat (only then)
        out.append(out[len(out) % len(out)])
    return out


class _CountingPolicy:
    """Shared bookkeeping: click counts per (user, category) and served-slot pulls / clicks per category,
    learned from the warm-up events and then from each day's events of the arm's own log."""

    name = ""

    def __init__(self, catalogue: Catalogue, users: list[str], seed: int, warmup: pd.DataFrame | None = None):
        self.catalogue = catalogue
        self.users = list(users)
        self.row = {u: i for i, u in enumerate(self.users)}
        self.seed = int(seed)
        C = len(catalogue.categories)
        self.clicks = np.zeros((len(self.users), C), dtype=np.int64)  # (U, C) clicks in the arm's log
        self.slot_pulls = np.zeros(C, dtype=np.int64)  # (C,) served slots of each category
        self.slot_clicks = np.zeros(C, dtype=np.int64)  # (C,) their clicks
        # ties: the popularity prior, then the name order (stable, deterministic)
        self.prior_order = np.lexsort((np.arange(C), -np.asarray(catalogue.popularity)))
        if warmup is not None and len(warmup):
            self._count(warmup)

    def _count(self, events: pd.DataFrame) -> None:
        cat = events["item_id"].map(self.catalogue.item_category)
        row = events["user_id"].map(self.row)
        ok = (cat.notna() & row.notna()).to_numpy()
        cat = cat.to_numpy()[ok].astype(np.int64)
        row = row.to_numpy()[ok].astype(np.int64)
        click = (events["event"] == "click").to_numpy()[ok]
        np.add.at(self.clicks, (row[click], cat[click]), 1)
        if "slot" in events.columns:
            served = (events["slot"].to_numpy()[ok] >= 0)
            np.add.at(self.slot_pulls, cat[served], 1)
            np.add.at(self.slot_clicks, cat[served & click], 1)

    def observe(self, day: int, log_dir: Path, events: pd.DataFrame) -> None:
        self._count(events)

    def state_dict(self) -> dict:
        return {"clicks": self.clicks.copy(), "slot_pulls": self.slot_pulls.copy(),
                "slot_clicks": self.slot_clicks.copy()}

    def load_state_dict(self, d: dict) -> None:
        self.clicks = np.asarray(d["clicks"], dtype=np.int64).copy()
        self.slot_pulls = np.asarray(d["slot_pulls"], dtype=np.int64).copy()
        self.slot_clicks = np.asarray(d["slot_clicks"], dtype=np.int64).copy()

    def _rows(self, users: list[str]) -> np.ndarray:
        return np.array([self.row[u] for u in users], dtype=np.int64)

    def _names(self, picks: list[list[int]]) -> list[list[str]]:
        cats = self.catalogue.categories
        return [[cats[c] for c in p] for p in picks]

    def _global_order(self) -> np.ndarray:
        """Categories by clicks over all users in the arm's log, ties by the prior's order."""
        total = self.clicks.sum(axis=0)  # (C,)
        rank_prior = np.empty_like(self.prior_order)
        rank_prior[self.prior_order] = np.arange(len(self.prior_order))
        return np.lexsort((rank_prior, -total))

    def _unexplored(self, rows: np.ndarray, order: np.ndarray, slots: int) -> list[list[int]]:
        """Per user, the first ``slots`` categories of ``order`` the user never clicked."""
        out = []
        for r in rows:
            seen = self.clicks[r] > 0
            pick = [int(c) for c in order if not seen[c]][:slots]
            out.append(_pad(pick, order, slots))
        return out


# ----------------------------------------------------------------------------------------------------- arms


class ExploitationPolicy(_CountingPolicy):
    """The base ranking: the user's most clicked categories (ties by the popularity prior)."""

    name = "exploitation"

    def fill(self, day: int, users: list[str], recent: list[list[str]], slots: int) -> list[list[str]]:
        rank_prior = np.empty_like(self.prior_order)
        rank_prior[self.prior_order] = np.arange(len(self.prior_order))
        fallback = self._global_order()
        out = []
        for r in self._rows(users):
            counts = self.clicks[r]
            order = np.lexsort((rank_prior, -counts))
            pick = [int(c) for c in order[:slots] if counts[c] > 0]
            out.append(_pad(pick, fallback, slots))
        return self._names(out)


class RandomUnexploredPolicy(_CountingPolicy):
    """Uniformly random never-clicked categories; the stream is keyed by (seed, day), so a resumed run serves
    the same."""

    name = "random"

    def fill(self, day: int, users: list[str], recent: list[list[str]], slots: int) -> list[list[str]]:
        rng = np.random.default_rng([self.seed, int(day), STREAM_POLICY])
        C = len(self.catalogue.categories)
        out = []
        for r in self._rows(users):
            order = rng.permutation(C)
            out.append(self._unexplored(np.array([r]), order, slots)[0])
        return self._names(out)


class PopularUnexploredPolicy(_CountingPolicy):
    """The most clicked categories overall (the arm's log) that the user never clicked."""

    name = "popular"

    def fill(self, day: int, users: list[str], recent: list[list[str]], slots: int) -> list[list[str]]:
        return self._names(self._unexplored(self._rows(users), self._global_order(), slots))


class UCBUnexploredPolicy(_CountingPolicy):
    """Global UCB1 on the arm's served-slot feedback; the best never-clicked categories per user.

    score_c = k_c / n_c + c sqrt(ln N / n_c) (Auer et al. 2002), n_c = served slots of c, k_c their clicks,
    N = all served slots; a never-served category scores +inf (ties by the popularity prior).
    """

    name = "ucb"

    def __init__(self, catalogue: Catalogue, users: list[str], seed: int, warmup: pd.DataFrame | None = None,
                 *, c: float = 0.5):
        super().__init__(catalogue, users, seed, warmup)
        self.c = float(c)

    def scores(self) -> np.ndarray:
        """(C,) UCB1 scores."""
        n = self.slot_pulls.astype(float)
        total = max(float(n.sum()), 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = self.slot_clicks / n + self.c * np.sqrt(math.log(total) / n)
        return np.where(n > 0, s, np.inf)

    def fill(self, day: int, users: list[str], recent: list[list[str]], slots: int) -> list[list[str]]:
        rank_prior = np.empty_like(self.prior_order)
        rank_prior[self.prior_order] = np.arange(len(self.prior_order))
        s = self.scores()
        order = np.lexsort((rank_prior, -s))
        if np.isinf(s).sum() > slots:  # many never-served: spread them over users instead of all on the same few
            untried = order[np.isinf(s[order])]
            rng = np.random.default_rng([self.seed, int(day), STREAM_POLICY])
            out = []
            for r in self._rows(users):
                mine = np.concatenate([rng.permutation(untried), order[~np.isinf(s[order])]])
                out.append(self._unexplored(np.array([r]), mine, slots)[0])
            return self._names(out)
        return self._names(self._unexplored(self._rows(users), order, slots))


class KNNUnexploredPolicy(_CountingPolicy):
    """user-kNN or item-kNN (coea/exploration/knn.py, the evaluation's implementation) on the arm's click
    counts: the best-scoring categories the user never clicked; ties by the popularity prior."""

    def __init__(self, catalogue: Catalogue, users: list[str], seed: int, warmup: pd.DataFrame | None = None,
                 *, method: str = "user_knn", k: int = 10):
        super().__init__(catalogue, users, seed, warmup)
        self.name, self.k = method, int(k)

    def fill(self, day: int, users: list[str], recent: list[list[str]], slots: int) -> list[list[str]]:
        rank_prior = np.empty_like(self.prior_order)
        rank_prior[self.prior_order] = np.arange(len(self.prior_order))
        rows = self._rows(users)
        order = knn_ranking(self.name, self.clicks[rows], self.clicks, self.k, rank_prior, rows)  # (U, C)
        return self._names([_pad([int(c) for c in o[:slots]], o, slots) for o in order])


class _ExposurePolicy(_CountingPolicy):
    """Adds exposures per (user, category) (organic and served) and the users' one-hot features (U, d)."""

    def __init__(self, catalogue: Catalogue, users: list[str], seed: int, warmup: pd.DataFrame | None = None):
        self.exposures = np.zeros((len(users), len(catalogue.categories)), dtype=np.int64)  # (U, C)
        self.features = one_hot_features(catalogue.users, users)  # (U, d)
        super().__init__(catalogue, users, seed, warmup)

    def _count(self, events: pd.DataFrame) -> None:
        super()._count(events)
        cat = events["item_id"].map(self.catalogue.item_category)
        row = events["user_id"].map(self.row)
        ok = (cat.notna() & row.notna()).to_numpy()
        np.add.at(self.exposures, (row.to_numpy()[ok].astype(np.int64), cat.to_numpy()[ok].astype(np.int64)), 1)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "exposures": self.exposures.copy()}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.exposures = np.asarray(d["exposures"], dtype=np.int64).copy()

    def _best_unexplored(self, rows: np.ndarray, scores: np.ndarray, slots: int) -> list[list[str]]:
        """Per user row, the ``slots`` best-scoring never-clicked categories (scores (len(rows), C); ties by the
        prior)."""
        rank_prior = np.empty_like(self.prior_order)
        rank_prior[self.prior_order] = np.arange(len(self.prior_order))
        out = []
        for i, r in enumerate(rows):
            order = np.lexsort((rank_prior, -scores[i]))
            out.append(self._unexplored(np.array([r]), order, slots)[0])
        return self._names(out)


def one_hot_features(table: pd.DataFrame | None, users: list[str]) -> np.ndarray:
    """(U, d) one-hot encoding of the ``feature_*`` columns for ``users`` (in that order) plus a bias column
    (d = 1 + the number of distinct values over all features); no table: the bias column only."""
    bias = np.ones((len(users), 1))
    if table is None or not len(table):
        return bias
    t = table.set_index("user_id").reindex(users)
    cols = sorted(c for c in t.columns if c.startswith("feature_"))
    blocks = [bias] + [pd.get_dummies(t[c].astype("string"), dtype=float).to_numpy() for c in cols]
    return np.concatenate(blocks, axis=1)


class ThompsonGroupPolicy(_ExposurePolicy):
    """Per-group Thompson sampling (module docstring): groups by the users' joint feature values."""

    name = "thompson"

    def __init__(self, catalogue: Catalogue, users: list[str], seed: int, warmup: pd.DataFrame | None = None):
        super().__init__(catalogue, users, seed, warmup)
        _, self.group = np.unique(self.features, axis=0, return_inverse=True)  # (U,) group of each user
        self.group = self.group.ravel()

    def fill(self, day: int, users: list[str], recent: list[list[str]], slots: int) -> list[list[str]]:
        G, C = int(self.group.max()) + 1, self.clicks.shape[1]
        n, k = np.zeros((G, C)), np.zeros((G, C))
        np.add.at(n, self.group, self.exposures)
        np.add.at(k, self.group, np.minimum(self.clicks, self.exposures))
        rows = self._rows(users)
        rng = np.random.default_rng([self.seed, int(day), STREAM_POLICY])
        g = self.group[rows]
        theta = rng.beta(1.0 + k[g], 1.0 + n[g] - k[g])  # (U, C): one posterior sample per user and category
        return self._best_unexplored(rows, theta, slots)


class LinUCBPolicy(_ExposurePolicy):
    """Disjoint LinUCB on the users' one-hot features (module docstring); ridge 1 (A_c = I + sum x x')."""

    name = "linucb"

    def __init__(self, catalogue: Catalogue, users: list[str], seed: int, warmup: pd.DataFrame | None = None,
                 *, alpha: float = 0.5):
        super().__init__(catalogue, users, seed, warmup)
        self.alpha = float(alpha)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), C) upper confidence bounds theta_c . x_u + alpha sqrt(x_u' A_c^-1 x_u)."""
        X = self.features  # (U, d)
        d = X.shape[1]
        A = np.eye(d)[None] + np.einsum("uc,ud,ue->cde", self.exposures.astype(float), X, X)  # (C, d, d)
        b = np.minimum(self.clicks, self.exposures).T.astype(float) @ X  # (C, d)
        A_inv = np.linalg.inv(A)  # (C, d, d)
        theta = np.einsum("cde,ce->cd", A_inv, b)  # (C, d)
        x = X[rows]  # (R, d)
        mean = x @ theta.T  # (R, C)
        width = np.sqrt(np.maximum(np.einsum("rd,cde,re->rc", x, A_inv, x), 0.0))  # (R, C)
        return mean + self.alpha * width

    def fill(self, day: int, users: list[str], recent: list[list[str]], slots: int) -> list[list[str]]:
        rows = self._rows(users)
        return self._best_unexplored(rows, self.scores(rows), slots)


class KGNeighbourPolicy(_CountingPolicy):
    """The world's knowledge used plainly (module docstring): ``relation`` (C, links) category ids."""

    name = "kg_neighbour"

    def __init__(self, catalogue: Catalogue, users: list[str], seed: int, warmup: pd.DataFrame | None = None,
                 *, relation: np.ndarray):
        super().__init__(catalogue, users, seed, warmup)
        C = len(catalogue.categories)
        self.link = np.zeros((C, C))  # (C, C) link[a, c] = 1 when c is related to a
        rel = np.asarray(relation, dtype=np.int64)
        self.link[np.repeat(np.arange(C), rel.shape[1]), rel.ravel()] = 1.0

    def fill(self, day: int, users: list[str], recent: list[list[str]], slots: int) -> list[list[str]]:
        rank_prior = np.empty_like(self.prior_order)
        rank_prior[self.prior_order] = np.arange(len(self.prior_order))
        rows = self._rows(users)
        scores = self.clicks[rows].astype(float) @ self.link  # (R, C)
        out = []
        for i, r in enumerate(rows):
            order = np.lexsort((rank_prior, -scores[i]))
            out.append(self._unexplored(np.array([r]), order, slots)[0])
        return self._names(out)


def make_policy(name: str, catalogue: Catalogue, users: list[str], seed: int, warmup: pd.DataFrame | None,
                *, ucb_c: float = 0.5, user_knn_k: int = 10, item_knn_k: int = 0,
                linucb_alpha: float = 0.5, relation: np.ndarray | None = None) -> Policy:
    """A non-LLM arm by name (:data:`NON_LLM_ARMS`), primed with the warm-up events."""
    if name == "exploitation":
        return ExploitationPolicy(catalogue, users, seed, warmup)
    if name == "random":
        return RandomUnexploredPolicy(catalogue, users, seed, warmup)
    if name == "popular":
        return PopularUnexploredPolicy(catalogue, users, seed, warmup)
    if name == "ucb":
        return UCBUnexploredPolicy(catalogue, users, seed, warmup, c=ucb_c)
    if name == "thompson":
        return ThompsonGroupPolicy(catalogue, users, seed, warmup)
    if name == "kg_neighbour":
        if relation is None:
            raise ValueError("kg_neighbour: needs the world's knowledge relation")
        return KGNeighbourPolicy(catalogue, users, seed, warmup, relation=relation)
    if name == "linucb":
        return LinUCBPolicy(catalogue, users, seed, warmup, alpha=linucb_alpha)
    if name in ("user_knn", "item_knn"):
        return KNNUnexploredPolicy(catalogue, users, seed, warmup, method=name,
                                   k=user_knn_k if name == "user_knn" else item_knn_k)
    raise ValueError(f"not a non-LLM arm: {name!r} (known: {', '.join(NON_LLM_ARMS)})")

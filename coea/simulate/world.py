"""The simulation's environment: a world whose users react to what an arm serves (docs/simulate.md).

Built on the ideas of :mod:`coea.data.synthetic` (groups of users, core and latent interests, discovery), as an
environment stepped one day at a time instead of a fixed data set:

- **Categories** sit in a latent space (``sim.latent_dim``), scattered around ``sim.n_topics`` topic centres, so
  categories of one topic are related. Popularity is Zipf-like (p_c ~ 1 / rank^s over a random order).
- **Users** belong to ``sim.n_groups`` groups; a user's centre lies near its group's centre, which lies near one
  category. A user's **core** interests are its ``core_per_user`` nearest categories, its **latent** interests
  the next ``latent_per_user`` nearest ones: related to the core and shared with the group, so they can be
  learned from other users ("listeners of Jazz tend to discover Blues").
- **Items** carry a price, lognormal around a per-category mean (the GTV analogue, App. A.4 Eq. 22).
- **Discovery comes from exposure.** An undiscovered latent interest is never clicked. Each exposure of it (the
  organic feed or a served slot) discovers it with probability ``discover_prob``; from that exposure on it is
  clicked with ``click_latent`` and stays discovered.
- **Sessions.** Poisson(``sessions_per_day``) sessions per user and day. A session shows the arm's ``slots``
  served categories first, then ``exposures_per_session`` organic items: with probability
  ``organic_core_share`` one of the user's *known* interests (uniform over its core and its latent interests
  discovered before the day: the feed follows what the user is known to like), else a category drawn from the
  popularity prior with the core left out and latent interests down-weighted by
  ``organic_latent_weight`` (the feed rarely shows them). One item of each category is shown.
- **World knowledge** (world v2; always built, from its own RNG stream, so it changes nothing else). Each category
  is related to ``sim.knowledge_links`` categories of *other* topics (far in the latent space, so co-occurrence
  does not find them), stated in a corpus of category descriptions (:meth:`World.knowledge_corpus`, written to
  ``seed<S>/knowledge.jsonl``). With ``sim.knowledge_per_user`` > 0 each user also has that many **knowledge**
  latent interests: drawn per user among the relations of its core categories, leaving out what is core or
  collaborative-latent for any of its group-mates, so they are not shared with the group. They are discovered and
  clicked like the collaborative latent interests (the latent list holds both; ``latent_kind`` tells them apart).
- **Heterogeneous users** (world v2; each off at sigma 0). Per user, from their own stream: activity a_u (scales
  the session rate), click propensity k_u (scales every click probability, capped at 1) and openness o_u (scales
  the discovery probability), each lognormal with mean 1 (``sim.user_activity_sigma``, ``user_click_sigma``,
  ``user_openness_sigma``).
- **Position bias** (world v2; off at 1). Served slot k (0-based) is examined with probability
  ``sim.position_bias``^k; an unexamined slot is neither clicked nor discovers: the click and discovery
  probabilities of the slot are multiplied by it (the same uniforms, so common random numbers hold).
- **Retention** (world v2; off at ``sim.retention_rate`` 0). Each user carries a satisfaction s_u, an exponential
  moving average (rate ``retention_rate``) of its served-slot click-through on the days it had sessions, starting
  at ``sim.retention_ref``. A drawn session happens with probability min(1, s_u / retention_ref) (a per-session
  uniform, the same for every arm), so exploration that annoys costs later sessions, and a user whose s_u reaches
  0 has churned.
- **Fatigue across days** (world v2; off at ``sim.day_fatigue`` 1). Each user carries a decaying count e_uc of
  its exposures to each category on earlier days (e <- ``day_fatigue_decay`` * e + today's exposures); every
  click probability is multiplied by ``day_fatigue``^e_uc: a category shown day after day wears out.
- **Clicks.** p = click_core | click_latent (discovered) | 0 (undiscovered latent) | click_other, times
  ``fatigue^(n - 1)`` where n counts the exposures of the same category in the session (content fatigue).

**Paired A/B.** Everything random about a day -- the sessions, their times, the organic categories and items,
and the uniforms that decide every click, discovery and served item -- comes from streams
``np.random.default_rng([seed, day, stream])`` that do not depend on the arm (:meth:`World.draws`). Every arm
therefore sees the same users, the same organic feed and the same coin flips (common random numbers); only the
served categories differ, and through them discoveries and clicks.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from coea.config import SimConfig
from coea.data.partitions import DAY, day_start
from coea.data.synthetic import category_names
from coea.simulate.policies import Catalogue

STREAM_WORLD, STREAM_SESSIONS, STREAM_ORGANIC, STREAM_SLOTS = 0, 1, 2, 3
STREAM_KNOWLEDGE = 5  # the knowledge relation and knowledge interests (4 is the policies' stream)
STREAM_USERS = 6  # heterogeneous users' traits (world v2)
STREAM_RETENTION = 7  # whether a drawn session happens under retention (world v2)
EXPOSURE_GAP_S = 20  # seconds between the exposures of a session
FEATURE_AGREEMENT = 0.8
KIND_OTHER, KIND_CORE, KIND_LATENT = 0, 1, 2
LATENT_COLLAB, LATENT_KNOWLEDGE = 0, 1  # the two kinds of latent interest (World.latent_kind)


def day_date(cfg: SimConfig, day: int) -> dt.date:
    """UTC date of simulation day ``day`` (day 0 = ``sim.start_date``, the first warm-up day)."""
    return dt.date.fromisoformat(cfg.start_date) + dt.timedelta(days=int(day))


def day_end(cfg: SimConfig, day: int) -> int:
    """Unix seconds of the end of day ``day`` (exclusive): the ``until`` of a cycle run after that day."""
    return day_start(day_date(cfg, day)) + DAY


@dataclass
class WorldState:
    """What an arm's serving changes in the world: which latent interests each user has discovered.

    discovered: (U, L) bool; discovery_day: (U, L) int64, the day of discovery (-1 = not yet); satisfaction: (U,)
    float, the retention state (world v2), None when retention is off; worn: (U, C) float, the decaying count of
    earlier days' exposures (fatigue across days, world v2), None when off.
    """

    discovered: np.ndarray
    discovery_day: np.ndarray
    satisfaction: np.ndarray | None = None
    worn: np.ndarray | None = None

    def copy(self) -> WorldState:
        return WorldState(self.discovered.copy(), self.discovery_day.copy(),
                          *(None if a is None else a.copy() for a in (self.satisfaction, self.worn)))

    def state_dict(self) -> dict:
        d = {"discovered": self.discovered.copy(), "discovery_day": self.discovery_day.copy()}
        d.update({k: v.copy() for k, v in (("satisfaction", self.satisfaction), ("worn", self.worn)) if v is not None})
        return d

    @classmethod
    def from_state_dict(cls, d: dict) -> WorldState:
        opt = [None if d.get(k) is None else np.asarray(d[k], dtype=float).copy() for k in ("satisfaction", "worn")]
        return cls(np.asarray(d["discovered"], dtype=bool).copy(), np.asarray(d["discovery_day"], np.int64).copy(),
                   *opt)


@dataclass
class DayDraws:
    """Everything random about one day, identical for every arm. S sessions, E organic exposures, K slots.

    sess_user: (S,) user row; start: (S,) second of the day the session starts.
    organic_cat: (S, E) category id from the popularity prior, or -1 where the exposure shows one of the user's
    known interests, picked by ``interest_u`` (S, E) among them when the day is played (:meth:`World.organic`).
    organic_item: (S, E) item number within the category.
    organic_u_click / organic_u_disc: (S, E) uniforms deciding click and discovery.
    slot_item / slot_u_click / slot_u_disc: (S, K) the same for the served slots.
    """

    sess_user: np.ndarray
    start: np.ndarray
    organic_cat: np.ndarray
    interest_u: np.ndarray
    organic_item: np.ndarray
    organic_u_click: np.ndarray
    organic_u_disc: np.ndarray
    slot_item: np.ndarray
    slot_u_click: np.ndarray
    slot_u_disc: np.ndarray
    sess_u_keep: np.ndarray | None = None  # (S,) uniforms: does the session happen (retention, world v2)


@dataclass
class DayOutcome:
    """One arm's day: the events (as logged) and the same rows as arrays, in the events' order.

    events: user_id, item_id, timestamp, event ("click" | "exposure"), rating (NaN), slot (-1 = organic,
    else the served slot's position 0..K-1). user / category / item / slot: (N,) int64; click: (N,) bool;
    price: (N,) float. new_discoveries: (M, 2) (user row, latent position) discovered today.
    """

    events: pd.DataFrame
    user: np.ndarray
    category: np.ndarray
    item: np.ndarray
    slot: np.ndarray
    click: np.ndarray
    price: np.ndarray
    new_discoveries: np.ndarray


class World:
    """One world seed: catalogue, users and their hidden interests; :meth:`step` plays one arm's day."""

    def __init__(self, cfg: SimConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, int(seed)
        rng = np.random.default_rng([self.seed, 0, STREAM_WORLD])
        C, U, d = cfg.n_categories, cfg.n_users, cfg.latent_dim
        T = cfg.n_topics or max(1, round(C ** 0.5))
        self.names = category_names(C)

        # Categories: topics in the latent space, Zipf-like popularity over a random order.
        topic_centre = rng.standard_normal((T, d))  # (T, d)
        self.topic = rng.permutation(np.arange(C) % T)  # (C,)
        self.position = topic_centre[self.topic] + cfg.topic_spread * rng.standard_normal((C, d))  # (C, d)
        pop = 1.0 / (np.arange(1, C + 1) ** cfg.zipf_exponent)
        self.popularity = np.empty(C)
        self.popularity[rng.permutation(C)] = pop / pop.sum()  # (C,)

        # Users: groups anchored at a category; core = nearest, latent = next nearest.
        G = min(cfg.n_groups, C)
        anchor = rng.choice(C, size=G, replace=False)
        group_centre = self.position[anchor] + 0.1 * rng.standard_normal((G, d))  # (G, d)
        self.group = rng.permutation(np.arange(U) % G)  # (U,)
        self.centre = group_centre[self.group] + cfg.group_spread * rng.standard_normal((U, d))  # (U, d)
        dist = np.linalg.norm(self.centre[:, None, :] - self.position[None, :, :], axis=2)  # (U, C)
        order = np.argsort(dist, axis=1, kind="stable")
        K, L = cfg.core_per_user, cfg.latent_per_user
        self.core = order[:, :K]  # (U, K) category ids
        self.latent = order[:, K:K + L]  # (U, L) category ids
        self.relation = self._knowledge_relation(T)  # (C, links) related categories: the world's knowledge
        self.latent_kind = np.full(self.latent.shape, LATENT_COLLAB, dtype=np.int8)  # (U, L)
        if cfg.knowledge_per_user:
            know = self._knowledge_interests(order[:, :K + L])  # (U, Lk)
            self.latent = np.concatenate([self.latent, know], axis=1)  # (U, L + Lk)
            self.latent_kind = np.concatenate([self.latent_kind, np.full(know.shape, LATENT_KNOWLEDGE, np.int8)], 1)
            L = self.latent.shape[1]
        self.activity, self.click_scale, self.openness = self._user_traits()  # (U,) each, 1 when off
        self.kind = np.full((U, C), KIND_OTHER, dtype=np.int8)  # (U, C)
        self.latent_pos = np.full((U, C), -1, dtype=np.int64)  # (U, C) position of c in the user's latent list
        rows = np.arange(U)[:, None]
        self.kind[rows, self.core] = KIND_CORE
        self.kind[rows, self.latent] = KIND_LATENT
        self.latent_pos[rows, self.latent] = np.arange(L)[None, :]

        # Organic non-core weights: the prior, latent interests down-weighted, core excluded (drawn separately).
        w = np.tile(self.popularity, (U, 1))  # (U, C)
        w[self.kind == KIND_LATENT] *= cfg.organic_latent_weight
        w[self.kind == KIND_CORE] = 0.0
        self._organic_cdf = np.cumsum(w, axis=1) / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)  # (U, C)

        # Items and prices.
        I = cfg.items_per_category
        n_items = C * I
        width = len(str(n_items))
        self.item_ids = np.array([f"i{i:0{width}d}" for i in range(n_items)])
        mu = cfg.price_log_mean + cfg.price_category_sigma * rng.standard_normal(C)  # (C,)
        self.price = np.round(np.exp(np.repeat(mu, I) + cfg.price_item_sigma * rng.standard_normal(n_items)), 2)
        self.items = pd.DataFrame({
            "item_id": self.item_ids,
            "category": [self.names[i // I] for i in range(n_items)],
            "title": [f"{self.names[i // I]} #{i % I + 1}" for i in range(n_items)],
            "price": self.price,
        })
        uw = len(str(U))
        self.user_ids = [f"u{u:0{uw}d}" for u in range(U)]
        users = pd.DataFrame({"user_id": self.user_ids})
        for f in range(cfg.user_features):
            card = max(3, G // 2 + 1) + f
            typical = rng.integers(0, card, G)
            value = np.where(rng.random(U) < FEATURE_AGREEMENT, typical[self.group], rng.integers(0, card, U))
            users[f"feature_{f}"] = [f"f{f}_{v}" for v in value]
        self.users = users
        self.catalogue = Catalogue(categories=list(self.names), items=self.items[["item_id", "category", "price"]],
                                   popularity=self.popularity.copy(), users=self.users.copy())
        self._draws = lru_cache(maxsize=4)(self._make_draws)

    # ----------------------------------------------------------------------------------------------- state

    def initial_state(self) -> WorldState:
        U, L = self.latent.shape
        sat = np.full(U, self.cfg.retention_ref) if self.cfg.retention_rate else None
        worn = np.zeros((U, len(self.names))) if self.cfg.day_fatigue < 1 else None
        return WorldState(np.zeros((U, L), dtype=bool), np.full((U, L), -1, dtype=np.int64), sat, worn)

    def ground_truth(self) -> pd.DataFrame:
        """user_id, group, core (list[str]) and latent (list[str]) interests: never shown to a policy."""
        return pd.DataFrame({
            "user_id": self.user_ids, "group": self.group,
            "core": [[self.names[c] for c in row] for row in self.core],
            "latent": [[self.names[c] for c, k in zip(row, kinds) if k == LATENT_COLLAB]
                       for row, kinds in zip(self.latent, self.latent_kind)],
            "knowledge": [[self.names[c] for c, k in zip(row, kinds) if k == LATENT_KNOWLEDGE]
                          for row, kinds in zip(self.latent, self.latent_kind)],
        })

    # ----------------------------------------------------------------------------------------------- knowledge

    def _user_traits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(U,) activity, click propensity and openness: lognormal with mean 1 (exp(s z - s^2 / 2)); exactly 1
        where the sigma is 0 (nothing drawn then, so the world without them is unchanged)."""
        cfg, U = self.cfg, self.cfg.n_users
        rng = np.random.default_rng([self.seed, 0, STREAM_USERS])
        z = rng.standard_normal((3, U)) if (cfg.user_activity_sigma or cfg.user_click_sigma
                                            or cfg.user_openness_sigma) else np.zeros((3, U))
        sig = np.array([cfg.user_activity_sigma, cfg.user_click_sigma, cfg.user_openness_sigma])[:, None]
        traits = np.exp(sig * z - sig ** 2 / 2)  # (3, U)
        return traits[0], traits[1], traits[2]

    def _knowledge_relation(self, n_topics: int) -> np.ndarray:
        """(C, links) for each category, ``sim.knowledge_links`` distinct categories of other topics (uniform; with
        too few of them -- a tiny catalogue -- drawn with repeats)."""
        C, links = len(self.names), self.cfg.knowledge_links
        rng = np.random.default_rng([self.seed, 0, STREAM_KNOWLEDGE])
        rel = np.zeros((C, links), dtype=np.int64)
        for c in range(C):
            others = np.flatnonzero(self.topic != self.topic[c]) if n_topics > 1 else np.delete(np.arange(C), c)
            rel[c] = rng.choice(others, size=links, replace=len(others) < links) if len(others) else c
        return rel

    def _knowledge_interests(self, known: np.ndarray) -> np.ndarray:
        """(U, Lk) knowledge interests: per user, distinct draws among the relations of its core categories that
        no group-mate has as core or collaborative latent interest (``known``: (U, K + L)); where too few remain,
        the other relations of the core, then any category outside the user's own core and latent ones."""
        cfg = self.cfg
        U, C, Lk = cfg.n_users, len(self.names), cfg.knowledge_per_user
        rng = np.random.default_rng([self.seed, 1, STREAM_KNOWLEDGE])
        group_known = {g: set(known[self.group == g].ravel().tolist()) for g in np.unique(self.group)}
        out = np.zeros((U, Lk), dtype=np.int64)
        for u in range(U):
            own = set(known[u].tolist())
            related = list(dict.fromkeys(int(c) for c in self.relation[self.core[u]].ravel()))
            first = [c for c in related if c not in group_known[self.group[u]]]
            second = [c for c in related if c not in own and c not in first]
            rest = [c for c in range(C) if c not in own and c not in first and c not in second]
            pool: list[int] = []
            for tier in (first, second, rest):
                if len(pool) < Lk:
                    pool += [int(c) for c in rng.permutation(tier)][:Lk - len(pool)]
            out[u] = pool
        return out

    def mate_share(self) -> dict:
        """Mean share of a user's group-mates that hold each of its latent interests, per kind (how much
        collaborative filtering can learn about that kind; world.json records it)."""
        out = {}
        for kind, label in ((LATENT_COLLAB, "collab"), (LATENT_KNOWLEDGE, "knowledge")):
            shares = []
            for u in range(len(self.group)):
                mates = np.setdiff1d(np.flatnonzero(self.group == self.group[u]), [u])
                if not len(mates):
                    continue
                held = self.latent[mates][self.latent_kind[mates] == kind]
                for c in self.latent[u][self.latent_kind[u] == kind]:
                    shares.append(float((held == c).sum()) / len(mates))
            out[label] = float(np.mean(shares)) if shares else None
        return out

    def knowledge_corpus(self) -> list[dict]:
        """The world-knowledge corpus: one description per category stating its relation (what the KG-neighbour
        arm reads directly and what a backbone may pretrain on; never the users' interests)."""
        out = []
        for c, name in enumerate(self.names):
            rel = [self.names[r] for r in self.relation[c]]
            out.append({"category": name, "related": rel,
                        "text": f"{name}: people who love {name} often come to love {' and '.join(rel)}."})
        return out

    def long_tail(self) -> np.ndarray:
        """(C,) bool: the bottom ``sim.tail_fraction`` of categories by the popularity prior (ties by id)."""
        C = len(self.names)
        n = int(np.ceil(round(self.cfg.tail_fraction * C, 9)))
        order = np.lexsort((np.arange(C), self.popularity))
        tail = np.zeros(C, dtype=bool)
        tail[order[:n]] = True
        return tail

    # ----------------------------------------------------------------------------------------------- draws

    def draws(self, day: int) -> DayDraws:
        """The day's random draws (cached: every arm of a day reuses them)."""
        return self._draws(int(day))

    def _make_draws(self, day: int) -> DayDraws:
        cfg = self.cfg
        U, E, K, I = cfg.n_users, cfg.exposures_per_session, cfg.slots, cfg.items_per_category
        rs = np.random.default_rng([self.seed, day, STREAM_SESSIONS])
        rate = cfg.sessions_per_day * self.activity if cfg.user_activity_sigma else cfg.sessions_per_day
        sess_user = np.repeat(np.arange(U), rs.poisson(rate, U))  # (S,)
        S = len(sess_user)
        start = rs.integers(0, DAY - (E + K + 1) * EXPOSURE_GAP_S, S)  # (S,)

        ro = np.random.default_rng([self.seed, day, STREAM_ORGANIC])
        from_interest = ro.random((S, E)) < cfg.organic_core_share  # (S, E)
        interest_u = ro.random((S, E))  # which of the user's known interests (mapped in step: depends on the state)
        u = ro.random((S, E))
        cdf = self._organic_cdf[sess_user]  # (S, C)
        other_pick = np.minimum((cdf[:, None, :] <= u[:, :, None]).sum(axis=2), len(self.names) - 1)  # (S, E)
        organic_cat = np.where(from_interest, -1, other_pick).astype(np.int64)  # -1: a known interest
        organic_item = ro.integers(0, I, (S, E))
        organic_u_click, organic_u_disc = ro.random((S, E)), ro.random((S, E))

        rk = np.random.default_rng([self.seed, day, STREAM_SLOTS])
        slot_item = rk.integers(0, I, (S, K))
        slot_u_click, slot_u_disc = rk.random((S, K)), rk.random((S, K))
        keep_u = (np.random.default_rng([self.seed, day, STREAM_RETENTION]).random(S) if cfg.retention_rate
                  else None)
        return DayDraws(sess_user, start, organic_cat, interest_u, organic_item, organic_u_click, organic_u_disc,
                        slot_item, slot_u_click, slot_u_disc, keep_u)

    def organic(self, state: WorldState, dr: DayDraws) -> np.ndarray:
        """(S, E) organic categories: the prior's picks, and for the interest exposures the user's known interest
        number floor(u * n) among its n known ones (core, then latent discovered before the day, in order).

        The feed follows what the user is known to like (as a production feed does), so a discovered latent
        interest also gets organic exposures; the uniforms are the same for every arm.
        """
        cats = dr.organic_cat.copy()
        pick = cats < 0
        if not pick.any():
            return cats
        K = self.core.shape[1]
        known = np.concatenate([self.core, np.where(state.discovered, self.latent, -1)], axis=1)  # (U, K + L)
        order = np.argsort(known < 0, axis=1, kind="stable")  # discovered ones first after the core, order kept
        known = np.take_along_axis(known, order, axis=1)
        n_known = K + state.discovered.sum(axis=1)  # (U,)
        users = np.repeat(dr.sess_user[:, None], cats.shape[1], axis=1)  # (S, E)
        idx = np.minimum((dr.interest_u * n_known[users]).astype(np.int64), n_known[users] - 1)
        cats[pick] = known[users[pick], idx[pick]]
        return cats

    # ------------------------------------------------------------------------------------------------ step

    def step(self, state: WorldState, day: int, served: np.ndarray | None) -> tuple[DayOutcome, WorldState]:
        """Play day ``day`` for one arm.

        Args:
            state: the arm's world state before the day (not modified).
            day: simulation day (0 = the first warm-up day).
            served: (U, K) category ids the arm serves each user today (the same in each of the user's sessions),
                or None on an organic-only (warm-up) day.

        Returns:
            The day's outcome and the state after it.
        """
        cfg = self.cfg
        dr = self.draws(day)
        S = len(dr.sess_user)
        organic = self.organic(state, dr)  # (S, E)
        if served is None:
            cats, items, uc, ud = organic, dr.organic_item, dr.organic_u_click, dr.organic_u_disc
            slot = np.full(cats.shape, -1, dtype=np.int64)
        else:
            served = np.asarray(served, dtype=np.int64)
            if served.shape != (cfg.n_users, cfg.slots):
                raise ValueError(f"served: expected shape {(cfg.n_users, cfg.slots)}, got {served.shape}")
            cats = np.concatenate([served[dr.sess_user], organic], axis=1)  # (S, K + E)
            items = np.concatenate([dr.slot_item, dr.organic_item], axis=1)
            uc = np.concatenate([dr.slot_u_click, dr.organic_u_click], axis=1)
            ud = np.concatenate([dr.slot_u_disc, dr.organic_u_disc], axis=1)
            slot = np.concatenate([np.tile(np.arange(cfg.slots), (S, 1)),
                                   np.full(organic.shape, -1, dtype=np.int64)], axis=1)
        n = cats.shape[1]
        user = np.repeat(dr.sess_user[:, None], n, axis=1)  # (S, n)
        ts = (day_start(day_date(cfg, day)) + dr.start[:, None]
              + EXPOSURE_GAP_S * np.arange(n)[None, :]).astype(np.int64)  # (S, n)
        if state.satisfaction is not None and dr.sess_u_keep is not None:  # retention: some sessions do not happen
            back = np.minimum(1.0, state.satisfaction / cfg.retention_ref)  # (U,) return probability
            keep = dr.sess_u_keep < back[dr.sess_user]  # (S,)
            cats, items, uc, ud, slot, user, ts = (a[keep] for a in (cats, items, uc, ud, slot, user, ts))

        # Discovery: the first discovering exposure of each (user, latent interest) today, by time.
        kind = self.kind[user, cats]  # (S, n)
        lpos = self.latent_pos[user, cats]  # (S, n)
        is_lat = kind == KIND_LATENT
        before = np.zeros(cats.shape, dtype=bool)
        before[is_lat] = state.discovered[user[is_lat], lpos[is_lat]]
        # world v2: an unexamined served slot (position bias) neither discovers nor is clicked; open users discover
        exam = np.where(slot >= 0, cfg.position_bias ** np.maximum(slot, 0), 1.0)  # (S, n); 1 when off
        finds = is_lat & ~before & (ud < cfg.discover_prob * self.openness[user] * exam)
        first = np.full(state.discovered.shape, np.iinfo(np.int64).max, dtype=np.int64)  # (U, L)
        np.minimum.at(first, (user[finds], lpos[finds]), ts[finds])
        found_now = np.zeros(cats.shape, dtype=bool)
        found_now[is_lat] = ts[is_lat] >= first[user[is_lat], lpos[is_lat]]
        clickable_latent = before | found_now

        # Click probability: by kind, content fatigue within the session.
        base = np.where(kind == KIND_CORE, cfg.click_core,
                        np.where(is_lat, np.where(clickable_latent, cfg.click_latent, 0.0), cfg.click_other))
        same = (cats[:, :, None] == cats[:, None, :]).sum(axis=2)  # (S, n) exposures of the category in the session
        p = np.minimum(base * self.click_scale[user], 1.0) * cfg.fatigue ** (same - 1) * exam
        if state.worn is not None:  # fatigue across days: earlier days' exposures of the category wear it out
            p = p * cfg.day_fatigue ** state.worn[user, cats]
        click = uc < p  # (S, n)

        new_state = state.copy()
        newly = (first < np.iinfo(np.int64).max) & ~state.discovered
        new_state.discovered |= newly
        new_state.discovery_day[newly] = day
        if new_state.worn is not None:
            new_state.worn *= cfg.day_fatigue_decay
            np.add.at(new_state.worn, (user.ravel(), cats.ravel()), 1.0)
        if new_state.satisfaction is not None and served is not None:  # retention: today's served-slot CTR
            shown, hits = np.zeros(cfg.n_users), np.zeros(cfg.n_users)
            np.add.at(shown, user[slot >= 0], 1)
            np.add.at(hits, user[(slot >= 0) & click], 1)
            had = shown > 0
            rho = cfg.retention_rate
            new_state.satisfaction[had] = (1 - rho) * state.satisfaction[had] + rho * hits[had] / shown[had]

        item = cats * cfg.items_per_category + items
        flat = {k: v.ravel() for k, v in
                {"user": user, "category": cats, "item": item, "slot": slot, "click": click, "ts": ts}.items()}
        order = np.lexsort((flat["user"], flat["ts"]))  # time order, then user: file order = time order
        flat = {k: v[order] for k, v in flat.items()}
        events = pd.DataFrame({
            "user_id": np.asarray(self.user_ids, dtype=object)[flat["user"]],
            "item_id": self.item_ids[flat["item"]],
            "timestamp": flat["ts"],
            "event": np.where(flat["click"], "click", "exposure"),
            "rating": np.nan,
            "slot": flat["slot"].astype(np.int64),
        })
        outcome = DayOutcome(events=events, user=flat["user"].astype(np.int64),
                             category=flat["category"].astype(np.int64), item=flat["item"].astype(np.int64),
                             slot=flat["slot"].astype(np.int64), click=flat["click"].astype(bool),
                             price=self.price[flat["item"]], new_discoveries=np.argwhere(newly))
        return outcome, new_state

    def category_ids(self, lists: list[list[str]]) -> np.ndarray:
        """(U, K) ids of per-user category-name lists (names outside the catalogue raise ValueError)."""
        index = self.catalogue.index
        try:
            return np.array([[index[c] for c in row] for row in lists], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"served category not in the catalogue: {exc.args[0]!r}") from None

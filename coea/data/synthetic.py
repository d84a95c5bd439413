"""The synthetic world: the embedded default data set, with a known ground truth for novelty (docs/data.md).

Model, day by day (``seed`` fixes everything through one ``numpy.random.Generator``):

- Catalogue: the first ``n_categories`` names of :data:`CATEGORY_NAMES`, ``items_per_category`` items each.
- Users belong to ``n_groups`` latent groups (balanced). A group's long-term taste is ``categories_per_group``
  core categories. Sparse features ``feature_0..`` take the group's typical value with probability
  :data:`FEATURE_AGREEMENT`, else a random one, so the encoder can use them.
- Each user has ``latent_per_user`` latent interests: categories outside the group core that the user never
  clicks at first. From day 1 on, each day with probability ``discover_prob`` the user discovers the next one and
  clicks it from then on. This is the ground truth for novelty (``ground_truth.latent_interests``).
- Sessions: Poisson(``sessions_per_day``) per user and day, each exposing ``exposures_per_session`` items. Exposed
  categories are drawn with weights :data:`EXPOSURE_WEIGHT` (core > discovered latent > the rest). With
  probability ``drift`` the session drifts: half its exposures come from one random category of the user's
  previous session, clicked at least with probability ``CLICK_PROB["drift"]`` (short-term interest).
- An exposed item is clicked with the probability of its category for that user, :data:`CLICK_PROB`
  (core >> drifted > discovered latent > others; an undiscovered latent interest: never). A clicked exposure is a
  ``"click"`` event, an unclicked one an ``"exposure"`` event; ``rating`` is NaN.
- Timestamps: ``day * 86400 + second of day``; the exposures of a session are :data:`EXPOSURE_GAP_S` apart.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from coea.config import SyntheticConfig
from coea.data.clean import clean_interactions
from coea.data.schema import Interactions

DAY = 86_400
CATEGORY_NAMES = (
    "Jazz", "Hiking", "Cooking", "Gardening", "Chess", "Poetry", "Photography", "Cycling", "Astronomy", "Baking",
    "Camping", "Ceramics", "Climbing", "Comics", "Dance", "Fishing", "Football", "Gaming", "Knitting", "Opera",
    "Painting", "Robotics", "Running", "Sailing", "Sculpture", "Skiing", "Surfing", "Swimming", "Tennis",
    "Theatre", "Travel", "Yoga", "Birdwatching", "Blues", "Cinema", "Fashion", "History", "Origami", "Podcasts",
    "Woodworking",
)
CLICK_PROB = {"core": 0.6, "drift": 0.35, "latent": 0.25, "other": 0.03}
EXPOSURE_WEIGHT = {"core": 4.0, "latent": 3.0, "other": 0.5}
FEATURE_AGREEMENT = 0.8
EXPOSURE_GAP_S = 20


def category_names(n: int) -> list[str]:
    """The first ``n`` catalogue names; beyond the fixed list, ``Topic41``, ``Topic42``, ..."""
    return [CATEGORY_NAMES[i] if i < len(CATEGORY_NAMES) else f"Topic{i + 1}" for i in range(n)]


def generate_world(cfg: SyntheticConfig, seed: int) -> Interactions:
    """Simulate ``cfg.n_users`` users over ``cfg.n_days`` days (see the module docstring).

    Returns:
        Interactions (through the shared cleaning path) with ``ground_truth``: ``user_id``, ``latent_group``,
        ``latent_interests`` (list[str]), ``core_categories`` (list[str]) and ``discovery_day`` (list[int], the
        day each latent interest became clickable, -1 = never).
    """
    rng = np.random.default_rng(seed)
    n_u, n_c, n_e = cfg.n_users, cfg.n_categories, cfg.exposures_per_session
    names = category_names(n_c)

    # Groups, their core categories, each user's latent interests (outside the core).
    group = rng.permutation(np.arange(n_u) % cfg.n_groups)  # (U,)
    core = np.zeros((cfg.n_groups, n_c), dtype=bool)  # (G, C)
    for g in range(cfg.n_groups):
        core[g, rng.choice(n_c, size=cfg.categories_per_group, replace=False)] = True
    n_latent = min(cfg.latent_per_user, n_c - cfg.categories_per_group)
    latent = np.zeros((n_u, n_latent), dtype=np.int64)  # (U, Lt) category indices, discovery order
    for u in range(n_u):
        latent[u] = rng.choice(np.flatnonzero(~core[group[u]]), size=n_latent, replace=False)
    discovered_day = np.full((n_u, n_latent), -1, dtype=np.int64)  # (U, Lt)

    user_core = core[group]  # (U, C)
    is_latent = np.zeros((n_u, n_c), dtype=bool)
    is_latent[np.arange(n_u)[:, None], latent] = True
    recent = np.full((n_u, n_e), -1, dtype=np.int64)  # categories of each user's previous session

    users_col, items_col, ts_col, click_col = [], [], [], []
    for day in range(cfg.n_days):
        if day > 0 and n_latent:  # discovery: the next undiscovered latent interest becomes clickable
            n_found = (discovered_day >= 0).sum(axis=1)
            finds = (rng.random(n_u) < cfg.discover_prob) & (n_found < n_latent)
            discovered_day[np.flatnonzero(finds), n_found[finds]] = day
        found = np.zeros((n_u, n_c), dtype=bool)
        rows, cols = np.nonzero(discovered_day >= 0)
        found[rows, latent[rows, cols]] = True
        hidden = is_latent & ~found  # (U, C) latent, not yet discovered: never clicked

        weight = np.where(user_core, EXPOSURE_WEIGHT["core"],
                          np.where(found, EXPOSURE_WEIGHT["latent"], EXPOSURE_WEIGHT["other"]))  # (U, C)
        click_p = np.where(user_core, CLICK_PROB["core"],
                           np.where(found, CLICK_PROB["latent"], np.where(hidden, 0.0, CLICK_PROB["other"])))

        sess_user = np.repeat(np.arange(n_u), rng.poisson(cfg.sessions_per_day, n_u))  # (S,)
        n_s = len(sess_user)
        if not n_s:
            continue
        cum = np.cumsum(weight[sess_user], axis=1)  # (S, C)
        draw = rng.random((n_s, n_e)) * cum[:, -1:]  # (S, E)
        cats = (cum[:, None, :] <= draw[:, :, None]).sum(axis=2)  # (S, E) inverse CDF
        cats = np.minimum(cats, n_c - 1)

        # Short-term drift: half the exposures from one category of the user's previous session.
        prev = recent[sess_user]  # (S, E)
        has_prev = prev[:, 0] >= 0
        drifting = (rng.random(n_s) < cfg.drift) & has_prev
        focus = prev[np.arange(n_s), rng.integers(0, n_e, n_s)]  # (S,)
        n_focus = max(1, n_e // 2)
        cats[drifting, :n_focus] = focus[drifting, None]

        p = click_p[sess_user[:, None], cats]  # (S, E)
        drifted = drifting[:, None] & (cats == focus[:, None]) & ~hidden[sess_user[:, None], cats]
        p = np.where(drifted, np.maximum(p, CLICK_PROB["drift"]), p)
        clicked = rng.random((n_s, n_e)) < p
        item = cats * cfg.items_per_category + rng.integers(0, cfg.items_per_category, (n_s, n_e))
        start = rng.integers(0, DAY - n_e * EXPOSURE_GAP_S, n_s)
        ts = day * DAY + start[:, None] + EXPOSURE_GAP_S * np.arange(n_e)[None, :]  # (S, E)

        users_col.append(np.repeat(sess_user, n_e))
        items_col.append(item.ravel())
        ts_col.append(ts.ravel())
        click_col.append(clicked.ravel())
        last = np.unique(sess_user[::-1], return_index=True)[1]  # each user's last session of the day
        last = n_s - 1 - last
        recent[sess_user[last]] = cats[last]

    uid_width = len(str(n_u))
    user_ids = np.array([f"u{u:0{uid_width}d}" for u in range(n_u)])
    n_items = n_c * cfg.items_per_category
    iid_width = len(str(n_items))
    item_ids = np.array([f"i{i:0{iid_width}d}" for i in range(n_items)])
    u = np.concatenate(users_col) if users_col else np.zeros(0, dtype=np.int64)
    ts = np.concatenate(ts_col) if ts_col else np.zeros(0, dtype=np.int64)
    order = np.argsort(ts, kind="stable")  # file order = time order: no out-of-order notes
    events = pd.DataFrame({
        "user_id": user_ids[u[order]],
        "item_id": item_ids[np.concatenate(items_col)[order]] if items_col else np.zeros(0, dtype=str),
        "timestamp": ts[order],
        "event": np.where(np.concatenate(click_col)[order], "click", "exposure") if click_col else [],
        "rating": np.nan,
    })
    items = pd.DataFrame({
        "item_id": item_ids,
        "category": [names[i // cfg.items_per_category] for i in range(n_items)],
        "title": [f"{names[i // cfg.items_per_category]} #{i % cfg.items_per_category + 1}" for i in range(n_items)],
    })
    users = pd.DataFrame({"user_id": user_ids})
    for f in range(cfg.user_features):
        card = max(3, cfg.n_groups // 2 + 1) + f  # small categoricals of different sizes
        typical = rng.integers(0, card, cfg.n_groups)  # (G,) the group's usual value
        value = np.where(rng.random(n_u) < FEATURE_AGREEMENT, typical[group], rng.integers(0, card, n_u))
        users[f"feature_{f}"] = [f"f{f}_{v}" for v in value]

    inter = clean_interactions(events, items, users, source="synthetic")
    inter.ground_truth = pd.DataFrame({
        "user_id": user_ids,
        "latent_group": group.astype(np.int64),
        "latent_interests": [[names[c] for c in row] for row in latent],
        "core_categories": [[names[c] for c in np.flatnonzero(core[g])] for g in group],
        "discovery_day": [row.tolist() for row in discovered_day],
    })
    return inter

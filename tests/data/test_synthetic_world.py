"""The synthetic world: determinism, the novelty ground truth, group structure, demo-size speed."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from coea.config import SyntheticConfig
from coea.data.synthetic import CATEGORY_NAMES, DAY, generate_world

SMALL = SyntheticConfig(n_users=80, n_groups=4, n_categories=12, items_per_category=5, n_days=20,
                        categories_per_group=3, discover_prob=0.15)


def _clicks_with_category(world):
    ev = world.events
    clicks = ev[ev["event"] == "click"].copy()
    clicks["category"] = clicks["item_id"].map(world.item_category)
    return clicks


def test_deterministic_per_seed_and_differs_across_seeds():
    a, b, c = generate_world(SMALL, 1), generate_world(SMALL, 1), generate_world(SMALL, 2)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.users, b.users)
    pd.testing.assert_frame_equal(a.ground_truth, b.ground_truth)
    assert not a.events.equals(c.events)
    assert a.ground_truth["latent_interests"].tolist() != c.ground_truth["latent_interests"].tolist()


def test_latent_interests_absent_before_discovery_then_clicked():
    world = generate_world(SMALL, 0)
    gt = world.ground_truth.set_index("user_id")
    clicks = _clicks_with_category(world)
    clicks["day"] = clicks["timestamp"] // DAY
    clicked_later = 0
    for user, rows in clicks.groupby("user_id"):
        latent, days = gt.loc[user, "latent_interests"], gt.loc[user, "discovery_day"]
        assert not set(latent) & set(gt.loc[user, "core_categories"])
        for category, day in zip(latent, days):
            when = rows.loc[rows["category"] == category, "day"]
            if day < 0:
                assert when.empty
            else:
                assert day >= 1 and (when.empty or when.min() >= day)
                clicked_later += not when.empty
    first_day = clicks[clicks["day"] == 0]
    assert len(first_day) and not any(
        c in gt.loc[u, "latent_interests"] for u, c in zip(first_day["user_id"], first_day["category"]))
    assert clicked_later > 0.3 * len(gt)  # discovery shows up in the timeline


def test_group_structure_clicks_and_features():
    world = generate_world(SMALL, 0)
    gt = world.ground_truth.set_index("user_id")
    clicks = _clicks_with_category(world)
    core = [c in gt.loc[u, "core_categories"] for u, c in zip(clicks["user_id"], clicks["category"])]
    assert np.mean(core) > 0.6  # core >> the rest
    users = world.users.set_index("user_id").join(gt["latent_group"])
    for col in ("feature_0", "feature_1", "feature_2"):
        majority = users.groupby("latent_group")[col].agg(lambda s: s.value_counts(normalize=True).iloc[0])
        assert majority.min() > 0.5, col  # features follow the group
    assert world.categories == sorted(CATEGORY_NAMES[:12])
    assert set(world.events["event"]) == {"click", "exposure"} and world.rejects.total == 0
    ts = world.events["timestamp"]
    assert ts.min() >= 0 and ts.max() < SMALL.n_days * DAY


def test_demo_world_is_fast():
    t0 = time.perf_counter()
    world = generate_world(SyntheticConfig(), 0)
    seconds = time.perf_counter() - t0
    assert len(world.users) == 600 and len(world.categories) == 24 and len(world.items) == 24 * 15
    assert 100_000 < len(world.events) < 200_000
    assert seconds < 10, seconds


def test_load_interactions_builds_the_world():
    from coea.config import DataConfig
    from coea.data.loaders import load_interactions

    inter = load_interactions(DataConfig(source="synthetic"), SMALL, seed=5)
    pd.testing.assert_frame_equal(inter.events, generate_world(SMALL, 5).events)

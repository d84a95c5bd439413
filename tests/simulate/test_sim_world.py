"""The simulation's world: structure, paired streams, discovery by exposure, clicks and fatigue."""

from __future__ import annotations

import numpy as np
import pytest

from coea.config import load_config
from coea.simulate.world import KIND_CORE, KIND_LATENT, World, day_date, day_end

SMALL = ["sim.n_users=50", "sim.n_categories=30", "sim.n_groups=5", "sim.core_per_user=3", "sim.latent_per_user=2",
         "sim.items_per_category=4", "sim.exposures_per_session=6", "sim.slots=2"]


def sim_cfg(*extra: str):
    return load_config(None, [*SMALL, *extra]).sim


def test_core_and_latent_are_the_nearest_categories_and_disjoint():
    w = World(sim_cfg(), seed=3)
    dist = np.linalg.norm(w.centre[:, None, :] - w.position[None, :, :], axis=2)  # (U, C)
    for u in range(w.cfg.n_users):
        order = np.argsort(dist[u], kind="stable")
        assert set(w.core[u]) == set(order[:3])
        assert list(w.latent[u]) == list(order[3:5])  # next nearest, in distance order
        assert not set(w.core[u]) & set(w.latent[u])
    assert (w.kind == KIND_CORE).sum() == 50 * 3 and (w.kind == KIND_LATENT).sum() == 50 * 2
    assert abs(w.popularity.sum() - 1.0) < 1e-9 and np.all(w.price > 0)
    assert w.long_tail().sum() == 6  # ceil(0.2 * 30)
    assert set(w.catalogue.items.columns) == {"item_id", "category", "price"}


def test_a_group_shares_its_latent_interests_more_than_chance():
    """Latent interests are related within a group (what collaborative exploration can learn)."""
    w = World(sim_cfg("sim.n_users=100"), seed=0)
    same, other = [], []
    for a in range(40):
        for b in range(a + 1, 40):
            o = len(set(w.latent[a]) & set(w.latent[b]))
            (same if w.group[a] == w.group[b] else other).append(o)
    assert np.mean(same) > 3 * max(np.mean(other), 0.01)


def test_same_seed_same_world_and_draws_do_not_depend_on_the_arm():
    a, b = World(sim_cfg(), seed=7), World(sim_cfg(), seed=7)
    assert np.array_equal(a.latent, b.latent) and np.array_equal(a.price, b.price)
    s = a.initial_state()
    served1 = np.tile([0, 1], (50, 1))
    served2 = a.latent[:, :2]
    o1, _ = a.step(s, 5, served1)
    o2, _ = b.step(s, 5, served2)
    org1, org2 = o1.events[o1.events.slot < 0], o2.events[o2.events.slot < 0]
    cols = ["user_id", "item_id", "timestamp"]
    assert org1[cols].reset_index(drop=True).equals(org2[cols].reset_index(drop=True))  # same organic feed
    assert not o1.events[o1.events.slot >= 0]["item_id"].equals(o2.events[o2.events.slot >= 0]["item_id"])
    o1b, _ = a.step(s, 5, served1)  # replaying a day is deterministic
    assert o1b.events.equals(o1.events)
    assert World(sim_cfg(), seed=8).latent.tolist() != a.latent.tolist()


def test_undiscovered_latent_interests_are_never_clicked_and_discovery_sticks():
    w = World(sim_cfg("sim.discover_prob=0", "sim.click_latent=1", "sim.click_other=1", "sim.click_core=1",
                      "sim.fatigue=1"), seed=1)
    s = w.initial_state()
    out, s2 = w.step(s, 0, w.latent[:, :2])
    lat = w.kind[out.user, out.category] == KIND_LATENT
    assert lat.any() and not out.click[lat].any()  # never clicked while undiscovered
    assert out.click[~lat].all()  # everything else has p = 1
    assert not s2.discovered.any()

    w1 = World(sim_cfg("sim.discover_prob=1", "sim.click_latent=1", "sim.fatigue=1"), seed=1)
    out, s3 = w1.step(s, 0, w1.latent[:, :2])
    active = np.unique(out.user)
    assert s3.discovered[active].all()  # one exposure discovers with probability 1
    assert (s3.discovery_day[active] == 0).all()
    served = out.slot >= 0
    assert out.click[served].all()  # discovered at the exposure: clicked with click_latent = 1
    out2, s4 = w1.step(s3, 1, np.tile([w1.core[0][0], w1.core[0][1]], (50, 1)))
    assert s4.discovered[active].all() and (s4.discovery_day[active] == 0).all()  # stays, keeps its day
    assert len(out2.new_discoveries) <= len(np.unique(out2.user)) * 2


def test_fatigue_zero_never_clicks_a_repeated_category():
    w = World(sim_cfg("sim.fatigue=0", "sim.click_core=1", "sim.click_other=1", "sim.click_latent=1",
                      "sim.discover_prob=1"), seed=2)
    same = np.tile([0, 0], (50, 1))  # both slots the same category: n = 2 -> p * 0
    out, _ = w.step(w.initial_state(), 0, same)
    assert not out.click[out.slot >= 0].any()
    w2 = World(sim_cfg("sim.fatigue=1", "sim.click_core=1", "sim.click_other=1", "sim.click_latent=1",
                       "sim.discover_prob=1"), seed=2)
    out2, _ = w2.step(w2.initial_state(), 0, same)
    assert out2.click[out2.slot >= 0].all()


def test_click_rate_matches_the_configured_probability():
    w = World(sim_cfg("sim.n_users=400", "sim.click_other=0.2", "sim.fatigue=1", "sim.exposures_per_session=0"),
              seed=4)
    others = np.array([[c for c in range(30) if w.kind[u, c] == 0][:2] for u in range(400)])
    out, _ = w.step(w.initial_state(), 0, others)
    assert abs(out.click.mean() - 0.2) < 0.05


def test_events_are_a_valid_day_partition():
    cfg = sim_cfg()
    w = World(cfg, seed=0)
    out, _ = w.step(w.initial_state(), 3, w.core[:, :2])
    ev = out.events
    assert list(ev.columns) == ["user_id", "item_id", "timestamp", "event", "rating", "slot"]
    assert ev["timestamp"].is_monotonic_increasing
    start = day_end(cfg, 3) - 86_400
    assert ev["timestamp"].min() >= start and ev["timestamp"].max() < day_end(cfg, 3)
    assert day_date(cfg, 0).isoformat() == cfg.start_date
    assert set(ev["event"]) <= {"click", "exposure"}
    assert set(ev["item_id"]) <= set(w.items["item_id"])
    with pytest.raises(ValueError, match="shape"):
        w.step(w.initial_state(), 3, np.zeros((3, 2), dtype=int))
    with pytest.raises(ValueError, match="not in the catalogue"):
        w.category_ids([["NoSuchCategory", "Jazz"]])


def test_the_organic_feed_follows_discovered_interests_with_the_same_uniforms():
    cfg = sim_cfg("sim.organic_core_share=1", "sim.exposures_per_session=20")
    w = World(cfg, seed=5)
    none = w.initial_state()
    all_found = w.initial_state()
    all_found.discovered[:] = True
    dr = w.draws(2)
    before, after = w.organic(none, dr), w.organic(all_found, dr)
    users = np.repeat(dr.sess_user[:, None], before.shape[1], axis=1)
    assert (w.kind[users, before] == KIND_CORE).all()  # only the core is known
    assert (w.kind[users, after] == KIND_LATENT).mean() > 0.2  # 2 of 5 known interests are latent now
    assert ((w.kind[users, after] == KIND_CORE) | (w.kind[users, after] == KIND_LATENT)).all()
    assert np.array_equal(w.organic(none, dr), before)  # the same state gives the same feed

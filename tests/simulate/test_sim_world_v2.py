"""World v2: the knowledge relation and knowledge latent interests (off by default), and the kg_neighbour arm."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from coea.config import load_config
from coea.simulate.policies import make_policy
from coea.simulate.run import simulate
from coea.simulate.world import LATENT_KNOWLEDGE, World

SIM = ["sim.n_users=60", "sim.n_groups=4", "sim.n_categories=40", "sim.core_per_user=3", "sim.latent_per_user=2",
       "tracking.backend=none"]


def world(*extra, seed=0):
    return World(load_config(None, [*SIM, *extra]).sim, seed)


def test_off_by_default_and_the_relation_changes_nothing_else():
    off, on = world(), world("sim.knowledge_per_user=2")
    assert off.latent.shape == (60, 2) and (off.latent_kind == 0).all()
    assert on.latent.shape == (60, 4) and (on.latent[:, :2] == off.latent).all()  # collaborative ones unchanged
    assert (on.core == off.core).all() and (on.popularity == off.popularity).all()
    assert (on.relation == off.relation).all() and off.relation.shape == (40, 8)
    assert all(off.topic[r] != off.topic[c] for c in range(40) for r in off.relation[c])  # other topics only


def test_knowledge_interests_relate_to_the_core_and_are_not_the_groups():
    w = world("sim.knowledge_per_user=2")
    know = w.latent[:, 2:]
    related = [set(w.relation[w.core[u]].ravel()) for u in range(60)]
    assert np.mean([c in related[u] for u in range(60) for c in know[u]]) > 0.9
    for u in range(60):
        mates = np.flatnonzero(w.group == w.group[u])
        group_cf = set(w.core[mates].ravel()) | set(w.latent[mates, :2].ravel())
        assert not set(know[u]) & set(w.core[u]) and not set(know[u]) & set(w.latent[u, :2])
        assert np.mean([c not in group_cf for c in know[u]]) >= 0.5
    # collaborative filtering learns little about them: few group-mates hold the same knowledge interest
    share = w.mate_share()
    assert share["knowledge"] < 0.15 and share["collab"] > 0.5, share
    corpus = w.knowledge_corpus()
    assert len(corpus) == 40 and corpus[0]["related"] == [w.names[r] for r in w.relation[0]]
    assert all(d["related"][0] in d["text"] for d in corpus)


def test_discovery_by_kind_and_the_kg_arm_reads_the_relation(tmp_path):
    cfg = load_config(None, [*SIM, "sim.knowledge_per_user=2", "sim.days=6", "sim.warmup_days=3", "sim.seeds=0",
                             "sim.arms=exploitation,user_knn,kg_neighbour", "sim.explore_slots=2"])
    simulate(cfg, tmp_path, report=True)
    rows = pd.DataFrame([json.loads(x) for x in (tmp_path / "days.jsonl").read_text().splitlines()])
    last = rows[rows.day == rows.day.max()].set_index("arm")
    w = World(cfg.sim, 0)
    assert np.allclose(last["discovery_rate"], (2 * last["discovery_rate_collab"]
                                                + 2 * last["discovery_rate_knowledge"]) / 4)
    assert last.loc["kg_neighbour", "discovery_rate_knowledge"] > last.loc["user_knn", "discovery_rate_knowledge"]
    assert (tmp_path / "seed0" / "knowledge.jsonl").exists()
    truth = json.loads((tmp_path / "seed0" / "world.json").read_text())["ground_truth"]
    assert truth[0]["knowledge"] == [w.names[c] for c in w.latent[0, 2:]]
    assert "discovery knowl." in (tmp_path / "results.md").read_text()
    assert (w.latent_kind[:, 2:] == LATENT_KNOWLEDGE).all()


def test_kg_neighbour_serves_the_relations_of_the_clicked_categories():
    w = world()
    users = list(w.user_ids[:1])
    clicked = int(w.core[0, 0])
    warm = pd.DataFrame({"user_id": users * 3, "item_id": [w.item_ids[clicked * 10]] * 3, "timestamp": range(3),
                         "event": "click", "rating": np.nan, "slot": -1})
    p = make_policy("kg_neighbour", w.catalogue, users, 0, warm, relation=w.relation)
    assert set(p.fill(1, users, [[]], 8)[0]) == {w.names[r] for r in w.relation[clicked]}


def test_heterogeneous_users_are_off_by_default_and_scale_what_they_say():
    off = world()
    assert (off.activity == 1).all() and (off.click_scale == 1).all() and (off.openness == 1).all()
    on = world("sim.user_activity_sigma=0.8", "sim.user_click_sigma=0.5", "sim.user_openness_sigma=0.5")
    assert (on.core == off.core).all() and (on.latent == off.latent).all()  # traits change no interest
    assert 0.7 < on.activity.mean() < 1.3 and on.activity.std() > 0.3
    sessions = np.zeros(60)
    for day in range(20):
        np.add.at(sessions, on.draws(day).sess_user, 1)
    assert np.corrcoef(sessions, on.activity)[0, 1] > 0.5  # active users have more sessions


def test_position_bias_hides_the_later_slots():
    w = world("sim.position_bias=0", "sim.click_other=0.5")
    served = np.tile(np.arange(3), (60, 1))  # slots 0, 1, 2: categories 0, 1, 2 for everyone
    out, _ = w.step(w.initial_state(), 0, served)
    clicks = out.click[out.slot >= 0]
    slot = out.slot[out.slot >= 0]
    assert clicks[slot == 0].any() and not clicks[slot > 0].any()  # examined only the first
    plain = world("sim.click_other=0.5")
    out2, _ = plain.step(plain.initial_state(), 0, served)
    assert out2.click[out2.slot > 0].any()


def test_retention_costs_sessions_when_the_slots_annoy():
    assert world().initial_state().satisfaction is None  # off by default
    w = world("sim.retention_rate=0.5", "sim.retention_ref=0.3", "sim.slots=3")
    liked = w.core[:, :3]  # every slot a core interest: CTR ~ click_core
    disliked = np.array([[c for c in range(40) if w.kind[u, c] == 0][:3] for u in range(60)])  # click_other
    sessions = {}
    for name, served in (("liked", liked), ("disliked", disliked)):
        state, n = w.initial_state(), []
        for day in range(8):
            out, state = w.step(state, day, served)
            n.append(int((out.slot == 0).sum()))  # one slot-0 exposure per session that happened
        sessions[name] = n
    drawn = [len(w.draws(d).sess_user) for d in range(8)]
    assert sessions["liked"][0] == sessions["disliked"][0] == drawn[0]  # everyone starts satisfied
    assert sum(sessions["liked"][4:]) > 0.7 * sum(drawn[4:])  # satisfied users mostly come back
    assert sum(sessions["disliked"][4:]) < 0.5 * sum(sessions["liked"][4:])  # annoyed ones stop coming
    restored = type(state).from_state_dict(state.state_dict())
    assert np.array_equal(restored.satisfaction, state.satisfaction)


def test_fatigue_across_days_wears_out_a_category_served_day_after_day():
    assert world().initial_state().worn is None  # off by default
    ctr = {}
    for name, extra in (("off", []), ("on", ["sim.day_fatigue=0.5", "sim.day_fatigue_decay=1.0"])):
        w = world(*extra, "sim.slots=1")
        served, state, c = w.core[:, :1], w.initial_state(), []
        for day in range(6):
            out, state = w.step(state, day, served)
            c.append(out.click[out.slot == 0].mean())
        ctr[name] = c
    assert ctr["on"][0] == ctr["off"][0]  # nothing worn on the first day
    assert np.mean(ctr["on"][3:]) < 0.5 * np.mean(ctr["off"][3:])
    w = world("sim.day_fatigue=0.5")
    s = w.step(w.initial_state(), 0, None)[1]
    assert s.worn.sum() > 0 and np.array_equal(type(s).from_state_dict(s.state_dict()).worn, s.worn)

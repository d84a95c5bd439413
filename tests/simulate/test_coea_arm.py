"""The CoEA-family arms on a tiny day-partitioned log: shared round 0, each arm's round 1, daily cycles, serving
through the promoted KV table, the frozen arms' models, the w/o KL weight, the unfiltered w/o R-LLM table, resume.

One module-scoped simulation (6 warm-up days, 2 served days; the world's own events stand in for the closed loop)
keeps this affordable on 2 cores; the tests read it in order.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from coea.data.partitions import DAY, EPOCH, write_day, write_interactions
from coea.data.synthetic import generate_world
from coea.simulate.coea_arm import VARIANTS, arm_config, bootstrap_round0, make_coea_arm
from loops.serving import lookup
from loops.state import read_state
from storage.keys import canonical_recent
from storage.kv import KVReader

WARM, SERVED, SLOTS = 6, 2, 2


def _date(d: int) -> dt.date:
    return EPOCH + dt.timedelta(days=d)


def _recent(world, users: list[str], before: int) -> list[list[str]]:
    ev = world.events
    clicks = ev[(ev["timestamp"] < before) & (ev["event"] == "click")]
    cats = clicks["item_id"].map(world.item_category).groupby(clicks["user_id"]).apply(list).to_dict()
    return [cats.get(u, []) for u in users]


@pytest.fixture(scope="module")
def sim(tmp_path_factory, tiny_cfg):
    root = tmp_path_factory.mktemp("coea_arm")
    cfg = copy.deepcopy(tiny_cfg)
    cfg.synthetic.n_days = WARM + SERVED + 1  # the last day: test_a_failed_cycle_...
    cfg.tracking.backend, cfg.tracking.plot_rounds, cfg.novelty.completion_eos = "none", False, False  # as sim-coea
    world = generate_world(cfg.synthetic, cfg.run.seed)
    write_interactions(world, root / "warmup", through=_date(WARM - 1))
    round0 = bootstrap_round0(cfg, root / "warmup", root / "round0", until=WARM * DAY)
    catalogue = SimpleNamespace(categories=list(world.categories), items=world.items,
                                popularity=np.arange(len(world.categories))[::-1].astype(float))
    users = sorted(world.users["user_id"])
    arms, served = {}, {v: [] for v in VARIANTS}
    for v in VARIANTS:
        shutil.copytree(root / "warmup", root / f"log-{v}")  # the warm-up partitions with their file names
        arms[v] = make_coea_arm(v, cfg, root / f"arm-{v}", catalogue, round0)
    ts = world.events["timestamp"]
    for d in range(WARM, WARM + SERVED):
        recent = _recent(world, users, d * DAY)
        day_events = world.events[(ts >= d * DAY) & (ts < (d + 1) * DAY)]
        for v, arm in arms.items():
            served[v].append((recent, arm.fill(d, users, recent, SLOTS)))
            if v == "coea":  # what the promoted table holds for each user's current key, read the public way
                table = pd.read_parquet(arm.workdir / "current" / "users.parquet")
                csid = dict(zip(table["user_id"], table["csid"]))
                stored = dict(zip(table["user_id"], table["recent"].map(tuple)))
                k = cfg.data.short_k
                with KVReader(arm.workdir) as reader:
                    kv_answers = [(stored[u], canonical_recent(r[-k:]), reader.get_value(csid[u], r[-k:]))
                                  for u, r in zip(users, recent)]
            write_day(root / f"log-{v}", _date(d), day_events)
            arm.observe(d, root / f"log-{v}", day_events)
    return SimpleNamespace(root=root, cfg=cfg, world=world, arms=arms, served=served, users=users,
                           catalogue=catalogue, round0=round0, kv_answers=kv_answers)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dir_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): _sha(p) for p in sorted(path.rglob("*")) if p.is_file()}


def test_every_arm_ran_a_promoted_cycle_each_day(sim):
    for v, arm in sim.arms.items():
        assert [c["status"] for c in arm.cycles[:1 + SERVED]] == ["promoted"] * (1 + SERVED), (v, arm.cycles)
        assert [c["day"] for c in arm.cycles[:1 + SERVED]] == list(range(WARM - 1, WARM + SERVED))
        state = read_state(arm.workdir)
        assert state["promoted_round"] == 1 + SERVED and [r["round"] for r in state["rounds"]] == [0, 1, 2, 3]
        assert all(c["wall_s"] > 0 for c in arm.cycles[1:])
    # round 0 was trained once, in the shared workdir, and copied: every arm has the same round-0 Novelty LLM
    digests = {v: _dir_digest(arm.workdir / "rounds" / "000" / "novelty" / "adapter") for v, arm in sim.arms.items()}
    assert all(d == _dir_digest(sim.round0 / "rounds" / "000" / "novelty" / "adapter") for d in digests.values())


def test_fill_serves_slots_categories_from_the_catalogue(sim):
    catalogue = set(sim.catalogue.categories)
    for v, days in sim.served.items():
        for _, lists in days:
            assert len(lists) == len(sim.users)
            assert all(len(lst) == SLOTS and len(set(lst)) == SLOTS and set(lst) <= catalogue for lst in lists), v


def test_served_categories_are_the_kv_value_of_the_users_current_key(sim):
    """The last day: the KV value on (CSID, C'_short) comes first, the base ranking fills what it lacks."""
    arm = sim.arms["coea"]
    recent, lists = sim.served["coea"][-1]
    found = 0
    for (stored, current, value), r, lst in zip(sim.kv_answers, recent, lists):
        assert current == stored  # the key serving recomputes from the clicks is the key the round computed
        assert value is not None  # every user the round knows has an entry
        cats = list(value.categories)
        found += bool(cats)
        assert lst[:min(SLOTS, len(cats))] == cats[:SLOTS]
        if len(cats) < SLOTS:
            assert lst[len(cats):] == [c for c in arm.base_ranking(r) if c not in cats][:SLOTS - len(cats)]
    assert found > 0
    stats = arm.fill_stats[-1]
    assert stats["found"] == found and stats["unknown_user"] == stats["unknown_key"] == 0
    assert stats["found"] + stats["empty"] == len(sim.users)


def test_serving_matches_coea_lookup_and_falls_back_for_a_stranger(sim):
    arm = sim.arms["coea"]
    users = pd.read_parquet(arm.workdir / "current" / "users.parquet")
    sample = users.iloc[:10]
    served = arm.fill(WARM + SERVED, list(sample["user_id"]) + ["stranger"],
                      [list(r) for r in sample["recent"]] + [["Jazz", "Jazz", "Hiking"]], SLOTS)
    for u, lst in zip(sample["user_id"], served):
        answer = [e["category"] for e in lookup(arm.workdir, user=u)["categories"]]
        assert lst[:len(answer[:SLOTS])] == answer[:SLOTS]
    stranger = lookup(arm.workdir, user="stranger")
    expected = [e["category"] for e in stranger["categories"]][:SLOTS]
    expected += [c for c in ["Jazz", "Hiking", *arm.by_clicks] if c not in expected][:SLOTS - len(expected)]
    assert served[-1] == expected
    assert arm.fill_stats[-1]["unknown_user"] == 1
    arm.fill_stats.pop()


def test_the_fallback_is_the_exploitation_arms_base_ranking(sim):
    from coea.simulate.policies import Catalogue, ExploitationPolicy

    world, arm = sim.world, sim.arms["coea"]
    catalogue = Catalogue(categories=list(sim.catalogue.categories), items=world.items,
                          popularity=sim.catalogue.popularity)
    events = world.events[world.events["timestamp"] < WARM * DAY]
    exploitation = ExploitationPolicy(catalogue, sim.users, 0, warmup=events)
    recent = _recent(world, sim.users, WARM * DAY)
    recent[0] = []  # a user without clicks: every user's most clicked categories
    exploitation.clicks[0] = 0
    arm.count_clicks(recent)
    for slots in (1, 3, 6):
        assert exploitation.fill(WARM, sim.users, recent, slots) == [arm.base_ranking(r)[:slots] for r in recent]


def test_google_v1_and_wo_rllm_keep_the_round0_models(sim):
    for v in ("google_v1", "wo_rllm"):
        wd = sim.arms[v].workdir
        novelty0 = _dir_digest(wd / "rounds" / "000" / "novelty" / "adapter")
        relevance0 = _dir_digest(wd / "rounds" / "000" / "relevance" / "model")
        cal0 = json.loads((wd / "rounds" / "000" / "relevance" / "calibration.json").read_text())
        for k in range(1, 2 + SERVED):
            rd = wd / "rounds" / f"{k:03d}"
            assert _dir_digest(rd / "pco" / "adapter") == novelty0, (v, k)
            assert _dir_digest(rd / "relevance" / "model") == relevance0, (v, k)
            cal = json.loads((rd / "relevance" / "calibration.json").read_text())
            assert (cal["a"], cal["b"]) == (cal0["a"], cal0["b"])
            assert json.loads((rd / "pco" / "metrics.json").read_text())["frozen"] is True
    # ... while CoEA's Novelty LLM moved away from round 0
    wd = sim.arms["coea"].workdir
    assert _dir_digest(wd / "rounds" / "003" / "pco" / "adapter") != _dir_digest(wd / "rounds" / "000" / "novelty" /
                                                                                 "adapter")


def test_wo_kl_trains_without_the_kl_weight(sim):
    for v, alpha in (("wo_kl", 0.0), ("coea", sim.cfg.pco.alpha)):
        for k in range(1, 2 + SERVED):
            metrics = json.loads((sim.arms[v].workdir / "rounds" / f"{k:03d}" / "pco" / "metrics.json").read_text())
            assert metrics["pco"]["alpha"] == alpha and metrics["summary"]["steps"] > 0, (v, k)
    assert sim.cfg.pco.alpha > 0


def test_wo_rllm_serves_every_novelty_candidate_in_novelty_order(sim):
    wd = sim.arms["wo_rllm"].workdir
    table = pd.read_parquet(wd / "rounds" / "003" / "candidates" / "candidates.parquet")
    assert all(list(a) == list(c) for a, c in zip(table["aligned"], table["candidates"]))
    assert table["candidates"].map(len).min() > 0
    filtered = pd.read_parquet(sim.arms["google_v1"].workdir / "rounds" / "003" / "candidates" / "candidates.parquet")
    tau = sim.cfg.relevance.tau_align
    assert all(all(s > tau for s in sc) for sc in filtered["aligned_scores"])
    assert filtered["aligned"].map(len).sum() < filtered["candidates"].map(len).sum()  # the filter dropped some


def test_resume_continues_where_the_arm_stopped(sim):
    arm = sim.arms["google_v1"]
    state = arm.state_dict()
    json.dumps(state)  # JSON-able
    again = make_coea_arm("google_v1", sim.cfg, arm.arm_dir, sim.catalogue, sim.round0)
    again.load_state_dict(state)
    assert again.cycles == arm.cycles and read_state(again.workdir)["promoted_round"] == 1 + SERVED
    last = WARM + SERVED - 1
    events = sim.world.events[sim.world.events["timestamp"] // DAY == last]
    again.observe(last, sim.root / "log-google_v1", events)  # the same day again: nothing new, no round
    assert again.cycles[-1]["status"] == "nothing_new" and read_state(again.workdir)["promoted_round"] == 1 + SERVED
    with pytest.raises(ValueError, match="state of arm"):
        again.load_state_dict({**state, "variant": "coea"})


def test_round0_is_reused_and_bad_warmups_are_refused(sim, tmp_path):
    before = _dir_digest(sim.round0 / "rounds" / "000")
    assert bootstrap_round0(sim.cfg, sim.root / "warmup", sim.round0, until=WARM * DAY) == sim.round0
    assert _dir_digest(sim.round0 / "rounds" / "000") == before  # finished: reused as it is
    with pytest.raises(ValueError, match="day boundary"):
        bootstrap_round0(sim.cfg, sim.root / "warmup", tmp_path / "r0", until=WARM * DAY + 5)
    with pytest.raises(ValueError, match="needs 2 complete days"):
        bootstrap_round0(sim.cfg, sim.root / "warmup", tmp_path / "r0", until=DAY)


def test_config_errors_are_named(sim, tmp_path):
    with pytest.raises(ValueError, match="unknown CoEA-family variant"):
        arm_config(sim.cfg, "coea_plus", tmp_path)
    assert arm_config(sim.cfg, "wo_rllm", tmp_path).relevance.filter is False
    # a log whose warm-up files are not the ones round 0 consumed is refused on the first observe
    bad = tmp_path / "log"
    shutil.copytree(sim.root / "warmup", bad)
    write_day(bad, _date(0), sim.world.events.iloc[:3], append=True, name="extra.parquet")
    arm = make_coea_arm("google_v1", sim.cfg, sim.arms["google_v1"].arm_dir, sim.catalogue, sim.round0)
    with pytest.raises(ValueError, match="not the shared warm-up"):
        arm.observe(WARM, bad, sim.world.events.iloc[:0])


def test_a_failed_cycle_is_recorded_and_the_next_cycle_retries_it(sim, monkeypatch):
    arm, d = sim.arms["wo_rllm"], WARM + SERVED
    log_dir = sim.root / "log-wo_rllm"
    events = sim.world.events[sim.world.events["timestamp"] // DAY == d]
    write_day(log_dir, _date(d), events)
    monkeypatch.setenv("COEA_FAULT", "pco:start")
    arm.observe(d, log_dir, events)
    failed = arm.cycles[-1]
    assert failed["status"] == "failed" and failed["failed"] == 1 and "injected fault" in failed["reason"]
    assert read_state(arm.workdir)["promoted_round"] == 1 + SERVED  # serving stays on the promoted table
    assert len(arm.fill(d + 1, sim.users, _recent(sim.world, sim.users, d * DAY), SLOTS)) == len(sim.users)
    monkeypatch.delenv("COEA_FAULT")
    arm.observe(d, log_dir, events)
    assert arm.cycles[-1]["status"] == "promoted" and read_state(arm.workdir)["promoted_round"] == 2 + SERVED

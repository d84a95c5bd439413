"""simulate(): the tiny closed loop end to end (non-LLM arms), paired logs, resume after a kill."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import coea.simulate.run as run_mod
from coea.config import load_config
from coea.data.parquet import load_parquet
from coea.simulate.run import simulate

TINY_SIM = ["sim.n_users=30", "sim.n_categories=20", "sim.n_groups=3", "sim.core_per_user=3", "sim.latent_per_user=2",
            "sim.items_per_category=3", "sim.exposures_per_session=5", "sim.slots=2", "sim.days=5",
            "sim.warmup_days=3", "sim.seeds=0,1", "sim.arms=exploitation,random,popular,ucb",
            "tracking.backend=none"]
TIMING = ("fill_s", "observe_s")


def tiny_cfg(*extra):
    return load_config(None, [*TINY_SIM, *extra])


def rows_of(out):
    rows = [json.loads(line) for line in (out / "days.jsonl").read_text().splitlines()]
    return sorted(({k: v for k, v in r.items() if k not in TIMING} for r in rows),
                  key=lambda r: (r["seed"], r["arm"], r["day"]))


def test_tiny_simulation_writes_every_row_and_paired_logs(tmp_path):
    res = simulate(tiny_cfg(), tmp_path, report=True)
    assert res.complete and res.rows == 2 * 4 * 5
    rows = rows_of(tmp_path)
    assert len(rows) == 40 and {r["day"] for r in rows} == set(range(5))
    for r in rows:
        assert 0 <= r["discovery_rate"] <= 1 and r["gtv"] >= 0 and 0 <= r["slot_ctr"] <= 1
    # discovery never decreases within an arm
    for (seed, arm), g in pd.DataFrame(rows).groupby(["seed", "arm"]):
        assert g.sort_values("day")["discovery_rate"].is_monotonic_increasing
    # every arm's log: the same sessions and organic positions (user, time) every day, and the same organic items
    # except where the feed follows a latent interest one arm's user discovered and the other's did not
    logs = {}
    for arm in ("exploitation", "random"):
        parts = sorted((tmp_path / "seed0" / arm / "log" / "events").glob("date=*/*.parquet"))
        assert len(parts) == 3 + 5  # warm-up copy + the A/B days
        logs[arm] = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    org = {a: df[df.slot < 0][["user_id", "item_id", "timestamp"]].reset_index(drop=True) for a, df in logs.items()}
    ex, ra = org["exploitation"], org["random"]
    assert ex[["user_id", "timestamp"]].equals(ra[["user_id", "timestamp"]])
    assert (ex["item_id"] == ra["item_id"]).mean() > 0.9
    assert not logs["exploitation"][logs["exploitation"].slot >= 0]["item_id"].reset_index(drop=True).equals(
        logs["random"][logs["random"].slot >= 0]["item_id"].reset_index(drop=True))
    inter = load_parquet(tmp_path / "seed0" / "exploitation" / "log")  # the source a cycle reads: nothing rejected
    assert inter.rejects.total == 0 and len(inter.events) == len(logs["exploitation"])
    for name in ("results.md", "days.png", "summary.json", "config.yaml"):
        assert (tmp_path / name).exists()
    # exploitation explores nothing new in its slots; the unexplored arms only serve new categories
    final = pd.DataFrame(rows)
    assert (final[final.arm == "random"]["novel_slot_share"] == 1.0).all()
    assert final[final.arm == "exploitation"]["novel_slot_share"].mean() < 0.2


def test_killed_run_resumes_to_the_same_rows(tmp_path):
    full = tmp_path / "full"
    simulate(tiny_cfg(), full, report=False)
    part = tmp_path / "part"
    res = simulate(tiny_cfg(), part, max_days=2, report=False)  # "killed" after A/B day 2
    assert not res.complete and set(res.days_done.values()) == {2}
    with open(part / "days.jsonl", "a") as f:  # a row cut by the kill, and a duplicate of a finished day
        f.write((part / "days.jsonl").read_text().splitlines()[0] + "\n" + '{"seed": 0, "arm": "ran')
    res2 = simulate(tiny_cfg(), part, report=False)
    assert res2.complete and res2.rows == 2 * 4 * 3
    assert rows_of(part) == rows_of(full)


def test_a_crash_inside_observe_resumes_from_the_pending_day(tmp_path, monkeypatch):
    full = tmp_path / "full"
    simulate(tiny_cfg("sim.seeds=0"), full, report=False)

    real = run_mod.make_policy
    calls = {"n": 0}

    def flaky(name, *args, **kwargs):
        policy = real(name, *args, **kwargs)
        if name == "popular":
            observe = policy.observe

            def crash_once(day, log_dir, events):
                observe(day, log_dir, events)
                if day == run_mod.policy_day(tiny_cfg().sim, 3 + 2) and calls["n"] == 0:  # A/B day 2
                    calls["n"] += 1
                    raise RuntimeError("killed inside observe")

            policy.observe = crash_once
        return policy

    monkeypatch.setattr(run_mod, "make_policy", flaky)
    part = tmp_path / "part"
    with pytest.raises(RuntimeError, match="killed inside observe"):
        simulate(tiny_cfg("sim.seeds=0"), part, report=False)
    assert (part / "seed0" / "popular" / "pending.pkl").exists()
    monkeypatch.setattr(run_mod, "make_policy", real)  # the restarted process has no such bug
    res = simulate(tiny_cfg("sim.seeds=0"), part, report=False)
    assert res.complete and not (part / "seed0" / "popular" / "pending.pkl").exists()
    parts = sorted((part / "seed0" / "popular" / "log" / "events").glob("date=*/*.parquet"))
    assert len(parts) == 8  # the pending day's partition written once
    # the pending day is replayed from its saved events: its row is the same, but the policy observed that day
    # twice (state restored from before it, then observe again) -- for a counting policy the same state.
    assert rows_of(part) == rows_of(full)


def test_unknown_llm_arm_without_the_module_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util

    from coea.config import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "coea.simulate.coea_arm" else real(name, *a))
    with pytest.raises(ConfigError, match="LLM arm"):
        simulate(tiny_cfg(), tmp_path, arms=["exploitation", "coea"], report=False)


def test_resuming_with_other_world_settings_is_refused(tmp_path):
    from coea.config import ConfigError

    simulate(tiny_cfg("sim.seeds=0", "sim.days=1"), tmp_path, report=False)
    res = simulate(tiny_cfg("sim.seeds=0", "sim.days=2", "sim.arms=exploitation"), tmp_path, report=False)
    assert res.days_done == {"0/exploitation": 2}  # days and arms may change: the run is extended
    kept = {(r["arm"], r["day"]) for r in rows_of(tmp_path)}
    assert {("random", 0), ("exploitation", 1)} <= kept  # rows of arms not asked for this time are kept
    with pytest.raises(ConfigError, match="other sim settings"):
        simulate(tiny_cfg("sim.seeds=0", "sim.click_core=0.9"), tmp_path, report=False)


def test_policies_get_utc_day_numbers_and_their_figures_reach_the_rows():
    from coea.simulate.run import policy_day, policy_figures

    cfg = tiny_cfg().sim
    assert policy_day(cfg, 0) == 19723  # 2024-01-01 = 1970-01-01 + 19723 days
    assert policy_day(cfg, 5) == 19728

    class Arm:
        cycles = [{"day": 19727, "wall_s": 9.0}, {"day": 19728, "wall_s": 3.5, "pco/kl": 0.2, "status": "promoted"}]
        fill_stats = [{"day": 19728, "found": 7, "fallback_slots": 2}]

        def day_metrics(self):
            return {"kv_size": 12, "flag": True}

    fig = policy_figures(Arm(), 19728)
    assert fig == {"policy/kv_size": 12, "policy/cycle/wall_s": 3.5, "policy/cycle/pco/kl": 0.2,
                   "policy/fill/found": 7, "policy/fill/fallback_slots": 2}
    assert policy_figures(object(), 19728) == {}


def test_an_llm_arm_resumes_only_with_its_own_settings(tmp_path):
    from coea.config import ConfigError
    from coea.simulate.run import _check_arm_settings, world_fingerprint

    a, b = tiny_cfg("sim.coea_set=relevance.tau_align=0.1"), tiny_cfg("sim.coea_set=relevance.tau_align=0.2")
    assert world_fingerprint(a) == world_fingerprint(b)  # the world is the same; the arm is not
    _check_arm_settings(tmp_path / "coea", a.sim)
    _check_arm_settings(tmp_path / "coea", a.sim)
    with pytest.raises(ConfigError, match="started with"):
        _check_arm_settings(tmp_path / "coea", b.sim)


def test_the_exploration_budget_fills_the_other_slots_with_the_base_ranking(tmp_path):
    from coea.simulate.run import with_base_ranking

    assert with_base_ranking([["x", "y"], ["a"]], [["a", "x", "b"], ["a", "c"]], 1, 3) == [["x", "a", "b"],
                                                                                           ["a", "c"]]
    simulate(tiny_cfg("sim.seeds=0", "sim.explore_slots=1", "sim.days=3"), tmp_path, report=False)
    rows = pd.DataFrame(rows_of(tmp_path))
    rnd, exp = rows[rows.arm == "random"], rows[rows.arm == "exploitation"]
    assert (rnd["novel_slot_share"] >= 0.5).all() and (rnd["novel_slot_share"] < 0.75).all()  # 1 of 2 slots new
    assert (exp["novel_slot_share"] < 0.2).all()
    logs = [pd.read_parquet(p) for p in sorted((tmp_path / "seed0" / "random" / "log" / "events").glob("*/*.parquet"))]
    served = pd.concat(logs[3:])
    served = served[served.slot >= 0]
    assert served["slot"].isin([0, 1]).all()

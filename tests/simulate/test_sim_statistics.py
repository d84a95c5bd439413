"""Statistics that decide: training seeds as separate runs on the same world, variance components, verdicts."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from coea.config import ConfigError, load_config
from coea.simulate.report import summary, variance_components, verdict
from coea.simulate.run import parse_run_dir, run_dir_name, simulate, train_seeds_of

TINY = ["sim.n_users=24", "sim.n_categories=16", "sim.n_groups=3", "sim.core_per_user=3", "sim.latent_per_user=2",
        "sim.items_per_category=3", "sim.exposures_per_session=4", "sim.slots=2", "sim.days=3",
        "sim.warmup_days=2", "sim.seeds=0,1", "sim.arms=exploitation,random", "tracking.backend=none"]


def rows(out):
    return pd.DataFrame([json.loads(x) for x in (out / "days.jsonl").read_text().splitlines()]).drop(
        columns=["fill_s", "observe_s"])


def test_training_seeds_are_separate_runs_and_seed_0_is_the_plain_run(tmp_path):
    plain, both = tmp_path / "plain", tmp_path / "both"
    simulate(load_config(None, TINY), plain, report=False)
    cfg = load_config(None, [*TINY, "sim.train_seeds=0,1", "sim.train_seed_worlds=0"])
    assert train_seeds_of(cfg.sim, 0) == [0, 1] and train_seeds_of(cfg.sim, 1) == [0]
    res = simulate(cfg, both, report=True)
    assert res.complete and res.rows == (2 + 1) * 2 * 3
    a, b = rows(plain), rows(both)
    key = ["seed", "arm", "train_seed", "day"]
    pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True),
                                  b[b.train_seed == 0].sort_values(key).reset_index(drop=True))
    assert set(b[b.train_seed == 1]["seed"]) == {0}
    t0, t1 = (b[(b.seed == 0) & (b.train_seed == t)].drop(columns="train_seed").set_index(["arm", "day"])
              for t in (0, 1))
    assert t0.loc["exploitation"].equals(t1.loc["exploitation"])  # deterministic arm: no training noise
    assert not t0.loc["random"].equals(t1.loc["random"])  # its own stream: another run
    assert (both / "seed0" / "random.t1" / "state.pkl").exists() and not (both / "seed1" / "random.t1").exists()
    s = json.loads((both / "summary.json").read_text())
    assert s["noise"]["exploitation"]["discovery_rate"]["train_var"] == 0.0
    assert s["noise"]["random"]["gtv_cum"]["repeated_worlds"] == 1
    assert "world seeds against training seeds" in (both / "results.md").read_text()
    # resume after a kill with training seeds: the same rows
    part = tmp_path / "part"
    simulate(cfg, part, max_days=1, report=False)
    simulate(cfg, part, report=False)
    pd.testing.assert_frame_equal(rows(part).sort_values(key).reset_index(drop=True),
                                  b.sort_values(key).reset_index(drop=True))


def test_final_values_average_the_training_seeds_and_the_verdict_needs_the_interval():
    df = pd.DataFrame([
        {"seed": w, "arm": arm, "train_seed": t, "day": 0, "discovery_rate": v, "gtv_cum": 100.0}
        for w, arm, t, v in [(0, "coea", 0, 0.4), (0, "coea", 1, 0.6), (1, "coea", 0, 0.7), (2, "coea", 0, 0.9),
                             (0, "exploitation", 0, 0.1), (1, "exploitation", 0, 0.2), (2, "exploitation", 0, 0.3)]])
    s = summary(df, ["exploitation", "coea"])
    assert s["arms"]["coea"]["discovery_rate"][0] == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert s["paired"]["exploitation"]["discovery_rate"][0] == pytest.approx(0.5)  # 0.4, 0.5, 0.6
    assert s["noise"]["coea"]["discovery_rate"]["train_var"] == pytest.approx(0.02)  # var(0.4, 0.6)
    assert verdict(1.21, 9.0, 1.2) == "met" and verdict(1.19, 9.0, 1.2) == "not shown"


def test_variance_components_by_hand():
    c = variance_components({0: [1.0, 3.0], 1: [5.0, 7.0], 2: [2.0]})
    assert c["train_var"] == pytest.approx(2.0) and c["world_var"] == pytest.approx(4.0)
    assert c["worlds"] == 3 and c["repeated_worlds"] == 2 and c["runs"] == 5
    c = variance_components({0: [1.0], 1: [3.0]})  # no repeated world: training noise cannot be told apart
    assert c["train_var"] != c["train_var"] and c["world_var"] != c["world_var"]
    c = variance_components({0: [1.0, 1.0], 1: [3.0, 3.0]})  # no training noise: all of it is the world's
    assert c["train_var"] == 0.0 and c["world_var"] == pytest.approx(2.0)


def test_run_dirs_and_bad_training_seeds():
    assert parse_run_dir(run_dir_name("user_knn", 3)) == ("user_knn", 3) and run_dir_name("ucb", 0) == "ucb"
    for bad in ("sim.train_seeds=", "sim.train_seeds=0,0", "sim.train_seed_worlds=x"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])

"""The tiny closed loop with an LLM arm: round 0 once per seed on the warm-up log, a daily in-process cycle on the
arm's own log, serving through its KV table, and the cycle's figures in days.jsonl."""

from __future__ import annotations

import importlib.util
import json

import pytest

from coea.config import load_config
from coea.simulate.run import simulate

pytestmark = pytest.mark.skipif(importlib.util.find_spec("coea.simulate.coea_arm") is None,
                                reason="coea/simulate/coea_arm.py (the LLM arms) is not here yet")

SIM = ["sim.n_users=60", "sim.n_categories=10", "sim.n_groups=3", "sim.core_per_user=2", "sim.latent_per_user=2",
       "sim.items_per_category=3", "sim.exposures_per_session=5", "sim.slots=2", "sim.days=2", "sim.warmup_days=4",
       "sim.sessions_per_day=1.5", "sim.seeds=0", "tracking.backend=none"]


def test_coea_arm_runs_a_daily_cycle_in_the_loop(tmp_path, tiny_cfg):
    coea_yaml = tmp_path / "coea.yaml"
    tiny_cfg.save(coea_yaml)  # the suite's tiny models; the arm sets data.path / clock itself
    cfg = load_config(None, [*SIM, f"sim.coea_config={coea_yaml}", "sim.arms=exploitation,coea",
                             "sim.coea_set=tracking.backend=none"])
    res = simulate(cfg, tmp_path / "out", report=True)
    assert res.complete
    rows = [json.loads(x) for x in (tmp_path / "out" / "days.jsonl").read_text().splitlines()]
    coea = [r for r in rows if r["arm"] == "coea"]
    assert len(coea) == 2 and all(r["observe_s"] > 0 for r in coea)
    assert all("policy/cycle/wall_s" in r for r in coea)  # the day's cycle record reached the row
    assert all(r["policy/fill/users"] == 60 for r in coea)
    assert (tmp_path / "out" / "seed0" / "round0.done").exists()
    parts = sorted((tmp_path / "out" / "seed0" / "coea" / "log" / "events").glob("date=*/*.parquet"))
    assert len(parts) == 4 + 2
    assert "coea" in (tmp_path / "out" / "results.md").read_text()

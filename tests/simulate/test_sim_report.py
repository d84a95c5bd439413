"""The simulation report on hand-made rows: intervals, paired differences, targets, plots, one run per arm."""

from __future__ import annotations

import json
import math

import pytest

from coea.config import load_config
from coea.simulate.report import final_values, mean_ci, summary, write_report


def test_mean_ci_by_hand():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])  # s = 1, n = 3, t_{0.975, 2} = 4.3027 -> half = 2.4842
    assert m == 2.0 and lo == pytest.approx(2 - 2.4842, abs=1e-3) and hi == pytest.approx(2 + 2.4842, abs=1e-3)
    assert mean_ci([5.0])[0] == 5.0 and math.isnan(mean_ci([5.0])[1])
    assert all(math.isnan(v) for v in mean_ci([]))
    assert mean_ci([float("nan"), 1.0])[0] == 1.0


def rows():
    """3 seeds, 2 days; on the last day (per seed s = 0, 1, 2):
    discovery coea 0.6 + 0.1 s, exploitation 0.1, random 0.3, wo_kl 0.5;
    gtv_cum coea 990, exploitation 1000 (-1.0%), random 800; niep coea 0.05, exploitation 0.04 (+25%)."""
    out = []
    for seed in (0, 1, 2):
        for day in (0, 1):
            f = 0.5 if day == 0 else 1.0
            vals = {"coea": (0.6 + 0.1 * seed, 990, 0.05, 0.01 * day), "exploitation": (0.1, 1000, 0.04, None),
                    "random": (0.3, 800, 0.06, None), "wo_kl": (0.5, 980, 0.05, 0.3 * day)}
            for arm, (disc, g, niep, kl) in vals.items():
                r = {"seed": seed, "arm": arm, "day": day, "discovery_rate": disc * f, "gtv_cum": g * f,
                     "gtv": g / 2, "niep_7d": niep, "slot_ctr": 0.1, "slot_ctr_cum": 0.1, "a4/NCP@2": 0.01}
                if kl is not None:
                    r["policy/pco_kl"] = kl
                out.append(r)
    return out


def test_summary_targets_and_paired_differences(tmp_path):
    import pandas as pd

    df = pd.DataFrame(rows())
    fv = final_values(df, "discovery_rate")
    assert fv.loc[2, "coea"] == pytest.approx(0.8) and fv.loc[0, "exploitation"] == pytest.approx(0.1)
    s = summary(df, ["coea", "exploitation", "random", "wo_kl"])
    t = s["targets"]
    assert t["discovery_ratio"]["best_other"] == "random"  # wo_kl is a CoEA ablation, not a competitor
    assert t["discovery_ratio"]["value"][0] == pytest.approx((0.6 / 0.3 + 0.7 / 0.3 + 0.8 / 0.3) / 3)
    assert t["gtv_rel"]["value"][0] == pytest.approx(-0.01)
    assert t["niep_rel"]["value"][0] == pytest.approx(0.25)
    d = s["paired"]["exploitation"]["discovery_rate"]
    assert d[0] == pytest.approx(0.6) and d[1] < 0.6 < d[2]
    assert s["arms"]["coea"]["gtv_cum"][0] == pytest.approx(990)


def test_write_report_files_and_one_tracking_run_per_arm(tmp_path):
    with open(tmp_path / "days.jsonl", "w") as f:
        for r in rows():
            f.write(json.dumps(r) + "\n")
    cfg = load_config(None, ["tracking.backend=local", "sim.seeds=0,1,2", "sim.days=2", "sim.slots=2"])
    write_report(cfg, tmp_path, arms=["exploitation", "random", "coea", "wo_kl"], seeds=[0, 1, 2])
    md = (tmp_path / "results.md").read_text()
    assert "Status: complete" in md
    assert "CoEA / best non-CoEA arm (random)" in md and "**met**" in md  # discovery 2.33x
    assert "-1.00%" in md and "(target >= -1%): **met**" in md  # exactly at the boundary: met
    assert "| 2 |" in md and "policy/pco_kl" in md  # the KL table reaches the last day and shows the round KL
    for png in ("days.png", "kl.png"):
        assert (tmp_path / png).stat().st_size > 1000
    s = json.loads((tmp_path / "summary.json").read_text())  # strict JSON: NaN written as null
    assert s["targets"]["discovery_ratio"]["best_other"] == "random"
    for arm in ("exploitation", "random", "coea", "wo_kl"):
        lines = (tmp_path / "tracking" / arm / "tracking" / "metrics.jsonl").read_text().splitlines()
        logged = [json.loads(x) for x in lines if '"log"' in x]
        assert [x["round"] for x in logged] == [0, 1] and "sim/discovery_rate" in logged[0]


def test_partial_rows_say_partial(tmp_path):
    with open(tmp_path / "days.jsonl", "w") as f:
        for r in rows():
            if r["day"] == 0:
                f.write(json.dumps(r) + "\n")
    cfg = load_config(None, ["tracking.backend=none", "sim.days=30"])
    write_report(cfg, tmp_path, arms=["exploitation", "coea"], seeds=[0, 1, 2])
    assert "PARTIAL" in (tmp_path / "results.md").read_text()

"""benchmarks/live.py: the schedule, the live world it writes, the independent reconciliation, and (``--runslow``)
a short run end to end with real `coea cycle` subprocesses.

The 60-day figures themselves come from running the script (docs/cycle.md, "Measured: 60-day live log").
"""

from __future__ import annotations

import json

import pandas as pd
import pytest



@pytest.fixture(scope="module")
def live(load_benchmark):
    return load_benchmark("live")


@pytest.fixture(scope="module")
def bench_cfg(live):
    from coea.config import load_config

    return load_config(live.CONFIG)


def test_schedule_keeps_events_apart(live):
    s = live.Schedule.for_days(60, 3)
    assert s.fault_days == [10, 11, 12]
    singles = [s.empty_day, s.new_category_day, s.late_file_day, s.late_rows_day]
    assert len(set(singles) | set(s.fault_days)) == 7 and max(singles) <= 60
    assert s.late_file_target == s.late_file_day - 1 and s.late_file_target not in (s.empty_day, *s.fault_days)
    short = live.Schedule.for_days(6, 2)  # a dry run packs them: fault 1-2, empty 3, category 4, late 5 and 6
    assert (short.fault_days, short.empty_day, short.new_category_day, short.late_file_day, short.late_rows_day) \
        == ([1, 2], 3, 4, 5, 6)
    tiny = live.Schedule.for_days(2, 3)  # a 2-day run: only the fault's first two days happen
    assert tiny.fault_days == [1, 2, 3] and tiny.empty_day > 2


def test_world_arrives_day_by_day(live, bench_cfg):
    s = live.Schedule.for_days(60, 3)
    w = live.build_world(bench_cfg, s)
    day_of = {d: frame for d, frame in w.events.items()}
    cat = dict(zip(w.items["item_id"], w.items["category"]))
    release = dict(zip(w.items["item_id"], w.items["release"]))
    join = dict(zip(w.users["user_id"], w.users["join"]))
    empty = s.log_day_of(s.empty_day)
    assert len(day_of[empty]) == 0 and all(len(day_of[d]) for d in range(live.HISTORY_DAYS + s.days) if d != empty)
    new_cat_day = s.log_day_of(s.new_category_day)
    assert set(w.items.loc[w.items["category"] == w.new_category, "release"]) == {new_cat_day}
    for d, frame in day_of.items():
        ts_day = frame["timestamp"].to_numpy() // live.DAY
        late = d == s.log_day_of(s.late_rows_day)
        assert (ts_day == d).all() or (late and set(ts_day) == {d, d - 1})
        # nothing happens before it exists: items before their release, users before they join
        assert all(release[i] <= t for i, t in zip(frame["item_id"], ts_day))
        assert all(join[u] <= t for u, t in zip(frame["user_id"], ts_day))
        if d < new_cat_day:
            assert w.new_category not in {cat[i] for i in frame["item_id"]}
    assert (day_of[new_cat_day]["item_id"].map(cat) == w.new_category).any()
    joins = w.users["join"].value_counts()
    assert all(joins.get(s.log_day_of(n), 0) >= 1 for n in range(1, s.days + 1))  # new users every day
    assert len({r for r in w.items["release"] if r > 0}) >= 4  # new items on several days
    assert w.late_rows_in == {s.log_day_of(s.late_rows_day): live.LATE_ROWS} and len(w.late_file) == live.LATE_ROWS
    target = s.log_day_of(s.late_file_target)
    assert (w.late_file["timestamp"] // live.DAY == target).all()
    both = pd.concat([day_of[target], w.late_file])  # withheld, not copied: no row twice
    assert not both.duplicated(["user_id", "item_id", "timestamp"]).any()


def test_reconcile_counts_late_rows_from_the_files(live, bench_cfg, tmp_path):
    s = live.Schedule.for_days(6, 2)
    w = live.build_world(bench_cfg, s)
    log_dir = tmp_path / "log"
    last = s.log_day_of(6)
    for d in range(last + 1):
        live.write_log_day(w, log_dir, d, s)
    live.write_log_day(w, log_dir, last, s)  # a rerun of the day writes nothing twice
    part = log_dir / "events" / f"date={live.log_day(s.log_day_of(s.late_file_target)).isoformat()}"
    names = sorted(p.name for p in part.glob("*.parquet"))
    assert len(names) == 2 and names[0].startswith("late-") and names[1].startswith("part-")
    c0 = 6 * live.DAY
    rows = {d: len(f) for d, f in w.events.items()}
    in_range = sum(rows[d] for d in range(6, last + 1)) + len(w.late_file)
    n_late = len(w.late_file) + live.LATE_ROWS
    # rounds as the clock would cut them: round 1 = days 6-9, then one round a day, late rows as counted
    late_at = {s.log_day_of(s.late_file_day): len(w.late_file), s.log_day_of(s.late_rows_day): live.LATE_ROWS}
    windows = {"1": {"events": sum(rows[d] for d in range(6, 10)), "late": 0}}
    for n in range(1, 7):
        d = s.log_day_of(n)
        windows[str(n + 1)] = {"events": rows[d] - late_at.get(d, 0) * (d == s.log_day_of(s.late_rows_day)),
                               "late": late_at.get(d, 0)}
    results = {"round0_cutoff": c0, "windows": windows, "round_windows": {},
               "days": [{"day": 6, "log_day": live.log_day(last).isoformat()}]}
    rec = live.reconcile(log_dir, results, s)
    assert rec["rows_in_cutoff_to_watermark"] == in_range and rec["late_rows_written"] == n_late
    assert rec["exact"], rec
    windows["3"] = dict(windows["3"], events=windows["3"]["events"] - 1)  # one event lost: not exact
    rec = live.reconcile(log_dir, results, s)
    assert not rec["exact"] and rec["diff_events"] == -1


def test_lag_is_measured_against_the_promoted_window(live):
    state = {"promoted_round": 2, "rounds": [{"round": 0, "status": "bootstrapped"},
                                             {"round": 2, "status": "promoted"}, {"round": 3, "status": "refused"}],
             "clock": {"round0_cutoff": 6 * live.DAY, "windows": {"2": {"end": 11 * live.DAY},
                                                                   "3": {"end": 12 * live.DAY}}}}
    lag = live.window_lag(state, 12 * live.DAY)
    assert lag["serving_lag_days"] == 1.0 and lag["newest_lag_days"] == 0.0 and lag["newest_round"] == 3


@pytest.mark.slow
def test_short_run_end_to_end(live, tmp_path):
    """Six cron days on the tiny models: fault twice (exit 1, then 5 and the operator's --retry), an empty day,
    the new category, both late batches; the reconciliation is exact and the results are rewritten daily."""
    out = tmp_path / "live.json"
    args = ["--days", "6", "--root", str(tmp_path / "root"), "--out", str(out), "--set", "cycle.max_attempts=2"]
    code = live.main(args)
    r = json.loads(out.read_text())
    assert r["status"] == "complete" and [d["day"] for d in r["days"]] == list(range(7))
    by_day = {d["day"]: d for d in r["days"]}
    assert by_day[1]["exits"] == [1] and by_day[2]["exits"][0] == 5 and by_day[2]["exits"][1] in (0, 4)
    assert by_day[3]["exits"] == [0]  # the empty day: round 3 still catches up on day 2 (after the retry)
    assert r["reconciliation"]["exact"], r["reconciliation"]
    assert r["reconciliation"]["sum_late"] == 2 * live.LATE_ROWS
    assert (out.with_suffix(".md")).read_text().startswith("# benchmarks/live.py")
    assert code in (0, 1) and r["checks"]["fault_stops_at_attempt_limit"]
    # --resume on a finished run runs nothing more and keeps the record
    assert live.main([*args, "--resume"]) == code
    again = json.loads(out.read_text())
    assert len(again["days"]) == 7 and again["reconciliation"]["exact"] and again["resumed"] == 1

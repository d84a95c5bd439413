"""The live log fails loudly (docs/data.md, "Delivery rules"; docs/cycle.md, "Gaps"): an unreadable file or too
many rejected rows consume nothing, a re-delivered day is not counted twice, a changed consumed file needs
``--reconsume``, a missing day is a visible gap, one future row never moves a single file's watermark, and ids
stay strings."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coea.clock import ClockError, read_clock, request_reconsume, skip_day
from coea.config import SyntheticConfig, load_config
from coea.data.delivery import QUARANTINE_DIR, event_ids
from coea.data.partitions import DAY, EPOCH, day_start, read_parquet_columns, write_day, write_interactions, \
    write_table
from coea.data.schema import LiveDataError
from coea.data.synthetic import generate_world
from coea.round_data import load_round

REPO = Path(__file__).resolve().parents[2]
WORLD = SyntheticConfig(n_users=40, n_groups=3, n_categories=6, items_per_category=4, n_days=14,
                        categories_per_group=2)


def day(n: int) -> dt.date:
    return EPOCH + dt.timedelta(days=n)


@pytest.fixture(scope="module")
def world():
    return generate_world(WORLD, seed=0)


def _cfg(path: Path, *extra: str):
    return load_config(REPO / "configs" / "demo.yaml", ["data.source=parquet", f"data.path={path}",
                                                        "data.bootstrap_fraction=0.5", "data.tau=2",
                                                        "data.short_k=3", *extra])


def _day(world, n: int) -> pd.DataFrame:
    ts = world.events["timestamp"]
    return world.events[(ts >= n * DAY) & (ts < (n + 1) * DAY)].reset_index(drop=True)


@pytest.fixture
def started(world, tmp_path):
    """A log through day 8, rounds 0 and 1 consumed (window end: day 9)."""
    log_dir, wd = tmp_path / "log", tmp_path / "wd"
    write_interactions(world, log_dir, through=day(8))
    cfg = _cfg(log_dir)
    load_round(cfg, wd, 0)
    assert load_round(cfg, wd, 1).end == day_start(day(9))
    return cfg, log_dir, wd


def test_a_file_without_a_required_column_fails_and_is_consumed_after_the_fix(world, started):
    cfg, log_dir, wd = started
    part = write_day(log_dir, day(9), _day(world, 9).drop(columns=["event"]).assign(event="x"), name="p.parquet")
    _day(world, 9).drop(columns=["event"]).to_parquet(part / "p.parquet")  # the writer lost the event column
    with pytest.raises(LiveDataError, match=r"date=1970-01-10/p.parquet: unreadable \(missing column\(s\) event"):
        load_round(cfg, wd, 2)
    assert not (wd / "rounds" / "002").exists()
    assert read_clock(wd)["log"]["watermark_utc"] == "1970-01-11T00:00:00Z"  # status still sees the log
    _day(world, 9).to_parquet(part / "p.parquet")
    r2 = load_round(cfg, wd, 2)
    assert r2.window["events"] == len(_day(world, 9)) and r2.window["late"] == 0


def test_quarantine_moves_an_unreadable_file_aside_and_records_it(world, tmp_path):
    log_dir, wd = tmp_path / "log", tmp_path / "wd"
    write_interactions(world, log_dir, through=day(8))
    cfg = _cfg(log_dir, "data.on_unreadable=quarantine")
    load_round(cfg, wd, 0)
    load_round(cfg, wd, 1)
    part = write_day(log_dir, day(9), _day(world, 9))
    (part / "bad.parquet").write_bytes(b"PAR1 truncated")
    r2 = load_round(cfg, wd, 2)
    assert list(r2.window["quarantined_files"]) == ["date=1970-01-10/bad.parquet"]
    assert (log_dir / "events" / QUARANTINE_DIR / "date=1970-01-10" / "bad.parquet").exists()
    assert not (part / "bad.parquet").exists()
    entry = json.loads((wd / "quarantine.jsonl").read_text().splitlines()[0])
    assert entry["path"] == "date=1970-01-10/bad.parquet" and "Parquet" in entry["reason"]


def test_a_day_rejected_beyond_the_threshold_fails_and_a_corrected_rewrite_is_consumed(world, started):
    cfg, log_dir, wd = started
    iso = _day(world, 9).assign(timestamp=lambda f: pd.to_datetime(f["timestamp"], unit="s").dt.strftime(
        "%Y-%m-%dT%H:%M:%S"))
    part = write_day(log_dir, day(9), _day(world, 9).iloc[:0])
    iso.to_parquet(part / "p.parquet")
    n = len(iso)
    with pytest.raises(LiveDataError, match=rf"date=1970-01-10: {n} of {n} rows rejected \(malformed_row {n}\), "
                                            r"more than data.max_reject_fraction 0.05; nothing consumed"):
        load_round(cfg, wd, 2)
    assert not (wd / "rounds" / "002").exists()
    _day(world, 9).to_parquet(part / "p.parquet")  # the corrected rewrite, same name: it was never consumed
    r2 = load_round(cfg, wd, 2)
    assert r2.window["events"] == n and r2.window["rejects"]["total"] == 0
    # a few bad rows stay under the threshold: counted, never fatal
    bad = _day(world, 10).copy()
    bad.loc[:1, "user_id"] = None
    write_day(log_dir, day(10), bad)
    r3 = load_round(cfg, wd, 3)
    assert r3.window["rejects"]["counts"] == {"malformed_row": 2}


def test_a_redelivered_day_is_not_counted_twice(world, started):
    cfg, log_dir, wd = started
    part = log_dir / "events" / "date=1970-01-09"
    old = next(part.glob("*.parquet"))
    # a Spark overwrite: the same rows under a new file name, the old file gone, plus one new late row
    again = pd.concat([pd.read_parquet(old), _day(world, 8).iloc[:1].assign(timestamp=lambda f: f["timestamp"] + 7)])
    old.unlink()
    write_day(log_dir, day(8), again, append=True, name="part-00000-spark.parquet")
    write_day(log_dir, day(9), _day(world, 9))
    r2 = load_round(cfg, wd, 2)
    assert r2.window["already_consumed"] == len(again) - 1
    assert r2.window["late"] == 1 and r2.window["events"] == len(_day(world, 9))
    ids = pd.read_parquet(wd / "rounds" / "002" / "data" / "event_ids.parquet")["id"]
    assert ids.is_unique and len(ids) == len(world.events[world.events["timestamp"] < 10 * DAY]) - \
        int(pd.Series(event_ids(world.events[world.events["timestamp"] < 10 * DAY])).duplicated().sum()) + 1


def test_a_changed_consumed_file_fails_until_it_is_reconsumed(world, started):
    cfg, log_dir, wd = started
    f = next((log_dir / "events" / "date=1970-01-09").glob("*.parquet"))
    rows = pd.read_parquet(f)
    extra = rows.iloc[:3].assign(timestamp=lambda x: x["timestamp"] + 1)
    pd.concat([rows, rows.iloc[:5], extra]).to_parquet(f)  # rewritten in place: duplicates and 3 new rows
    write_day(log_dir, day(9), _day(world, 9))
    with pytest.raises(LiveDataError, match=r"date=1970-01-09/.*: changed after it was consumed \(size .*--reconsume "
                                            r"date=1970-01-09/"):
        load_round(cfg, wd, 2)
    request_reconsume(wd, ["date=1970-01-09"])
    r2 = load_round(cfg, wd, 2)
    assert r2.window["reconsumed_files"] == [f"date=1970-01-09/{f.name}"]
    assert r2.window["already_consumed"] == len(rows) and r2.window["rejects"]["counts"]["duplicate_event"] == 5
    assert r2.window["late"] == 3
    clock = read_clock(wd)
    assert clock["reconsume"] == [] and clock["reconsumed"][0]["round"] == 2
    assert load_round(cfg, wd, 3).status == "nothing_new"  # the new fingerprint is recorded: no second alarm


def test_a_missing_day_is_a_visible_gap_and_skip_day_moves_past_it(world, started):
    cfg, log_dir, wd = started
    for n in (10, 11, 12):  # day 9 never arrives
        write_day(log_dir, day(n), _day(world, n))
    assert load_round(cfg, wd, 2).status == "nothing_new"
    view = read_clock(wd)["log"]
    assert view["gap_day"] == "1970-01-10" and view["gap_age_days"] == 3
    assert view["days_waiting"] == ["1970-01-11", "1970-01-12", "1970-01-13"]
    assert view["newest_complete_day"] == "1970-01-13" and view["watermark_utc"] == "1970-01-10T00:00:00Z"
    with pytest.raises(ClockError, match="before"):
        skip_day(wd, day(3))
    skip_day(wd, day(9), command="cycle --skip-day 1970-01-10")
    r2 = load_round(cfg, wd, 2)
    assert r2.end == day_start(day(13)) and r2.window["events"] == sum(len(_day(world, n)) for n in (10, 11, 12))
    assert read_clock(wd)["skipped_days"][0]["day"] == "1970-01-10" and read_clock(wd)["log"]["gap_day"] is None


def test_gap_exit_code_past_max_gap_days(world, started, capsys):
    from coea.cli import _gap_exit

    cfg, log_dir, wd = started
    for n in (10, 11):
        write_day(log_dir, day(n), _day(world, n))
    load_round(cfg, wd, 2)
    assert _gap_exit(cfg, wd, 0) == 0  # 2 days: not more than cycle.max_gap_days (2)
    write_day(log_dir, day(12), _day(world, 12))
    load_round(cfg, wd, 2)
    capsys.readouterr()
    assert _gap_exit(cfg, wd, 0) == 8 and _gap_exit(cfg, wd, 4) == 8
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith("coea: ") and "day 1970-01-10 is not complete" in line and "3 days > cycle.max_gap_days 2" \
        in line and line.endswith("coea cycle --skip-day 1970-01-10")


def test_one_future_row_never_moves_a_single_files_watermark(world, tmp_path):
    log_dir, wd = tmp_path / "log", tmp_path / "wd"
    log_dir.mkdir()
    write_table(log_dir, "items.parquet", world.items)
    ts = world.events["timestamp"]
    future = _day(world, 3).iloc[:1].assign(timestamp=400 * DAY + 5)
    write_table(log_dir, "events.parquet", pd.concat([world.events[ts < 9 * DAY], future]))
    cfg = _cfg(log_dir)
    assert load_round(cfg, wd, 0).end == day_start(day(4))  # 8 complete days, the future row ignored
    r1 = load_round(cfg, wd, 1)
    assert (r1.start, r1.end) == (day_start(day(4)), day_start(day(8)))  # day 8 is still arriving
    view = read_clock(wd)["log"]
    assert view["gap_day"] == "1970-01-10" and view["days_waiting"] == ["1971-02-05"]
    write_table(log_dir, "events.parquet", pd.concat([world.events[ts < 10 * DAY], future]))
    assert load_round(cfg, wd, 2).end == day_start(day(9))  # the next day moves it by one day


def test_int64_ids_with_a_null_stay_exact_strings(tmp_path):
    table = pa.table({"user_id": pa.array([1234567890123456789, 1234567890123456788, None], pa.int64()),
                      "item_id": pa.array([1, 2, 3], pa.int64())})
    pq.write_table(table, tmp_path / "e.parquet")
    got = read_parquet_columns(tmp_path / "e.parquet", ("user_id", "item_id"))
    assert got["user_id"].tolist()[:2] == ["1234567890123456789", "1234567890123456788"]
    assert got["user_id"].isna().tolist() == [False, False, True] and got["item_id"].tolist() == ["1", "2", "3"]


def test_rejects_per_day_count_only_losing_reasons(world, started):
    cfg, log_dir, wd = started
    rows = _day(world, 9)
    write_day(log_dir, day(9), pd.concat([rows, rows]))  # every row twice: duplicates lose nothing
    r2 = load_round(cfg, wd, 2)
    assert r2.window["rejects"]["counts"] == {"duplicate_event": len(rows)} and r2.window["events"] == len(rows)


def test_status_json_shows_the_watermark_the_gap_and_the_serving_lag(world, started, capsys):
    from coea.cli import main
    from coea.rounds import read_state, write_state

    cfg, log_dir, wd = started
    for n in (10, 11, 12):
        write_day(log_dir, day(n), _day(world, n))
    load_round(cfg, wd, 2)
    state = read_state(wd)
    state["promoted_round"] = 1  # round 1 served: its window ends at day 9
    state["clock"]["windows"]["1"] = {"end": day_start(day(9))}
    write_state(wd, state)
    capsys.readouterr()
    assert main(["status", "--workdir", str(wd), "--json"]) == 0
    live = json.loads(capsys.readouterr().out)["live_log"]
    assert live["watermark_utc"] == "1970-01-10T00:00:00Z" and live["newest_complete_day"] == "1970-01-13"
    assert live["gap_day"] == "1970-01-10" and len(live["days_waiting"]) == 3 and live["serving_lag_days"] == 4
    assert main(["status", "--workdir", str(wd)]) == 0
    text = capsys.readouterr().out
    assert "gap       day 1970-01-10 missing; 3 complete day(s) wait" in text and "lag 4 day(s)" in text


def test_a_reconsume_request_that_matches_nothing_is_cleared_with_a_warning(world, started, caplog):
    cfg, log_dir, wd = started
    request_reconsume(wd, ["date=1999-01-01"])
    write_day(log_dir, day(9), _day(world, 9))
    load_round(cfg, wd, 2)
    assert "date=1999-01-01 match(es) no consumed file" in caplog.text
    assert read_clock(wd)["reconsume"] == []


def test_the_new_exit_codes_rank_between_failure_and_input_errors():
    from coea.data.schema import LogGapError
    from coea.errors import EXIT_CODES, exit_code_for, worst

    assert exit_code_for(LiveDataError("x")) == 7 and exit_code_for(LogGapError("x")) == 8
    assert worst([0, 4, 1, 8]) == 8 and worst([8, 7]) == 7 and worst([7, 2]) == 2 and worst([7, 3]) == 3
    assert {7, 8} <= set(EXIT_CODES)

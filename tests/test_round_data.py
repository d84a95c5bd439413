"""The live clock on a growing, day-partitioned log: windows, round 0's fixed cut-off, exactly-once consumption,
late events and the exact reconciliation, nothing-new reruns, bad files, a growing catalogue, one-file logs."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from coea.clock import ClockError, parse_until
from coea.config import SyntheticConfig, load_config
from coea.data.clean import _complete_users
from coea.data.partitions import DAY, EPOCH, day_start, write_day, write_interactions, write_table
from coea.data.schema import Interactions
from coea.data.sequences import build_sequences
from coea.data.synthetic import generate_world
from coea.round_data import load_round
from coea.rounds import read_state

REPO = Path(__file__).resolve().parents[1]
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


def _day_events(world, n: int) -> pd.DataFrame:
    ts = world.events["timestamp"]
    return world.events[(ts >= n * DAY) & (ts < (n + 1) * DAY)]


def test_live_rounds_consume_every_event_exactly_once(world, tmp_path):
    """Days 0-7 at bootstrap, then one day at a time: new users, new items and a brand-new category on day 8,
    an empty day 9, a late batch (a new file in day 5's partition and old timestamps in day 10's) with day 10."""
    log_dir, wd = tmp_path / "log", tmp_path / "wd"
    write_interactions(world, log_dir, through=day(7))
    cfg = _cfg(log_dir)

    r0 = load_round(cfg, wd, 0)
    c0 = day_start(day(4))  # half of 8 complete days
    assert (r0.start, r0.end) == (None, c0)
    assert read_state(wd)["clock"]["round0_cutoff"] == c0 and read_state(wd)["clock"]["mode"] == "live"
    assert r0.window["end_utc"] == "1970-01-05T00:00:00Z"
    assert len(r0.inter.events) == int((world.events["timestamp"] < c0).sum())

    r1 = load_round(cfg, wd, 1)
    assert (r1.start, r1.end) == (c0, day_start(day(8)))
    assert r1.window["start_utc"] == "1970-01-05T00:00:00Z" and r1.window["days"] == 4
    assert r1.window["events"] == int(((world.events["timestamp"] >= c0) & (world.events["timestamp"] < 8 * DAY)).sum())
    # a re-run of the same day reads the same window back; the next round has nothing new
    assert load_round(cfg, wd, 1).window == r1.window
    r2 = load_round(cfg, wd, 2)
    assert r2.status == "nothing_new" and "complete through 1970-01-09" in r2.message
    assert not (wd / "rounds" / "002").exists()

    # day 8: new users (one with a new feature value), new items in the middle of the id order, a new category
    items = pd.concat([world.items, pd.DataFrame({"item_id": ["i005b", "i999"], "category": ["Chess", "Zorbing"],
                                                  "title": ["new", "new"]})], ignore_index=True)
    users = pd.concat([world.users, pd.DataFrame({"user_id": ["u900", "u901"], "feature_0": ["f0_0", "f0_new"],
                                                  "feature_1": "unk", "feature_2": "unk"})], ignore_index=True)
    write_table(log_dir, "items.parquet", items)
    write_table(log_dir, "users.parquet", users)
    d8 = pd.concat([_day_events(world, 8), pd.DataFrame({
        "user_id": ["u900", "u900", "u901"], "item_id": ["i999", "i005b", "i999"],
        "timestamp": [8 * DAY + 100, 8 * DAY + 200, 8 * DAY + 300], "event": "click", "rating": np.nan})])
    write_day(log_dir, day(8), d8)
    before = {i: j for j, i in enumerate(r1.vocab.item_ids)}
    r2 = load_round(cfg, wd, 2)
    assert r2.status == "ok" and r2.window["events"] == len(d8) and r2.window["new_users"] == 2
    assert r2.window["vocab"]["new_items"] == 2 and r2.window["vocab"]["new_categories"] == ["Zorbing"]
    assert "Zorbing" in r2.inter.categories and "Zorbing" in r2.vocab.categories
    assert all(r2.vocab.item_ids[j] == i for i, j in before.items())  # no index moved
    assert r2.vocab.item_ids[-2:] == ["i005b", "i999"]

    # day 9 has no events: nothing new, the clock notes it checked
    write_day(log_dir, day(9), d8.iloc[:0])
    r3 = load_round(cfg, wd, 3)
    assert r3.status == "nothing_new" and read_state(wd)["clock"]["checked_until"] == day_start(day(10))

    # day 10 + a late batch: 40 events of day 5 arrive as a new file in day 5's partition, 5 more in day 10's
    late_a = _day_events(world, 5).iloc[:40].assign(timestamp=lambda f: f["timestamp"] + 1)
    late_b = _day_events(world, 6).iloc[:5].assign(timestamp=lambda f: f["timestamp"] + 1)
    write_day(log_dir, day(5), late_a, append=True, name="late.parquet")
    d10 = pd.concat([_day_events(world, 10), late_b])
    write_day(log_dir, day(10), d10)
    r3 = load_round(cfg, wd, 3)
    assert (r3.start, r3.end) == (day_start(day(9)), day_start(day(11)))
    assert r3.window["late"] == 45 and r3.window["events"] == len(_day_events(world, 10))
    assert r3.window["late_oldest_utc"].startswith("1970-01-06")

    # Reconciliation, exact: rows consumed by rounds >= 1 == rows of the log after round 0's cut-off + late rows
    windows = [json.loads((wd / "rounds" / f"{k:03d}" / "data" / "window.json").read_text()) for k in (1, 2, 3)]
    written = pd.concat([world.events[(world.events["timestamp"] >= c0) & (world.events["timestamp"] < 8 * DAY)],
                         d8, _day_events(world, 10)])
    assert sum(w["events"] for w in windows) == len(written)
    assert sum(w["events"] + w["late"] for w in windows) == len(written) + len(late_a) + len(late_b)
    assert sum(w["rows"] for w in windows) == sum(w["events"] + w["late"] + w["rejects"]["total"] for w in windows)
    consumed = pd.read_parquet(wd / "rounds" / "003" / "data" / "consumed.parquet")
    assert consumed["path"].is_unique and set(consumed["round"]) == {0, 1, 2, 3}
    assert consumed.loc[consumed["path"] == "date=1970-01-06/late.parquet", "round"].tolist() == [3]

    # Every event belongs to exactly one round
    per_round = [pd.read_parquet(wd / "rounds" / f"{k:03d}" / "data" / "events.parquet") for k in range(4)]
    allev = pd.concat(per_round, ignore_index=True)
    assert not allev.duplicated().any()
    assert len(allev) == int((world.events["timestamp"] < c0).sum()) + len(written) + len(late_a) + len(late_b)

    # The carried state equals a full rebuild over everything consumed, with the same vocabulary
    full = Interactions(events=allev.sort_values(["timestamp", "user_id", "item_id"], kind="mergesort")
                        .reset_index(drop=True), items=r3.vocab.items_frame(),
                        users=_complete_users(r3.inter.users, allev["user_id"]), categories=r3.inter.categories)
    ref = build_sequences(full, cfg.data, cutoff=r3.end, vocab=r3.vocab)
    assert r3.seqs.user_ids == ref.user_ids and r3.seqs.long_items == ref.long_items
    assert r3.seqs.short_categories == ref.short_categories and np.array_equal(r3.seqs.features, ref.features)
    # ... and the previous round's state is the sequences at the window's start
    assert r3.seqs_prev.cutoff == r3.start and set(r3.history) <= set(r3.seqs_prev.user_ids)


def test_round0_cutoff_is_fixed_once(world, tmp_path):
    log_dir, wd = tmp_path / "log", tmp_path / "wd"
    write_interactions(world, log_dir, through=day(7))
    load_round(_cfg(log_dir), wd, 0)
    c0 = read_state(wd)["clock"]["round0_cutoff"]
    # the log grows and the config changes: a rerun of round 0 and round 1 still use the recorded cut-off
    write_interactions(world, log_dir, first_day=day(8), through=day(11), tables=False)
    grown = _cfg(log_dir, "data.bootstrap_fraction=0.9")
    assert load_round(grown, wd, 0).end == c0 and load_round(grown, wd, 1).start == c0
    with pytest.raises(ClockError, match="keeps its clock"):
        load_round(_cfg(log_dir, "cycle.clock=replay"), wd, 2)


def test_until_lowers_the_watermark(world, tmp_path):
    log_dir, wd = tmp_path / "log", tmp_path / "wd"
    write_interactions(world, log_dir, through=day(9))
    cfg = _cfg(log_dir)
    assert parse_until("1970-01-08") == day_start(day(8)) and parse_until("86400") == DAY
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_until("tomorrow")
    r0 = load_round(cfg, wd, 0, until=parse_until("1970-01-06"))  # 6 complete days -> 3 for round 0
    assert r0.end == day_start(day(3))
    r1 = load_round(cfg, wd, 1, until=parse_until("1970-01-07"))
    assert (r1.start, r1.end) == (day_start(day(3)), day_start(day(7)))
    assert load_round(cfg, wd, 2, until=day_start(day(7)) + 3600).status == "nothing_new"  # rounds to a day
    assert load_round(cfg, wd, 2).end == day_start(day(10))


def test_bad_files_and_rows_are_reported_never_lost(world, tmp_path):
    from coea.data.schema import LiveDataError

    log_dir, wd = tmp_path / "log", tmp_path / "wd"
    write_interactions(world, log_dir, through=day(8))
    cfg = _cfg(log_dir)
    load_round(cfg, wd, 0)
    load_round(cfg, wd, 1)
    part = write_day(log_dir, day(9), _day_events(world, 9))
    broken = part / "part-x.parquet"
    broken.write_bytes(b"not parquet")
    _day_events(world, 12).iloc[:3].to_parquet(part / "part-future.parquet")  # after the newest complete day
    with pytest.raises(LiveDataError, match="part-x.parquet: unreadable .*not a readable Parquet file"):
        load_round(cfg, wd, 2)  # an unreadable file fails the round (exit 7) ...
    assert not (wd / "rounds" / "002").exists()  # ... and nothing is consumed
    # fixed, it is consumed by the same round, in its window (not late)
    _day_events(world, 9).iloc[:7].assign(timestamp=lambda f: f["timestamp"] + 1).to_parquet(broken)
    r2 = load_round(cfg, wd, 2)
    assert r2.window["unreadable_files"] == {} and r2.window["late"] == 0
    assert r2.window["rejects"]["counts"] == {"future_timestamp": 3}
    rejects = [json.loads(x) for x in (wd / "rounds" / "002" / "data" / "rejects.jsonl").read_text().splitlines()]
    assert {r["source"] for r in rejects if not r["kept"]} == {"date=1970-01-10/part-future.parquet"}
    consumed = pd.read_parquet(wd / "rounds" / "002" / "data" / "consumed.parquet")
    assert "date=1970-01-10/part-x.parquet" in set(consumed["path"])
    assert r2.window["events"] == len(_day_events(world, 9)) + 7


def test_removed_items_and_categories_do_not_break_a_round(world, tmp_path):
    log_dir, wd = tmp_path / "log", tmp_path / "wd"
    write_interactions(world, log_dir, through=day(7))
    cfg = _cfg(log_dir)
    load_round(cfg, wd, 0)
    gone = world.categories[0]
    kept = world.items[world.items["category"] != gone]
    renamed = kept.assign(category=np.where(kept["item_id"] == kept["item_id"].iloc[0], "Renamed", kept["category"]))
    write_table(log_dir, "items.parquet", renamed)
    r1 = load_round(cfg, wd, 1)  # days 4-7 still click items of the removed category
    assert gone not in r1.inter.categories and gone in r1.vocab.categories
    assert r1.window["vocab"]["removed_categories"] == [gone]
    assert r1.window["vocab"]["removed_items"] == WORLD.items_per_category
    assert r1.window["rejects"]["counts"] == {} and r1.window["rejects"]["kept"] == {"category_changed": 1}
    gone_items = set(world.items.loc[world.items["category"] == gone, "item_id"])
    assert r1.inter.events["item_id"].isin(gone_items).any()  # their events are accepted
    assert "Renamed" not in r1.inter.categories  # an item keeps its first category


def test_one_events_file_live(world, tmp_path):
    """events.parquet alone: the newest event's day is still arriving; rows that appear later with old
    timestamps cannot be told from consumed ones: counted, not consumed."""
    log_dir, wd = tmp_path / "log", tmp_path / "wd"
    log_dir.mkdir()
    write_table(log_dir, "items.parquet", world.items)
    ts = world.events["timestamp"]
    write_table(log_dir, "events.parquet", pd.concat([world.events[ts < 8 * DAY],
                                                      _day_events(world, 8).iloc[:10]]))  # day 8 partly there
    cfg = _cfg(log_dir)
    r0 = load_round(cfg, wd, 0)
    assert r0.end == day_start(day(4))  # 8 complete days
    r1 = load_round(cfg, wd, 1)
    assert (r1.start, r1.end) == (day_start(day(4)), day_start(day(8)))
    assert r1.window["events"] == int(((ts >= 4 * DAY) & (ts < 8 * DAY)).sum())
    late = world.events[ts < 10].assign(timestamp=lambda f: f["timestamp"] + 3 * DAY)  # old rows, new to the file
    write_table(log_dir, "events.parquet", pd.concat([world.events[ts < 9 * DAY], _day_events(world, 9).iloc[:1],
                                                      late]))
    r2 = load_round(cfg, wd, 2)
    assert (r2.start, r2.end) == (day_start(day(8)), day_start(day(9)))
    assert r2.window["late_unconsumed"] == len(late) and r2.window["late"] == 0
    assert r2.window["events"] == int(((ts >= 8 * DAY) & (ts < 9 * DAY)).sum())


def test_replay_mode_records_its_clock(tiny_cfg, tmp_path):
    r0 = load_round(tiny_cfg, tmp_path, 0)
    r1 = load_round(tiny_cfg, tmp_path, 1)
    clock = read_state(tmp_path)["clock"]
    assert clock["mode"] == "replay" and clock["round0_cutoff"] == r0.end == r1.start
    assert r1.end - r1.start == int(tiny_cfg.cycle.replay_days * DAY)
    assert clock["windows"]["1"]["end_utc"] == r1.window["end_utc"]


def test_changed_data_settings_rebuild_the_state_and_a_lost_data_stage_is_an_error(world, tmp_path):
    import shutil

    from coea.data.schema import DataError

    log_dir, wd = tmp_path / "log", tmp_path / "wd"
    write_interactions(world, log_dir, through=day(7))
    load_round(_cfg(log_dir), wd, 0)
    load_round(_cfg(log_dir), wd, 1)
    write_day(log_dir, day(8), _day_events(world, 8))
    stricter = _cfg(log_dir, "data.tau=3", "data.max_long_len=5")
    r2 = load_round(stricter, wd, 2)  # round 1's state has tau 2: rebuilt from the consumed files
    allev = pd.concat([pd.read_parquet(wd / "rounds" / f"{k:03d}" / "data" / "events.parquet") for k in range(3)])
    full = Interactions(events=allev.sort_values(["timestamp", "user_id", "item_id"], kind="mergesort")
                        .reset_index(drop=True), items=r2.vocab.items_frame(),
                        users=_complete_users(r2.inter.users, allev["user_id"]), categories=r2.inter.categories)
    ref = build_sequences(full, stricter.data, cutoff=r2.end, vocab=r2.vocab)
    assert r2.seqs.long_items == ref.long_items and r2.seqs.short_categories == ref.short_categories
    shutil.rmtree(wd / "rounds" / "002" / "data")
    write_day(log_dir, day(9), _day_events(world, 9))
    with pytest.raises(DataError, match="cannot continue"):
        load_round(stricter, wd, 3)


def test_clock_and_engine_need_a_parquet_log():
    from coea.config import ConfigError

    with pytest.raises(ConfigError, match="cycle.clock: live needs data.source: parquet"):
        load_config(REPO / "configs" / "demo.yaml", ["cycle.clock=live"])
    with pytest.raises(ConfigError, match="data.engine: spark"):
        load_config(REPO / "configs" / "demo.yaml", ["data.engine=spark"])
    from coea.clock import clock_mode

    assert clock_mode(load_config(REPO / "configs" / "demo.yaml")) == "replay"
    assert clock_mode(_cfg(Path("/nowhere"))) == "live"
    assert clock_mode(_cfg(Path("/nowhere"), "cycle.clock=replay")) == "replay"

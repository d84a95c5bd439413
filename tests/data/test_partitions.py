"""The partitioned log: atomic day writes and markers, listing, the partition-based watermark, static reads."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from coea.clock import partition_watermark
from coea.config import DataConfig, SyntheticConfig
from coea.data.loaders import load_interactions
from coea.data.partitions import (
    DAY, EPOCH, SUCCESS, day_of, day_start, parse_day, scan_log, utc, write_day, write_interactions, write_table,
)
from coea.data.synthetic import generate_world

SMALL = SyntheticConfig(n_users=30, n_groups=3, n_categories=6, items_per_category=3, n_days=6,
                        categories_per_group=2)


def _events(day: dt.date, n: int = 3, offset: int = 0) -> pd.DataFrame:
    t0 = day_start(day)
    return pd.DataFrame({"user_id": [f"u{i}" for i in range(n)], "item_id": "i1",
                         "timestamp": [t0 + offset + 10 * i for i in range(n)], "event": "click"})


def test_days_and_utc():
    assert day_of(0) == EPOCH and day_of(DAY - 1) == EPOCH and day_of(DAY) == EPOCH + dt.timedelta(days=1)
    assert day_start(dt.date(2024, 1, 5)) == 1704412800
    assert utc(1704412800) == "2024-01-05T00:00:00Z" and utc(None) is None
    assert parse_day("2024-01-05") == dt.date(2024, 1, 5) == parse_day(1704412800 + 5)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_day("05/01/2024")


def test_write_day_is_atomic_marks_complete_and_refuses_to_double_a_day(tmp_path):
    day = dt.date(2024, 1, 5)
    part = write_day(tmp_path, day, _events(day), name="part-a.parquet")
    assert part.name == "date=2024-01-05" and (part / SUCCESS).exists() and (part / SUCCESS).stat().st_size == 0
    assert sorted(p.name for p in part.iterdir()) == ["_SUCCESS", "part-a.parquet"]  # no temp file left
    with pytest.raises(FileExistsError, match="already complete"):
        write_day(tmp_path, day, _events(day))
    # late events: another file in the complete partition, with timestamps of an earlier day
    write_day(tmp_path, day, _events(day - dt.timedelta(days=2)), append=True, name="late.parquet")
    listing = scan_log(tmp_path)
    assert [f.path for f in listing.partitions[0].files] == ["date=2024-01-05/late.parquet",
                                                             "date=2024-01-05/part-a.parquet"]
    with pytest.raises(ValueError, match="at or after the end"):
        write_day(tmp_path, dt.date(2024, 1, 6), _events(dt.date(2024, 1, 7)))
    with pytest.raises(ValueError, match="lack column"):
        write_day(tmp_path, dt.date(2024, 1, 8), _events(dt.date(2024, 1, 8)).drop(columns="event"))


def test_empty_day_is_only_a_marker_and_listing_ignores_temp_and_foreign_files(tmp_path):
    write_day(tmp_path, "2024-01-01", _events(dt.date(2024, 1, 1)))
    write_day(tmp_path, "2024-01-02", _events(dt.date(2024, 1, 2)).iloc[:0])  # a day without events
    unfinished = tmp_path / "events" / "date=2024-01-03"
    unfinished.mkdir()
    _events(dt.date(2024, 1, 3)).to_parquet(unfinished / "part-0.parquet")  # written, no _SUCCESS yet
    (unfinished / ".part-1.parquet.tmp").write_bytes(b"half")
    (tmp_path / "events" / "notes.txt").write_text("hello")
    listing = scan_log(tmp_path)
    assert [(p.day.isoformat(), p.complete, len(p.files)) for p in listing.partitions] == [
        ("2024-01-01", True, 1), ("2024-01-02", True, 0), ("2024-01-03", False, 1)]
    assert listing.ignored == ["notes.txt"]


def test_watermark_is_the_end_of_the_complete_run_and_waits_for_a_gap(tmp_path):
    for d in (1, 2, 3, 5):
        write_day(tmp_path, dt.date(2024, 1, d), _events(dt.date(2024, 1, d)))
    listing = scan_log(tmp_path)
    start = day_start(dt.date(2024, 1, 1))
    # 2024-01-04 has no partition: the watermark stops at the end of 01-03 although 01-05 is complete
    assert partition_watermark(listing, start) == day_start(dt.date(2024, 1, 4))
    assert partition_watermark(listing, start, until=day_start(dt.date(2024, 1, 3)) + 5) == \
        day_start(dt.date(2024, 1, 3))  # --until mid-day rounds down to a whole day
    write_day(tmp_path, dt.date(2024, 1, 4), _events(dt.date(2024, 1, 4)).iloc[:0])
    assert partition_watermark(scan_log(tmp_path), start) == day_start(dt.date(2024, 1, 6))
    # the run starts at the previous round's end: nothing complete there -> the watermark is the start itself
    later = day_start(dt.date(2024, 1, 6))
    assert partition_watermark(scan_log(tmp_path), later) == later


def test_write_interactions_round_trips_through_the_static_loader(tmp_path):
    world = generate_world(SMALL, seed=1)
    days = write_interactions(world, tmp_path / "log")
    assert days[0] == EPOCH and len(days) == SMALL.n_days
    assert all(p.complete for p in scan_log(tmp_path / "log").partitions)
    back = load_interactions(DataConfig(source="parquet", path=str(tmp_path / "log")), SyntheticConfig(), seed=0)
    pd.testing.assert_frame_equal(back.events, world.events)
    pd.testing.assert_frame_equal(back.items, world.items)
    assert back.categories == world.categories and back.rejects.total == 0
    # a partition without its marker is not part of the static read either
    (tmp_path / "log" / "events" / f"date={days[-1].isoformat()}" / SUCCESS).unlink()
    partial = load_interactions(DataConfig(source="parquet", path=str(tmp_path / "log")), SyntheticConfig(), seed=0)
    assert len(partial.events) == int((world.events["timestamp"] < day_start(days[-1])).sum())


def test_write_table_replaces_atomically(tmp_path):
    write_table(tmp_path, "items.parquet", pd.DataFrame({"item_id": ["a"], "category": ["X"]}))
    write_table(tmp_path, "items.parquet", pd.DataFrame({"item_id": ["a", "b"], "category": ["X", "Y"]}))
    assert pd.read_parquet(tmp_path / "items.parquet")["item_id"].tolist() == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["items.parquet"]
    with pytest.raises(ValueError):
        write_table(tmp_path, "other.parquet", pd.DataFrame())

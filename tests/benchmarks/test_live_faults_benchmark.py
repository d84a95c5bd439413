"""benchmarks/live_faults.py: the independent reconciliation (pyarrow over the written files against the rounds'
consumed events) on hand-made files. The table itself comes from running the script (docs/cycle.md)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coea.data.partitions import DAY, write_day


@pytest.fixture(scope="module")
def lf(load_benchmark):
    return load_benchmark("live_faults")


def test_valid_events_and_double_counts_are_found(lf, tmp_path):
    log = tmp_path / "log"
    items = pd.DataFrame({"item_id": ["a", "b"], "category": ["X", "Y"]})
    t = 17 * DAY
    write_day(log, "1970-01-18", pd.DataFrame({"user_id": ["u1", "u2", " ", "u3", "u4"],
                                               "item_id": ["a", "b", "a", "zz", "a"],
                                               "timestamp": [t, t + 1, t + 2, t + 3, t - DAY],  # the last: late
                                               "event": ["click", " exposure ", "click", "click", "click"]}))
    part = log / "events" / "date=1970-01-18"
    pq.write_table(pa.table({"user_id": pa.array([1234567890123456789, None], pa.int64()),
                             "item_id": ["a", "a"], "timestamp": pa.array([t + 5, t + 6], pa.int64()),
                             "event": ["click", "click"]}), part / "ints.parquet")
    pd.DataFrame({"user_id": ["u9"], "item_id": ["a"], "timestamp": [t + 40 * DAY], "event": ["click"]}).to_parquet(
        part / "future.parquet")
    lab = SimpleNamespace(world=SimpleNamespace(items=items))
    ctx = SimpleNamespace(kind="partitions", log=log, days=[17], lab=lab,
                          partition=lambda d: log / "events" / "date=1970-01-18")
    valid = lf.valid_identities(ctx)
    assert set(valid) == {("u1", "a", t, "click"), ("u2", "b", t + 1, "exposure"), ("u4", "a", t - DAY, "click"),
                          ("1234567890123456789", "a", t + 5, "click")}

    wd = tmp_path / "wd"
    for k, users in ((1, ["u1", "u2"]), (2, ["u2", "u4"])):
        d = wd / "rounds" / f"{k:03d}" / "data"
        d.mkdir(parents=True)
        pd.DataFrame({"user_id": users, "item_id": ["a", "b"] if k == 1 else ["b", "a"],
                      "timestamp": [t, t + 1] if k == 1 else [t + 1, t - DAY], "event": ["click", "exposure"] if k == 1
                      else ["exposure", "click"]}).to_parquet(d / "events.parquet")
    got = lf.consumed_identities(wd)
    assert got[("u2", "b", t + 1, "exposure")] == 2 and sum(n - 1 for n in got.values() if n > 1) == 1
    assert [k for k in valid if k not in got] == [("1234567890123456789", "a", t + 5, "click")]


def test_every_fault_of_the_issue_has_a_scenario(lf):
    names = [f[0] for f in lf.FAULTS]
    assert len(names) == len(set(names))
    assert sum(1 for f in lf.FAULTS if f[2] == "failed") == 8  # the six that failed (two split in two)
    held = {f[0] for f in lf.FAULTS if f[2] == "held"}
    assert {"extra_columns", "int64_ids", "two_cycles_at_once", "nearly_full_disk", "null_and_blank_ids"} <= held
    assert Path(lf.CONFIG).is_file()

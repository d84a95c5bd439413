"""The cycle from cron on a growing, day-partitioned log (tiny models): bootstrap + daily rounds, the same day
again (nothing new, exit 0), a new user / new items / a brand-new category, an empty day, a late batch."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from coea.cli import main
from coea.data.partitions import DAY, EPOCH, write_day, write_interactions, write_table
from coea.data.synthetic import generate_world
from coea.rounds import read_state



def day(n: int) -> dt.date:
    return EPOCH + dt.timedelta(days=n)


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_cfg):
    root = tmp_path_factory.mktemp("live")
    cfg = copy.deepcopy(tiny_cfg)
    cfg.data.source, cfg.data.path = "parquet", str(root / "log")
    world = generate_world(cfg.synthetic, cfg.run.seed)
    write_interactions(world, root / "log", through=day(9))
    cfg_path = root / "live.yaml"
    cfg.save(cfg_path)
    return root, cfg_path, world


def _cycle(cfg_path: Path, wd: Path, *extra: str) -> int:
    return main(["cycle", "--config", str(cfg_path), "--workdir", str(wd), *extra])


def _day(world, n: int) -> pd.DataFrame:
    ts = world.events["timestamp"]
    return world.events[(ts >= n * DAY) & (ts < (n + 1) * DAY)]


def test_daily_cycles_on_a_live_log(live, capsys):
    root, cfg_path, world = live
    wd, log_dir = root / "wd", root / "log"
    assert _cycle(cfg_path, wd) in (0, 4)  # bootstrap (6 of 10 complete days) + round 1 (days 6-9)
    state = read_state(wd)
    assert state["clock"]["mode"] == "live" and state["clock"]["round0_cutoff"] == 6 * DAY
    assert [r["round"] for r in state["rounds"]] == [0, 1]
    w1 = json.loads((wd / "rounds" / "001" / "data" / "window.json").read_text())
    assert (w1["start_utc"], w1["end_utc"]) == ("1970-01-07T00:00:00Z", "1970-01-11T00:00:00Z")

    capsys.readouterr()
    assert _cycle(cfg_path, wd) == 0  # the same day again: nothing new, no round
    err = capsys.readouterr().err
    assert "nothing new" in err and [r["round"] for r in read_state(wd)["rounds"]] == [0, 1]

    # day 10: a new user, items new to the catalogue, one of a brand-new category; one category leaves it
    gone = world.categories[-1]
    items = pd.concat([world.items[world.items["category"] != gone],
                       pd.DataFrame({"item_id": ["i000a", "n-1", "n-2"],
                                     "category": [world.categories[0], "Zorbing", "Zorbing"], "title": ""})],
                      ignore_index=True)
    write_table(log_dir, "items.parquet", items)
    extra = pd.DataFrame([(u, it, 10 * DAY + 100 * j + 3 * i, "click", np.nan)
                          for i, u in enumerate(["u00", "u01", "newbie"])
                          for j, it in enumerate(["n-1", "n-2", "i000a", "n-1"])],
                         columns=["user_id", "item_id", "timestamp", "event", "rating"])
    write_day(log_dir, day(10), pd.concat([_day(world, 10), extra]))
    assert _cycle(cfg_path, wd) in (0, 4)
    m2 = json.loads((wd / "rounds" / "002" / "metrics.json").read_text())
    assert m2["data/new_categories"] == 1 and m2["data/new_items"] == 3 and m2["data/new_users"] == 1
    assert m2["data/removed_items"] == int((world.items["category"] == gone).sum())
    proposed = pd.read_parquet(wd / "rounds" / "002" / "candidates" / "candidates.parquet")["candidates"]
    assert gone not in {c for row in proposed for c in row}  # a removed category is no longer proposed
    assert m2["data/events"] == len(_day(world, 10)) + len(extra)
    users = pd.read_parquet(wd / "rounds" / "002" / "users.parquet")
    assert "newbie" in set(users["user_id"])

    write_day(log_dir, day(11), _day(world, 11).iloc[:0])  # a day without events
    assert _cycle(cfg_path, wd) == 0 and read_state(wd)["clock"]["checked_until"] == 12 * DAY
    assert [r["round"] for r in read_state(wd)["rounds"]] == [0, 1, 2]

    # day 12 with a late batch (events of day 8 arriving now) -- and --until can hold the clock back
    write_day(log_dir, day(8), _day(world, 8).iloc[:20].assign(timestamp=lambda f: f["timestamp"] + 1),
              append=True, name="late.parquet")
    write_day(log_dir, day(12), _day(world, 12))
    assert _cycle(cfg_path, wd, "--until", "1970-01-12") == 0  # through day 11: still nothing new
    assert _cycle(cfg_path, wd, "--until", "not-a-day") == 2
    assert _cycle(cfg_path, wd) in (0, 4)
    w3 = json.loads((wd / "rounds" / "003" / "data" / "window.json").read_text())
    assert (w3["start_utc"], w3["end_utc"]) == ("1970-01-12T00:00:00Z", "1970-01-14T00:00:00Z")
    assert w3["late"] == 20 and w3["events"] == len(_day(world, 12))
    m3 = json.loads((wd / "rounds" / "003" / "metrics.json").read_text())
    assert m3["data/late"] == 20 and m3["data/window_days"] == 2

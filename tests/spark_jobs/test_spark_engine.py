"""``data.engine: spark`` in the daily path: the round's Sequences from spark_jobs equal the in-process state's,
round after round on a growing partitioned log (new users, new items, a new category, an empty day, late files)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from coea.config import SyntheticConfig, load_config
from coea.data.partitions import DAY, EPOCH, write_day, write_interactions, write_table
from coea.data.synthetic import generate_world
from coea.round_data import load_round

pytestmark = [pytest.mark.spark, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

REPO = Path(__file__).resolve().parents[2]
WORLD = SyntheticConfig(n_users=30, n_groups=3, n_categories=5, items_per_category=4, n_days=12,
                        categories_per_group=2)


def day(n: int) -> dt.date:
    return EPOCH + dt.timedelta(days=n)


def _day(world, n: int) -> pd.DataFrame:
    ts = world.events["timestamp"]
    return world.events[(ts >= n * DAY) & (ts < (n + 1) * DAY)]


def test_spark_engine_equals_the_in_process_state(spark, tmp_path, long_filter="category"):
    """One filter level here (each round is a Spark job); test_spark_sequences.py checks both levels' rules."""
    world = generate_world(WORLD, seed=2)
    log_dir = tmp_path / "log"
    write_interactions(world, log_dir, through=day(5))
    base = ["data.source=parquet", f"data.path={log_dir}", "data.bootstrap_fraction=0.5", "data.tau=2",
            "data.short_k=3", "data.max_long_len=6", f"data.long_filter={long_filter}"]
    pandas_cfg = load_config(REPO / "configs" / "demo.yaml", base)
    spark_cfg = load_config(REPO / "configs" / "demo.yaml", [*base, "data.engine=spark"])

    def both(k: int):
        a = load_round(pandas_cfg, tmp_path / "pandas", k)
        b = load_round(spark_cfg, tmp_path / "spark", k)
        assert a.status == b.status
        if a.status == "ok":
            assert b.window["spark"]["users_differing_from_state"] == 0
            for f in ("user_ids", "item_vocab", "long_items", "short_categories", "c_short", "cutoff"):
                assert getattr(a.seqs, f) == getattr(b.seqs, f), (k, f)
            assert np.array_equal(a.seqs.features, b.seqs.features)
            back = load_round(spark_cfg, tmp_path / "spark", k)  # read back: Spark's saved rows
            assert back.seqs.long_items == b.seqs.long_items
        return a, b

    both(0)
    both(1)
    items = pd.concat([world.items, pd.DataFrame({"item_id": ["i000a", "n-1"], "category": ["Chess", "Zorbing"],
                                                  "title": ""})], ignore_index=True)
    write_table(log_dir, "items.parquet", items)
    extra = pd.DataFrame([(u, it, 6 * DAY + 50 * j + i, "click", np.nan) for i, u in enumerate(["u00", "new"])
                          for j, it in enumerate(["n-1", "i000a", "n-1"])],
                         columns=["user_id", "item_id", "timestamp", "event", "rating"])
    write_day(log_dir, day(6), pd.concat([_day(world, 6), extra]))
    both(2)
    write_day(log_dir, day(7), _day(world, 7).iloc[:0])  # empty day: nothing new for either
    a, _ = both(3)
    assert a.status == "nothing_new"
    write_day(log_dir, day(2), _day(world, 2).iloc[:15].assign(timestamp=lambda f: f["timestamp"] + 1),
              append=True, name="late.parquet")
    write_day(log_dir, day(8), _day(world, 8).drop(columns="rating"))  # a file without the optional column
    a, b = both(3)
    assert a.window["late"] == 15 and b.window["late"] == 15

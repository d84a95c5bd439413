"""Parquet logs: round trip, typed ids and timestamps, required columns."""

from __future__ import annotations

import pandas as pd
import pytest

from coea.config import DataConfig, SyntheticConfig
from coea.data.loaders import load_interactions
from coea.data.parquet import load_parquet, write_parquet
from coea.data.schema import DataError
from coea.data.synthetic import generate_world

SMALL = SyntheticConfig(n_users=40, n_groups=3, n_categories=8, items_per_category=4, n_days=6,
                        categories_per_group=2)


def test_round_trip(tmp_path):
    world = generate_world(SMALL, seed=3)
    write_parquet(world, tmp_path / "pq")
    back = load_interactions(DataConfig(source="parquet", path=str(tmp_path / "pq")), SyntheticConfig(), seed=0)
    pd.testing.assert_frame_equal(back.events, world.events)
    pd.testing.assert_frame_equal(back.items, world.items)
    pd.testing.assert_frame_equal(back.users, world.users)
    assert back.categories == world.categories and back.rejects.total == 0


def test_integer_ids_and_timestamp_types(tmp_path):
    root = tmp_path / "pq"
    root.mkdir()
    pd.DataFrame({
        "user_id": [7, 7, 8],
        "item_id": [1, 2, 1],
        "timestamp": pd.to_datetime(["1970-01-01 00:00:10", "1970-01-01 00:00:05", "1970-01-02 00:00:00"]),
        "event": ["click", "exposure", "click"],
    }).to_parquet(root / "events.parquet")
    pd.DataFrame({"item_id": [1, 2], "category": ["Jazz", "Blues"], "title": ["A", None]}).to_parquet(
        root / "items.parquet")
    pd.DataFrame({"user_id": [7], "country": ["fr"]}).to_parquet(root / "users.parquet")
    inter = load_parquet(root)
    assert inter.events[["user_id", "item_id", "timestamp"]].values.tolist() == [
        ["7", "2", 5], ["7", "1", 10], ["8", "1", 86400]]
    assert inter.rejects.kept == {"out_of_order_timestamp": 1}
    assert inter.items["title"].tolist() == ["A", ""]
    assert inter.users.values.tolist() == [["7", "fr"], ["8", "unk"]]


def test_missing_column_and_non_parquet(tmp_path):
    root = tmp_path / "pq"
    root.mkdir()
    pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "event": ["click"]}).to_parquet(root / "events.parquet")
    pd.DataFrame({"item_id": ["x"], "category": ["Jazz"]}).to_parquet(root / "items.parquet")
    with pytest.raises(DataError, match=r"events\.parquet: missing column\(s\) timestamp"):
        load_parquet(root)
    (root / "events.parquet").write_text("user_id,item_id\n")
    with pytest.raises(DataError, match=r"events\.parquet: not a readable Parquet file"):
        load_parquet(root)

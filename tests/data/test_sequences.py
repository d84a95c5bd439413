"""Sequences on a hand-built example: the tau filter at both levels, the short window, C'_short, cold start."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from coea.config import DataConfig
from coea.data.clean import clean_interactions
from coea.data.movielens import load_movielens_100k
from coea.data.sequences import build_sequences, click_categories_by_user, exposures_by_user
from storage.keys import canonical_recent, kv_key


@pytest.fixture
def inter():
    # User a clicks x@1 z@2 x@3 y@4 z@5 x@6 w@7 (x, y: A; z: B; w: C) and is shown w@8 without a click.
    # User b is in the users table with no events (cold start); user c only has an exposure and no users row.
    rows = [("a", "x", 1, "click"), ("a", "z", 2, "click"), ("a", "x", 3, "click"), ("a", "y", 4, "click"),
            ("a", "z", 5, "click"), ("a", "x", 6, "click"), ("a", "w", 7, "click"), ("a", "w", 8, "exposure"),
            ("c", "x", 2, "exposure")]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event"])
    items = pd.DataFrame({"item_id": ["x", "y", "z", "w"], "category": ["A", "A", "B", "C"]})
    users = pd.DataFrame({"user_id": ["a", "b"], "gender": ["F", "M"], "region": ["unk", "north"]})
    return clean_interactions(events, items, users)


def _items(seq, user):
    row = seq.user_ids.index(user)
    return [seq.item_vocab[j - 1] for j in seq.long_items[row]]


def _row(seq, user):
    return seq.user_ids.index(user)


def test_tau_item_level(inter):
    seq = build_sequences(inter, DataConfig(tau=3, long_filter="item", short_k=3))
    assert _items(seq, "a") == ["x", "x", "x"]  # x clicked 3 times; y once, z twice, w once: filtered


def test_tau_category_level(inter):
    seq = build_sequences(inter, DataConfig(tau=3, long_filter="category", short_k=3))
    assert _items(seq, "a") == ["x", "x", "y", "x"]  # category A clicked 4 times; B twice, C once
    seq = build_sequences(inter, DataConfig(tau=3, long_filter="category", max_long_len=2))
    assert _items(seq, "a") == ["y", "x"]  # most recent kept
    assert seq.item_vocab == ["w", "x", "y", "z"] and all(j >= 1 for j in seq.long_items[_row(seq, "a")])


def test_cutoff_counts_only_earlier_clicks(inter):
    seq = build_sequences(inter, DataConfig(tau=3, long_filter="category", short_k=3), cutoff=5)
    assert seq.cutoff == 5
    assert _items(seq, "a") == ["x", "x", "y"]  # A has 3 clicks before t=5
    assert seq.short_categories[_row(seq, "a")] == ["B", "A", "A"]
    seq = build_sequences(inter, DataConfig(tau=3, long_filter="item"), cutoff=5)
    assert _items(seq, "a") == []  # x has only 2 clicks before t=5
    assert build_sequences(inter, DataConfig()).cutoff == 9  # None -> max timestamp + 1


def test_short_window_and_canonical_order(inter):
    seq = build_sequences(inter, DataConfig(tau=1, short_k=3))
    a = _row(seq, "a")
    assert seq.short_categories[a] == ["B", "A", "C"]  # last 3 clicks z@5 x@6 w@7, chronological, unfiltered
    assert seq.c_short[a] == ("A", "B", "C") == canonical_recent(["C", "A", "B", "A"])
    assert kv_key("1-2", seq.short_categories[a]) == kv_key("1-2", seq.c_short[a])
    # Code-point order: upper case before lower case before non-ASCII.
    assert canonical_recent(["Äpfel", "apple", "Zebra", "apple", ""]) == ("Zebra", "apple", "Äpfel")


def test_cold_start_users_and_features(inter):
    seq = build_sequences(inter, DataConfig(tau=1))
    assert seq.user_ids == ["a", "b", "c"]  # c has events but was not in the users table
    for user in ("b", "c"):
        r = _row(seq, user)
        assert seq.long_items[r] == [] and seq.short_categories[r] == [] and seq.c_short[r] == ()
    assert seq.feature_names == ["gender", "region"]
    assert seq.features.tolist() == [[1, 0], [2, 1], [0, 0]]  # 0 = unknown ("unk" or no users row)
    assert seq.feature_cardinalities == [3, 2] and seq.features.dtype == np.int64


def test_clicks_and_exposures_by_user(inter):
    assert click_categories_by_user(inter, start=2, end=6) == {"a": [(2, "B"), (3, "A"), (4, "A"), (5, "B")]}
    assert exposures_by_user(inter) == {"a": [(8, "C")], "c": [(2, "A")]}
    assert exposures_by_user(inter, end=2) == {}


def test_ml100k_builds_fast(ml100k_path):
    inter = load_movielens_100k(ml100k_path)
    data = DataConfig(tau=5, long_filter="category", short_k=5)
    t0 = time.perf_counter()
    seq = build_sequences(inter, data)
    seconds = time.perf_counter() - t0
    assert len(seq.user_ids) == 943 and seq.features.shape == (943, 4)
    assert max(len(s) for s in seq.short_categories) == 5
    assert all(1 <= j <= len(seq.item_vocab) for row in seq.long_items for j in row)
    assert sum(len(s) for s in click_categories_by_user(inter).values()) == (inter.events["event"] == "click").sum()
    assert seconds < 5, seconds

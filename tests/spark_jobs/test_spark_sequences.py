"""spark_jobs.build_sequences: hand-checked sequences, byte-identical keys, and parity with the in-process path."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from storage.keys import DEFAULT_CSID, canonical_recent, kv_key, short_hash

pytestmark = [pytest.mark.spark, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

#: Category names chosen so that byte order, code-point order and UTF-16 order are tested against each other:
#: "Ａ" (U+FF21) sorts before "😀" (U+1F600) by code point / UTF-8, but after it in UTF-16 (Java's String order).
ITEMS = {"i1": "Äpfel", "i2": "Zebra", "i3": "日本", "i4": "😀", "i5": "Ａ", "i6": "apple", "i7": "Äpfel",
         "i8": "émigré"}

CUTOFF = 100
#: (user_id, item_id, timestamp, event). Written to Parquet shuffled; ties on timestamp are on purpose.
EVENTS = [
    # u1: category and item level differ on i7 (category Äpfel clicked 4 times, item i7 once).
    ("u1", "i1", 10, "click"), ("u1", "i2", 10, "click"), ("u1", "i1", 20, "click"), ("u1", "i3", 30, "click"),
    ("u1", "i1", 30, "click"), ("u1", "i7", 35, "click"), ("u1", "i1", 40, "exposure"), ("u1", "i2", 50, "click"),
    ("u1", "i4", 60, "click"), ("u1", "i5", 70, "click"), ("u1", "i6", 200, "click"),  # after the cut-off
    # u2: exposures only -> empty sequences, hash of the empty set.
    ("u2", "i1", 10, "exposure"), ("u2", "i2", 15, "exposure"),
    # ü3: same timestamps as u1 (ties across users), repeated categories in the short window.
    ("ü3", "i2", 10, "click"), ("ü3", "i1", 10, "click"), ("ü3", "i2", 11, "click"), ("ü3", "i8", 11, "click"),
    ("ü3", "i2", 12, "click"),
    # u4: one click -> below tau everywhere, short window of one.
    ("u4", "i6", 5, "click"),
    # u5: same recent set as ü3 in another order -> same key when both are in one group.
    ("u5", "i1", 0, "click"), ("u5", "i8", 1, "click"), ("u5", "i2", 2, "click"), ("u5", "i2", 3, "click"),
]
PARAMS = dict(tau=2, short_k=3, max_long_len=4, cutoff=CUTOFF)


def write_fixture(root: Path) -> tuple[Path, Path]:
    events = pd.DataFrame(EVENTS, columns=["user_id", "item_id", "timestamp", "event"])
    events["timestamp"] = events["timestamp"].astype("int64")
    events["rating"] = math.nan
    events = events.sample(frac=1.0, random_state=7).reset_index(drop=True)  # out of order on disk
    items = pd.DataFrame({"item_id": list(ITEMS), "category": list(ITEMS.values()),
                          "title": [f"title {i}" for i in ITEMS]})
    root.mkdir(parents=True, exist_ok=True)
    events.to_parquet(root / "events.parquet", index=False)
    items.to_parquet(root / "items.parquet", index=False)
    return root / "events.parquet", root / "items.parquet"


@pytest.fixture(scope="module")
def fixture_paths(tmp_path_factory) -> tuple[Path, Path]:
    return write_fixture(tmp_path_factory.mktemp("seq_fixture"))


def run_job(spark, paths, out: Path, long_filter: str, **extra) -> tuple[dict, dict[str, dict]]:
    from spark_jobs.build_sequences import build_sequences

    counts = build_sequences(spark, str(paths[0]), str(paths[1]), str(out), long_filter=long_filter,
                             **{**PARAMS, **extra})
    rows = spark.read.parquet(counts["paths"]["sequences"]).collect()
    return counts, {r["user_id"]: r.asDict() for r in rows}


def test_hand_checked_category_level(spark, fixture_paths, tmp_path):
    """u1 clicks before the cut-off, in (timestamp, item_id) order:
    i1 Äpfel@10, i2 Zebra@10, i1 Äpfel@20, i1 Äpfel@30, i3 日本@30, i7 Äpfel@35, i2 Zebra@50, i4 😀@60, i5 Ａ@70.
    Category counts: Äpfel 4, Zebra 2, others 1; tau=2 keeps i1 i2 i1 i1 i7 i2; the most recent 4: i1 i1 i7 i2.
    Short (K=3): Zebra 😀 Ａ; canonical: Zebra < Ａ (U+FF21) < 😀 (U+1F600).
    """
    counts, seqs = run_job(spark, fixture_paths, tmp_path / "cat", "category")
    u1 = seqs["u1"]
    assert u1["long_items"] == ["i1", "i1", "i7", "i2"]
    assert u1["short_categories"] == ["Zebra", "😀", "Ａ"]
    assert u1["c_short"] == ["Zebra", "Ａ", "😀"] == list(canonical_recent(u1["short_categories"]))
    assert u1["short_hash"] == short_hash(["Ａ", "😀", "Zebra"])
    assert u1["n_clicks"] == 9
    # ü3: Zebra@10 ties with Äpfel@10 -> i1 (Äpfel) first; Zebra clicked 3 times.
    assert seqs["ü3"]["long_items"] == ["i2", "i2", "i2"]
    assert seqs["ü3"]["short_categories"] == ["Zebra", "émigré", "Zebra"]
    assert seqs["ü3"]["c_short"] == ["Zebra", "émigré"]
    assert seqs["u2"] == {"user_id": "u2", "long_items": [], "short_categories": [], "c_short": [],
                          "short_hash": short_hash([]), "n_clicks": 0}
    assert seqs["u4"]["long_items"] == [] and seqs["u4"]["short_categories"] == ["apple"]
    assert counts["users"] == 5 and counts["clicks"] == 9 + 5 + 1 + 4
    assert counts["events"] == len(EVENTS) and counts["events_used"] == len(EVENTS) - 1
    assert counts["users_empty_long"] == 2 and counts["rejected"] == {}


def test_hand_checked_item_level(spark, fixture_paths, tmp_path):
    """Item level: u1's item counts i1 3, i2 2, others 1 -> i1 i2 i1 i1 i2, most recent 4: i2 i1 i1 i2 (i7 dropped)."""
    _, seqs = run_job(spark, fixture_paths, tmp_path / "item", "item")
    assert seqs["u1"]["long_items"] == ["i2", "i1", "i1", "i2"]
    assert seqs["u1"]["c_short"] == ["Zebra", "Ａ", "😀"]  # the short window does not depend on the filter
    assert seqs["u5"]["long_items"] == ["i2", "i2"]


def test_keys_match_storage_bytes(spark, fixture_paths, tmp_path):
    """With a user -> csid table, key bytes equal storage.keys.kv_key; users without a group get DEFAULT_CSID;
    ü3 and u5 share a group and the same recent set in another order, so they share one key."""
    csid_path = tmp_path / "users.parquet"
    pd.DataFrame({"user_id": ["u1", "ü3", "u5"], "csid": ["3-14-0-7", "1-2", "1-2"]}).to_parquet(csid_path)
    counts, seqs = run_job(spark, fixture_paths, tmp_path / "keys", "category", user_csid_path=str(csid_path))
    for user, row in seqs.items():
        assert bytes(row["key"]) == kv_key(row["csid"], row["short_categories"]), user
    assert seqs["u2"]["csid"] == DEFAULT_CSID
    assert seqs["ü3"]["key"] == seqs["u5"]["key"]
    keys = spark.read.parquet(counts["paths"]["keys"]).collect()
    assert counts["keys"] == len(keys) == 4
    shared = [k for k in keys if k["csid"] == "1-2"]
    assert len(shared) == 1 and shared[0]["n_users"] == 2 and shared[0]["c_short"] == ["Zebra", "émigré"]


def write_messy_fixture(root: Path) -> Path:
    """The clean fixture plus every kind of bad row the loader rejects (and a few it must accept)."""
    root.mkdir(parents=True, exist_ok=True)
    events = pd.DataFrame(EVENTS, columns=["user_id", "item_id", "timestamp", "event"])
    events["timestamp"] = events["timestamp"].astype("float64")
    events["rating"] = [float(i % 5) if i % 3 else math.nan for i in range(len(events))]
    bad = pd.DataFrame([
        (None, "i1", 1.0, "click", math.nan),       # malformed_row: no user
        ("  ", "i1", 1.0, "click", math.nan),       # malformed_row: blank user
        ("u1", "i1", -5.0, "click", math.nan),      # malformed_row: negative timestamp
        ("u1", "i1", 1.5, "click", math.nan),       # malformed_row: fractional timestamp
        ("u1", "i1", math.nan, "click", math.nan),  # malformed_row: no timestamp
        ("u1", "i1", 2.0, "purchase", math.nan),    # bad_event_kind
        ("u6", "i9", 3.0, "click", math.nan),       # unknown_item (u6 has no valid event -> no row)
        ("u1", "i0", 3.0, "click", math.nan),       # unknown_item: item without a category
        (" u1 ", " i2 ", 10.0, " click ", 1.0),     # stripped: repeats u1's i2@10 (rating 1) -> duplicate_event
        ("u7", "i3", 500.0, "click", 4.0),          # valid but after the cut-off: u7 gets an empty row
        ("u7", "i3", 500.0, "click", 4.0),          # duplicate_event
    ], columns=events.columns)
    events = pd.concat([events, bad], ignore_index=True).sample(frac=1.0, random_state=3).reset_index(drop=True)
    items = pd.DataFrame({"item_id": list(ITEMS) + ["i0", "i1"],
                          "category": list(ITEMS.values()) + ["   ", "Duplicate"],  # i0: blank; i1 again
                          "title": "t"})
    events.to_parquet(root / "events.parquet", index=False)
    items.to_parquet(root / "items.parquet", index=False)
    return root


@pytest.mark.parametrize("long_filter", ["category", "item"])
def test_same_as_in_process_path(spark, tmp_path, long_filter):
    """Both paths on one messy fixture: same users, I_long items, S_short, C'_short, short_hash and rejects."""
    loaders = pytest.importorskip("coea.data.parquet", reason="in-process loader not available")
    sequences = pytest.importorskip("coea.data.sequences", reason="in-process sequences not available")
    from types import SimpleNamespace

    from spark_jobs.build_sequences import build_sequences

    root = write_messy_fixture(tmp_path / "data")
    inter = loaders.load_parquet(root)
    cfg = SimpleNamespace(tau=2, long_filter=long_filter, short_k=3, max_long_len=4)
    ref = sequences.build_sequences(inter, cfg, cutoff=CUTOFF)
    counts = build_sequences(spark, str(root / "events.parquet"), str(root / "items.parquet"), str(tmp_path / "o"),
                             long_filter=long_filter, **PARAMS)
    got = {r["user_id"]: r for r in spark.read.parquet(counts["paths"]["sequences"]).collect()}

    expected = {}
    for i, user in enumerate(ref.user_ids):
        expected[user] = ([ref.item_vocab[j - 1] for j in ref.long_items[i]], ref.short_categories[i],
                          list(ref.c_short[i]), short_hash(ref.c_short[i]))
    actual = {u: (r["long_items"], r["short_categories"], r["c_short"], r["short_hash"]) for u, r in got.items()}
    assert actual == expected
    assert "u7" in actual and "u6" not in actual
    assert counts["rejected"] == inter.rejects.counts
    event_reasons = {"malformed_row", "bad_event_kind", "unknown_item", "duplicate_event"}
    assert counts["rejected"]["duplicate_event"] == 2
    assert counts["events"] - sum(counts["rejected"][r] for r in event_reasons) == len(inter.events)


def test_invalid_rows_are_counted_not_fatal(spark, tmp_path):
    """Integer item ids become "1"; a row with an unparseable rating is malformed and does not turn its valid twin
    (same user, item, time, kind) into a duplicate; the exact repeat is a duplicate. Same counts as the loader."""
    events = pd.DataFrame({"user_id": ["u1", None, "u1", "u1", "", "u1", "u1", "u1"],
                           "item_id": ["1", "1", None, "1", "1", "2", "1", "1"],
                           "timestamp": [1, 2, 3, 4, 5, 6, 1, 1],
                           "event": ["click", "click", "click", "purchase", "click", "click", "click", "click"],
                           "rating": ["abc", None, None, None, None, None, None, None]})
    items = pd.DataFrame({"item_id": [1, 2], "category": ["A", None]})  # item 2 has no category
    root = tmp_path / "data"
    root.mkdir()
    events.to_parquet(root / "events.parquet")
    items.to_parquet(root / "items.parquet")
    from spark_jobs.build_sequences import build_sequences

    counts = build_sequences(spark, str(root / "events.parquet"), str(root / "items.parquet"), str(tmp_path / "o"),
                             tau=1, long_filter="item", short_k=5, max_long_len=5)
    assert counts["rejected"] == {"bad_event_kind": 1, "duplicate_event": 1, "item_without_category": 1,
                                  "malformed_row": 4, "unknown_item": 1}
    assert counts["users"] == 1 and counts["clicks"] == 1
    loaders = pytest.importorskip("coea.data.parquet", reason="in-process loader not available")
    assert counts["rejected"] == loaders.load_parquet(root).rejects.counts
    with pytest.raises(ValueError, match="long_filter"):
        build_sequences(spark, "x", "y", "z", tau=1, long_filter="user", short_k=1, max_long_len=1)

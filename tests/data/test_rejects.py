"""Every reject reason is counted, written to the rejects file, and never crashes the load."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from coea.data.clean import clean_interactions, write_rejects
from coea.data.movielens import GENRES_100K, load_movielens_100k
from coea.data.parquet import load_parquet
from coea.data.schema import KEPT_REASONS, REJECT_REASONS


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES_100K)


@pytest.fixture
def bad_ml100k(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "u.data").write_text("\n".join([
        "1\t10\t5\t100",       # ok click
        "1\t10\t5\t100",       # duplicate_event
        "1\t11\t4\t90",        # out_of_order_timestamp (kept): before user 1's previous line
        "1\t10\t5",            # malformed_row: 3 fields
        "x\t10\t5\t101",       # malformed_row: user id
        "2\t10\t5\tsoon",      # malformed_row: timestamp
        "2\t10\tgood\t102",    # malformed_row: rating
        "2\t99\t5\t103",       # unknown_item: not in u.item
        "2\t13\t5\t104",       # unknown_item: item rejected (no category)
        "",                    # blank: skipped
        "3\t11\t2\t105",       # ok exposure; user 3's u.user line is malformed -> "unk" features
    ]) + "\n")
    (root / "u.item").write_text("\n".join([
        f"10|Ten (1990)||||{_flags('Drama')}",
        f"11|Eleven (1991)||||{_flags('Comedy', 'Drama')}",
        f"11|Eleven again||||{_flags('Comedy')}",          # duplicate_item
        f"13|Unknown||||{_flags('unknown')}",              # item_without_category
        "12|bad",                                          # malformed_item: field count
        f"14|Bad flags||||{_flags('Drama')[:-1]}x",        # malformed_item: flag is not 0/1
    ]) + "\n")
    (root / "u.user").write_text("\n".join([
        "1|24|M|technician|85711",
        "2|53|F|other|94043",
        "2|30|F|writer|10001",   # duplicate_user
        "3|x",                   # malformed_user: field count
        "abc|20|M|writer|1",     # malformed_user: id
        "4|40|F||",              # ok, empty occupation and zip -> "unk"; no events (cold start)
    ]) + "\n")
    return root


def test_every_reason_counted_and_written(bad_ml100k, tmp_path):
    inter = load_movielens_100k(bad_ml100k)
    rj = inter.rejects
    assert rj.counts == {"malformed_row": 4, "duplicate_event": 1, "unknown_item": 2, "duplicate_item": 1,
                         "item_without_category": 1, "malformed_item": 2, "duplicate_user": 1,
                         "malformed_user": 2}
    assert rj.kept == {"out_of_order_timestamp": 1}
    ev = inter.events
    assert list(zip(ev["user_id"], ev["item_id"], ev["timestamp"], ev["event"])) == [
        ("1", "11", 90, "click"), ("1", "10", 100, "click"), ("3", "11", 105, "exposure")]
    users = inter.users.set_index("user_id")
    assert sorted(users.index) == ["1", "2", "3", "4"]
    assert users.loc["3"].tolist() == ["unk"] * 4
    assert users.loc["4"].tolist() == ["35-44", "F", "unk", "unk"]

    summary = write_rejects(rj, tmp_path / "rejects.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in lines} == set(rj.counts) | set(rj.kept)
    assert all(set(r) == {"source", "line", "reason", "row", "kept"} for r in lines)
    dup = next(r for r in lines if r["reason"] == "duplicate_event")
    assert (dup["source"], dup["line"], dup["row"], dup["kept"]) == ("u.data", 2, "1\t10\t5\t100", False)
    late = next(r for r in lines if r["reason"] == "out_of_order_timestamp")
    assert (late["line"], late["kept"]) == (3, True)
    assert next(r for r in lines if r["row"] == "2\t10\t5\tsoon")["line"] == 6
    counts = json.loads((tmp_path / "rejects.jsonl.counts.json").read_text())
    assert counts == summary and counts["total"] == 14 and counts["rows_capped"] == 0
    assert set(counts["counts"]) <= set(REJECT_REASONS) and set(counts["kept"]) <= set(KEPT_REASONS)


def test_reject_rows_are_capped_but_counts_exact(bad_ml100k, tmp_path):
    inter = load_movielens_100k(bad_ml100k, max_reject_rows=1)
    assert inter.rejects.counts["malformed_row"] == 4
    assert sum(r["reason"] == "malformed_row" for r in inter.rejects.rows) == 1
    summary = write_rejects(inter.rejects, tmp_path / "r.jsonl")
    # Reasons with 2+ rows keep 1: malformed_row 4, unknown_item 2, malformed_item 2, malformed_user 2.
    assert summary["rows_capped"] == 3 + 1 + 1 + 1
    assert summary["rows_written"] == len(inter.rejects.counts) + len(inter.rejects.kept)


def test_parquet_bad_rows_and_event_kinds(tmp_path):
    events = pd.DataFrame({
        "user_id": ["a", "a", None, "b", "b", "b", "c"],
        "item_id": ["i1", "i2", "i1", "i1", "i1", "i1", "i1"],
        "timestamp": ["10", "11", "12", "abc", "1.5", "13", "-4"],
        "event": ["click", "purchase", "click", "click", "click", " exposure ", "click"],
        "rating": [np.nan] * 7,
    })
    items = pd.DataFrame({"item_id": ["i1", "i2"], "category": ["Jazz", "Blues"]})
    root = tmp_path / "pq"
    root.mkdir()
    events.to_parquet(root / "events.parquet")
    items.to_parquet(root / "items.parquet")
    inter = load_parquet(root)
    assert inter.rejects.counts == {"bad_event_kind": 1, "malformed_row": 4}
    assert inter.events[["user_id", "event"]].values.tolist() == [["a", "click"], ["b", "exposure"]]
    assert list(inter.users.columns) == ["user_id"]  # no users.parquet: ids only
    sources = {r["source"] for r in inter.rejects.rows}
    assert sources == {"events.parquet"}


def test_clean_handles_odd_python_values():
    events = pd.DataFrame({
        "user_id": [1, 2.0, True, "u"],
        "item_id": ["x", "x", "x", ["x"]],
        "timestamp": [5, 6, 7, 8],
        "event": ["click", "click", "click", "click"],
    })
    items = pd.DataFrame({"item_id": ["x"], "category": ["Jazz"]})
    inter = clean_interactions(events, items, None)
    assert inter.events["user_id"].tolist() == ["1", "2"]
    assert inter.rejects.counts == {"malformed_row": 2}
    assert np.isnan(inter.events["rating"]).all()

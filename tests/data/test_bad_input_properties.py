"""Property tests: no event file crashes a load; every line is either kept or counted with a reason.

Event files mix valid rows with wrong types, wrong field counts, empty lines, huge ids, non-UTF-8 bytes,
duplicates and out-of-order timestamps (MovieLens text layout, so raw bytes reach the parser), and Parquet logs
with wrong column types, nulls and missing columns.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coea.data.movielens import load_movielens_100k
from coea.data.parquet import load_parquet
from coea.data.schema import DataError

EVENT_REASONS = {"malformed_row", "bad_event_kind", "unknown_item", "duplicate_event"}
ITEMS = "1|Toy Story (1995)||||" + "|".join(["0"] * 3 + ["1"] + ["0"] * 15) + "\n" + \
        "2|GoldenEye (1995)||||" + "|".join(["0", "1"] + ["0"] * 17) + "\n"
USERS = "1|24|M|technician|85711\n2|53|F|other|94043\n"
GENRES = "\n".join(f"{g}|{i}" for i, g in enumerate(
    ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
     "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]))

valid_line = st.builds(lambda u, i, r, t: f"{u}\t{i}\t{r}\t{t}".encode(), st.sampled_from(["1", "2"]),
                       st.sampled_from(["1", "2", "3"]), st.integers(1, 5), st.integers(8e8, 9e8))
garbage_line = st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b),
    st.builds(lambda u, t: f"{u}\t1\t4\t{t}".encode(), st.sampled_from(["x", "", "1e400", str(2**80), "-1"]),
              st.sampled_from(["nan", "soon", "", "1.5", str(2**70)])),
    st.just(b"1\t1\t4"), st.just(b"1\t1\t4\t880000000\textra"), st.just(b"\xff\xfe\t1\t5\t880000000"),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(valid_line, garbage_line), max_size=30), dupes=st.integers(0, 3))
def test_movielens_text_never_crashes_and_conserves_lines(tmp_path_factory, lines, dupes):
    root = tmp_path_factory.mktemp("ml")
    lines = lines + lines[:dupes]  # exact duplicates; order is random, so timestamps go backwards too
    (root / "u.data").write_bytes(b"\n".join(lines) + (b"\n" if lines else b""))
    (root / "u.item").write_text(ITEMS, encoding="latin-1")
    (root / "u.user").write_text(USERS)
    (root / "u.genre").write_text(GENRES)
    data_lines = [ln for ln in lines if ln.decode("latin-1").strip()]  # blank lines carry no data: skipped
    if data_lines and not any(ln.count(b"\t") == 3 for ln in data_lines):
        with pytest.raises(DataError, match="wrong format"):  # not a u.data file at all: one clear line
            load_movielens_100k(root)
        return
    inter = load_movielens_100k(root)
    rejected = sum(n for reason, n in inter.rejects.counts.items() if reason in EVENT_REASONS)
    assert len(inter.events) + rejected == len(data_lines)
    assert inter.events["item_id"].isin(inter.items["item_id"]).all()
    assert inter.events["timestamp"].is_monotonic_increasing
    assert not inter.events.duplicated(["user_id", "item_id", "timestamp", "event", "rating"]).any()


cell = st.one_of(st.none(), st.integers(-(2**62), 2**62), st.text(max_size=8), st.floats(allow_nan=True))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(cell, cell, cell, st.sampled_from(["click", "exposure", "view", None, 3])),
                     max_size=25),
       drop=st.sampled_from([None, "user_id", "timestamp"]))
def test_parquet_logs_with_bad_types_never_crash(tmp_path_factory, rows, drop):
    root = tmp_path_factory.mktemp("pq")
    cols = {"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "timestamp": [r[2] for r in rows],
            "event": [r[3] for r in rows]}
    if drop:
        cols.pop(drop)
    # every column as strings (Parquet needs one type per column): the loader must parse them itself
    table = pa.table({k: pa.array([None if v is None else str(v) for v in vals], pa.string())
                      for k, vals in cols.items()})
    pq.write_table(table, root / "events.parquet")
    pd.DataFrame({"item_id": ["1", "2"], "category": ["Jazz", "Opera"]}).to_parquet(root / "items.parquet")
    if drop:
        with pytest.raises(DataError) as err:
            load_parquet(root)
        assert drop in str(err.value) and "\n" not in str(err.value)
        return
    inter = load_parquet(root)
    rejected = sum(n for reason, n in inter.rejects.counts.items() if reason in EVENT_REASONS)
    assert len(inter.events) + rejected == len(rows)


def test_empty_event_file_is_a_clean_load(tmp_path):
    (tmp_path / "u.data").write_bytes(b"")
    (tmp_path / "u.item").write_text(ITEMS, encoding="latin-1")
    (tmp_path / "u.user").write_text(USERS)
    (tmp_path / "u.genre").write_text(GENRES)
    inter = load_movielens_100k(tmp_path)
    assert len(inter.events) == 0

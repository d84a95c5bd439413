"""MovieLens 100K (the real data set and the original archive's layout) and 1M, on tiny files the tests write."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from coea.config import DataConfig, SyntheticConfig
from coea.data.loaders import load_interactions
from coea.data.movielens import GENRES_100K, load_movielens_100k, load_movielens_1m, most_specific_genre
from coea.data.schema import EVENT_COLUMNS, DataError


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES_100K)


def write_ml100k(root, *, data_lines, item_lines, user_lines, genre=False):
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.data").write_bytes(("\n".join(data_lines) + "\n").encode("latin-1"))
    (root / "u.item").write_bytes(("\n".join(item_lines) + "\n").encode("latin-1"))
    (root / "u.user").write_bytes(("\n".join(user_lines) + "\n").encode("latin-1"))
    if genre:
        (root / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES_100K)) + "\n")
    return root


def test_real_100k_loads(ml100k_path):
    t0 = time.perf_counter()
    inter = load_movielens_100k(ml100k_path)
    seconds = time.perf_counter() - t0
    ev, rj = inter.events, inter.rejects
    assert len(inter.users) == 943
    # Items 267 and 1373 carry only the "unknown" genre: rejected, with their 10 ratings.
    assert len(inter.items) == 1682 - 2 and rj.counts["item_without_category"] == 2
    event_rejects = sum(n for r, n in rj.counts.items() if r not in ("item_without_category",))
    assert rj.counts == {"item_without_category": 2, "unknown_item": event_rejects}
    assert len(ev) == 100_000 - event_rejects
    n_click, n_exposure = (ev["event"] == "click").sum(), (ev["event"] == "exposure").sum()
    assert n_click + n_exposure == len(ev)
    assert n_click == (ev["rating"] >= 4).sum() and n_exposure == (ev["rating"] < 4).sum() > 0
    assert list(ev.columns) == list(EVENT_COLUMNS)
    assert ev.equals(ev.sort_values(["timestamp", "user_id", "item_id"], kind="mergesort"))
    assert rj.kept["out_of_order_timestamp"] > 0  # u.data is not chronological per user: kept, noted
    assert len(inter.categories) == 18 and "unknown" not in inter.categories
    assert inter.item_category["1"] == "Animation"  # Toy Story: Animation (40) < Children's < Comedy
    assert list(inter.users.columns) == ["user_id", "age_bucket", "gender", "occupation", "zip_prefix"]
    assert seconds < 10, seconds


def test_most_specific_genre_hand_example():
    genres = ["unknown", "Action", "Comedy", "Romance"]
    flags = np.array([
        [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 0],  # Action 3, Comedy 5,
        [0, 1, 0, 1],  # Romance 3: Action|Romance ties at 3 -> Action (u.genre order)
        [1, 0, 0, 0],  # unknown only -> no category
        [1, 0, 0, 1],  # unknown never wins
    ], dtype=bool)
    assert most_specific_genre(flags, genres) == [
        "Action", "Action", "Action", "Romance", "Romance", "Comedy", "Action", None, "Romance"]


def test_original_archive_layout_with_filled_columns(tmp_path):
    root = write_ml100k(
        tmp_path / "ml-100k",
        data_lines=["1\t10\t5\t881250949", "1\t11\t3\t881250950", "2\t12\t4\t881250951", "2\t13\t5\t881250952",
                    "3\t10\t1\t881250953"],
        item_lines=[
            f"10|Café Olé (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Caf%E9|{_flags('Action', 'Comedy')}",
            f"11|GoldenEye (1995)|01-Jan-1995|01-Feb-1996|http://us.imdb.com/M/title-exact?GoldenEye|"
            f"{_flags('Action', 'Thriller')}",
            f"12|Toy Story (1995)|01-Jan-1995||http://x|{_flags('Comedy')}",
            f"13|unknown|||http://y|{_flags('unknown')}",
        ],
        user_lines=["1|24|M|technician|85711", "2|53|F|other|T8H1N"],  # user 3 is not in u.user
        genre=True,
    )
    inter = load_movielens_100k(root, click_min_rating=4)
    items = inter.items.set_index("item_id")
    assert items.loc["10", "title"] == "Café Olé (1995)"  # latin-1 decoded
    # Catalogue counts: Action 2, Comedy 2, Thriller 1 -> item 10 Action (tie, genre order), 11 Thriller.
    assert inter.item_category == {"10": "Action", "11": "Thriller", "12": "Comedy"}
    assert inter.rejects.counts == {"item_without_category": 1, "unknown_item": 1}
    ev = inter.events
    assert ev["event"].tolist() == ["click", "exposure", "click", "exposure"]
    assert ev["rating"].tolist() == [5.0, 3.0, 4.0, 1.0]
    users = inter.users.set_index("user_id")
    assert users.loc["1"].tolist() == ["18-24", "M", "technician", "8"]
    assert users.loc["2", "zip_prefix"] == "T" and users.loc["2", "age_bucket"] == "50-55"
    assert users.loc["3"].tolist() == ["unk"] * 4  # event user missing from u.user


def test_1m_layout(tmp_path):
    root = tmp_path / "ml-1m"
    root.mkdir()
    (root / "ratings.dat").write_bytes(b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
                                       b"2::5::2::978299000\n")
    (root / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "914::My Fair Lady (1964)::Musical|Romance\n"
        "5::Père (1995)::Comedy|Drama\n".encode("latin-1"))
    (root / "users.dat").write_bytes(b"1::F::1::10::48067\n2::M::56::16::70072\n")
    inter = load_movielens_1m(root)
    # Counts: Drama 2, Musical 2, Animation 1, Children's 1, Comedy 1, Romance 1.
    assert inter.item_category == {"1193": "Drama", "661": "Animation", "914": "Romance", "5": "Comedy"}
    assert inter.items.set_index("item_id").loc["5", "title"] == "Père (1995)"
    assert inter.events["event"].tolist() == ["click", "exposure", "click", "exposure"]
    assert inter.events["user_id"].tolist() == ["2", "2", "1", "1"]  # sorted by timestamp
    users = inter.users.set_index("user_id")
    assert users.loc["1"].tolist() == ["under18", "F", "K-12 student", "4"]
    assert users.loc["2"].tolist() == ["56+", "M", "self-employed", "7"]
    assert inter.rejects.total == 0


def test_load_interactions_dispatches(tmp_path):
    root = tmp_path / "ml-1m"
    root.mkdir()
    (root / "ratings.dat").write_text("1::1::5::10\n")
    (root / "movies.dat").write_text("1::A (1990)::Drama\n")
    (root / "users.dat").write_text("1::F::25::3::1\n")
    data = DataConfig(source="movielens-1m", path=str(root))
    inter = load_interactions(data, SyntheticConfig(), seed=0)
    assert len(inter.events) == 1 and inter.categories == ["Drama"]


@pytest.mark.parametrize("source, missing", [("movielens-100k", "u.data"), ("movielens-1m", "ratings.dat"),
                                             ("parquet", "events.parquet")])
def test_missing_file_is_a_one_line_data_error(tmp_path, source, missing):
    data = DataConfig(source=source, path=str(tmp_path))
    with pytest.raises(DataError) as exc:
        load_interactions(data, SyntheticConfig(), seed=0)
    msg = str(exc.value)
    assert missing in msg and "\n" not in msg and isinstance(exc.value, ValueError)


def test_wrong_format_is_a_data_error(tmp_path):
    root = write_ml100k(tmp_path, data_lines=["1,10,5,881250949", "1,11,3,881250950"],
                        item_lines=[f"10|A||||{_flags('Drama')}"], user_lines=["1|24|M|x|1"])
    with pytest.raises(DataError, match="u.data: wrong format"):
        load_movielens_100k(root)
    root = write_ml100k(tmp_path, data_lines=["1\t10\t5\t881250949"], item_lines=["10|A|Drama"],
                        user_lines=["1|24|M|x|1"])
    with pytest.raises(DataError, match="u.item: wrong format"):
        load_movielens_100k(root)


def test_events_frame_types(ml100k_path):
    ev = load_movielens_100k(ml100k_path).events
    assert ev["timestamp"].dtype == np.int64 and ev["rating"].dtype == np.float64
    assert pd.api.types.is_string_dtype(ev["user_id"]) and pd.api.types.is_string_dtype(ev["item_id"])

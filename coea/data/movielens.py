"""MovieLens 100K and 1M in the GroupLens layouts (docs/data.md, "MovieLens").

100K: ``u.data`` (tab: user, item, rating, timestamp), ``u.item`` (``|``: id, title, release date, video release
date, URL, one 0/1 flag per genre in ``u.genre`` order), ``u.user`` (``|``: id, age, gender, occupation, zip),
``u.genre`` (optional; ``name|index``). 1M: ``ratings.dat``, ``movies.dat`` (``id::title::Genre1|Genre2``),
``users.dat`` (``id::gender::age-code::occupation-code::zip``). All files are latin-1.

- Click rule: ``rating >= click_min_rating`` -> ``"click"``; lower -> ``"exposure"`` (shown, not liked); the rating
  is kept.
- Category of a multi-genre movie: its most specific genre, i.e. the flagged genre with the fewest movies in the
  catalogue, ties broken by the genre order above. ``unknown`` never counts; a movie with no other genre has no
  category and is rejected (``item_without_category``), its events with it (``unknown_item``).
- Sparse features: ``age_bucket`` (the 1M age groups), ``gender``, ``occupation`` (1M codes mapped to names),
  ``zip_prefix`` (first character of the zip code).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from coea.data.clean import LINE, RAW, SOURCE, clean_interactions, read_delimited, require_file
from coea.data.schema import UNKNOWN_FEATURE, DataError, Interactions, RejectReport

ENCODING = "latin-1"
ID_PATTERN = r"\d+"

# u.genre of the GroupLens archive (1M uses the same names without "unknown").
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
NO_GENRE = ("unknown", "(no genres listed)")
# 1M README: age groups (code -> bucket) and occupation codes.
AGE_BUCKETS_1M = {"1": "under18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55",
                  "56": "56+"}
OCCUPATIONS_1M = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)
FEATURES = ("age_bucket", "gender", "occupation", "zip_prefix")


def load_movielens_100k(path: str | Path, *, click_min_rating: float = 4.0,
                        max_reject_rows: int = 0) -> Interactions:
    """Load MovieLens 100K from a directory with ``u.data``, ``u.item``, ``u.user`` (and optionally ``u.genre``).

    Raises:
        DataError: a file is missing or no line of it has the expected layout.
    """
    root = Path(path)
    rejects = RejectReport(max_rows_per_reason=max_reject_rows)
    genres = _read_genres(root / "u.genre") if (root / "u.genre").is_file() else list(GENRES_100K)
    data_file = require_file(root / "u.data", "MovieLens 100K ratings: user<TAB>item<TAB>rating<TAB>timestamp")
    events = read_delimited(data_file, "\t", 4, encoding=ENCODING, rejects=rejects, reason="malformed_row")
    events = events.rename(columns={0: "user_id", 1: "item_id", 2: "rating", 3: "timestamp"})

    item_file = require_file(root / "u.item", "MovieLens 100K items: id|title|dates|url|genre flags")
    raw = read_delimited(item_file, "|", 5 + len(genres), encoding=ENCODING, rejects=rejects, reason="malformed_item")
    flags = raw[list(range(5, 5 + len(genres)))]
    well_formed = flags.isin(["0", "1"]).all(axis=1).to_numpy()
    items = pd.DataFrame({"item_id": raw[0], "title": raw[1], SOURCE: raw[SOURCE], LINE: raw[LINE], RAW: raw[RAW]})
    # Malformed flags: blank the id so the shared cleaning rejects the row as malformed_item.
    items.loc[~well_formed, "item_id"] = None
    items["category"] = most_specific_genre((flags.to_numpy() == "1") & well_formed[:, None], genres)

    user_file = require_file(root / "u.user", "MovieLens 100K users: id|age|gender|occupation|zip")
    u = read_delimited(user_file, "|", 5, encoding=ENCODING, rejects=rejects, reason="malformed_user")
    users = pd.DataFrame({
        "user_id": u[0],
        "age_bucket": [_age_bucket(a) for a in u[1]],
        "gender": u[2],
        "occupation": u[3],
        "zip_prefix": [_zip_prefix(z) for z in u[4]],
        SOURCE: u[SOURCE], LINE: u[LINE], RAW: u[RAW],
    })
    return clean_interactions(events, items, users, rejects=rejects, click_min_rating=click_min_rating,
                              id_pattern=ID_PATTERN)


def load_movielens_1m(path: str | Path, *, click_min_rating: float = 4.0, max_reject_rows: int = 0) -> Interactions:
    """Load MovieLens 1M from a directory with ``ratings.dat``, ``movies.dat``, ``users.dat``.

    Raises:
        DataError: a file is missing or no line of it has the expected layout.
    """
    root = Path(path)
    rejects = RejectReport(max_rows_per_reason=max_reject_rows)
    ratings = require_file(root / "ratings.dat", "MovieLens 1M ratings: user::item::rating::timestamp")
    events = read_delimited(ratings, "::", 4, encoding=ENCODING, rejects=rejects, reason="malformed_row")
    events = events.rename(columns={0: "user_id", 1: "item_id", 2: "rating", 3: "timestamp"})

    movies = require_file(root / "movies.dat", "MovieLens 1M movies: id::title::Genre1|Genre2")
    raw = read_delimited(movies, "::", 3, encoding=ENCODING, rejects=rejects, reason="malformed_item")
    listed = [[g.strip() for g in str(s).split("|") if g.strip()] for s in raw[2]]
    known = [g for g in GENRES_100K]
    extra = sorted({g for gs in listed for g in gs} - set(known))  # genres outside the README list: after it
    genres = known + extra
    index = {g: i for i, g in enumerate(genres)}
    flags = np.zeros((len(raw), len(genres)), dtype=bool)
    for row, gs in enumerate(listed):
        flags[row, [index[g] for g in gs]] = True
    items = pd.DataFrame({"item_id": raw[0], "title": raw[1], SOURCE: raw[SOURCE], LINE: raw[LINE], RAW: raw[RAW]})
    items["category"] = most_specific_genre(flags, genres)

    user_file = require_file(root / "users.dat", "MovieLens 1M users: id::gender::age::occupation::zip")
    u = read_delimited(user_file, "::", 5, encoding=ENCODING, rejects=rejects, reason="malformed_user")
    users = pd.DataFrame({
        "user_id": u[0],
        "age_bucket": [AGE_BUCKETS_1M.get(a.strip(), UNKNOWN_FEATURE) for a in u[2]],
        "gender": u[1],
        "occupation": [_occupation_1m(o) for o in u[3]],
        "zip_prefix": [_zip_prefix(z) for z in u[4]],
        SOURCE: u[SOURCE], LINE: u[LINE], RAW: u[RAW],
    })
    return clean_interactions(events, items, users, rejects=rejects, click_min_rating=click_min_rating,
                              id_pattern=ID_PATTERN)


def most_specific_genre(flags: np.ndarray, genres: list[str] | tuple[str, ...]) -> list[str | None]:
    """Each movie's most specific genre: its flagged genre with the fewest movies, ties by genre order.

    Args:
        flags: (n_movies, n_genres) bool, row = a movie's genre flags.
        genres: (n_genres,) names in catalogue order.

    Returns:
        (n_movies,) genre names; ``None`` when a movie has no genre other than ``unknown``.

    Example: counts Action 3, Comedy 5, Romance 3; a movie flagged Comedy|Romance -> Romance (3 < 5); flagged
    Action|Romance -> Action (tie at 3, Action comes first).
    """
    flags = np.asarray(flags, dtype=bool).copy()
    usable = np.array([g not in NO_GENRE for g in genres], dtype=bool)
    flags &= usable[None, :]
    counts = flags.sum(axis=0)  # (G,) movies per genre in the catalogue
    n_genres = len(genres)
    key = counts.astype(np.int64) * n_genres + np.arange(n_genres)  # fewest movies, then genre order
    key = np.where(flags, key[None, :], np.iinfo(np.int64).max)  # (N, G)
    best = key.argmin(axis=1)
    has = flags.any(axis=1)
    return [genres[b] if h else None for b, h in zip(best, has)]


def _read_genres(path: Path) -> list[str]:
    lines = [ln for ln in path.read_bytes().decode(ENCODING).splitlines() if ln.strip()]
    try:
        pairs = sorted((int(ln.rsplit("|", 1)[1]), ln.rsplit("|", 1)[0]) for ln in lines)
    except (IndexError, ValueError):
        raise DataError(f"{path}: wrong format, expected lines 'name|index'") from None
    return [name for _, name in pairs]


def _age_bucket(text: str) -> str:
    """100K ages -> the 1M age groups, so both data sets share one vocabulary."""
    try:
        age = int(text.strip())
    except ValueError:
        return UNKNOWN_FEATURE
    for upper, bucket in ((18, "under18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"),
                          (56, "50-55")):
        if age < upper:
            return bucket
    return "56+"


def _occupation_1m(code: str) -> str:
    code = code.strip()
    return OCCUPATIONS_1M[int(code)] if code.isdigit() and int(code) < len(OCCUPATIONS_1M) else UNKNOWN_FEATURE


def _zip_prefix(text: str) -> str:
    text = text.strip().upper()
    return text[0] if text else UNKNOWN_FEATURE

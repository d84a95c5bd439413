"""An MTRec-shaped synthetic click log of any size, written day partition by day partition in bounded memory.

``coea world --users N --categories C --days D --out DIR`` (docs/scale.md). The layout is the live log's
(coea/data/partitions.py, docs/data.md "Live logs")::

    DIR/items.parquet                               item_id (int64), category, title
    DIR/users.parquet                               user_id (int64), feature_0 .. feature_{F-1}
    DIR/ground_truth.parquet                        user_id, latent_group, latent_interests, discovery_day (lists;
                                                    day index from 0, -1 = not discovered)
    DIR/events/date=YYYY-MM-DD/part-CCCCC.parquet   the clicks of user chunk CCCCC on that day
    DIR/events/date=YYYY-MM-DD/_SUCCESS             written after the day's last chunk
    DIR/world.json                                  the spec, per-day counts, and what was written

Days are the outer loop and user chunks the inner one: a day is complete (``_SUCCESS``) before the next one is
generated, as a live log grows, and at most one chunk's events (``chunk_users`` users x one day) is ever in memory.
The per-user state carried across days (group, latent interests, how many are discovered, the drift focus) is a
few bytes per user, O(users), never O(events).

The model is :mod:`coea.data.synthetic`'s (groups with core categories, latent interests discovered day by day,
short-term drift, the same :data:`~coea.data.synthetic.CLICK_PROB` and :data:`~coea.data.synthetic.EXPOSURE_WEIGHT`)
with its exposure step integrated out: instead of drawing ~15x more exposures and thinning them by the click
probability, clicks are drawn directly from the clicked-category distribution, which is proportional to
``EXPOSURE_WEIGHT[kind] * CLICK_PROB[kind]`` (core, discovered latent, other; an undiscovered latent interest
is never clicked). Per user and day the click count is Poisson(``clicks_per_user / days``); with probability
``drift / 2`` a click goes to the user's drift focus (a category clicked on the user's previous active day,
the "half of a drifting session" of the synthetic world). **Only clicks are written** (no exposure rows): the
Relevance update samples its negatives (docs/cycle.md), as it does for click-only logs.

Ids are integers (the Parquet source reads them as their decimal strings). The output is a deterministic
function of the spec (seed and ``chunk_users`` included: each (day, chunk) draws from its own seeded generator).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from coea.data.mtrec import MTREC, MTREC_CLICKS_PER_USER
from coea.data.partitions import EVENTS_DIR, PARTITION_KEY, SUCCESS, day_start
from coea.data.synthetic import CLICK_PROB, EXPOSURE_WEIGHT, FEATURE_AGREEMENT, category_names

DAY = 86_400
#: clicked-category weight of each kind: exposure weight x click probability (the exposure step integrated out)
CLICK_WEIGHT = {"core": EXPOSURE_WEIGHT["core"] * CLICK_PROB["core"],
                "latent": EXPOSURE_WEIGHT["latent"] * CLICK_PROB["latent"],
                "other": EXPOSURE_WEIGHT["other"] * CLICK_PROB["other"]}


@dataclass(frozen=True)
class WorldSpec:
    """What ``coea world`` generates; every field is a flag of the command (``--users`` = ``users``, ...)."""

    users: int
    categories: int = MTREC["categories"]
    days: int = MTREC["days"]
    items: int = MTREC["items"]
    clicks_per_user: float = MTREC_CLICKS_PER_USER
    groups: int = 100
    categories_per_group: int = 8
    latent_per_user: int = 3
    drift: float = 0.3
    discover_prob: float = 0.1
    user_features: int = 3
    chunk_users: int = 50_000
    seed: int = 0
    first_day: str = "2024-01-01"

    def check(self) -> None:
        """Raise ValueError naming the first bad field."""
        positive = ("users", "categories", "days", "items", "groups", "categories_per_group", "chunk_users")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if self.categories < 2:
            raise ValueError(f"--categories must be >= 2 (got {self.categories})")
        if self.items < self.categories:
            raise ValueError(f"--items ({self.items}) must be at least --categories ({self.categories})")
        if self.categories_per_group + self.latent_per_user >= self.categories:
            raise ValueError("--categories-per-group + --latent-per-user must leave some 'other' categories")
        if self.clicks_per_user < 0 or self.latent_per_user < 0 or self.user_features < 0:
            raise ValueError("--clicks-per-user, --latent-per-user and --user-features must be >= 0")
        if not (0 <= self.drift <= 1 and 0 <= self.discover_prob <= 1):
            raise ValueError("--drift and --discover-prob are probabilities in [0, 1]")
        dt.date.fromisoformat(self.first_day)


@dataclass
class WorldResult:
    """What :func:`write_world` wrote: per-day click counts, files, wall time."""

    path: Path
    clicks: int
    clicks_per_day: list[int]
    files: int
    wall_s: float


def item_layout(n_items: int, n_categories: int) -> tuple[np.ndarray, np.ndarray]:
    """(first item id, item count) per category: items are numbered category by category, the first
    ``n_items % n_categories`` categories get one item more."""
    count = np.full(n_categories, n_items // n_categories, dtype=np.int64)
    count[: n_items % n_categories] += 1
    return np.concatenate([[0], np.cumsum(count)[:-1]]), count


class _Users:
    """The per-user state carried from day to day (a few bytes per user)."""

    def __init__(self, spec: WorldSpec, rng: np.random.Generator) -> None:
        n, c = spec.users, spec.categories
        self.core = np.stack([rng.choice(c, spec.categories_per_group, replace=False)
                              for _ in range(spec.groups)]).astype(np.int32)  # (G, K) core categories
        self.core_mask = np.zeros((spec.groups, c), dtype=bool)  # (G, C)
        self.core_mask[np.arange(spec.groups)[:, None], self.core] = True
        self.group = rng.integers(0, spec.groups, n).astype(np.int32)  # (U,)
        lt = spec.latent_per_user
        self.latent = np.zeros((n, lt), dtype=np.int32)  # (U, Lt) discovery order, outside the group core
        for a in range(0, n, spec.chunk_users):  # vectorised per chunk: random keys, the Lt smallest non-core
            b = min(n, a + spec.chunk_users)
            keys = rng.random((b - a, c)) + self.core_mask[self.group[a:b]]  # core pushed above 1
            self.latent[a:b] = np.argpartition(keys, lt, axis=1)[:, :lt] if lt else self.latent[a:b]
        self.n_found = np.zeros(n, dtype=np.int16)  # (U,) latent interests discovered so far
        self.discovery_day = np.full((n, lt), -1, dtype=np.int16)  # (U, Lt)
        self.focus = np.full(n, -1, dtype=np.int32)  # (U,) drift focus: a category of the previous active day


def _day_chunk(spec: WorldSpec, st: _Users, day: int, a: int, b: int, item_first: np.ndarray,
               item_count: np.ndarray, t0: int) -> pa.Table:
    """The clicks of users [a, b) on day ``day`` (updates their carried state)."""
    rng = np.random.default_rng([spec.seed, 1 + day, a // spec.chunk_users])
    n, lt, c = b - a, spec.latent_per_user, spec.categories
    found = st.n_found[a:b]
    if day > 0 and lt:
        finds = (rng.random(n) < spec.discover_prob) & (found < lt)
        rows = np.flatnonzero(finds)
        st.discovery_day[a + rows, found[rows]] = day
        found[rows] += 1  # a view: updates st.n_found
    k = rng.poisson(spec.clicks_per_user / spec.days, n)  # (n,) clicks today
    u = np.repeat(np.arange(n), k)  # (T,) chunk-local user of each click
    total = len(u)
    group = st.group[a:b][u]  # (T,)
    m_core = spec.categories_per_group * CLICK_WEIGHT["core"]
    m_lat = found.astype(np.float64) * CLICK_WEIGHT["latent"]  # (n,)
    m_oth = (c - spec.categories_per_group - lt) * CLICK_WEIGHT["other"]
    r = rng.random(total) * (m_core + m_lat + m_oth)[u]  # (T,) which kind of category
    is_core = r < m_core
    is_lat = ~is_core & (r < m_core + m_lat[u])
    cat = np.empty(total, dtype=np.int32)
    cat[is_core] = st.core[group[is_core], rng.integers(0, spec.categories_per_group, int(is_core.sum()))]
    lat_rows = np.flatnonzero(is_lat)
    if len(lat_rows):
        pick = rng.integers(0, found[u[lat_rows]].astype(np.int64))
        cat[lat_rows] = st.latent[a + u[lat_rows], pick]
    other = np.flatnonzero(~is_core & ~is_lat)
    while len(other):  # uniform over the categories neither core nor latent for the user: draw and redraw
        draw = rng.integers(0, c, len(other)).astype(np.int32)
        bad = st.core_mask[group[other], draw]
        if lt:
            bad |= (st.latent[a + u[other]] == draw[:, None]).any(axis=1)
        cat[other[~bad]] = draw[~bad]
        other = other[bad]
    drift = (rng.random(total) < spec.drift / 2) & (st.focus[a:b][u] >= 0)
    cat[drift] = st.focus[a:b][u[drift]]
    item = item_first[cat] + (rng.random(total) * item_count[cat]).astype(np.int64)
    ts = t0 + day * DAY + rng.integers(0, DAY, total)
    order = np.lexsort((ts, u))  # per user chronological, users in id order
    u, item, ts, cat = u[order], item[order], ts[order], cat[order]
    active = np.flatnonzero(k)
    if len(active):  # tomorrow's drift focus: one of today's clicks, at random
        first = np.concatenate([[0], np.cumsum(k)[:-1]])[active]
        st.focus[a + active] = cat[first + (rng.random(len(active)) * k[active]).astype(np.int64)]
    return pa.table({
        "user_id": pa.array(a + u.astype(np.int64)),
        "item_id": pa.array(item),
        "timestamp": pa.array(ts.astype(np.int64)),
        "event": pa.array(["click"] * total, type=pa.string()),
    })


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_world(spec: WorldSpec, out: str | Path, *, progress=None) -> WorldResult:
    """Write the world of ``spec`` under ``out`` (layout in the module docstring); refuses a non-empty ``out``.

    Args:
        progress: optional callable ``(day_index, clicks_that_day)`` called after each complete day.
    """
    spec.check()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; coea world writes a new log")
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([spec.seed, 0])
    names = category_names(spec.categories)
    item_first, item_count = item_layout(spec.items, spec.categories)
    item_cat = np.repeat(np.arange(spec.categories), item_count)  # (V,)
    serial = np.arange(spec.items) - item_first[item_cat] + 1
    _write_atomic(pa.table({"item_id": pa.array(np.arange(spec.items, dtype=np.int64)),
                            "category": pa.array([names[i] for i in item_cat]),
                            "title": pa.array([f"{names[c]} #{s}" for c, s in zip(item_cat, serial)])}),
                  out / "items.parquet")
    st = _Users(spec, rng)
    users = {"user_id": pa.array(np.arange(spec.users, dtype=np.int64))}
    for f in range(spec.user_features):
        card = max(3, spec.groups // 2 + 1) + f
        typical = rng.integers(0, card, spec.groups)
        value = np.where(rng.random(spec.users) < FEATURE_AGREEMENT, typical[st.group],
                         rng.integers(0, card, spec.users))
        users[f"feature_{f}"] = pa.DictionaryArray.from_arrays(
            pa.array(value.astype(np.int32)), pa.array([f"f{f}_{v}" for v in range(card)])).cast(pa.string())
    _write_atomic(pa.table(users), out / "users.parquet")

    first = dt.date.fromisoformat(spec.first_day)
    t0 = day_start(first)
    per_day, files = [], 0
    for day in range(spec.days):
        part = out / EVENTS_DIR / f"{PARTITION_KEY}={(first + dt.timedelta(days=day)).isoformat()}"
        part.mkdir(parents=True)
        n_day = 0
        for a in range(0, spec.users, spec.chunk_users):
            b = min(spec.users, a + spec.chunk_users)
            table = _day_chunk(spec, st, day, a, b, item_first, item_count, t0)
            if table.num_rows:
                _write_atomic(table, part / f"part-{a // spec.chunk_users:05d}.parquet")
                files += 1
            n_day += table.num_rows
            del table
        (part / SUCCESS).touch()  # the day is complete only after its last chunk
        per_day.append(n_day)
        if progress is not None:
            progress(day, n_day)

    offsets = pa.array((np.arange(spec.users + 1) * spec.latent_per_user).astype(np.int32))
    _write_atomic(pa.table({
        "user_id": pa.array(np.arange(spec.users, dtype=np.int64)),
        "latent_group": pa.array(st.group.astype(np.int64)),
        "latent_interests": pa.ListArray.from_arrays(
            offsets, pa.DictionaryArray.from_arrays(pa.array(st.latent.ravel()), pa.array(names)).cast(pa.string())),
        "discovery_day": pa.ListArray.from_arrays(offsets, pa.array(st.discovery_day.ravel().astype(np.int32))),
    }), out / "ground_truth.parquet")
    wall = time.perf_counter() - t_start
    meta = {"spec": asdict(spec), "clicks": int(sum(per_day)), "clicks_per_day": per_day, "files": files,
            "events": "clicks only (no exposure rows)", "wall_s": round(wall, 3)}
    (out / "world.json").write_text(json.dumps(meta, indent=1) + "\n")
    return WorldResult(out, int(sum(per_day)), per_day, files, wall)

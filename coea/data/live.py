"""Reading a live log a round at a time: only the new files, only the needed columns, cleaned like every source.

The clock (coea/clock.py) decides *which span* a round covers; this module reads it (docs/data.md, "Live logs"):

- day partitions: :func:`read_event_files` reads the given files (the round's not-yet-consumed files of complete
  partitions) through pyarrow datasets, only the event columns, one file at a time (files may differ in
  schema: integer or string ids, a ``rating`` column or none). An unreadable file, or one without the required
  columns, is reported and never consumed: the round fails (exit 7) or, with ``data.on_unreadable:
  quarantine``, moves it aside (coea/data/delivery.py).
- one ``events.parquet``: :func:`read_event_window` pushes the timestamp filter down to pyarrow.
- :func:`clean_window` is :func:`coea.data.clean.clean_interactions` with the vocabulary's items as the
  catalogue (events on items that left items.parquet are still accepted) plus the live rule
  ``future_timestamp``: in a file a round consumes, an event at or after its watermark is rejected.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from coea.data.clean import (
    LINE, SOURCE, _clean_items, _clean_users, _complete_users, clean_interactions, note, to_seconds,
)
from coea.data.parquet import ITEMS_FILE, REQUIRED, USERS_FILE, read_table
from coea.data.partitions import LogFile, read_parquet_columns
from coea.data.schema import EVENT_COLUMNS, ITEM_COLUMNS, Interactions, RejectReport
from coea.data.vocab import VocabUpdate, Vocabulary

log = logging.getLogger("coea.data")


def read_tables(root: Path, rejects: RejectReport) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``items.parquet`` (item_id, category, title only) and ``users.parquet`` (all columns) cleaned.

    Raises:
        DataError: items.parquet is missing or unreadable (a round cannot run without its catalogue).
    """
    items = read_table(root / ITEMS_FILE, "item catalogue", ITEM_COLUMNS)
    items = _clean_items(items, rejects, None, ITEMS_FILE)
    users = None
    if (root / USERS_FILE).exists():
        users = _clean_users(read_table(root / USERS_FILE, "users"), rejects, None, USERS_FILE)
    return items, users


def read_event_files(events_dir: Path, files: list[LogFile]) -> tuple[pd.DataFrame, dict[str, int], dict[str, str]]:
    """Rows of ``files`` (event columns only) in file order, with ``_source`` = the file and ``_line`` = its row.

    Returns:
        (rows, rows per readable file, {file: reason} for every file skipped as unreadable).
    """
    frames, sizes, bad = [], {}, {}
    for f in files:
        try:
            frame = read_parquet_columns(events_dir / f.path, EVENT_COLUMNS, required=REQUIRED["events.parquet"])
        except Exception as exc:  # pyarrow raises several types for a broken file
            bad[f.path] = unreadable_reason(exc, events_dir / f.path)
            continue
        frame[SOURCE] = f.path
        frame[LINE] = np.arange(1, len(frame) + 1)
        frames.append(frame)
        sizes[f.path] = len(frame)
    if bad:
        log.warning("data: %d file(s) not readable: %s", len(bad),
                    "; ".join(f"{k} ({v})" for k, v in list(bad.items())[:3]))
    rows = pd.concat(frames, ignore_index=True) if frames else _no_rows()
    return rows, sizes, bad


def unreadable_reason(exc: BaseException, path: Path) -> str:
    """A short reason for a file pyarrow could not read: ``missing column(s) event (has ...)`` or
    ``not a readable Parquet file (ArrowInvalid: ...)``, without the path (messages name it once)."""
    text = (str(exc).splitlines() or [""])[0].replace(str(path), "<file>")
    if isinstance(exc, ValueError) and text.startswith("missing column"):
        return text[:300]
    return f"not a readable Parquet file ({type(exc).__name__}: {text[:160]})"


def read_event_window(path: Path, start: int | None, end: int, *, with_null: bool = False) -> pd.DataFrame:
    """Rows of one ``events.parquet`` with ``start <= timestamp < end`` (``with_null``: also rows without a
    usable timestamp, so round 0 reports them), filtered in pyarrow when the column is numeric or a timestamp."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet")
    expr = timestamp_filter(dataset.schema, start, end)
    if expr is None:  # strings or other types: parse in pandas (the cleaning path handles every format)
        frame = read_table(path, "event log", EVENT_COLUMNS)
        ts = to_seconds(frame["timestamp"])
        keep = (ts < end) & ((ts >= start) if start is not None else True)
        if with_null:
            keep |= ts.isna()
        return frame[keep.to_numpy()].reset_index(drop=True)
    if with_null:
        expr = expr | ds.field("timestamp").is_null()
    frame = read_parquet_columns(path, EVENT_COLUMNS, required=REQUIRED["events.parquet"], filter_expr=expr)
    frame = frame.reset_index(drop=True)
    frame[SOURCE] = path.name
    frame[LINE] = np.arange(1, len(frame) + 1)  # row of the filtered read (the file's row order is kept)
    return frame


def count_before(path: Path, ts: int) -> int | None:
    """Rows of one ``events.parquet`` with a timestamp before ``ts`` (None when the column cannot be filtered)."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet")
    expr = timestamp_filter(dataset.schema, None, ts)
    return None if expr is None else int(dataset.count_rows(filter=expr))


def event_days(path: Path) -> np.ndarray:
    """The sorted UTC day numbers (unix seconds // 86400) that hold a valid timestamp in one ``events.parquet``.

    Raises:
        ValueError / OSError / pyarrow.ArrowInvalid: the file is unreadable or has no ``timestamp`` column.
    """
    ts = to_seconds(read_parquet_columns(path, ("timestamp",), required=REQUIRED["events.parquet"])["timestamp"])
    return np.unique((ts.dropna().to_numpy(dtype=np.int64) // 86_400))


def timestamp_filter(schema, start: int | None, end: int):
    """A pyarrow expression ``start <= timestamp < end`` for a numeric or timestamp column, else None."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    if "timestamp" not in schema.names:
        return None
    tp = schema.field("timestamp").type
    field = ds.field("timestamp")
    if pa.types.is_integer(tp) or pa.types.is_floating(tp):
        lo, hi = start, end
    elif pa.types.is_timestamp(tp):
        unit_tz = pa.timestamp("s", tz=tp.tz)

        def at(x):
            return pa.scalar(int(x), type=unit_tz).cast(tp)

        lo, hi = (at(start) if start is not None else None), at(end)
    else:
        return None
    expr = field < hi
    return expr & (field >= lo) if lo is not None else expr


def clean_window(raw: pd.DataFrame, vocab: Vocabulary, users: pd.DataFrame | None, rejects: RejectReport, *,
                 end: int) -> Interactions:
    """Clean one round's raw rows against the vocabulary (module docstring); events sorted as every source's.

    Returns:
        Interactions: ``events`` = the round's valid events, ``items`` = every vocabulary item (``active`` says
        which are in today's items.parquet), ``users`` = today's users table plus this round's event users,
        ``categories`` = the active categories (what may be proposed), ``rejects`` = this round's.
    """
    ts = to_seconds(raw["timestamp"]) if len(raw) else pd.Series(dtype="float64")
    future = (ts >= end).to_numpy()
    note(rejects, raw[future], "future_timestamp")
    catalogue = vocab.items_frame()[list(ITEM_COLUMNS)]
    inter = clean_interactions(raw[~future].reset_index(drop=True), catalogue, None, rejects=rejects,
                               source="events")
    table = users if users is not None else pd.DataFrame({"user_id": pd.Series(dtype=str)})
    return Interactions(events=inter.events, items=vocab.items_frame(),
                        users=_complete_users(table, inter.events["user_id"]),
                        categories=vocab.active_categories(), rejects=rejects)


def note_vocab_update(rejects: RejectReport, update: VocabUpdate) -> None:
    """Note items rows whose category differs from the item's vocabulary category (kept: the first one wins)."""
    rows = update.recategorised.assign(**{SOURCE: ITEMS_FILE})
    note(rejects, rows, "category_changed", kept=True)


def _no_rows() -> pd.DataFrame:
    cols = {c: pd.Series(dtype=object) for c in REQUIRED["events.parquet"]}
    return pd.DataFrame({**cols, SOURCE: pd.Series(dtype=object), LINE: pd.Series(dtype="int64")})

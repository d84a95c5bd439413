"""Parquet event logs: a directory with ``events.parquet`` (or ``events/`` day partitions, coea/data/partitions.py),
``items.parquet`` and optionally ``users.parquet``.

Columns (coea/data/schema.py, docs/data.md)::

    events.parquet  user_id, item_id, timestamp (unix seconds, integer; or a timestamp type), event
                    ("click" | "exposure"), rating (optional)
    items.parquet   item_id, category, title (optional)
    users.parquet   user_id, then one column per sparse feature (values read as strings)

Ids may be strings or integers (read as their decimal form). Bad rows are cleaned like every source's
(:func:`coea.data.clean.clean_interactions`); a missing file or a missing required column is a
:class:`~coea.data.schema.DataError`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from coea.data.clean import LINE, SOURCE, clean_interactions, require_file
from coea.data.partitions import is_partitioned, read_parquet_columns, scan_log
from coea.data.schema import EVENT_COLUMNS, DataError, Interactions, RejectReport

log = logging.getLogger("coea.data")

EVENTS_FILE, ITEMS_FILE, USERS_FILE = "events.parquet", "items.parquet", "users.parquet"
REQUIRED = {
    EVENTS_FILE: ("user_id", "item_id", "timestamp", "event"),
    ITEMS_FILE: ("item_id", "category"),
    USERS_FILE: ("user_id",),
}


def load_parquet(path: str | Path, *, max_reject_rows: int = 0) -> Interactions:
    """Load the whole log: ``events.parquet`` or every complete ``events/date=*`` partition (docs/data.md),
    ``items.parquet`` and (when present) ``users.parquet`` from ``path``.

    This is the static read (evaluation, replay, full rebuilds); the daily cycle reads only what is new
    (coea/data/live.py). Partitions without ``_SUCCESS`` are left out (logged).

    Raises:
        DataError: a required file is missing, unreadable, or lacks a required column.
    """
    root = Path(path)
    rejects = RejectReport(max_rows_per_reason=max_reject_rows)
    if is_partitioned(root):
        events = _read_partitions(root)
    else:
        events = _read(root / EVENTS_FILE, "event log")
    items = _read(root / ITEMS_FILE, "item catalogue")
    users = _read(root / USERS_FILE, "users") if (root / USERS_FILE).exists() else None
    return clean_interactions(events, items, users, rejects=rejects)


def _read_partitions(root: Path) -> pd.DataFrame:
    listing = scan_log(root)
    incomplete = [p.day.isoformat() for p in listing.partitions if not p.complete]
    if incomplete:
        log.warning("data: %d day partition(s) without _SUCCESS left out: %s", len(incomplete),
                    ", ".join(incomplete[:5]) + (" ..." if len(incomplete) > 5 else ""))
    frames = [read_table(listing.events_dir / f.path, "event log", EVENT_COLUMNS, source=f.path,
                         required=REQUIRED[EVENTS_FILE])
              for p in listing.partitions if p.complete for f in p.files]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in (*REQUIRED[EVENTS_FILE], SOURCE, LINE)})
    return pd.concat(frames, ignore_index=True)


def write_parquet(inter: Interactions, path: str | Path) -> Path:
    """Write ``inter`` as the three Parquet files :func:`load_parquet` reads; returns the directory."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    inter.events.to_parquet(root / EVENTS_FILE, index=False)
    inter.items.to_parquet(root / ITEMS_FILE, index=False)
    inter.users.to_parquet(root / USERS_FILE, index=False)
    return root


def read_table(path: Path, what: str, columns: tuple[str, ...] | None = None, *, source: str | None = None,
               required: tuple[str, ...] | None = None) -> pd.DataFrame:
    """One Parquet file as raw rows (``columns`` that are present, or all) plus the rejects-file bookkeeping.

    Raises:
        DataError: the file is missing, unreadable, or lacks a required column (one line naming the file).
    """
    require_file(path, what)
    try:
        frame = read_parquet_columns(path, columns)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
    need = REQUIRED.get(path.name, ()) if required is None else required
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(map(str, frame.columns))})")
    frame = frame.reset_index(drop=True)
    frame[SOURCE] = source or path.name
    frame[LINE] = range(1, len(frame) + 1)  # row number, 1-based, for the rejects file
    return frame


_read = read_table

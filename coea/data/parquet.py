"""Parquet event logs: a directory with ``events.parquet``, ``items.parquet`` and optionally ``users.parquet``.

Columns (coea/data/schema.py, docs/data.md)::

    events.parquet  user_id, item_id, timestamp (unix seconds, integer; or a timestamp type), event
                    ("click" | "exposure"), rating (optional)
    items.parquet   item_id, category, title (optional)
    users.parquet   user_id, then one column per sparse feature (values read as strings)

Ids may be strings or integers (read as their decimal form). Bad rows are cleaned like every source's
(:func:`coea.data.loaders.clean_interactions`); a missing file or a missing required column is a
:class:`~coea.data.schema.DataError`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from coea.data.loaders import LINE, SOURCE, clean_interactions, require_file
from coea.data.schema import DataError, Interactions, RejectReport

EVENTS_FILE, ITEMS_FILE, USERS_FILE = "events.parquet", "items.parquet", "users.parquet"
REQUIRED = {
    EVENTS_FILE: ("user_id", "item_id", "timestamp", "event"),
    ITEMS_FILE: ("item_id", "category"),
    USERS_FILE: ("user_id",),
}


def load_parquet(path: str | Path, *, max_reject_rows: int = 0) -> Interactions:
    """Load ``events.parquet``, ``items.parquet`` and (when present) ``users.parquet`` from ``path``.

    Raises:
        DataError: a required file is missing, unreadable, or lacks a required column.
    """
    root = Path(path)
    rejects = RejectReport(max_rows_per_reason=max_reject_rows)
    events = _read(root / EVENTS_FILE, "event log")
    items = _read(root / ITEMS_FILE, "item catalogue")
    users = _read(root / USERS_FILE, "users") if (root / USERS_FILE).exists() else None
    return clean_interactions(events, items, users, rejects=rejects)


def write_parquet(inter: Interactions, path: str | Path) -> Path:
    """Write ``inter`` as the three Parquet files :func:`load_parquet` reads; returns the directory."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    inter.events.to_parquet(root / EVENTS_FILE, index=False)
    inter.items.to_parquet(root / ITEMS_FILE, index=False)
    inter.users.to_parquet(root / USERS_FILE, index=False)
    return root


def _read(path: Path, what: str) -> pd.DataFrame:
    require_file(path, what)
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
    missing = [c for c in REQUIRED[path.name] if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(map(str, frame.columns))})")
    frame = frame.reset_index(drop=True)
    frame[SOURCE] = path.name
    frame[LINE] = range(1, len(frame) + 1)  # row number, 1-based, for the rejects file
    return frame

"""The live event log on disk: UTC day partitions, their completion markers, atomic writers, listing, reading.

Layout (contract 1; docs/data.md, "Live logs")::

    PATH/items.parquet                          item_id, category, title (optional); other columns ignored
    PATH/users.parquet                          user_id, one column per sparse feature (optional file)
    PATH/events.parquet                         EITHER one file of events
    PATH/events/date=YYYY-MM-DD/<any>.parquet   OR one Hive-style partition per UTC day

A day partition is **complete** when it holds an empty ``_SUCCESS`` file; a day without events is a partition
holding only ``_SUCCESS``. Files whose name starts with ``.`` or ``_`` are never data (writers' temp files,
markers), as in Hive and Spark. A partition holds the events that *arrived* that day: normally their timestamps
fall in the day, and a file added later to an already complete partition (or an event whose timestamp is older
than its partition) is how late events arrive. Writers use :func:`write_day`, which writes one file atomically
(temp name + rename) and then the marker; :func:`write_interactions` writes a whole data set in this layout.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from coea.data.schema import Interactions

log = logging.getLogger("coea.data")

DAY = 86_400
EVENTS_DIR, EVENTS_FILE, ITEMS_FILE, USERS_FILE = "events", "events.parquet", "items.parquet", "users.parquet"
SUCCESS = "_SUCCESS"
PARTITION_KEY = "date"
_PARTITION = re.compile(rf"^{PARTITION_KEY}=(\d{{4}}-\d{{2}}-\d{{2}})$")
REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "event")
ID_COLUMNS = ("user_id", "item_id")  # read as strings from the file's own type, never through float
EPOCH = dt.date(1970, 1, 1)


# ------------------------------------------------------------------------------------------------------ days


def day_of(ts: int) -> dt.date:
    """The UTC day of a unix timestamp."""
    return EPOCH + dt.timedelta(days=int(ts) // DAY)


def day_start(day: dt.date) -> int:
    """Unix seconds of 00:00:00 UTC of ``day``."""
    return (day - EPOCH).days * DAY


def parse_day(value: str | dt.date | dt.datetime | int) -> dt.date:
    """A UTC day from ``YYYY-MM-DD``, a date, a datetime (its UTC day) or unix seconds (their UTC day)."""
    if isinstance(value, dt.datetime):
        return (value.astimezone(dt.timezone.utc) if value.tzinfo else value).date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, (int, np.integer)):
        return day_of(int(value))
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"not a day (YYYY-MM-DD): {value!r}") from None


def utc(ts: int | None) -> str | None:
    """``2024-01-05T00:00:00Z`` for unix seconds (``None`` stays ``None``): how windows are logged."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class LogFile:
    """One data file of a day partition; ``path`` is relative to the events directory (``date=D/name``)."""

    path: str
    day: dt.date
    size: int
    mtime_ns: int = 0


@dataclass
class Partition:
    day: dt.date
    complete: bool
    files: list[LogFile]


@dataclass
class LogListing:
    """What :func:`scan_log` found under ``PATH/events``: partitions sorted by day, and what it ignored."""

    events_dir: Path
    partitions: list[Partition]
    ignored: list[str] = field(default_factory=list)  # paths that are neither partitions nor data files

    def by_day(self) -> dict[dt.date, Partition]:
        return {p.day: p for p in self.partitions}

    def complete_through(self, first: dt.date) -> dt.date | None:
        """The last day of the run of consecutive complete days starting at ``first`` (None: ``first`` is not
        complete). A day with no partition directory at all is not complete: a writer that has nothing for a
        day writes a partition holding only ``_SUCCESS``."""
        days = self.by_day()
        last, day = None, first
        while day in days and days[day].complete:
            last, day = day, day + dt.timedelta(days=1)
        return last


def is_partitioned(path: str | Path) -> bool:
    """True when ``path`` holds the partitioned layout (an ``events/`` directory)."""
    return (Path(path) / EVENTS_DIR).is_dir()


def scan_log(path: str | Path) -> LogListing:
    """List ``PATH/events``: every ``date=YYYY-MM-DD`` partition, whether it is complete, its data files.

    Data files are ``*.parquet`` files not starting with ``.`` or ``_``. Anything else (other names, files
    outside a partition, nested directories) is listed in ``ignored`` and logged once, never read.
    """
    events_dir = Path(path) / EVENTS_DIR
    partitions, ignored = [], []
    with os.scandir(events_dir) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            m = _PARTITION.match(entry.name)
            if not (entry.is_dir() and m):
                if not entry.name.startswith((".", "_")):
                    ignored.append(entry.name)
                continue
            try:
                day = dt.date.fromisoformat(m.group(1))
            except ValueError:
                ignored.append(entry.name)
                continue
            complete, files = False, []
            with os.scandir(entry.path) as inner:
                for f in sorted(inner, key=lambda e: e.name):
                    if f.name == SUCCESS:
                        complete = True
                    elif f.name.startswith((".", "_")):
                        continue
                    elif f.is_file() and f.name.endswith(".parquet"):
                        st = f.stat()
                        files.append(LogFile(f"{entry.name}/{f.name}", day, st.st_size, st.st_mtime_ns))
                    else:
                        ignored.append(f"{entry.name}/{f.name}")
            partitions.append(Partition(day, complete, files))
    if ignored:
        log.warning("data: ignored %d path(s) under %s that are not day partitions or data files: %s",
                    len(ignored), events_dir, ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else ""))
    return LogListing(events_dir, partitions, ignored)


# --------------------------------------------------------------------------------------------------- writing


def write_day(path: str | Path, day: str | dt.date | dt.datetime | int, events: pd.DataFrame, *,
              append: bool = False, name: str | None = None) -> Path:
    """Write one day of events as ``PATH/events/date=DAY/<name>`` and mark the day complete (``_SUCCESS``).

    The file is written under a temp name and renamed, then ``_SUCCESS`` is created, so a reader never sees a
    half-written file or a complete day with a file still missing. Empty ``events`` writes only the marker (a
    day without events).

    Args:
        path: the log directory (``data.path``).
        day: the UTC day of the partition (the day the events arrived).
        events: columns ``user_id, item_id, timestamp, event`` (+ ``rating``; other columns are kept and ignored
            by readers). Timestamps are unix seconds (or a datetime type); none may be at or after the end of
            ``day``. Older timestamps are allowed: those are late events.
        append: add another file to a partition that is already complete (late events). Without it, writing a
            complete day is an error, so a rerun of a writer cannot silently double a day.
        name: file name; default ``part-<8 hex>.parquet``.

    Returns:
        The partition directory.
    """
    day = parse_day(day)
    part = Path(path) / EVENTS_DIR / f"{PARTITION_KEY}={day.isoformat()}"
    missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"write_day: events lack column(s) {', '.join(missing)}")
    if (part / SUCCESS).exists() and not append:
        raise FileExistsError(f"{part} is already complete; pass append=True to add late events as a new file")
    frame = events.reset_index(drop=True).copy()
    if pd.api.types.is_datetime64_any_dtype(frame["timestamp"].dtype):
        ts = frame["timestamp"]
        if getattr(ts.dt, "tz", None) is not None:
            ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        frame["timestamp"] = ((ts - pd.Timestamp(0)) // pd.Timedelta(seconds=1)).astype("int64")
    if len(frame):
        ts = pd.to_numeric(frame["timestamp"], errors="coerce")
        end = day_start(day) + DAY
        if (ts >= end).any():
            raise ValueError(f"write_day: {int((ts >= end).sum())} event(s) have timestamps at or after the end of "
                             f"{day} (partitions hold events that arrived that day)")
    part.mkdir(parents=True, exist_ok=True)
    if len(frame):
        name = name or f"part-{uuid.uuid4().hex[:8]}.parquet"
        if name.startswith((".", "_")) or not name.endswith(".parquet"):
            raise ValueError(f"write_day: file name must end with .parquet and not start with . or _: {name!r}")
        if (part / name).exists():
            raise FileExistsError(f"{part / name} exists")
        tmp = part / f".{name}.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, part / name)
    (part / SUCCESS).touch()
    return part


def write_table(path: str | Path, name: str, frame: pd.DataFrame) -> Path:
    """Replace ``PATH/<name>`` (``items.parquet`` or ``users.parquet``) atomically: readers see old or new."""
    if name not in (ITEMS_FILE, USERS_FILE, EVENTS_FILE):
        raise ValueError(f"write_table: unknown table {name!r}")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp"
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, root / name)
    return root / name


def write_interactions(inter: Interactions, path: str | Path, *, first_day: str | dt.date | None = None,
                       through: str | dt.date | None = None, tables: bool = True) -> list[dt.date]:
    """Write a data set (e.g. the synthetic world) in the partitioned layout: tables, then one partition per day.

    Every UTC day from ``first_day`` (default: the day of the first event) through ``through`` (default: the day
    of the last event) gets a complete partition, days without events included. Returns the days written.
    ``tables=False`` leaves items.parquet / users.parquet alone (a writer appending days).
    """
    events = inter.events
    if tables:
        write_table(path, ITEMS_FILE, inter.items)
        write_table(path, USERS_FILE, inter.users)
    if not len(events) and (first_day is None or through is None):
        return []
    ts = events["timestamp"].to_numpy(dtype=np.int64)
    first = parse_day(first_day) if first_day is not None else day_of(int(ts.min()))
    last = parse_day(through) if through is not None else day_of(int(ts.max()))
    day_index = ts // DAY
    written = []
    day = first
    while day <= last:
        rows = events[day_index == (day - EPOCH).days]
        write_day(path, day, rows, name=f"part-{day.isoformat()}.parquet")
        written.append(day)
        day += dt.timedelta(days=1)
    return written


# --------------------------------------------------------------------------------------------------- reading


def read_parquet_columns(path: Path, columns: tuple[str, ...] | list[str] | None, required: tuple[str, ...] = (),
                         filter_expr=None) -> pd.DataFrame:
    """Read ``columns`` (those present; None = all) of one Parquet file through a pyarrow dataset, optionally
    filtered.

    Integer id columns (``user_id``, ``item_id``) are cast to strings in pyarrow, from the file's own type, so a
    null among int64 ids never turns them into float64 (where 1234567890123456789 and ...788 would collide).

    Raises:
        ValueError: a required column is missing (the message names them and what the file has).
        OSError / pyarrow.ArrowInvalid: the file is not readable Parquet.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet")
    present = set(dataset.schema.names)
    missing = [c for c in required if c not in present]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)} (has {', '.join(dataset.schema.names)})")
    names = dataset.schema.names if columns is None else [c for c in columns if c in present]
    table = dataset.to_table(columns=names, filter=filter_expr)
    for i, name in enumerate(table.column_names):
        if name in ID_COLUMNS and pa.types.is_integer(table.schema.field(name).type):
            table = table.set_column(i, name, table.column(name).cast(pa.string()))
    return table.to_pandas()

"""Reading a round's span of events: the live log (new files of complete day partitions, or one events.parquet)
or the static data set (replay). coea/round_data.py turns what these return into the round's data stage.

The clock (coea/clock.py) places the window; :func:`read_live` applies the delivery rules of coea/data/delivery.py
that act on files (unreadable files, changed consumed files, ``--reconsume``, quarantine) and records what it saw
of the log (the watermark and a gap) in state.json (docs/data.md, "Live logs" and "Delivery rules").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from coea.clock import (
    LogView, file_view, fix_round0_cutoff, live_round0_cutoff, partition_view, partition_watermark,
    pending_reconsume, record_log_view, recorded_round0_cutoff, replay_end, round_end, skipped_days,
)
from coea.config import Config
from coea.data.delivery import changed_files, load_ids, quarantine, registry_rows, selects
from coea.data.live import count_before, event_days, read_event_files, read_event_window, read_tables
from coea.data.partitions import DAY, EVENTS_DIR, EVENTS_FILE, day_start, is_partitioned, scan_log, utc
from coea.data.schema import DataError, Interactions, LiveDataError, RejectReport
from coea.rounds import cutoff, load_data, timeline
from coea.workdir import read_json, round_dir

log = logging.getLogger("coea.data")

STAGE = "data"
FILES = {"window": "window.json", "rejects": "rejects.jsonl", "state": "state", "vocab": "vocab",
         "consumed": "consumed.parquet", "events": "events.parquet", "users": "users.parquet",
         "spark": "spark_sequences.parquet"}


@dataclass
class Batch:
    """What a round reads before cleaning."""

    status: str
    start: int | None
    end: int
    watermark: int | None = None
    message: str = ""
    raw: pd.DataFrame | None = None  # live: raw event rows to clean
    static: Interactions | None = None  # replay: the whole data set
    items: pd.DataFrame | None = None  # cleaned items.parquet
    users: pd.DataFrame | None = None  # cleaned users table
    rejects: RejectReport = field(default_factory=RejectReport)
    registry: pd.DataFrame = field(default_factory=lambda: empty_registry())
    rows: int = 0  # raw rows read
    files: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    late_unconsumed: int = 0
    round0_cutoff: int | None = None
    rows_by_source: dict[str, int] = field(default_factory=dict)  # raw rows per file (the reject threshold)
    where: str = ""  # the events directory (or the log directory of one events.parquet), for messages
    view: LogView | None = None  # what the clock saw of the log (watermark, gap)
    quarantined: dict[str, str] = field(default_factory=dict)  # file -> where data.on_unreadable moved it
    reconsumed: list[str] = field(default_factory=list)  # consumed files read again on request (--reconsume)


def read_replay(cfg: Config, workdir: Path, k: int, until: int | None, registry: pd.DataFrame) -> Batch:
    full = load_data(cfg)
    data_end = timeline(full)[1] if len(full.events) else 0
    c0 = fix_round0_cutoff(workdir, "replay", cutoff(cfg, full, 0) if len(full.events) else 0)
    if k == 0:
        start, end = None, c0
    else:
        start = start_of(workdir, k, c0, cfg, data_end)
        end = min(until, data_end) if until is not None else replay_end(cfg, c0, k, data_end)
        if start >= data_end or end <= start:
            why = "the replay schedule reached the end of the data" if start >= data_end else \
                f"--until {utc(until)} is not after the round's start"
            return Batch(status="nothing_new", start=start, end=max(start, end), message=(
                f"round {k}: nothing new after {utc(start)} ({why})"))
    ts = full.events["timestamp"]
    span = (ts < end) & ((ts >= start) if start is not None else True)
    return Batch(status="ok", start=start, end=end, watermark=end, static=full, items=full.items, users=full.users,
                  rejects=full.rejects, rows=int(span.sum()), round0_cutoff=c0,
                  registry=pd.concat([registry, pd.DataFrame({"path": ["<static>"], "round": [k],
                                                              "rows": [int(span.sum())], "size": [0]})],
                                     ignore_index=True))


def read_live(cfg: Config, workdir: Path, k: int, until: int | None, registry: pd.DataFrame) -> Batch:
    root = Path(cfg.data.path)
    rejects = RejectReport(max_rows_per_reason=cfg.data.max_reject_rows)
    items, users = read_tables(root, rejects)
    skipped = skipped_days(workdir)
    if is_partitioned(root):
        listing = scan_log(root)
        if not listing.partitions:
            raise DataError(f"{root / EVENTS_DIR}: no day partitions (date=YYYY-MM-DD) yet")
        if k == 0:
            first = day_start(listing.partitions[0].day)
            mark = partition_watermark(listing, first, until, skipped)
            try:
                proposed = live_round0_cutoff(first, mark, cfg.data.bootstrap_fraction)
            except ValueError as exc:
                raise DataError(f"{root / EVENTS_DIR}: {exc}") from None
            start, end = None, fix_round0_cutoff(workdir, "live", proposed)
            view = partition_view(listing, end, until, skipped)
            mark = end
        else:
            c0 = recorded_round0_cutoff(workdir, "live")
            start = start_of(workdir, k, c0, cfg, None)
            mark = end = partition_watermark(listing, start, until, skipped)
            view = partition_view(listing, start, until, skipped)
        record_log_view(workdir, view, source="partitions")
        files = [f for p in listing.partitions for f in p.files]
        asked = pending_reconsume(workdir)
        again = [f for f in files if any(selects(r, f.path) for r in asked) and f.path in set(registry["path"])]
        unmatched = [r for r in asked if not any(selects(r, f.path) for f in again)]
        if unmatched:
            log.warning("--reconsume: %s match(es) no consumed file; nothing to read again for it",
                        ", ".join(unmatched))
        changed = [(f, why) for f, why in changed_files(listing.events_dir, files, registry) if f not in again]
        if changed:
            f, why = changed[0]
            more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
            raise LiveDataError(
                f"{listing.events_dir / f.path}: changed after it was consumed ({why}){more}; nothing consumed. "
                f"Re-consume it deliberately with `coea cycle ... --reconsume {f.path}` (events already consumed "
                "are not counted twice)")
        done = set(registry["path"])
        todo = [f for p in listing.partitions if p.complete and day_start(p.day) + DAY <= end for f in p.files
                if f.path not in done or f in again]
        raw, sizes, bad = read_event_files(listing.events_dir, todo)
        quarantined = {}
        if bad and cfg.data.on_unreadable == "fail":
            path, why = next(iter(bad.items()))
            more = f" (and {len(bad) - 1} more file(s))" if len(bad) > 1 else ""
            raise LiveDataError(f"{listing.events_dir / path}: unreadable ({why}){more}; nothing consumed, the "
                                f"window stays before {path.split('/')[0]}. Fix or replace the file and rerun, or "
                                "set data.on_unreadable: quarantine to move it aside")
        for f in todo:
            if f.path in bad:
                quarantined[f.path] = quarantine(listing.events_dir, f, bad[f.path], workdir, k)
        new = registry_rows(listing.events_dir, todo, sizes, k)
        kept = registry[~registry["path"].isin(new["path"])]
        batch = Batch(status="ok", start=start, end=end, watermark=mark, raw=raw, items=items, users=users,
                       rejects=rejects, registry=pd.concat([kept, new], ignore_index=True), rows=len(raw),
                       files=len(sizes), unreadable=bad, ignored=list(listing.ignored), rows_by_source=sizes,
                       where=str(listing.events_dir), view=view, quarantined=quarantined,
                       reconsumed=[f.path for f in again])
    else:
        path = root / EVENTS_FILE
        if not path.is_file():
            raise DataError(f"{root}: no {EVENTS_FILE} and no {EVENTS_DIR}/ day partitions (docs/data.md)")
        try:
            days = event_days(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise LiveDataError(f"{path}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                                "nothing consumed. Fix or replace the file and rerun") from None
        if not len(days):
            raise DataError(f"{path}: no event with a usable timestamp")
        if k == 0:
            first = int(days[0]) * DAY
            mark = file_view(days, first, until, skipped).watermark
            try:
                proposed = live_round0_cutoff(first, mark, cfg.data.bootstrap_fraction)
            except ValueError as exc:
                raise DataError(f"{path}: {exc}") from None
            start, end = None, fix_round0_cutoff(workdir, "live", proposed)
            view = file_view(days, end, until, skipped)
            raw = read_event_window(path, None, end, with_null=True)
            late = 0
        else:
            c0 = recorded_round0_cutoff(workdir, "live")
            start = start_of(workdir, k, c0, cfg, None)
            view = file_view(days, start, until, skipped)
            end = view.watermark
            raw = read_event_window(path, start, end)
            seen = int(registry["rows"].sum())
            now = count_before(path, start)
            late = max(0, (now or 0) - seen)
            if now is not None and now < seen:
                log.warning("data: %s holds %d rows before %s, fewer than the %d rounds consumed", path, now,
                            utc(start), seen)
        record_log_view(workdir, view, source=EVENTS_FILE)
        ts_rows = int(pd.to_numeric(raw["timestamp"], errors="coerce").notna().sum()) if len(raw) else 0
        new = pd.DataFrame({"path": [EVENTS_FILE], "round": [k], "rows": [ts_rows], "size": [path.stat().st_size]})
        batch = Batch(status="ok", start=start, end=end, watermark=end, raw=raw, items=items, users=users,
                       rejects=rejects, registry=pd.concat([registry, new], ignore_index=True), rows=len(raw),
                       files=1, late_unconsumed=late, rows_by_source={path.name: len(raw)}, where=str(root),
                       view=view)
    if k > 0 and batch.end <= batch.start:
        batch.status = "nothing_new"
        batch.message = (f"round {k}: nothing new: the log is complete through {utc(batch.watermark)} and round "
                         f"{k - 1} consumed everything up to {utc(batch.start)}"
                         + (f"; {batch.rows} row(s) of late files wait for the next round" if batch.rows else ""))
    return batch


def previous_ids(workdir: Path, k: int) -> np.ndarray:
    """Identity hashes of every event consumed through round k-1 (empty for round 0 and older workdirs)."""
    if k == 0:
        return np.zeros(0, dtype=np.uint64)
    ids = load_ids(round_dir(workdir, k - 1) / STAGE)
    if ids is None:
        log.warning("data: round %d recorded no event identities (an older workdir); events delivered again "
                    "before round %d cannot be recognised", k - 1, k)
        return np.zeros(0, dtype=np.uint64)
    return ids


def start_of(workdir: Path, k: int, c0: int, cfg: Config, data_end: int | None) -> int:
    """End of round k-1: its data stage's window.json, else state.json, else (old replay workdirs) the schedule."""
    if k - 1 == 0:
        return c0
    path = round_dir(workdir, k - 1) / STAGE / FILES["window"]
    if path.exists():
        return int(read_json(path)["end"])
    recorded = round_end(workdir, k - 1)
    if recorded is not None:
        return recorded
    if data_end is not None:  # a replay workdir from before the clock was recorded
        return replay_end(cfg, c0, k - 1, data_end)
    raise DataError(f"round {k - 1}'s window is unknown ({path} is missing); cannot place round {k}")


def empty_registry() -> pd.DataFrame:
    return pd.DataFrame({"path": pd.Series(dtype=object), "round": pd.Series(dtype="int64"),
                         "rows": pd.Series(dtype="int64"), "size": pd.Series(dtype="int64")})

"""Exactly-once delivery of a live log: event identity, consumed-file fingerprints, the reject threshold and
quarantine (docs/data.md, "Delivery rules"). coea/round_data.py applies them to every live round.

- **Event identity** is ``(user_id, item_id, timestamp, event)`` after cleaning (ids as strings, timestamp in
  unix seconds). A round drops every row whose identity an earlier round consumed (``already_consumed``) or
  that repeats an earlier row of the same round (``duplicate_event``), so a day delivered again under new file
  names is not counted twice. The identities of every consumed event are kept as 64-bit hashes
  (``event_ids.parquet``, 8 bytes per event) in each round's data stage.
- **Fingerprints**: every consumed file is recorded with its size, modification time and SHA-256. A consumed
  file whose content changed fails the round (:class:`LiveDataError`, exit 7) until an operator re-consumes it
  deliberately (``coea cycle --reconsume``): its rows are read again and only events not consumed yet count.
- **Reject threshold**: more than ``data.max_reject_fraction`` of a partition day's rows, or of the round's,
  dropped for a reason that loses an event (:data:`LOSING`) fails the round (exit 7); nothing is consumed.
- **Quarantine** (``data.on_unreadable: quarantine``): an unreadable file is moved to
  ``PATH/events/_quarantine/`` (never read again: names starting with ``_`` are not data) and recorded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from coea.data.clean import SOURCE, note
from coea.data.partitions import LogFile
from coea.data.schema import LiveDataError, RejectReport

log = logging.getLogger("coea.data")

IDENTITY = ("user_id", "item_id", "timestamp", "event")
#: Reasons that lose an event (what the reject threshold counts); duplicates and re-deliveries lose nothing.
LOSING = ("malformed_row", "bad_event_kind", "unknown_item", "future_timestamp")
IDS_FILE = "event_ids.parquet"
QUARANTINE_DIR = "_quarantine"
QUARANTINE_LOG = "quarantine.jsonl"


# ------------------------------------------------------------------------------------------------ identity


def event_ids(events: pd.DataFrame) -> np.ndarray:
    """64-bit hashes of each cleaned event's identity ``(user_id, item_id, timestamp, event)``; (N,) uint64."""
    if not len(events):
        return np.zeros(0, dtype=np.uint64)
    frame = pd.DataFrame({"user_id": events["user_id"].astype(str).to_numpy(),
                          "item_id": events["item_id"].astype(str).to_numpy(),
                          "timestamp": events["timestamp"].astype("int64").to_numpy(),
                          "event": events["event"].astype(str).to_numpy()})
    return pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)


def drop_consumed(events: pd.DataFrame, consumed: np.ndarray, rejects: RejectReport) -> tuple[pd.DataFrame,
                                                                                                  np.ndarray]:
    """Drop events an earlier round consumed (``already_consumed``) or repeated within ``events`` by identity
    (``duplicate_event``, the first kept); returns (kept events, their identity hashes)."""
    ids = event_ids(events)
    seen = np.isin(ids, consumed)
    again = pd.Series(ids).duplicated(keep="first").to_numpy() & ~seen
    shown = events.assign(**{SOURCE: "events"})
    note(rejects, shown[seen], "already_consumed")
    note(rejects, shown[again], "duplicate_event")
    keep = ~(seen | again)
    return events[keep].reset_index(drop=True), ids[keep]


def load_ids(stage_dir: Path | None) -> np.ndarray | None:
    """The consumed identity hashes saved by a data stage (None when the stage predates them)."""
    path = stage_dir / IDS_FILE if stage_dir is not None else None
    if path is None or not path.exists():
        return None
    return pd.read_parquet(path)["id"].to_numpy(dtype=np.uint64)


def save_ids(path: Path, ids: np.ndarray) -> None:
    pd.DataFrame({"id": np.unique(ids.astype(np.uint64))}).to_parquet(path, index=False)


# ---------------------------------------------------------------------------------------------- fingerprints


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def changed_files(events_dir: Path, files: list[LogFile], registry: pd.DataFrame) -> list[tuple[LogFile, str]]:
    """Consumed files whose content differs from when a round read them: (file, what changed).

    Size first; a file of the same size with another modification time is hashed and compared with the recorded
    SHA-256 (a registry from before fingerprints compares sizes only)."""
    if not len(registry):
        return []
    rec = registry.drop_duplicates("path", keep="last").set_index("path")
    out = []
    for f in files:
        if f.path not in rec.index:
            continue
        r = rec.loc[f.path]
        if int(r["size"]) != f.size:
            out.append((f, f"size {int(r['size'])} -> {f.size} bytes, consumed by round {int(r['round'])}"))
            continue
        mtime, digest = r.get("mtime_ns"), r.get("sha256")
        if digest is None or not isinstance(digest, str) or pd.isna(mtime) or int(mtime) == f.mtime_ns:
            continue
        if sha256(events_dir / f.path) != digest:
            out.append((f, f"content changed (same size), consumed by round {int(r['round'])}"))
    return out


def registry_rows(events_dir: Path, files: list[LogFile], rows: dict[str, int], k: int) -> pd.DataFrame:
    """Registry rows for the files a round consumes: path, round, rows, size, mtime_ns, sha256."""
    read = [f for f in files if f.path in rows]
    return pd.DataFrame({"path": [f.path for f in read], "round": k, "rows": [rows[f.path] for f in read],
                         "size": [f.size for f in read], "mtime_ns": [f.mtime_ns for f in read],
                         "sha256": [sha256(events_dir / f.path) for f in read]}).astype(
        {"round": "int64", "rows": "int64", "size": "int64", "mtime_ns": "int64"})


def selects(request: str, path: str) -> bool:
    """``--reconsume`` matching: a file (``date=D/name``) or a whole partition (``date=D``)."""
    request = request.strip("/")
    return path == request or path.startswith(request + "/")


# ---------------------------------------------------------------------------------------------- thresholds


def check_rejects(rejects: RejectReport, rows_by_source: dict[str, int], limit: float, *, where: str) -> None:
    """Fail when more than ``limit`` of a partition day's rows (sources ``date=D/...``) or of the round's rows
    were dropped for a :data:`LOSING` reason.

    Raises:
        LiveDataError: one line naming the day (or the round), the counts and an example row (exit 7).
    """
    lost = {src: {r: n for r, n in per.items() if r in LOSING} for src, per in rejects.by_source.items()}
    days: dict[str, list[int]] = {}
    for src, n in rows_by_source.items():
        key = src.split("/")[0] if src.startswith("date=") else src
        day = days.setdefault(key, [0, 0])
        day[0] += n
        day[1] += sum(lost.get(src, {}).values())
    total = [sum(v[0] for v in days.values()), sum(v[1] for v in days.values())]
    checks = [(f"{where}/{key}", *v) for key, v in sorted(days.items())] + [(f"{where} (the round)", *total)]
    for name, n, bad in checks:
        if n and bad / n > limit:
            reasons: dict[str, int] = {}
            for src, per in lost.items():
                if name.endswith("(the round)") or f"/{src.split('/')[0]}" in name:
                    for r, c in per.items():
                        reasons[r] = reasons.get(r, 0) + c
            example = next((e for e in rejects.rows if e["reason"] in reasons), None)
            eg = f"; e.g. {example['source']} row {example.get('line')}: {example['row'][:120]}" if example else ""
            raise LiveDataError(
                f"{name}: {bad} of {n} rows rejected ({', '.join(f'{r} {c}' for r, c in sorted(reasons.items()))})"
                f", more than data.max_reject_fraction {limit:g}; nothing consumed: fix the file(s) and rerun{eg}")


# ---------------------------------------------------------------------------------------------- quarantine


def quarantine(events_dir: Path, f: LogFile, reason: str, workdir: Path, k: int) -> str:
    """Move an unreadable file to ``events/_quarantine/<its path>`` and record it in WORKDIR/quarantine.jsonl."""
    dest = events_dir / QUARANTINE_DIR / f.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest = dest.with_name(f"{dest.stem}.{int(time.time())}{dest.suffix}")
    os.replace(events_dir / f.path, dest)
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "round": k, "path": f.path,
             "moved_to": str(dest), "reason": reason}
    with (Path(workdir) / QUARANTINE_LOG).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
    log.warning("data: %s is unreadable (%s); moved to %s (data.on_unreadable: quarantine)", events_dir / f.path,
                reason, dest)
    return str(dest)

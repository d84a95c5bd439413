"""A round's data: its window on the clock, the events it consumes, vocabularies and sequences.

``load_round(cfg, workdir, k)`` is the one entry (docs/cycle.md "The clock", docs/data.md "Live logs")::

    clock       round 0: fix the cut-off (state.json); round k: [end of round k-1, watermark)
    read        live: the not-yet-consumed files of complete day partitions (or one file, filtered by time)
                replay: the static data set, as it always was
    vocab       round k-1's vocabularies extended append-only with today's items / users tables
    state       round k-1's sequence state + this round's events -> Sequences at the round's end
    spark       data.engine: spark -> the round's Sequences from spark_jobs (checked against the state)
    stage       rounds/NNN/data/: window.json, rejects, vocab/, state/, consumed.parquet [events, users]

The stage commits atomically like every stage, so a rerun of the round reads the same window back; a round
with nothing to consume writes nothing and says so (``status == "nothing_new"``).

**Late events** (live, partitioned): a round reads every not-yet-consumed file of the complete partitions up to
its watermark, old partitions included (file-level exactly-once: ``consumed.parquet`` lists every file consumed
so far and the round that did). Rows in them with a timestamp before the round's start are *late*: consumed by
this round into the sequences (I_long, S_short, counts), counted in window.json, the metrics and the log, and
kept out of D_k's training signal (PCO sample, Relevance update, validation truth), which is the events of
``[start, end)``. One ``events.parquet`` cannot tell new rows from old ones: rows that appear with a timestamp
before the window start are counted (``late_unconsumed``) and not consumed.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from coea.clock import (
    LogView, clock_mode, done_reconsume, file_view, fix_round0_cutoff, live_round0_cutoff, partition_view,
    partition_watermark, pending_reconsume, record_checked, record_log_view, record_window, recorded_round0_cutoff,
    replay_end, round_end, skipped_days,
)
from coea.config import Config
from coea.data.partitions import DAY, EVENTS_DIR, EVENTS_FILE, day_start, is_partitioned, scan_log, utc
from coea.data.delivery import (
    IDS_FILE, changed_files, check_rejects, drop_consumed, load_ids, quarantine, registry_rows, save_ids, selects,
)
from coea.data.schema import DataError, Interactions, LiveDataError, RejectReport, Sequences
from coea.data.state import SequenceState
from coea.data.vocab import Vocabulary
from coea.workdir import read_json, round_dir, stage, stage_done, write_json, write_manifest

log = logging.getLogger("coea.data")

STAGE = "data"
FILES = {"window": "window.json", "rejects": "rejects.jsonl", "state": "state", "vocab": "vocab",
         "consumed": "consumed.parquet", "events": "events.parquet", "users": "users.parquet",
         "spark": "spark_sequences.parquet"}


@dataclass
class RoundData:
    """What the round's stages read. ``inter`` holds the whole static data set in replay mode (stages filter
    by ``[start, end)`` as they always did) and the round's consumed events in live mode."""

    k: int
    mode: str
    start: int | None
    end: int
    status: str  # "ok" | "nothing_new"
    message: str = ""
    fresh: bool = False  # this run wrote the data stage (False: read back from an earlier run)
    inter: Interactions | None = None
    seqs: Sequences | None = None
    seqs_prev: Sequences | None = None  # at ``start`` (None for round 0)
    history: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # last clicks before ``start``
    hist_categories: dict[str, set[str]] = field(default_factory=dict)  # every category clicked before ``start``
    category_clicks: dict[str, int] = field(default_factory=dict)  # clicks per category before ``start``
    vocab: Vocabulary | None = None
    window: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- entry


def load_round(cfg: Config, workdir: Path, k: int, *, until: int | None = None) -> RoundData:
    """Round k's data (module docstring); reads a finished data stage back unchanged.

    Raises:
        DataError: no data for round 0, or the previous round's data stage is missing (exit 2).
    """
    workdir = Path(workdir)
    mode = clock_mode(cfg)
    rp = round_dir(workdir, k)
    if stage_done(rp, STAGE):
        data = _read_back(cfg, workdir, k, mode)
        record_window(workdir, k, data.window)
        return data
    prev_state, prev_vocab, registry = _previous(cfg, workdir, k, mode)
    read = _read_replay if mode == "replay" else _read_live
    batch = read(cfg, workdir, k, until, registry)
    if batch.status != "ok":
        if batch.watermark is not None:
            record_checked(workdir, batch.watermark)
        log.info("%s", batch.message)
        return RoundData(k=k, mode=mode, start=batch.start, end=batch.end, status=batch.status, message=batch.message)

    vocab = prev_vocab.copy()
    update = vocab.extend(batch.items, batch.users, k)
    from coea.data.live import clean_window, note_vocab_update

    note_vocab_update(batch.rejects, update)
    ids = None
    if mode == "live":
        inter = clean_window(batch.raw, vocab, batch.users, batch.rejects, end=batch.end)
        prev_ids = _previous_ids(workdir, k)
        events, ids = drop_consumed(inter.events, prev_ids, batch.rejects)  # exactly once, by event identity
        inter.events = events
        ids = np.concatenate([prev_ids, ids])
        check_rejects(batch.rejects, batch.rows_by_source, cfg.data.max_reject_fraction, where=batch.where)
    else:
        inter = batch.static
        ev = inter.events
        in_span = (ev["timestamp"] < batch.end) & ((ev["timestamp"] >= batch.start) if batch.start is not None else True)
        events = ev[in_span.to_numpy()]
    users = inter.users
    seqs_prev = prev_state.to_sequences(vocab, users, batch.start) if k > 0 else None
    history = prev_state.history(vocab) if k > 0 else {}
    hist_categories = prev_state.clicked_categories(vocab) if k > 0 else {}
    before = dict(prev_state.category_clicks)
    first_time = set(events["user_id"].astype(str).unique()) - prev_state.users  # first consumed event this round
    state = prev_state
    state.apply(events, vocab, batch.end)
    seqs = state.to_sequences(vocab, users, batch.end)

    window = _window(cfg, k, mode, batch, events, len(first_time), update)
    if mode == "live" and k > 0 and window["events"] == 0:
        # An empty window (e.g. a day without events) trains nothing; late rows and rejects wait for the next
        # round with events, which reads the same files (nothing is marked consumed here).
        msg = (f"round {k}: nothing new in [{utc(batch.start)}, {utc(batch.end)}): no event in the window "
               f"({batch.rows} row(s) read: {window['late']} late, {batch.rejects.total} rejected; they wait for "
               "the next round with events)")
        record_checked(workdir, batch.watermark)
        log.info("%s", msg)
        return RoundData(k=k, mode=mode, start=batch.start, end=batch.end, status="nothing_new", message=msg)
    with stage(rp, STAGE) as tmp:
        from coea.data.loaders import write_rejects

        window["rejects"] = write_rejects(batch.rejects, tmp / FILES["rejects"])
        spark_rows = None
        if cfg.data.engine == "spark":
            seqs, spark_rows, window["spark"] = _spark_sequences(cfg, tmp, vocab, users, seqs, registry, batch)
            spark_rows.to_parquet(tmp / FILES["spark"], index=False)
        state.save(tmp / FILES["state"])
        vocab.save(tmp / FILES["vocab"])
        batch.registry.to_parquet(tmp / FILES["consumed"], index=False)
        if ids is not None:
            save_ids(tmp / IDS_FILE, ids)
        if mode == "live":
            events.to_parquet(tmp / FILES["events"], index=False)
            users.to_parquet(tmp / FILES["users"], index=False)
        write_json(tmp / FILES["window"], window)
        write_manifest(tmp, cfg, {"stage": STAGE, "files": FILES})
    record_window(workdir, k, window)
    if mode == "live" and pending_reconsume(workdir):  # done: the files it names were read again (or none matched)
        done_reconsume(workdir, k, pending_reconsume(workdir))
    _log_window(window, rp)
    return RoundData(k=k, mode=mode, start=batch.start, end=batch.end, status="ok", fresh=True, inter=inter, seqs=seqs,
                     seqs_prev=seqs_prev, history=history, hist_categories=hist_categories,
                     category_clicks=before, vocab=vocab, window=window)


# --------------------------------------------------------------------------------------------------- reading


@dataclass
class _Batch:
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
    registry: pd.DataFrame = field(default_factory=lambda: _empty_registry())
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


def _read_replay(cfg: Config, workdir: Path, k: int, until: int | None, registry: pd.DataFrame) -> _Batch:
    from coea.rounds import cutoff, load_data, timeline

    full = load_data(cfg)
    data_end = timeline(full)[1] if len(full.events) else 0
    c0 = fix_round0_cutoff(workdir, "replay", cutoff(cfg, full, 0) if len(full.events) else 0)
    if k == 0:
        start, end = None, c0
    else:
        start = _start_of(workdir, k, c0, cfg, data_end)
        end = min(until, data_end) if until is not None else replay_end(cfg, c0, k, data_end)
        if start >= data_end or end <= start:
            why = "the replay schedule reached the end of the data" if start >= data_end else \
                f"--until {utc(until)} is not after the round's start"
            return _Batch(status="nothing_new", start=start, end=max(start, end), message=(
                f"round {k}: nothing new after {utc(start)} ({why})"))
    ts = full.events["timestamp"]
    span = (ts < end) & ((ts >= start) if start is not None else True)
    return _Batch(status="ok", start=start, end=end, watermark=end, static=full, items=full.items, users=full.users,
                  rejects=full.rejects, rows=int(span.sum()), round0_cutoff=c0,
                  registry=pd.concat([registry, pd.DataFrame({"path": ["<static>"], "round": [k],
                                                              "rows": [int(span.sum())], "size": [0]})],
                                     ignore_index=True))


def _read_live(cfg: Config, workdir: Path, k: int, until: int | None, registry: pd.DataFrame) -> _Batch:
    from coea.data.live import count_before, event_days, read_event_files, read_event_window, read_tables

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
            start = _start_of(workdir, k, c0, cfg, None)
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
        batch = _Batch(status="ok", start=start, end=end, watermark=mark, raw=raw, items=items, users=users,
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
            start = _start_of(workdir, k, c0, cfg, None)
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
        batch = _Batch(status="ok", start=start, end=end, watermark=end, raw=raw, items=items, users=users,
                       rejects=rejects, registry=pd.concat([registry, new], ignore_index=True), rows=len(raw),
                       files=1, late_unconsumed=late, rows_by_source={path.name: len(raw)}, where=str(root),
                       view=view)
    if k > 0 and batch.end <= batch.start:
        batch.status = "nothing_new"
        batch.message = (f"round {k}: nothing new: the log is complete through {utc(batch.watermark)} and round "
                         f"{k - 1} consumed everything up to {utc(batch.start)}"
                         + (f"; {batch.rows} row(s) of late files wait for the next round" if batch.rows else ""))
    return batch


def _previous_ids(workdir: Path, k: int) -> np.ndarray:
    """Identity hashes of every event consumed through round k-1 (empty for round 0 and older workdirs)."""
    if k == 0:
        return np.zeros(0, dtype=np.uint64)
    ids = load_ids(round_dir(workdir, k - 1) / STAGE)
    if ids is None:
        log.warning("data: round %d recorded no event identities (an older workdir); events delivered again "
                    "before round %d cannot be recognised", k - 1, k)
        return np.zeros(0, dtype=np.uint64)
    return ids


def _start_of(workdir: Path, k: int, c0: int, cfg: Config, data_end: int | None) -> int:
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


# ----------------------------------------------------------------------------------------------- carry-over


def _previous(cfg: Config, workdir: Path, k: int, mode: str) -> tuple[SequenceState, Vocabulary, pd.DataFrame]:
    """Round k-1's state, vocabulary and consumed-file registry (empty for round 0).

    A replay workdir from before the state was kept (or a state built with other data.* settings) is rebuilt
    from the static data; a live workdir cannot rebuild what it never recorded.
    """
    if k == 0:
        return SequenceState.empty(cfg.data), Vocabulary.empty(), _empty_registry()
    d = round_dir(workdir, k - 1) / STAGE
    have = (d / FILES["vocab"]).is_dir() and (d / FILES["state"]).is_dir()
    if have:
        vocab = Vocabulary.load(d / FILES["vocab"])
        state = SequenceState.load(d / FILES["state"])
        registry = pd.read_parquet(d / FILES["consumed"]) if (d / FILES["consumed"]).exists() else _empty_registry()
        if state.matches(cfg.data):
            return state, vocab, registry
        log.warning("data: round %d's sequence state was built with other data.* settings; rebuilding it", k - 1)
        return _rebuild_state(cfg, workdir, k, mode, vocab, registry), vocab, registry
    if mode == "live":
        raise DataError(f"{d}: missing (the vocabularies, sequence state and consumed files of round {k - 1}); "
                        "the live clock cannot continue without them")
    from coea.rounds import load_data

    full = load_data(cfg)
    vocab = Vocabulary.empty()
    vocab.extend(full.items, full.users, 0)
    log.info("data: round %d has no saved sequence state (an older workdir); rebuilding it from the data set", k - 1)
    return _rebuild_state(cfg, workdir, k, mode, vocab, _empty_registry(), full=full), vocab, _empty_registry()


def _rebuild_state(cfg: Config, workdir: Path, k: int, mode: str, vocab: Vocabulary, registry: pd.DataFrame, *,
                   full: Interactions | None = None) -> SequenceState:
    """The state at the end of round k-1 from everything consumed so far, in one batch."""
    from coea.rounds import cutoff, load_data, timeline

    state = SequenceState.empty(cfg.data)
    if mode == "replay":
        full = full if full is not None else load_data(cfg)
        data_end = timeline(full)[1] if len(full.events) else 0
        c0 = fix_round0_cutoff(workdir, "replay", cutoff(cfg, full, 0) if len(full.events) else 0)
        start = _start_of(workdir, k, c0, cfg, data_end)
        state.apply(full.events[full.events["timestamp"] < start], vocab, start)
        return state
    from coea.data.live import clean_window, read_event_files, read_tables

    root = Path(cfg.data.path)
    c0 = recorded_round0_cutoff(workdir, "live")
    start = _start_of(workdir, k, c0, cfg, None)
    rejects = RejectReport()
    _, users = read_tables(root, rejects)
    if is_partitioned(root):
        listing = scan_log(root)
        files = [f for p in listing.partitions for f in p.files if f.path in set(registry["path"])]
        raw, _, _ = read_event_files(listing.events_dir, files)
    else:
        from coea.data.live import read_event_window

        raw = read_event_window(root / EVENTS_FILE, None, start)
    inter = clean_window(raw, vocab, users, rejects, end=start)
    state.apply(inter.events, vocab, start)
    return state


def _read_back(cfg: Config, workdir: Path, k: int, mode: str) -> RoundData:
    """A finished data stage, as the round first saw it."""
    d = round_dir(workdir, k) / STAGE
    window = read_json(d / FILES["window"])
    vocab = Vocabulary.load(d / FILES["vocab"])
    state = SequenceState.load(d / FILES["state"])
    start, end = window["start"], window["end"]
    if mode == "replay":
        from coea.rounds import load_data

        inter = load_data(cfg)
    else:
        counts = window.get("rejects", {})
        rejects = RejectReport(counts=dict(counts.get("counts", {})), kept=dict(counts.get("kept", {})))
        inter = Interactions(events=pd.read_parquet(d / FILES["events"]), items=vocab.items_frame(),
                             users=pd.read_parquet(d / FILES["users"]), categories=vocab.active_categories(),
                             rejects=rejects)
    users = inter.users
    seqs = state.to_sequences(vocab, users, end)
    if (d / FILES["spark"]).exists():
        seqs = _assemble(pd.read_parquet(d / FILES["spark"]), seqs, vocab)
    seqs_prev, history, hist_categories, before = None, {}, {}, {}
    if k > 0:
        prev, _, _ = _previous(cfg, workdir, k, mode)
        seqs_prev, history, before = prev.to_sequences(vocab, users, start), prev.history(vocab), \
            dict(prev.category_clicks)
        hist_categories = prev.clicked_categories(vocab)
    return RoundData(k=k, mode=mode, start=start, end=end, status="ok", inter=inter, seqs=seqs, seqs_prev=seqs_prev,
                     history=history, hist_categories=hist_categories, category_clicks=before, vocab=vocab,
                     window=window)


# --------------------------------------------------------------------------------------------------- spark


def _spark_sequences(cfg: Config, tmp: Path, vocab: Vocabulary, users: pd.DataFrame, state_seqs: Sequences,
                     registry: pd.DataFrame, batch: _Batch) -> tuple[Sequences, pd.DataFrame, dict[str, Any]]:
    """``data.engine: spark``: the round's Sequences from ``spark_jobs.build_sequences`` over every file consumed
    so far (the registry), the vocabulary's items and the round's end; checked against the in-process state."""
    from spark_jobs.build_sequences import build_sequences as spark_build
    from spark_jobs.session import get_spark

    root = Path(cfg.data.path)
    if not is_partitioned(root):
        paths = [str(root / EVENTS_FILE)]
    elif batch.static is None:  # live: every file consumed so far
        paths = [str(root / EVENTS_DIR / p) for p in batch.registry["path"]]
    else:  # replay of a partitioned log: the whole (static) log, cut at the round's end
        paths = [str(root / EVENTS_DIR / f.path) for p in scan_log(root).partitions if p.complete for f in p.files]
    work = tmp / ".spark"
    work.mkdir()
    items_path = work / "items.parquet"
    vocab.items_frame()[["item_id", "category"]].to_parquet(items_path, index=False)
    spark = get_spark("coea-cycle")
    counts = spark_build(spark, paths, str(items_path), str(work / "out"), tau=cfg.data.tau,
                         long_filter=cfg.data.long_filter, short_k=cfg.data.short_k,
                         max_long_len=cfg.data.max_long_len, cutoff=batch.end)
    rows = pd.read_parquet(counts["paths"]["sequences"], columns=["user_id", "long_items", "short_categories"])
    rows = rows.assign(long_items=rows["long_items"].map(lambda a: [str(x) for x in a]),
                       short_categories=rows["short_categories"].map(lambda a: [str(x) for x in a]))
    rows = rows.sort_values("user_id", kind="mergesort").reset_index(drop=True)
    seqs = _assemble(rows, state_seqs, vocab)
    differ = sum(a != b or s != t for a, b, s, t in zip(seqs.long_items, state_seqs.long_items,
                                                        seqs.short_categories, state_seqs.short_categories))
    if differ:
        log.warning("data: spark and the in-process state disagree on %d user(s)' sequences (see docs/spark.md, "
                    "'In the daily cycle'); the cycle uses Spark's", differ)
    shutil.rmtree(work)
    report = {"users": int(counts["users"]), "clicks": int(counts["clicks"]), "rejected": counts["rejected"],
              "users_differing_from_state": int(differ)}
    return seqs, rows, report


def _assemble(rows: pd.DataFrame, like: Sequences, vocab: Vocabulary) -> Sequences:
    """Sequences with ``like``'s users, features and cut-off and the (user_id, long_items as item ids,
    short_categories) of ``rows``; users without a row get empty lists."""
    from storage.keys import canonical_recent

    by_user = {u: (list(a), list(s)) for u, a, s in zip(rows["user_id"], rows["long_items"],
                                                         rows["short_categories"])}
    long_items, short = [], []
    for u in like.user_ids:
        items, cats = by_user.get(u, ([], []))
        idx = vocab.item_index(items)
        long_items.append([int(j) for j in idx if j > 0])
        short.append([str(c) for c in cats])
    return Sequences(user_ids=list(like.user_ids), item_vocab=list(like.item_vocab), long_items=long_items,
                     short_categories=short, c_short=[canonical_recent(s) for s in short], features=like.features,
                     feature_cardinalities=list(like.feature_cardinalities), cutoff=like.cutoff,
                     feature_names=list(like.feature_names), item_categories=list(like.item_categories))


# -------------------------------------------------------------------------------------------------- reports


def _window(cfg: Config, k: int, mode: str, batch: _Batch, events: pd.DataFrame, new_users: int,
            update) -> dict[str, Any]:
    ts = events["timestamp"]
    start = batch.start
    late = (ts < start) if start is not None else pd.Series(False, index=events.index)
    in_window = ~late
    window = {
        "round": k, "clock": mode, "engine": cfg.data.engine,
        "start": start, "end": batch.end, "start_utc": utc(start), "end_utc": utc(batch.end),
        "days": round((batch.end - start) / DAY, 4) if start is not None else None,
        "watermark": batch.watermark, "watermark_utc": utc(batch.watermark),
        "round0_cutoff": batch.round0_cutoff if batch.round0_cutoff is not None else (batch.end if k == 0 else None),
        "files": batch.files, "rows": batch.rows,
        "events": int(in_window.sum()), "clicks": int((in_window & (events["event"] == "click")).sum()),
        "users": int(events.loc[in_window.to_numpy(), "user_id"].nunique()),
        "late": int(late.sum()), "late_clicks": int((late & (events["event"] == "click")).sum()),
        "late_oldest_utc": utc(int(ts[late].min())) if late.any() else None,
        "late_unconsumed": batch.late_unconsumed,
        "new_users": new_users,  # users whose first consumed event is in this round
        "vocab": update.summary(), "unreadable_files": batch.unreadable, "ignored_paths": batch.ignored,
        "quarantined_files": batch.quarantined, "reconsumed_files": batch.reconsumed,
        "already_consumed": int(batch.rejects.counts.get("already_consumed", 0)),
        "log": batch.view.as_dict() if batch.view is not None else None,
    }
    if mode == "replay":  # one static data set: no files, every row belongs to its time span
        window.update(files=0, late=0, late_clicks=0)
    return window


def _log_window(window: dict[str, Any], rp: Path) -> None:
    k = window["round"]
    span = f"[{window['start_utc']}, {window['end_utc']})" if window["start"] is not None else \
        f"before {window['end_utc']}"
    log.info("round %d data: %s clock, events %s: %d events (%d clicks, %d users, %d new), %d late, %d rows read "
             "from %d file(s)", k, window["clock"], span, window["events"], window["clicks"], window["users"],
             window["new_users"], window["late"], window["rows"], window["files"])
    if window["late"]:
        log.warning("round %d: %d late event(s) (timestamps from %s, before the window) consumed into the "
                    "sequences, not into D_%d's training signal (docs/data.md)", k, window["late"],
                    window["late_oldest_utc"], k)
    if window["late_unconsumed"]:
        log.warning("round %d: %d row(s) appeared in %s with timestamps before the window; one file cannot tell "
                    "them from consumed rows, so they are counted, not consumed (use day partitions)", k,
                    window["late_unconsumed"], EVENTS_FILE)
    v = window["vocab"]
    if v["new_items"] or v["new_categories"] or v["removed_items"] or v["recategorised_items"]:
        log.info("round %d vocab: %d new item(s), new categories %s, %d item(s) no longer in items.parquet, %d "
                 "category change(s) ignored", k, v["new_items"], v["new_categories"] or "none", v["removed_items"],
                 v["recategorised_items"])
    total = (window.get("rejects") or {}).get("total", 0)
    if total:
        log.warning("data: %d input rows rejected (%s); see %s", total, window["rejects"]["counts"],
                    rp / STAGE / FILES["rejects"])


def _empty_registry() -> pd.DataFrame:
    return pd.DataFrame({"path": pd.Series(dtype=object), "round": pd.Series(dtype="int64"),
                         "rows": pd.Series(dtype="int64"), "size": pd.Series(dtype="int64")})


def metrics_of(window: dict[str, Any]) -> dict[str, Any]:
    """The round's data figures for metrics.json / tracking (``data/...``)."""
    v = window.get("vocab", {})
    return {"data/events": window["events"], "data/users": window["users"], "data/clicks": window["clicks"],
            "data/late": window["late"], "data/late_unconsumed": window.get("late_unconsumed", 0),
            "data/already_consumed": window.get("already_consumed", 0),
            "data/new_users": window.get("new_users", 0), "data/new_items": v.get("new_items", 0),
            "data/new_categories": len(v.get("new_categories", [])), "data/removed_items": v.get("removed_items", 0),
            "data/rejected": (window.get("rejects") or {}).get("total", 0), "data/files": window.get("files", 0),
            "data/window_days": window.get("days") or 0.0}


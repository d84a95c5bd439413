"""A round's data: its window on the clock, the events it consumes, vocabularies and sequences.

``load_round(cfg, workdir, k)`` is the one entry (docs/cycle.md "The clock", docs/data.md "Live logs")::

    clock       round 0: fix the cut-off (state.json); round k: [end of round k-1, watermark)
    read        coea/round_read.py -- live: the not-yet-consumed files of complete day partitions (or one file,
                filtered by time), under the delivery rules; replay: the static data set, as it always was
    deliver     live: drop events already consumed (event identity), fail past data.max_reject_fraction
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
    clock_mode, done_reconsume, fix_round0_cutoff, pending_reconsume, record_checked, record_window,
    recorded_round0_cutoff,
)
from coea.config import Config
from coea.data.clean import write_rejects
from coea.data.delivery import IDS_FILE, check_rejects, drop_consumed, save_ids
from coea.data.live import clean_window, note_vocab_update, read_event_files, read_event_window, read_tables
from coea.data.partitions import DAY, EVENTS_DIR, EVENTS_FILE, is_partitioned, scan_log, utc
from coea.data.schema import DataError, Interactions, RejectReport, Sequences
from coea.data.state import SequenceState
from coea.data.vocab import Vocabulary
from coea.round_read import FILES, STAGE, Batch, empty_registry, previous_ids, read_live, read_replay, start_of
from coea.rounds import cutoff, load_data, timeline
from coea.workdir import read_json, round_dir, stage, stage_done, write_json, write_manifest
from spark_jobs.build_sequences import build_sequences as spark_build
from spark_jobs.session import get_spark
from storage.keys import canonical_recent

log = logging.getLogger("coea.data")


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
    read = read_replay if mode == "replay" else read_live
    batch = read(cfg, workdir, k, until, registry)
    if batch.status != "ok":
        if batch.watermark is not None:
            record_checked(workdir, batch.watermark)
        log.info("%s", batch.message)
        return RoundData(k=k, mode=mode, start=batch.start, end=batch.end, status=batch.status, message=batch.message)

    vocab = prev_vocab.copy()
    update = vocab.extend(batch.items, batch.users, k)
    note_vocab_update(batch.rejects, update)
    ids = None
    if mode == "live":
        inter = clean_window(batch.raw, vocab, batch.users, batch.rejects, end=batch.end)
        prev_ids = previous_ids(workdir, k)
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


# ----------------------------------------------------------------------------------------------- carry-over


def _previous(cfg: Config, workdir: Path, k: int, mode: str) -> tuple[SequenceState, Vocabulary, pd.DataFrame]:
    """Round k-1's state, vocabulary and consumed-file registry (empty for round 0).

    A replay workdir from before the state was kept (or a state built with other data.* settings) is rebuilt
    from the static data; a live workdir cannot rebuild what it never recorded.
    """
    if k == 0:
        return SequenceState.empty(cfg.data), Vocabulary.empty(), empty_registry()
    d = round_dir(workdir, k - 1) / STAGE
    have = (d / FILES["vocab"]).is_dir() and (d / FILES["state"]).is_dir()
    if have:
        vocab = Vocabulary.load(d / FILES["vocab"])
        state = SequenceState.load(d / FILES["state"])
        registry = pd.read_parquet(d / FILES["consumed"]) if (d / FILES["consumed"]).exists() else empty_registry()
        if state.matches(cfg.data):
            return state, vocab, registry
        log.warning("data: round %d's sequence state was built with other data.* settings; rebuilding it", k - 1)
        return _rebuild_state(cfg, workdir, k, mode, vocab, registry), vocab, registry
    if mode == "live":
        raise DataError(f"{d}: missing (the vocabularies, sequence state and consumed files of round {k - 1}); "
                        "the live clock cannot continue without them")
    full = load_data(cfg)
    vocab = Vocabulary.empty()
    vocab.extend(full.items, full.users, 0)
    log.info("data: round %d has no saved sequence state (an older workdir); rebuilding it from the data set", k - 1)
    return _rebuild_state(cfg, workdir, k, mode, vocab, empty_registry(), full=full), vocab, empty_registry()


def _rebuild_state(cfg: Config, workdir: Path, k: int, mode: str, vocab: Vocabulary, registry: pd.DataFrame, *,
                   full: Interactions | None = None) -> SequenceState:
    """The state at the end of round k-1 from everything consumed so far, in one batch."""
    state = SequenceState.empty(cfg.data)
    if mode == "replay":
        full = full if full is not None else load_data(cfg)
        data_end = timeline(full)[1] if len(full.events) else 0
        c0 = fix_round0_cutoff(workdir, "replay", cutoff(cfg, full, 0) if len(full.events) else 0)
        start = start_of(workdir, k, c0, cfg, data_end)
        state.apply(full.events[full.events["timestamp"] < start], vocab, start)
        return state
    root = Path(cfg.data.path)
    c0 = recorded_round0_cutoff(workdir, "live")
    start = start_of(workdir, k, c0, cfg, None)
    rejects = RejectReport()
    _, users = read_tables(root, rejects)
    if is_partitioned(root):
        listing = scan_log(root)
        files = [f for p in listing.partitions for f in p.files if f.path in set(registry["path"])]
        raw, _, _ = read_event_files(listing.events_dir, files)
    else:
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
                     registry: pd.DataFrame, batch: Batch) -> tuple[Sequences, pd.DataFrame, dict[str, Any]]:
    """``data.engine: spark``: the round's Sequences from ``spark_jobs.build_sequences`` over every file consumed
    so far (the registry), the vocabulary's items and the round's end; checked against the in-process state."""
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


def _window(cfg: Config, k: int, mode: str, batch: Batch, events: pd.DataFrame, new_users: int,
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


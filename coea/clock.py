"""The round clock: which span of time each round covers (docs/cycle.md, "The clock").

Two modes, ``cycle.clock`` (``auto``: ``live`` for ``data.source: parquet``, ``replay`` otherwise):

- **live** -- a log that grows (coea/data/partitions.py). The *watermark* is the end of the newest complete UTC
  day: for day partitions, the end of the run of consecutive complete days (``_SUCCESS``) that starts at the day
  of the previous round's end; for one ``events.parquet``, 00:00 UTC of the newest event's day (the newest day
  is taken to be still arriving). ``--until`` lowers it (a partitioned log rounds it down to a day boundary; it
  never reads a day that is not complete). Round 0's cut-off is ``data.bootstrap_fraction`` of the complete
  days at the time round 0 runs, rounded down to a whole day (at least one).
- **replay** -- a static data set: ``cutoff(k) = cutoff(0) + k * cycle.replay_days`` days, capped at the end
  of the data; round 0's cut-off is ``data.bootstrap_fraction`` of the timeline (:func:`coea.rounds.cutoff`).
  ``--until`` sets the round's end instead.

Both modes fix round 0's cut-off the first time round 0 runs and record it in ``state.json`` (``clock``), with
every round's window; nothing recomputes it later. Round k covers ``[end of round k-1, watermark)``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coea.config import ConfigError
from coea.data.partitions import DAY, EPOCH, LogListing, day_of, day_start, parse_day, utc
from coea.rounds import read_state, write_state

log = logging.getLogger("coea.clock")

MODES = ("live", "replay")


class ClockError(ConfigError):
    """The workdir's clock and the configuration disagree, or round 0 has not fixed its cut-off (exit 2)."""


def clock_mode(cfg) -> str:
    """``cycle.clock`` resolved: ``auto`` is ``live`` for a Parquet log, ``replay`` for a static data set."""
    mode = cfg.cycle.clock
    if mode == "auto":
        return "live" if cfg.data.source == "parquet" else "replay"
    return mode


def parse_until(value: str | int | None) -> int | None:
    """``--until``: unix seconds (an exclusive bound) or ``YYYY-MM-DD`` (through that UTC day: its end).

    Raises:
        ValueError: neither form (the CLI reports it as a configuration error, exit 2).
    """
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    try:
        return day_start(parse_day(text)) + DAY
    except ValueError:
        raise ValueError(f"--until: expected unix seconds or YYYY-MM-DD (through that UTC day); got {value!r}") \
            from None


# ----------------------------------------------------------------------------------------------- state.json


def read_clock(workdir: Path) -> dict[str, Any] | None:
    """The ``clock`` section of state.json (None before round 0 fixed its cut-off)."""
    return read_state(workdir).get("clock")


def fix_round0_cutoff(workdir: Path, mode: str, proposed: int) -> int:
    """Round 0's cut-off: the recorded one, or ``proposed`` recorded now (with the mode). Never recomputed.

    Raises:
        ClockError: the workdir runs the other clock mode.
    """
    state = read_state(workdir)
    clock = state.get("clock")
    if clock is not None:
        if clock.get("mode") != mode:
            raise ClockError(f"cycle.clock: {workdir} runs the {clock.get('mode')} clock (state.json) but the config "
                             f"asks for {mode}; a workdir keeps its clock")
        return int(clock["round0_cutoff"])
    state["clock"] = {"mode": mode, "round0_cutoff": int(proposed), "round0_cutoff_utc": utc(proposed),
                      "fixed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "windows": {}}
    write_state(workdir, state)
    log.info("clock: round 0's cut-off fixed at %s (%s clock), recorded in state.json", utc(proposed), mode)
    return int(proposed)


def recorded_round0_cutoff(workdir: Path, mode: str) -> int:
    """Round 0's recorded cut-off (rounds k >= 1 only read it).

    Raises:
        ClockError: none recorded (round 0 has not run) or the workdir runs the other clock.
    """
    clock = read_clock(workdir)
    if clock is None or "round0_cutoff" not in clock:
        raise ClockError(f"{workdir}: state.json records no round-0 cut-off; run round 0 (coea bootstrap) first")
    if clock.get("mode") != mode:
        raise ClockError(f"cycle.clock: {workdir} runs the {clock.get('mode')} clock (state.json) but the config "
                         f"asks for {mode}; a workdir keeps its clock")
    return int(clock["round0_cutoff"])


def record_window(workdir: Path, k: int, window: dict[str, Any]) -> None:
    """Mirror round k's window into state.json (idempotent; the round's data/window.json is the source)."""
    state = read_state(workdir)
    clock = state.setdefault("clock", {})
    entry = {key: window.get(key) for key in ("start", "end", "start_utc", "end_utc", "watermark_utc", "events",
                                              "late", "rows")}
    if clock.setdefault("windows", {}).get(str(k)) != entry:
        clock["windows"][str(k)] = entry
        write_state(workdir, state)


def record_checked(workdir: Path, watermark: int) -> None:
    """Note that the log was checked through ``watermark`` and held nothing new (for the serving lag)."""
    state = read_state(workdir)
    clock = state.setdefault("clock", {})
    clock["checked_until"], clock["checked_until_utc"] = int(watermark), utc(watermark)
    write_state(workdir, state)


def record_log_view(workdir: Path, view: LogView, *, source: str) -> None:
    """Record what the last run saw of the live log (``clock.log`` in state.json; ``coea status`` shows it)."""
    state = read_state(workdir)
    clock = state.setdefault("clock", {})
    clock["log"] = {**view.as_dict(), "source": source, "checked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_state(workdir, state)


def skipped_days(workdir: Path) -> set[dt.date]:
    """Days declared empty with ``coea cycle --skip-day`` (state.json ``clock.skipped_days``)."""
    clock = read_clock(workdir) or {}
    return {parse_day(e["day"]) for e in clock.get("skipped_days", [])}


def skip_day(workdir: Path, day: str | dt.date, *, command: str = "") -> dt.date:
    """Declare ``day`` empty on purpose: the live clock treats it as complete without events. Recorded in
    state.json (``clock.skipped_days``: day, when, the command) and logged; a skip is never undone silently.

    Raises:
        ClockError: no clock yet (round 0 has not run), or the day already lies before the last round's end.
    """
    day = parse_day(day)
    state = read_state(workdir)
    clock = state.get("clock")
    if clock is None:
        raise ClockError(f"--skip-day {day}: {workdir} has no clock yet; run round 0 first")
    ends = [int(w["end"]) for w in clock.get("windows", {}).values() if w and w.get("end") is not None]
    consumed_to = max([int(clock["round0_cutoff"]), *ends])
    if day_start(day) < consumed_to:
        raise ClockError(f"--skip-day {day}: the day lies before {utc(consumed_to)}, which rounds already "
                         "consumed; nothing to skip")
    entries = clock.setdefault("skipped_days", [])
    if any(e["day"] == day.isoformat() for e in entries):
        log.info("clock: day %s was already declared empty", day)
        return day
    entries.append({"day": day.isoformat(), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command})
    write_state(workdir, state)
    log.warning("clock: day %s declared empty on purpose (--skip-day); recorded in state.json", day)
    return day


def request_reconsume(workdir: Path, paths: list[str]) -> None:
    """Ask the next round to read these consumed files again (``coea cycle --reconsume``; docs/data.md)."""
    state = read_state(workdir)
    clock = state.setdefault("clock", {})
    pending = clock.setdefault("reconsume", [])
    pending.extend(p for p in paths if p not in pending)
    write_state(workdir, state)


def pending_reconsume(workdir: Path) -> list[str]:
    """Files or partitions (``date=YYYY-MM-DD[/name]``) an operator asked to re-consume, not yet done."""
    return list((read_clock(workdir) or {}).get("reconsume", []))


def done_reconsume(workdir: Path, k: int, paths: list[str]) -> None:
    """Round k re-consumed ``paths``: move them from the request to the record (``clock.reconsumed``)."""
    state = read_state(workdir)
    clock = state.setdefault("clock", {})
    clock["reconsume"] = [p for p in clock.get("reconsume", []) if p not in paths]
    clock.setdefault("reconsumed", []).append({"round": k, "paths": list(paths),
                                                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    write_state(workdir, state)


def round_end(workdir: Path, k: int) -> int | None:
    """End of round k's window as recorded in state.json (round 0: its cut-off); None when unknown."""
    clock = read_clock(workdir)
    if clock is None:
        return None
    if k == 0:
        return int(clock["round0_cutoff"])
    entry = clock.get("windows", {}).get(str(k))
    return int(entry["end"]) if entry else None


# --------------------------------------------------------------------------------------------------- rules


def replay_end(cfg, round0_cutoff: int, k: int, data_end: int) -> int:
    """The replay schedule: ``cutoff(0) + k * cycle.replay_days`` days, capped at the end of the data."""
    return min(data_end, round0_cutoff + int(round(k * cfg.cycle.replay_days * DAY)))


def live_round0_cutoff(first: int, watermark: int, fraction: float) -> int:
    """``fraction`` of the whole days in ``[first, watermark)``, rounded down, at least one day, from ``first``."""
    days = (watermark - first) // DAY
    if days < 1:
        raise ValueError(f"the log holds no complete day before {utc(watermark)}: nothing for round 0")
    return first + max(1, int(fraction * days)) * DAY


@dataclass
class LogView:
    """What the clock sees of a live log from a round's start (``coea status`` shows it; docs/cycle.md, "Gaps").

    ``through`` is the last day of the run of consecutive complete (or skipped) days from the start day;
    ``gap_day`` the first day after it that is not complete while later complete days exist (``waiting``);
    ``gap_age_days`` = days from the gap day to the newest complete day (0 without a gap).
    """

    watermark: int
    through: dt.date | None
    newest_complete: dt.date | None
    gap_day: dt.date | None = None
    waiting: list[dt.date] = field(default_factory=list)

    @property
    def gap_age_days(self) -> int:
        if self.gap_day is None or self.newest_complete is None:
            return 0
        return max(0, (self.newest_complete - self.gap_day).days)

    def as_dict(self) -> dict[str, Any]:
        iso = (lambda d: d.isoformat() if d is not None else None)  # noqa: E731
        return {"watermark": int(self.watermark), "watermark_utc": utc(self.watermark),
                "complete_through": iso(self.through), "newest_complete_day": iso(self.newest_complete),
                "gap_day": iso(self.gap_day), "days_waiting": [iso(d) for d in self.waiting],
                "gap_age_days": self.gap_age_days}


def _run(first: dt.date, complete: set[dt.date]) -> dt.date | None:
    last, day = None, first
    while day in complete:
        last, day = day, day + dt.timedelta(days=1)
    return last


def partition_view(listing: LogListing, start: int, until: int | None = None,
                   skipped: Iterable[dt.date] = ()) -> LogView:
    """Day partitions: the watermark is the end of the run of consecutive complete days (``_SUCCESS``, or
    declared empty with ``--skip-day``) that starts at the day of ``start`` (``start`` itself when that day is not
    complete), lowered to ``until`` rounded down to a day boundary."""
    first = day_of(start)
    done = {p.day for p in listing.partitions if p.complete}
    last = _run(first, done | set(skipped))
    mark = day_start(last) + DAY if last is not None else start
    if until is not None:
        mark = min(mark, max(start, (until // DAY) * DAY))
    gap = last + dt.timedelta(days=1) if last is not None else first
    waiting = sorted(d for d in done if d > gap)
    newest = max(done) if done else None
    return LogView(mark, last, newest, gap if waiting else None, waiting)


def partition_watermark(listing: LogListing, start: int, until: int | None = None,
                        skipped: Iterable[dt.date] = ()) -> int:
    """:func:`partition_view`'s watermark; logs the days waiting behind a gap."""
    view = partition_view(listing, start, until, skipped)
    if view.waiting and (until is None or day_start(view.gap_day) < until):
        log.warning("clock: day %s is not complete (no partition, or no _SUCCESS yet); %d later complete day(s) "
                    "wait for it. A day without events is a partition holding only _SUCCESS (or `coea cycle "
                    "--skip-day %s`)", view.gap_day, len(view.waiting), view.gap_day)
    return view.watermark


def file_view(days: Iterable[int], start: int, until: int | None = None, skipped: Iterable[dt.date] = ()) -> LogView:
    """One ``events.parquet`` (``days``: the UTC day numbers that hold an event): the rule of day partitions with
    "the day holds an event" for "the day is complete", except that the newest day of the run is taken to be
    still arriving, so the watermark is its 00:00 UTC (lowered to ``until``). A row far in the future therefore
    never moves the watermark: it waits behind the first day without events, a gap (exit 8 past
    cycle.max_gap_days; a day without events is declared with ``--skip-day``)."""
    have = {EPOCH + dt.timedelta(days=int(d)) for d in days}
    first = day_of(start)
    run_last = _run(first, have | set(skipped))
    arriving = max((d for d in have if run_last is not None and first <= d <= run_last), default=None)
    mark = max(start, day_start(arriving)) if arriving is not None else start
    if until is not None:
        mark = min(mark, max(start, until))
    gap = run_last + dt.timedelta(days=1) if run_last is not None else first
    waiting = sorted(d for d in have if d > gap)
    through = arriving - dt.timedelta(days=1) if arriving is not None else None
    return LogView(mark, through, max(have) if have else None, gap if waiting else None, waiting)


def file_watermark(max_ts: int | None, until: int | None = None) -> int | None:
    """One ``events.parquet`` read in one piece (no run rule): 00:00 UTC of the newest event's day."""
    if max_ts is None:
        return None
    mark = (int(max_ts) // DAY) * DAY
    return mark if until is None else min(mark, until)

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
from pathlib import Path
from typing import Any

from coea.config import ConfigError
from coea.data.partitions import DAY, LogListing, day_of, day_start, parse_day, utc
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


def partition_watermark(listing: LogListing, start: int, until: int | None = None) -> int:
    """End of the run of consecutive complete days that starts at the day of ``start`` (``start`` itself when
    that day is not complete), lowered to ``until`` rounded down to a day boundary."""
    first = day_of(start)
    last = listing.complete_through(first)
    mark = day_start(last) + DAY if last is not None else start
    if until is not None:
        mark = min(mark, max(start, (until // DAY) * DAY))
    gap = last + dt.timedelta(days=1) if last is not None else first
    days = listing.by_day()
    blocked = [d for d in days if d > gap and days[d].complete]
    if blocked and (until is None or day_start(gap) < until):
        log.warning("clock: day %s is not complete (no partition, or no _SUCCESS yet); %d later complete day(s) "
                    "wait for it. A day without events is a partition holding only _SUCCESS", gap, len(blocked))
    return mark


def file_watermark(max_ts: int | None, until: int | None = None) -> int | None:
    """One ``events.parquet``: 00:00 UTC of the newest event's day (that day may still be arriving)."""
    if max_ts is None:
        return None
    mark = (int(max_ts) // DAY) * DAY
    return mark if until is None else min(mark, until)

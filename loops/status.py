"""``coea status``: what a workdir serves, what every round did, what is running, and the disk it takes.

:func:`workdir_status` builds one dict (``coea status --json`` prints it as is); :func:`format_status` renders it
as plain lines for a terminal or a cron mail. Per round, ``state`` says what the round is *now*:

    promoted now      served now (state.json's promoted_round)
    was promoted      promoted when it finished, no longer served (rolled back over, or a later round promoted)
    refused           the guardrail kept the previous round served
    bootstrapped      round 0
    in progress       an attempt is running right now (the lock is held)
    interrupted       an attempt started and did not end: the process died (lock free) or Ctrl-C
    partial           a round folder state.json does not know and no cycle runs: made by ``coea dsie`` or
                      ``coea bootstrap`` (round 0), or a process that died before its round's first record
    failed            the last attempt raised (``attempts`` of ``max_attempts``; traceback in ``failure_logs``)
    stopped           failed ``max_attempts`` times: not retried until ``coea cycle --retry``
    expired           deleted by retention (cycle.keep_rounds); the history entry stays

``status`` keeps the recorded decision (state.json), ``promoted_now`` / ``was_promoted`` make the difference
explicit for scripts. ``live_log`` (live clock only): the watermark, the newest complete day, a gap and the days
waiting behind it, and how many days of complete log serving lags behind (:func:`live_log_status`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from coea.data.delivery import QUARANTINE_LOG
from coea.data.partitions import DAY
from coea.errors import WorkdirError
from coea.rounds import STATE_FILE, read_state
from coea.workdir import STAGE_ORDER, round_dir
from loops.retention import disk_usage, human_bytes, rollback_offers, round_disk_usage, rounds_on_disk
from loops.state import lock_holder


def check_workdir(workdir: Path) -> Path:
    """The workdir as a Path; :class:`WorkdirError` (exit 2) when it is missing or holds no coea run."""
    workdir = Path(workdir)
    if not workdir.exists():
        raise WorkdirError(f"workdir {workdir} does not exist")
    if not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} is not a directory")
    if not (workdir / STATE_FILE).is_file() and not (workdir / "rounds").is_dir():
        raise WorkdirError(f"{workdir} is not a coea workdir (no {STATE_FILE}, no rounds/); check the path")
    return workdir


def _stages(workdir: Path, k: int) -> tuple[list[str], list[str]]:
    """(finished stages, stages in progress or left half-done) of round k, in pipeline order."""
    rp = round_dir(workdir, k)
    if not rp.is_dir():
        return [], []
    done, tmp = set(), set()
    for p in rp.iterdir():
        if p.is_dir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                tmp.add(p.name[1:-4])
            elif not p.name.startswith("."):
                done.add(p.name)
    if (Path(workdir) / "kv" / f"{k:03d}" / "manifest.json").is_file():
        done.add("kv")

    def order(names: set[str]) -> list[str]:
        return [n for n in STAGE_ORDER if n in names] + sorted(names - set(STAGE_ORDER))

    return order(done), order(tmp)


def _state_of(entry: dict[str, Any], promoted: int | None, held: bool) -> str:
    status = entry["status"]
    if entry.get("expired"):
        return "expired"
    if status == "promoted":
        return "promoted now" if entry["round"] == promoted else "was promoted"
    if status == "running":
        return "in progress" if held else "interrupted"
    if status == "failed":
        limit = entry.get("max_attempts")
        return "stopped" if limit and entry.get("attempts", 0) >= limit else "failed"
    return status  # refused, bootstrapped, interrupted


def workdir_status(workdir: Path) -> dict[str, Any]:
    """Everything ``coea status`` shows, as one JSON-able dict (see the module docstring)."""
    workdir = check_workdir(workdir)
    state = read_state(workdir)
    holder = lock_holder(workdir)
    promoted = state.get("promoted_round")
    entries = {r["round"]: r for r in state["rounds"]}
    rows = []
    for k in sorted(set(entries) | set(rounds_on_disk(workdir))):
        entry = entries.get(k)
        done, tmp = _stages(workdir, k)
        if entry is None:  # a folder state.json does not know (yet): an attempt before its first record
            report = (round_dir(workdir, k) / "report.json").is_file()
            entry = {"round": k, "status": "unrecorded", "reason": "", "metrics": {}}
            now = "in progress" if holder else "bootstrapped" if k == 0 and report else "partial"
        else:
            now = _state_of(entry, promoted, holder is not None)
        metrics = entry.get("metrics") or {}
        rows.append({
            "round": k, "state": now, "status": entry["status"], "promoted_now": k == promoted and
            entry["status"] == "promoted", "was_promoted": entry["status"] == "promoted" or
            any(b.get("to") == k for b in state.get("rollbacks", [])),
            "base": entry.get("base"), "attempts": entry.get("attempts"), "max_attempts": entry.get("max_attempts"),
            "window": entry.get("window"), "reason": entry.get("reason", ""),
            "started_at": entry.get("started_at"), "finished_at": entry.get("finished_at"),
            "expired": bool(entry.get("expired")), "on_disk": round_dir(workdir, k).is_dir(),
            "disk_bytes": round_disk_usage(workdir, k), "stages_done": done, "stages_unfinished": tmp,
            "failures": entry.get("failures", []),
            "headline": {m: metrics[m] for m in ("val/C-H@1", "val/NCP@5", "keys/count", "keys/aligned",
                                                 "data/rejected") if m in metrics},
        })
    total = disk_usage(workdir)
    rounds_bytes = disk_usage(workdir / "rounds")
    kv_bytes = disk_usage(workdir / "kv")
    rollbacks = state.get("rollbacks", [])
    return {
        "live_log": live_log_status(workdir, state),
        "workdir": str(workdir.resolve()),
        "promoted_round": promoted,
        "last_rollback": rollbacks[-1] if rollbacks else None,
        "config_fingerprint": state.get("config_fingerprint"),
        "lock": {"held": holder is not None, "holder": holder},
        "rounds": rows,
        "rollbacks": rollbacks,
        "rollback_offers": rollback_offers(workdir),
        "retention": state.get("retention"),
        "disk": {"total_bytes": total, "rounds_bytes": rounds_bytes, "kv_bytes": kv_bytes,
                 "other_bytes": max(0, total - rounds_bytes - kv_bytes)},
    }


def live_log_status(workdir: Path, state: dict[str, Any]) -> dict[str, Any] | None:
    """The live log as the last run saw it (state.json ``clock.log``) and how stale serving is; None for a replay
    workdir. ``serving_lag_days``: days of complete log the promoted round has not trained on (newest complete
    day's end minus the served round's window end); ``gap_day`` / ``days_waiting``: a missing day and the
    complete days behind it (docs/cycle.md, "Gaps")."""
    clock = state.get("clock") or {}
    view = clock.get("log")
    if clock.get("mode") != "live" or not view:
        return None
    promoted = state.get("promoted_round")
    windows = clock.get("windows", {})
    served_end = None
    if promoted is not None:
        served_end = clock.get("round0_cutoff") if promoted == 0 else (windows.get(str(promoted)) or {}).get("end")
    newest = view.get("newest_complete_day")
    lag = None
    if served_end is not None and newest:
        newest_end = (dt.date.fromisoformat(newest) - dt.date(1970, 1, 1)).days * DAY + DAY
        lag = round(max(0, newest_end - int(served_end)) / DAY, 2)
    quarantine = Path(workdir) / QUARANTINE_LOG
    return {**view, "served_round": promoted, "served_through": served_end,
            "served_through_utc": _utc(served_end), "serving_lag_days": lag,
            "skipped_days": [e["day"] for e in clock.get("skipped_days", [])],
            "reconsume_pending": clock.get("reconsume", []),
            "quarantined_files": len(quarantine.read_text().splitlines()) if quarantine.is_file() else 0}


def _utc(ts: int | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_status(status: dict[str, Any]) -> list[str]:
    """Plain, line-oriented text of :func:`workdir_status` (what ``coea status`` prints without --json)."""
    p = status["promoted_round"]
    rb = status["last_rollback"]
    lines = [f"workdir   {status['workdir']}"]
    served = f"round {p}" if p is not None else "nothing yet"
    if rb and rb.get("to") == p:
        served += f" (rolled back from round {rb.get('from')} at {rb.get('at')})"
    lines.append(f"promoted  {served}")
    lock = status["lock"]
    lines.append(f"lock      {'held by ' + lock['holder'] if lock['held'] else 'free'}")
    d = status["disk"]
    lines.append(f"disk      {human_bytes(d['total_bytes'])} in all: rounds {human_bytes(d['rounds_bytes'])}, "
                 f"KV {human_bytes(d['kv_bytes'])}, other {human_bytes(d['other_bytes'])}")
    offers = status["rollback_offers"]
    lines.append(f"rollback  {'rounds on offer: ' + ', '.join(map(str, offers)) if offers else 'nothing on offer'}")
    live = status.get("live_log")
    if live:
        lines.append(f"log       watermark {live['watermark_utc']}, newest complete day {live['newest_complete_day']}"
                     f" (checked {live['checked_at']})")
        lag = live["serving_lag_days"]
        lines.append(f"serving   through {live['served_through_utc'] or '-'} (round {live['served_round']}); "
                     f"{'lag ' + format(lag, 'g') + ' day(s) of complete log' if lag is not None else 'lag unknown'}")
        if live["gap_day"]:
            lines.append(f"gap       day {live['gap_day']} missing; {len(live['days_waiting'])} complete day(s) wait "
                         f"behind it ({live['gap_age_days']} day(s)); write it or `coea cycle --skip-day "
                         f"{live['gap_day']}`")
        extra = [f"skipped days {', '.join(live['skipped_days'])}" if live["skipped_days"] else "",
                 f"re-consume pending {', '.join(live['reconsume_pending'])}" if live["reconsume_pending"] else "",
                 f"{live['quarantined_files']} file(s) quarantined" if live["quarantined_files"] else ""]
        if any(extra):
            lines.append("data      " + "; ".join(e for e in extra if e))
    lines.append("")
    lines.append(f"{'round':>5}  {'state':<14} {'base':>4}  {'attempts':<8}  {'disk':>9}  {'finished':<24}  detail")
    for r in status["rounds"]:
        attempts = "-" if r["attempts"] is None else (f"{r['attempts']}/{r['max_attempts']}" if r["max_attempts"]
                                                      else str(r["attempts"]))
        detail = _detail(r)
        lines.append(f"{r['round']:>5}  {r['state']:<14} {'-' if r['base'] is None else r['base']:>4}  "
                     f"{attempts:<8}  {human_bytes(r['disk_bytes']) if r['on_disk'] or r['disk_bytes'] else '-':>9}  "
                     f"{(r['finished_at'] or '-'):<24}  {detail}".rstrip())
    return lines


def _detail(r: dict[str, Any]) -> str:
    parts = []
    if r["state"] in ("in progress", "interrupted", "partial") or r["stages_unfinished"]:
        parts.append(f"stages done: {', '.join(r['stages_done']) or 'none'}")
        if r["stages_unfinished"]:
            parts.append(f"unfinished: {', '.join(r['stages_unfinished'])}")
    if r["state"] in ("failed", "stopped") and r["failures"]:
        last = r["failures"][-1]
        parts.append(last["error"] + (f" (traceback: {last['log']})" if last.get("log") else ""))
        if r["state"] == "stopped":
            parts.append("fix it, then `coea cycle --retry`")
    elif r["state"] == "refused" and r["reason"]:
        parts.append(r["reason"])
    if r["state"] == "expired":
        parts.append(f"was {r['status']}")
    if r["headline"] and r["state"] not in ("expired",):
        parts.append(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r["headline"].items()))
    return "; ".join(parts)

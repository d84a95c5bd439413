"""Round state of a work directory: ``state.json``, the ``current`` link, the cycle lock and attempt counting.

``state.json``::

    {"promoted_round": 2, "config_fingerprint": "...",
     "rounds": [{"round": 1, "status": "promoted", "reason": "", "metrics": {...}, "finished_at": "...",
                 "base": 0, "attempts": 1, "window": {"start": ..., "end": ...}, "failures": [...]}, ...],
     "rollbacks": [{"from": 4, "to": 1, "at": "..."}],
     "retention": {"kept": [...], "expired": [...], "at": "..."}}

Round statuses:

- ``bootstrapped`` (round 0), ``promoted``, ``refused`` (the guardrail kept the previous round served): finished.
- ``running``: an attempt started and has not ended. With the lock free, the process died (killed, out of
  memory, power loss): ``coea status`` shows it as interrupted.
- ``failed``: an attempt raised; ``failures`` lists each failed attempt with its one-line error and the path of
  its traceback log ``rounds/NNN/failure-<attempt>.log``.
- ``interrupted``: stopped by Ctrl-C (KeyboardInterrupt); that attempt is not counted.

``status`` keeps what the round decided when it finished: a round that was promoted and later rolled back
over stays ``promoted`` here; ``promoted_round`` (and ``coea status``'s "promoted now") is what is served.
``expired: true`` marks a round whose directories retention deleted (the history entry stays).

Attempts: ``attempts`` counts the attempts of an unfinished round that started (a killed one included, since a
kill is only visible as a ``running`` entry left behind); Ctrl-C does not count. Round k's window always starts
where round k-1 ended, so attempts are counted per round: under a live clock the window's end may move between
attempts, but a failure caused by events already in the window repeats on the longer one. When ``attempts``
reaches ``cycle.max_attempts`` the round is not retried blindly (:class:`AttemptsExhaustedError`, exit 5) until
``coea cycle --retry`` resets the count (:func:`reset_attempts`). ``attempts_total`` counts every attempt ever
and numbers the failure logs, so a log is never overwritten after a reset.

The lock is an ``fcntl.flock`` on ``WORKDIR/.lock``: the kernel releases it when the holder dies, so a crashed
cycle never leaves a lock that blocks the next cron run (stale-lock recovery is automatic). The file records
the holder's pid, host and start time so ``coea status`` and the refusal message can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coea.errors import AttemptsExhaustedError, LockHeldError
from coea.rounds import STATE_FILE, read_state, write_state  # noqa: F401  (re-exported for the loops)
from coea.workdir import round_dir

log = logging.getLogger("coea.state")

FINISHED = ("bootstrapped", "promoted", "refused")
UNFINISHED = ("running", "failed", "interrupted")
#: Keep this many failed attempts' records per round (the log files stay in the round's folder).
MAX_FAILURE_RECORDS = 20
# Fields of a round's entry that a later record of the same round keeps unless it sets them itself.
_CARRIED = ("base", "attempts", "attempts_total", "max_attempts", "window", "failures", "retries",
            "started_at")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def round_entry(state: dict[str, Any], k: int) -> dict[str, Any] | None:
    return next((r for r in state["rounds"] if r["round"] == k), None)


def record_round(workdir: Path, k: int, status: str, *, reason: str = "", metrics: dict | None = None,
                 fingerprint: str | None = None, **fields: Any) -> dict[str, Any]:
    """Write round ``k``'s entry (replacing it; ``base``, ``attempts``, ``window``, ``failures`` carry over).

    ``status == 'promoted'`` also sets ``promoted_round``. Extra keyword fields are stored in the entry.
    """
    state = read_state(workdir)
    old = round_entry(state, k) or {}
    entry = {"round": k, "status": status, "reason": reason, "metrics": metrics or {},
             "finished_at": _now() if status in FINISHED + ("failed", "interrupted") else None}
    entry.update({f: old[f] for f in _CARRIED if f in old})
    entry.update(fields)
    state["rounds"] = sorted([r for r in state["rounds"] if r["round"] != k] + [entry], key=lambda r: r["round"])
    if status == "promoted":
        state["promoted_round"] = k
    if fingerprint:
        state["config_fingerprint"] = fingerprint
    write_state(workdir, state)
    return state


def promote_link(workdir: Path, k: int) -> None:
    """Point ``WORKDIR/current`` at ``rounds/NNN`` with one atomic rename of a fresh symlink."""
    workdir = Path(workdir)
    target = round_dir(workdir, k)
    if not target.is_dir():
        raise FileNotFoundError(f"round {k} does not exist in {workdir}")
    tmp = workdir / f".current.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(Path("rounds") / f"{k:03d}")
    os.replace(tmp, workdir / "current")


def last_finished_round(workdir: Path) -> int | None:
    """Highest round whose models finished training (promoted or not), or None."""
    done = [r["round"] for r in read_state(workdir)["rounds"] if r["status"] in FINISHED]
    return max(done) if done else None


# ------------------------------------------------------------------------------------------------ attempts


def attempts_so_far(workdir: Path, k: int) -> int:
    """Counted attempts of round ``k`` that did not finish it (0 when it has none or finished)."""
    entry = round_entry(read_state(workdir), k)
    if entry is None or entry["status"] not in UNFINISHED:
        return 0
    return int(entry.get("attempts", 0))


def check_attempts(workdir: Path, k: int, max_attempts: int, *, retry_hint: str = "coea cycle --retry") -> None:
    """Raise :class:`AttemptsExhaustedError` (exit 5) when round ``k`` already failed ``max_attempts`` times."""
    n = attempts_so_far(workdir, k)
    if n >= max_attempts:
        raise AttemptsExhaustedError(_exhausted_message(workdir, k, n, max_attempts, retry_hint))


def _exhausted_message(workdir: Path, k: int, n: int, max_attempts: int, retry_hint: str) -> str:
    entry = round_entry(read_state(workdir), k) or {}
    failures = entry.get("failures") or []
    last = failures[-1] if failures else {}
    cause = f"; last error: {last['error']}" + (f" (traceback: {last['log']})" if last.get("log") else "") \
        if last else ""
    return (f"round {k} failed {n} of cycle.max_attempts={max_attempts} attempts{cause}; it is not retried "
            f"blindly: fix the data or the config, then run `{retry_hint}` (docs/cycle.md, Failures)")


def reset_attempts(workdir: Path, k: int | None = None) -> int | None:
    """``coea cycle --retry``: set the attempt count of the unfinished round (or round ``k``) back to 0.

    Finished stages of that round are kept. Returns the round reset, or None when no round was unfinished.
    Takes the workdir lock (so a running cycle is never changed under its feet).
    """
    with workdir_lock(workdir):
        state = read_state(workdir)
        unfinished = [r for r in state["rounds"] if r["status"] in UNFINISHED and (k is None or r["round"] == k)]
        if not unfinished:
            return None
        entry = max(unfinished, key=lambda r: r["round"])
        entry.setdefault("retries", []).append({"at": _now(), "attempts_before": entry.get("attempts", 0)})
        entry["attempts"] = 0
        write_state(workdir, state)
        return entry["round"]


@dataclass
class Attempt:
    """One attempt of round ``k`` (see :func:`round_attempt`)."""

    workdir: Path
    round: int
    number: int
    max_attempts: int
    cancelled: bool = False

    def set_window(self, start: int | None, end: int) -> None:
        """Record the attempt's event window ``[start, end)`` in state.json."""
        state = read_state(self.workdir)
        entry = round_entry(state, self.round)
        if entry is not None:
            entry["window"] = {"start": start, "end": end}
            write_state(self.workdir, state)

    def cancel(self) -> None:
        """Nothing was run (e.g. no new events): restore the round's entry as it was before this attempt."""
        self.cancelled = True


@contextlib.contextmanager
def round_attempt(workdir: Path, k: int, *, max_attempts: int, base: int | None = None,
                  context: dict[str, Any] | None = None,
                  retry_hint: str = "coea cycle --retry") -> Iterator[Attempt]:
    """Count, record and log one attempt of round ``k``. Call it with the workdir lock held.

    On entry: refuse (exit 5) when the round already used ``max_attempts``; record it ``running`` with the next
    attempt number. On an exception: write the full traceback to ``rounds/NNN/failure-<attempt>.log``, record
    the round ``failed`` with that path, attach the path to the exception (``exc.coea_failure_log``, which the CLI
    prints with the one-line error) and re-raise it; or, when this was the last allowed attempt, raise
    :class:`AttemptsExhaustedError` from it. On Ctrl-C: record ``interrupted`` without counting the attempt.
    A normal exit leaves the entry to the caller (which records promoted / refused / bootstrapped).
    """
    workdir = Path(workdir)
    check_attempts(workdir, k, max_attempts, retry_hint=retry_hint)
    before = round_entry(read_state(workdir), k)
    number = attempts_so_far(workdir, k) + 1
    # Every attempt ever (never reset by --retry) numbers the failure logs, so none is overwritten.
    serial = int((before or {}).get("attempts_total", 0)) + 1
    fields: dict[str, Any] = {"attempts": number, "attempts_total": serial, "max_attempts": max_attempts,
                              "started_at": _now(), "pid": os.getpid()}
    if base is not None:
        fields["base"] = base
    record_round(workdir, k, "running", reason=f"attempt {number} started", **fields)
    attempt = Attempt(workdir, k, number, max_attempts)
    try:
        yield attempt
    except KeyboardInterrupt:
        record_round(workdir, k, "interrupted", reason=f"attempt {number} interrupted (Ctrl-C; not counted)",
                     attempts=number - 1, attempts_total=serial - 1)
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {_first_line(exc)}"
        try:  # best effort: a full disk must not hide the round's own error behind this one
            log_path: Path | None = write_failure_log(
                workdir, k, serial, exc, {**(context or {}), "base round": base,
                                          "attempt since the last --retry": number})
        except OSError as write_error:
            log_path = None
            log.error("round %d: could not write the failure log (%s)", k, write_error)
        try:
            state = read_state(workdir)
            failures = list((round_entry(state, k) or {}).get("failures") or [])
            failures.append({"attempt": number, "serial": serial, "error": error[:500],
                             "log": str(log_path) if log_path else None, "at": _now()})
            record_round(workdir, k, "failed", reason=error[:500], attempts=number,
                         failures=failures[-MAX_FAILURE_RECORDS:])
        except OSError as write_error:  # the "running" entry stays: the attempt still counts
            state = {}
            log.error("round %d: could not record the failure in state.json (%s)", k, write_error)
        if log_path is not None:
            exc.coea_failure_log = str(log_path)  # type: ignore[attr-defined]
        log.error("round %d: attempt %d of %d failed (%s); round %s stays promoted; traceback: %s", k, number,
                  max_attempts, error[:200], state.get("promoted_round"), log_path)
        if number >= max_attempts:
            raise AttemptsExhaustedError(_exhausted_message(workdir, k, number, max_attempts, retry_hint),
                                         failure_log=str(log_path) if log_path else None) from exc
        raise
    else:
        if attempt.cancelled:
            state = read_state(workdir)
            state["rounds"] = [r for r in state["rounds"] if r["round"] != k] + ([before] if before else [])
            state["rounds"].sort(key=lambda r: r["round"])
            write_state(workdir, state)


def write_failure_log(workdir: Path, k: int, attempt: int, exc: BaseException, context: dict[str, Any]) -> Path:
    """``rounds/NNN/failure-<attempt>.log`` (attempt = the round's attempt serial, never reset): when, where, the
    context lines and the full traceback."""
    path = round_dir(workdir, k) / f"failure-{attempt}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"coea round {k}, attempt {attempt}, failed at {_now()}",
             f"host {socket.gethostname()}, pid {os.getpid()}, workdir {Path(workdir).resolve()}",
             *(f"{key}: {value}" for key, value in context.items() if value is not None), "",
             "".join(traceback.format_exception(exc))]
    path.write_text("\n".join(lines))
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


# ------------------------------------------------------------------------------------------------ lock


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Hold the workdir's cycle lock; raise :class:`LockHeldError` naming the holder if it is taken."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(path).read_text().strip() or "unknown holder"
            raise LockHeldError(f"another cycle holds {path} ({holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid={os.getpid()} host={socket.gethostname()} since={time.strftime('%Y-%m-%dT%H:%M:%S')}"
                 .encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_holder(workdir: Path) -> str | None:
    """The holder of the workdir lock right now (``pid=... host=... since=...``), or None when it is free.

    Never touches the lock itself (a probe that took it, even briefly, could make a cron cycle starting at that
    moment exit 3): on Linux it reads ``/proc/locks`` for a flock on the lock file's inode; elsewhere it falls back
    to whether the pid recorded in the file (written by the holder, cleared on release) is alive on this host.
    """
    path = Path(workdir) / ".lock"
    try:
        st = path.stat()
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    held = _flock_held(st)
    if held is None:
        fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
        held = bool(text) and fields.get("host") == socket.gethostname() and _pid_alive(fields.get("pid", ""))
    return (text or "unknown holder") if held else None


def _flock_held(st: os.stat_result) -> bool | None:
    """Whether /proc/locks lists a flock on this inode; None when /proc/locks cannot be read."""
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if "FLOCK" in parts and "->" not in parts and any(p == want for p in parts):
            return True
    return False


def _pid_alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""Round state of a work directory: ``state.json``, the ``current`` link, and the cycle lock.

``state.json``::

    {"promoted_round": 2, "config_fingerprint": "...",
     "rounds": [{"round": 1, "status": "promoted" | "refused" | "failed", "reason": "...",
                 "metrics": {...}, "finished_at": "..."}, ...]}

The lock is an ``fcntl.flock`` on ``WORKDIR/.lock``: the kernel releases it when the holder dies, so a crashed
cycle never leaves a lock that blocks the next cron run (stale-lock recovery is automatic). The file records
the holder's pid, host and start time so ``coea status`` and the refusal message can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coea.errors import LockHeldError
from coea.rounds import STATE_FILE, read_state, write_state  # noqa: F401  (re-exported for the loops)
from coea.workdir import round_dir



def record_round(workdir: Path, k: int, status: str, *, reason: str = "", metrics: dict | None = None,
                 fingerprint: str | None = None) -> dict[str, Any]:
    """Append (or replace) round ``k``'s entry; set ``promoted_round`` when ``status == 'promoted'``."""
    state = read_state(workdir)
    state["rounds"] = [r for r in state["rounds"] if r["round"] != k]
    state["rounds"].append({"round": k, "status": status, "reason": reason, "metrics": metrics or {},
                            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    state["rounds"].sort(key=lambda r: r["round"])
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
    done = [r["round"] for r in read_state(workdir)["rounds"] if r["status"] in ("promoted", "refused", "bootstrapped")]
    return max(done) if done else None


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

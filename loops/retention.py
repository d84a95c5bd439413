"""Retention (``cycle.keep_rounds``): which rounds stay on disk, which expire whole, and what rollback offers.

After every finished round the cycle keeps, and deletes every other round whole (``rounds/NNN`` with its models,
candidates, DSIE and logs, and its KV version ``kv/NNN``):

- the newest ``keep_rounds`` finished rounds (promoted or refused, by round number; the newest finished round
  is always one of them, and the next round's data, sequence state and vocabularies start from it);
- round 0: the base model and tokenizer, the round-0 Novelty adapter (``pco.anchor: round0``) and the
  bootstrap's DSIE, which every later round needs;
- the promoted round (and whatever the KV pointer or the ``current`` link name, should they disagree after a
  crash): the next round starts every model from it;
- the round holding the newest DSIE stage: rounds between refreshes reuse it (``cycle.dsie_refresh_every``);
- the round holding the newest ``backbone`` stage (``coea.rounds.backbone_round``): a catalogue that grew the
  tokenizer saved the grown tokenizer and base model there, and every later round (and every kept earlier
  round's adapters) loads on it;
- unfinished rounds (running, failed, interrupted): the retry reuses their finished stages;
- round directories that state.json does not know: never deleted, only reported.

So the disk holds at most ``keep_rounds + 4`` finished rounds plus one unfinished round.

``coea rollback --to K`` offers every kept round K >= 1 that was promoted when it finished (or is the target of an
earlier rollback), whose round directory and KV version are both still on disk, other than the one promoted now
(:func:`rollback_offers`). Refused rounds are never offered: the guardrail judged them worse than what was
served. Rounds newer than the promoted one (after a rollback) are offered too, to undo the rollback.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from coea.errors import WorkdirError
from coea.rounds import backbone_round, read_state, write_state
from coea.workdir import round_dir, stage_done
from loops.state import FINISHED, UNFINISHED
from storage.kv import KVStore, read_pointer

log = logging.getLogger("coea.retention")

_ROUND = re.compile(r"^\d{3,}$")


@dataclass
class RetentionPlan:
    """``keep``: round -> why it stays; ``expire``: rounds to delete whole; ``unknown``: dirs left alone."""

    keep: dict[int, list[str]] = field(default_factory=dict)
    expire: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)

    def add(self, k: int, why: str) -> None:
        self.keep.setdefault(k, [])
        if why not in self.keep[k]:
            self.keep[k].append(why)


def rounds_on_disk(workdir: Path) -> list[int]:
    """Rounds with a ``rounds/NNN`` directory or a KV version ``kv/NNN``."""
    workdir = Path(workdir)
    found = set()
    for parent in (workdir / "rounds", workdir / "kv"):
        if parent.is_dir():
            found |= {int(p.name) for p in parent.iterdir() if _ROUND.match(p.name) and p.is_dir()}
    return sorted(found)


def newest_dsie_round(workdir: Path, k: int) -> int | None:
    """The round whose DSIE stage round ``k`` uses: the newest one at or before ``k`` (coea.rounds)."""
    for j in range(k, -1, -1):
        if stage_done(round_dir(workdir, j), "dsie"):
            return j
    return None


def plan_retention(workdir: Path, keep_rounds: int) -> RetentionPlan:
    """What :func:`apply_retention` would keep and delete now (see the module docstring for the rules)."""
    workdir = Path(workdir)
    if keep_rounds < 1:
        raise ValueError(f"keep_rounds must be >= 1, got {keep_rounds}")
    state = read_state(workdir)
    status = {r["round"]: r["status"] for r in state["rounds"]}
    on_disk = rounds_on_disk(workdir)
    plan = RetentionPlan()
    finished = sorted(r for r in on_disk if status.get(r) in FINISHED and r > 0)
    for r in finished[-keep_rounds:]:
        plan.add(r, f"newest {keep_rounds} finished")
    if 0 in on_disk:
        plan.add(0, "round 0: base model, tokenizer, round-0 models")
    if state.get("promoted_round") is not None:
        plan.add(state["promoted_round"], "promoted now")
    served = read_pointer(workdir / "kv") if (workdir / "kv").is_dir() else None
    if served is not None:
        plan.add(served, "served by the KV pointer")
    link = workdir / "current"
    if link.is_symlink() and _ROUND.match(Path(os.readlink(link)).name):
        plan.add(int(Path(os.readlink(link)).name), "the current link")
    last = max((r["round"] for r in state["rounds"] if r["status"] in FINISHED), default=0)
    dsie = newest_dsie_round(workdir, last + 1)
    if dsie is not None:
        plan.add(dsie, "newest DSIE (later rounds reuse it)")
    if 0 in on_disk:
        plan.add(backbone_round(workdir), "newest backbone (tokenizer + base model every round loads)")
    for r in on_disk:
        if status.get(r) in UNFINISHED or (r not in status and r > last):
            plan.add(r, "unfinished: a retry reuses its finished stages")
        elif r not in status:
            plan.unknown.append(r)
            plan.add(r, "not in state.json: left alone")
    plan.expire = [r for r in on_disk if r not in plan.keep]
    return plan


def apply_retention(workdir: Path, keep_rounds: int) -> RetentionPlan:
    """Delete every round :func:`plan_retention` does not keep, whole; mark them ``expired`` in state.json.

    Each KV version goes first (never the served one), then the round directory, renamed aside before it is
    removed so that it disappears at once. Call it with the workdir lock held.
    """
    workdir = Path(workdir)
    _remove_trash(workdir)
    plan = plan_retention(workdir, keep_rounds)
    if not plan.expire:
        return plan
    freed = sum(round_disk_usage(workdir, r) for r in plan.expire)
    KVStore(workdir).remove(plan.expire)
    for r in plan.expire:
        path = round_dir(workdir, r)
        if path.is_dir():
            trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
    state = read_state(workdir)
    at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for entry in state["rounds"]:
        if entry["round"] in plan.expire:
            entry["expired"] = True
            entry["expired_at"] = at
    state["retention"] = {"keep_rounds": keep_rounds, "kept": {str(k): v for k, v in sorted(plan.keep.items())},
                          "expired": plan.expire, "at": at}
    write_state(workdir, state)
    log.info("retention: expired rounds %s (%s freed); kept %s (cycle.keep_rounds = %d)",
             ", ".join(map(str, plan.expire)), human_bytes(freed), ", ".join(map(str, sorted(plan.keep))),
             keep_rounds)
    return plan


def rollback_offers(workdir: Path) -> list[int]:
    """Rounds ``coea rollback --to`` accepts now (module docstring)."""
    workdir = Path(workdir)
    state = read_state(workdir)
    was_promoted = {r["round"] for r in state["rounds"] if r["status"] == "promoted"}
    was_promoted |= {b["to"] for b in state.get("rollbacks", [])}
    kv = set(KVStore(workdir).list_rounds())
    return sorted(r for r in was_promoted if r >= 1 and r != state.get("promoted_round") and r in kv
                  and round_dir(workdir, r).is_dir())


# ------------------------------------------------------------------------------------------------ disk use


def disk_usage(path: Path) -> int:
    """Bytes on disk under ``path`` (allocated blocks; hard links once; symlinks not followed)."""
    total, seen = 0, set()
    stack = [Path(path)]
    while stack:
        p = stack.pop()
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
        if p.is_dir() and not p.is_symlink():
            try:
                stack.extend(p.iterdir())
            except (FileNotFoundError, PermissionError):
                continue
    return total


def round_disk_usage(workdir: Path, k: int) -> int:
    """Bytes of round ``k``: ``rounds/NNN`` plus its KV version ``kv/NNN``."""
    return disk_usage(round_dir(workdir, k)) + disk_usage(Path(workdir) / "kv" / f"{k:03d}")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _remove_trash(workdir: Path) -> None:
    rounds = Path(workdir) / "rounds"
    if rounds.is_dir():
        for p in rounds.iterdir():
            if p.name.startswith(".trash-"):
                log.warning("retention: removing %s left by an interrupted expiry", p)
                shutil.rmtree(p, ignore_errors=True)


def discard_unfinished(workdir: Path, k: int) -> bool:
    """``coea cycle --retry --fresh``: delete unfinished round ``k``'s stages and staged KV version (its failure
    logs stay), so the round starts over on the current data and config. Refuses a finished round. Call it with
    the workdir lock held.

    If a crash left the KV pointer on round ``k`` (between the pointer swap and state.json), the promoted round
    of state.json is served again first. Returns whether anything was deleted.
    """
    workdir = Path(workdir)
    state = read_state(workdir)
    entry = next((r for r in state["rounds"] if r["round"] == k), None)
    if entry is not None and entry["status"] in FINISHED:
        raise WorkdirError(f"round {k} finished ({entry['status']}); only an unfinished round can start over")
    store = KVStore(workdir)
    if read_pointer(workdir / "kv") == k:
        promoted = state.get("promoted_round")
        if promoted is None:
            raise WorkdirError(f"the KV pointer names unfinished round {k} and no round is promoted; inspect {workdir}")
        store.promote(promoted)
    removed = bool(store.remove([k]))
    path = round_dir(workdir, k)
    for child in sorted(path.iterdir()) if path.is_dir() else []:
        if child.name.startswith("failure-") and child.suffix == ".log":
            continue  # the failed attempts' tracebacks stay (state.json points at them)
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
        removed = True
    if removed:
        log.warning("round %d starts over: its finished stages and staged KV version were deleted (--fresh; the "
                    "failure logs stay)", k)
    return removed

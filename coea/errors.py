"""Errors that the CLI maps onto exit codes (see coea/cli.py and docs/cycle.md, Exit codes).

    0  promoted, or nothing new to train on
    1  a stage failed (the previous round stays served; the traceback is in rounds/NNN/failure-<attempt>.log)
    2  configuration or input error (one line naming the problem)
    3  another cycle holds the workdir lock
    4  the guardrail refused promotion (the previous round stays served)
    5  the round failed cycle.max_attempts times and is not retried blindly (fix it, then `coea cycle --retry`)
    7  live log data at risk: a file unreadable or missing a column, more than data.max_reject_fraction rejected,
       or a consumed file changed; nothing was consumed (one line naming the file and the problem)
    8  live log gap: a day is missing and later days wait behind it for more than cycle.max_gap_days
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_LOCKED = 3
EXIT_REFUSED = 4
EXIT_EXHAUSTED = 5
EXIT_DATA = 7  # 6 is `coea lookup`'s "not in the promoted round's tables" (coea/cli.py)
EXIT_GAP = 8

#: What each exit code means, in one phrase (docs, ``coea --help``).
EXIT_CODES = {
    EXIT_OK: "promoted, or nothing new",
    EXIT_FAILED: "a stage failed (the previous round stays served)",
    EXIT_INPUT: "configuration / input error",
    EXIT_LOCKED: "lock held by another cycle",
    EXIT_REFUSED: "guardrail refused promotion",
    EXIT_EXHAUSTED: "the round failed cycle.max_attempts times; fix it, then `coea cycle --retry`",
    EXIT_DATA: "live log data unreadable, rejected beyond data.max_reject_fraction, or changed after it was "
               "consumed; nothing consumed",
    EXIT_GAP: "live log gap older than cycle.max_gap_days: serving is stale (write the day or --skip-day)",
}

#: ``coea rounds`` exits with the worst code of its cycles, in this order (worst last): any failure is worse
#: than a refusal, which is worse than success; among failures, the ones that stop the loop rank highest.
SEVERITY = (EXIT_OK, EXIT_REFUSED, EXIT_FAILED, EXIT_GAP, EXIT_DATA, EXIT_INPUT, EXIT_LOCKED, EXIT_EXHAUSTED)


class DataError(ValueError):
    """A data file is missing or has the wrong format; the message is one line naming the file."""


class LiveDataError(DataError):
    """Live log data at risk (exit 7): a file unreadable or missing a required column, too many rows rejected,
    or a consumed file changed. Nothing was consumed; the message is one line naming the file and the problem."""


class LogGapError(RuntimeError):
    """The live log has a gap older than ``cycle.max_gap_days`` (exit 8); the message names the missing day."""


class LockHeldError(RuntimeError):
    """Another cycle holds the workdir lock (exit 3)."""


class GuardrailError(RuntimeError):
    """Validation refused promotion of a round (exit 4)."""


class AttemptsExhaustedError(RuntimeError):
    """The round failed ``cycle.max_attempts`` times; it is not retried until reset (exit 5)."""

    def __init__(self, message: str, *, failure_log: str | None = None) -> None:
        super().__init__(message)
        self.coea_failure_log = failure_log


class WorkdirError(ValueError):
    """The workdir is missing, not a coea workdir, or cannot do what was asked (e.g. rollback target; exit 2)."""


def worst(codes: list[int]) -> int:
    """The worst exit code by :data:`SEVERITY` (0 for no codes); unknown codes rank as a failure."""
    rank = {c: i for i, c in enumerate(SEVERITY)}
    return max(codes, key=lambda c: rank.get(c, rank[EXIT_FAILED]), default=EXIT_OK)


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, LockHeldError):
        return EXIT_LOCKED
    if isinstance(exc, GuardrailError):
        return EXIT_REFUSED
    if isinstance(exc, AttemptsExhaustedError):
        return EXIT_EXHAUSTED
    if isinstance(exc, WorkdirError):
        return EXIT_INPUT
    if isinstance(exc, LiveDataError):
        return EXIT_DATA
    if isinstance(exc, LogGapError):
        return EXIT_GAP
    if isinstance(exc, DataError):
        return EXIT_INPUT  # a missing data file or wrong format is a configuration problem
    if isinstance(exc, FileNotFoundError):
        return EXIT_INPUT
    return EXIT_FAILED

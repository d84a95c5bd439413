"""Errors that the CLI maps onto exit codes (see coea/cli.py)."""

from __future__ import annotations


class LockHeldError(RuntimeError):
    """Another cycle holds the workdir lock (exit 3)."""


class GuardrailError(RuntimeError):
    """Validation refused promotion of a round (exit 4)."""


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, LockHeldError):
        return 3
    if isinstance(exc, GuardrailError):
        return 4
    try:
        from coea.data.schema import DataError
    except ImportError:  # pragma: no cover
        DataError = ()  # type: ignore[assignment]  # noqa: N806
    if DataError and isinstance(exc, DataError):
        return 2  # a missing data file or wrong format is a configuration problem
    if isinstance(exc, FileNotFoundError):
        return 2
    return 1

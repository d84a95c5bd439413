"""Attempt counting in state.json (loops.state.round_attempt): failure logs, the attempt limit, kills, Ctrl-C, reset.

No training here: the rules are checked on a bare workdir with a body that raises on purpose.
"""

from __future__ import annotations

import pytest

from coea.errors import AttemptsExhaustedError, exit_code_for, worst
from loops.state import (
    attempts_so_far, check_attempts, read_state, record_round, reset_attempts, round_attempt, round_entry,
)


def _fail(workdir, k=1, max_attempts=3, message="boom"):
    with pytest.raises(Exception) as err:
        with round_attempt(workdir, k, max_attempts=max_attempts, base=0, context={"window start": 10}):
            raise ValueError(message)
    return err.value


def test_a_failure_writes_its_traceback_and_is_counted(tmp_path):
    exc = _fail(tmp_path)
    assert isinstance(exc, ValueError)
    entry = round_entry(read_state(tmp_path), 1)
    assert entry["status"] == "failed" and entry["attempts"] == 1 and entry["base"] == 0
    log = tmp_path / "rounds" / "001" / "failure-1.log"
    assert exc.coea_failure_log == str(log) == entry["failures"][0]["log"]
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "ValueError: boom" in text and "window start: 10" in text
    assert entry["failures"][0]["error"] == "ValueError: boom"
    assert exit_code_for(exc) == 1


def test_the_last_allowed_attempt_exits_5_and_later_runs_do_not_start(tmp_path):
    _fail(tmp_path, max_attempts=2)
    exc = _fail(tmp_path, max_attempts=2, message="boom again")
    assert isinstance(exc, AttemptsExhaustedError) and exit_code_for(exc) == 5
    assert isinstance(exc.__cause__, ValueError)  # the real error stays attached
    assert "failed 2 of cycle.max_attempts=2" in str(exc) and "--retry" in str(exc) and "failure-2.log" in str(exc)
    ran = []
    with pytest.raises(AttemptsExhaustedError):
        with round_attempt(tmp_path, 1, max_attempts=2):
            ran.append(True)
    assert not ran and not (tmp_path / "rounds" / "001" / "failure-3.log").exists()
    with pytest.raises(AttemptsExhaustedError):
        check_attempts(tmp_path, 1, 2)
    check_attempts(tmp_path, 1, 3)  # a higher limit lets it run again


def test_a_killed_attempt_counts_and_ctrl_c_does_not(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with round_attempt(tmp_path, 1, max_attempts=3):
            raise KeyboardInterrupt
    entry = round_entry(read_state(tmp_path), 1)
    assert entry["status"] == "interrupted" and attempts_so_far(tmp_path, 1) == 0
    # A SIGKILL leaves the "running" record of its attempt behind: it was counted when it started.
    record_round(tmp_path, 1, "running", attempts=1)
    with round_attempt(tmp_path, 1, max_attempts=3) as attempt:
        assert attempt.number == 2
    record_round(tmp_path, 1, "promoted")
    assert round_entry(read_state(tmp_path), 1)["attempts"] == 2  # the finished entry says how many it took
    assert attempts_so_far(tmp_path, 1) == 0  # and a finished round has no pending attempts


def test_retry_resets_the_count_and_keeps_the_history(tmp_path):
    _fail(tmp_path, max_attempts=1)
    with pytest.raises(AttemptsExhaustedError):
        check_attempts(tmp_path, 1, 1)
    assert reset_attempts(tmp_path) == 1
    check_attempts(tmp_path, 1, 1)
    entry = round_entry(read_state(tmp_path), 1)
    assert entry["retries"][0]["attempts_before"] == 1 and len(entry["failures"]) == 1
    with round_attempt(tmp_path, 1, max_attempts=1) as attempt:
        assert attempt.number == 1
    assert reset_attempts(tmp_path) == 1  # still unfinished (the body recorded nothing)
    record_round(tmp_path, 1, "refused")
    assert reset_attempts(tmp_path) is None  # nothing unfinished


def test_cancel_restores_the_entry(tmp_path):
    _fail(tmp_path)
    before = round_entry(read_state(tmp_path), 1)
    with round_attempt(tmp_path, 1, max_attempts=3) as attempt:
        attempt.cancel()  # e.g. no new events: nothing ran, so it is not an attempt
    assert round_entry(read_state(tmp_path), 1) == before
    with round_attempt(tmp_path, 2, max_attempts=3) as attempt:
        attempt.cancel()
    assert round_entry(read_state(tmp_path), 2) is None


def test_worst_exit_code_order():
    assert worst([]) == 0
    assert worst([0, 4, 0]) == 4
    assert worst([4, 1, 0]) == 1  # any failure is worse than a refusal
    assert worst([1, 2]) == 2 and worst([1, 3]) == 3 and worst([2, 5, 1]) == 5


def test_a_full_disk_while_logging_does_not_hide_the_error(tmp_path, monkeypatch):
    import errno

    import loops.state as state

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state, "write_failure_log", no_space)
    exc = _fail(tmp_path)
    assert isinstance(exc, ValueError) and not hasattr(exc, "coea_failure_log")
    entry = round_entry(read_state(tmp_path), 1)
    assert entry["status"] == "failed" and entry["failures"][0]["log"] is None

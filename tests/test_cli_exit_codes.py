"""Exit codes of `coea cycle` and `coea rounds` (coea/errors.py), through ``coea.cli.main`` with a stand-in cycle.

The real cycles behind each code are exercised in tests/loops/test_operations.py; here the mapping and the
`rounds` loop (worst code, where it stops) are checked exactly and fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import loops.cycle as cycle
from coea.cli import main
from coea.errors import AttemptsExhaustedError, LockHeldError
from coea.workdir import InjectedFault
from loops.cycle import CycleResult

DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")

PROMOTED = CycleResult(round=1, promoted=True)
REFUSED = CycleResult(round=2, promoted=False, reason="guardrail: ...")
NOTHING = CycleResult(round=2, promoted=False, reason="no new events", status="nothing_new")


def _script(monkeypatch, outcomes):
    """Make run_cycle return / raise the outcomes in order; returns the list of calls made."""
    calls = []

    def fake(cfg, workdir, **kwargs):
        calls.append(workdir)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(cycle, "run_cycle", fake)
    return calls


def test_cycle_result_status_defaults_follow_promoted():
    assert PROMOTED.status == "promoted" and REFUSED.status == "refused" and NOTHING.status == "nothing_new"


@pytest.mark.parametrize("outcome, code", [(PROMOTED, 0), (REFUSED, 4), (NOTHING, 0),
                                           (InjectedFault("x"), 1), (FileNotFoundError("data"), 2),
                                           (LockHeldError("held"), 3), (AttemptsExhaustedError("limit"), 5)])
def test_cycle_exit_codes(monkeypatch, tmp_path, capsys, outcome, code):
    _script(monkeypatch, [outcome])
    assert main(["cycle", "--config", DEMO, "--workdir", str(tmp_path)]) == code
    captured = capsys.readouterr()
    if outcome is NOTHING:
        assert captured.out.startswith("nothing new after round 2: no new events")
    if code in (1, 2, 3, 5):  # one line for cron (stderr may also name the command's log file first)
        failure = [line for line in captured.err.strip().splitlines() if line.startswith("coea:")]
        assert len(failure) == 1 and failure[0] == captured.err.strip().splitlines()[-1]


def test_config_error_exits_2(tmp_path, capsys):
    assert main(["cycle", "--config", DEMO, "--workdir", str(tmp_path), "--set", "cycle.max_attempts=0"]) == 2
    assert "cycle.max_attempts" in capsys.readouterr().err


@pytest.mark.parametrize("outcomes, code, ran", [
    ([PROMOTED, REFUSED, PROMOTED], 4, 3),                        # a refusal is worse than success
    ([PROMOTED, InjectedFault("x"), PROMOTED], 1, 3),            # a failure is worse than a refusal; go on
    ([REFUSED, InjectedFault("x"), REFUSED], 1, 3),
    ([PROMOTED, LockHeldError("held"), PROMOTED], 3, 2),          # stop: another cycle runs
    ([InjectedFault("x"), AttemptsExhaustedError("limit"), PROMOTED], 5, 2),  # stop: attempt limit
    ([FileNotFoundError("data"), PROMOTED, PROMOTED], 2, 1),      # stop: input error repeats
    ([PROMOTED, NOTHING, PROMOTED], 0, 2),                        # stop: nothing more to do
])
def test_rounds_exits_with_the_worst_code_and_stops_where_it_should(monkeypatch, tmp_path, capsys, outcomes, code,
                                                                   ran):
    calls = _script(monkeypatch, outcomes)
    assert main(["rounds", "--n", "3", "--config", DEMO, "--workdir", str(tmp_path)]) == code
    assert len(calls) == ran
    assert f"rounds: {ran} of 3 cycles ran" in capsys.readouterr().out

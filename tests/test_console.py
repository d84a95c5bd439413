"""The shared progress display: nested bars on a terminal, plain lines elsewhere, banners as marked records."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

from coea import console as shared
from coea.workdir import progress as workdir_progress


@pytest.fixture
def terminal():
    con = Console(file=io.StringIO(), force_terminal=True, width=100)
    shared.set_console(con)
    yield con
    shared.set_console(None)


@pytest.fixture
def pipe():
    con = Console(file=io.StringIO(), force_terminal=False, width=100)
    shared.set_console(con)
    yield con
    shared.set_console(None)


def test_nested_bars_share_one_live_display(terminal):
    """A loop inside a loop adds a line instead of starting a second live display (rich would raise)."""
    with workdir_progress() as outer:
        task = outer.add_task("outer", total=2, unit="rounds")
        for _ in range(2):
            assert list(shared.iterate(range(3), "inner", unit="batches")) == [0, 1, 2]
            outer.advance(task)
        assert shared._live is not None and len(shared._live.tasks) == 1  # the inner task is gone
    assert shared._live is None
    assert "outer" in terminal.file.getvalue()


def test_plain_lines_without_a_terminal(pipe, monkeypatch, caplog):
    monkeypatch.setattr(shared, "PLAIN_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="coea.progress"), shared.progress() as bars:
        task = bars.add_task("Novelty SFT", total=4, unit="steps")
        bars.advance(task)
        bars.update(task, completed=3)
    lines = [r.getMessage() for r in caplog.records if r.name == "coea.progress"]
    assert lines[0].startswith("Novelty SFT: 1/4 steps (25%)") and "ETA" in lines[0]
    assert lines[-1].startswith("Novelty SFT: 3/4 steps (75%)")
    assert pipe.file.getvalue() == ""  # nothing drawn


def test_plain_lines_are_rate_limited(pipe, caplog):
    with caplog.at_level(logging.INFO, logger="coea.progress"):
        for _ in shared.iterate(range(50), "fast loop"):
            pass
    assert not [r for r in caplog.records if r.name == "coea.progress"]  # well under PLAIN_EVERY_S


def test_banner_is_one_marked_record(caplog):
    with caplog.at_level(logging.INFO, logger="coea.stage"):
        shared.banner("Novelty SFT", "1,082 examples", "", "136 steps")
    (record,) = caplog.records
    assert record.getMessage() == "Novelty SFT · 1,082 examples · 136 steps"
    assert getattr(record, shared.BANNER) == ("Novelty SFT", ("1,082 examples", "136 steps"))


@pytest.mark.parametrize("n, word, expected", [(1, "epoch", "1 epoch"), (2.0, "epoch", "2 epochs"),
                                               (1.5, "epoch", "1.5 epochs"), (12345, "key", "12,345 keys")])
def test_plural(n, word, expected):
    assert shared.plural(n, word) == expected

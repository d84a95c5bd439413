"""Trainer reporting: which round a stage folder belongs to, and the one-line loss summary."""

from __future__ import annotations

import logging

from loops.trainer_log import loss_line, round_of


def test_round_of_stage_folders(tmp_path):
    assert round_of(tmp_path / "rounds" / "000" / ".relevance.tmp") == 0
    assert round_of(tmp_path / "rounds" / "012" / ".pco.tmp" / "worker") == 12
    assert round_of(tmp_path / "elsewhere" / "out") is None


def test_loss_line(caplog):
    with caplog.at_level(logging.INFO, logger="coea.trainer"):
        loss_line("Novelty SFT", [1.9104, 1.6021], 1082, "example")
        loss_line("Novelty SFT", [], 1, "example")
    assert [r.getMessage() for r in caplog.records] == ["Novelty SFT: 1,082 examples, loss 1.910 -> 1.602",
                                                        "Novelty SFT: 1 example, loss nan -> nan"]

"""Tracking never needs a network and never fails a cycle."""

from __future__ import annotations

import json

from coea.config import load_config
from coea.tracking import LocalTracker, WandbTracker, make_tracker, plot_rounds


def test_offline_wandb_run_with_round_step(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(None).tracking
    tracker = make_tracker(cfg, tmp_path, 3)
    assert isinstance(tracker, WandbTracker)
    tracker.log({"val/C-H@1": 0.5}, round=3)
    tracker.finish()
    assert list((tmp_path / "tracking" / "wandb").glob("offline-run-*"))
    line = json.loads((tmp_path / "tracking" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["round"] == 3 and line["val/C-H@1"] == 0.5


def test_init_failure_falls_back_without_raising(tmp_path, monkeypatch):
    import wandb

    def boom(*a, **k):
        raise TimeoutError("no network")

    monkeypatch.setattr(wandb, "init", boom)
    tracker = make_tracker(load_config(None).tracking, tmp_path, 1)
    assert isinstance(tracker, LocalTracker) and not isinstance(tracker, WandbTracker)
    tracker.log({"x": 1}, round=1)


def test_plot_rounds(tmp_path):
    for n in (1, 3):
        out = plot_rounds([{"round": r, "val/C-H@1": 0.1 * r, "pco/kl": 0.01} for r in range(1, n + 1)],
                          tmp_path / f"p{n}.png")
        assert out.stat().st_size > 0

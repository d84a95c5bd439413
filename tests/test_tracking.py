"""Tracking never needs a network and never fails a cycle."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import pytest

from coea.config import load_config
from coea.tracking import (
    LocalTracker,
    NullTracker,
    WandbTracker,
    make_tracker,
    plot_rounds,
    wandb_mode,
    workdir_group,
)


@pytest.fixture
def no_network_env(tmp_path, monkeypatch):
    """Offline W&B with its files under tmp_path and a server address that refuses every connection."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: any network use would fail
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def tracking_cfg(**changes):
    return dataclasses.replace(load_config(None).tracking, **changes)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for_bytes(path, needle, seconds=10.0):
    """wandb-core writes the run file asynchronously; finish() can return a moment before the last record."""
    deadline = time.monotonic() + seconds
    while needle not in (data := path.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return data


class FakeRun:
    """Records what make_tracker and WandbTracker do with a run."""

    def __init__(self, **init_kwargs):
        self.init_kwargs = init_kwargs
        self.defined, self.logged, self.summary, self.finished = [], [], {}, 0

    def define_metric(self, name, **kw):
        self.defined.append((name, kw))

    def log(self, row):
        self.logged.append(row)

    def alert(self, **kw):
        raise RuntimeError("offline runs cannot alert")

    def finish(self):
        self.finished += 1


@pytest.fixture
def fake_wandb(monkeypatch):
    import wandb

    runs = []

    def init(**kw):
        runs.append(FakeRun(**kw))
        return runs[-1]

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "setup", lambda *a, **k: None)
    return runs


def test_offline_wandb_run_writes_local_files(no_network_env):
    """A real offline run: the run directory appears under $WANDB_DIR and carries the logged metric."""
    tmp_path = no_network_env
    tracker = make_tracker(tracking_cfg(init_timeout_s=30.0), tmp_path / "work", 3, run_name="demo")
    assert isinstance(tracker, WandbTracker)
    assert tracker.run.name == "round-003" and tracker.run.job_type == "cycle"
    assert tracker.run.group == workdir_group(tmp_path / "work", "demo")
    tracker.log({"val/C-H@1": 0.5, "pco/kl": 0.01}, round=3)
    tracker.summary({"val/C-H@1": 0.5})
    tracker.alert("coea round 3: DPO alert", "kl_spike")  # offline: cannot be sent, must not raise
    tracker.finish()
    runs = list((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert b"val/C-H@1" in wait_for_bytes(next(runs[0].glob("*.wandb")), b"val/C-H@1")
    lines = read_jsonl(tmp_path / "work" / "tracking" / "metrics.jsonl")
    assert [line["kind"] for line in lines] == ["log", "summary", "alert"]
    assert lines[0]["round"] == 3 and lines[0]["val/C-H@1"] == 0.5
    assert lines[2]["round"] == 3 and lines[2]["text"] == "kl_spike"


def test_run_contract(tmp_path, fake_wandb, monkeypatch):
    """One run per cycle: round-NNN in the workdir's group, job_type cycle, round as the step metric, offline, a
    fresh id and resume never (offline runs are never resumed)."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = tracking_cfg()
    for k in (1, 2):
        tracker = make_tracker(cfg, tmp_path, k)
        tracker.log({"val/NCP@5": 0.1 * k, "round": 99}, round=k)
        tracker.finish()
    first, second = fake_wandb
    kw = first.init_kwargs
    assert kw["name"] == "round-001" and kw["job_type"] == "cycle" and kw["mode"] == "offline"
    assert kw["resume"] == "never" and kw["group"] == second.init_kwargs["group"] == workdir_group(tmp_path)
    assert kw["id"] != second.init_kwargs["id"]
    assert first.defined == [("round", {}), ("*", {"step_metric": "round"})]
    assert first.logged == [{"round": 1, "val/NCP@5": 0.1}] and first.finished == 1
    assert second.init_kwargs["settings"].init_timeout == cfg.init_timeout_s


def test_mode_is_offline_unless_configured_online(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode("offline") == "offline" and wandb_mode("online") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode("online") == "offline"  # the environment can cut the network
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode("offline") == "offline"  # ... but never turns an offline config online


def test_group_is_stable_and_distinguishes_workdirs(tmp_path):
    a, b = tmp_path / "x" / "w", tmp_path / "y" / "w"
    assert workdir_group(a) == workdir_group(a) == workdir_group(str(a) + "/")
    assert workdir_group(a) != workdir_group(b) and workdir_group(a).startswith("w-")
    assert workdir_group(a, "ml 100k").startswith("ml_100k-w-")


@pytest.mark.parametrize("error", [TimeoutError("init timed out"), RuntimeError("no network"), SystemExit(1)])
def test_init_failure_falls_back_without_raising(tmp_path, monkeypatch, caplog, error):
    import wandb

    def boom(*a, **k):
        raise error

    monkeypatch.setattr(wandb, "setup", lambda *a, **k: None)
    monkeypatch.setattr(wandb, "init", boom)
    with caplog.at_level(logging.WARNING, logger="coea.tracking"):
        tracker = make_tracker(tracking_cfg(), tmp_path, 1)
    assert isinstance(tracker, LocalTracker)
    assert "W&B init failed" in caplog.text
    tracker.log({"val/C-H@1": 1.0}, round=1)
    tracker.finish()
    assert read_jsonl(tmp_path / "tracking" / "metrics.jsonl")[0]["val/C-H@1"] == 1.0


def test_define_metric_failure_closes_the_run(tmp_path, fake_wandb, monkeypatch):
    def broken(self, name, **kw):
        raise RuntimeError("service died")

    monkeypatch.setattr(FakeRun, "define_metric", broken)
    tracker = make_tracker(tracking_cfg(), tmp_path, 1)
    assert isinstance(tracker, LocalTracker) and fake_wandb[0].finished == 1


def test_a_later_wandb_error_only_turns_wandb_off(tmp_path, fake_wandb, caplog):
    tracker = make_tracker(tracking_cfg(), tmp_path, 2)
    fake_wandb[0].log = lambda row: (_ for _ in ()).throw(OSError("disk full"))
    with caplog.at_level(logging.WARNING, logger="coea.tracking"):
        tracker.log({"keys/count": 3}, round=2)
        tracker.log({"keys/count": 4}, round=2)
        tracker.finish()
    assert caplog.text.count("W&B log failed") == 1 and fake_wandb[0].finished == 0
    assert [line["keys/count"] for line in read_jsonl(tmp_path / "tracking" / "metrics.jsonl")] == [3, 4]


def test_backends_local_none_and_disabled(tmp_path, monkeypatch, fake_wandb):
    import numpy as np

    assert isinstance(make_tracker(tracking_cfg(backend="none"), tmp_path, 1), NullTracker)
    local = make_tracker(tracking_cfg(backend="local"), tmp_path, 1)
    assert type(local) is LocalTracker
    local.log({"pco/kl": np.float32(0.25), "pco/dpo_loss": float("nan"), "keys/count": np.int64(7)}, round=1)
    line = read_jsonl(tmp_path / "tracking" / "metrics.jsonl")[0]
    assert line["pco/kl"] == 0.25 and line["pco/dpo_loss"] is None and line["keys/count"] == 7  # strict JSON
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert type(make_tracker(tracking_cfg(), tmp_path, 1)) is LocalTracker and not fake_wandb


def test_plot_rounds(tmp_path):
    """1 and 3 rounds write a non-empty PNG; missing, None and NaN values are skipped; no metric -> still a PNG."""
    for n in (1, 3):
        history = [{"round": r, "val/C-H@1": 0.1 * r, "pco/kl": 0.01, "keys/count": None} for r in range(1, n + 1)]
        out = plot_rounds(history, tmp_path / f"p{n}.png")
        assert out.stat().st_size > 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = plot_rounds([{"round": 1, "val/C-H@1": float("nan")}], tmp_path / "sub" / "empty.png")
    assert out.stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))

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
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))  # artifact staging stays in tmp_path
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

    def use_artifact(self, name):
        self.used = [*getattr(self, "used", []), name]


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
    assert first.defined == [("round", {}), ("val/NCP@5", {"step_metric": "round"})]  # declared before use
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


def test_trainer_history_gets_its_own_step_metric(tmp_path, fake_wandb):
    """A Hugging Face log history is replayed as <prefix>/<metric> against <prefix>/global_step; the closing row
    (train_runtime, train_loss) goes to the summary, not the curves."""
    tracker = make_tracker(tracking_cfg(), tmp_path, 1)
    history = [{"loss": 2.0, "learning_rate": 1e-3, "epoch": 0.5, "step": 1},
               {"loss": 1.5, "learning_rate": 1e-3, "epoch": 1.0, "step": 2, "note": "text is skipped"},
               {"train_runtime": 3.2, "train_loss": 1.75, "epoch": 1.0, "step": 2}]
    tracker.log_history("novelty_sft", history)
    run = fake_wandb[0]
    assert ("novelty_sft/global_step", {}) in run.defined
    assert ("novelty_sft/loss", {"step_metric": "novelty_sft/global_step"}) in run.defined
    assert run.logged == [{"novelty_sft/global_step": 1, "novelty_sft/loss": 2.0, "novelty_sft/learning_rate": 1e-3,
                           "novelty_sft/epoch": 0.5},
                          {"novelty_sft/global_step": 2, "novelty_sft/loss": 1.5, "novelty_sft/learning_rate": 1e-3,
                           "novelty_sft/epoch": 1.0}]
    assert run.summary["novelty_sft/train_loss"] == 1.75


def test_inputs_are_declared_online_only(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    offline = make_tracker(tracking_cfg(), tmp_path, 2)
    offline.use_artifact("novelty-adapter-x", "round-1")  # wandb refuses use_artifact offline: nothing to do
    assert not hasattr(fake_wandb[0], "used")
    online = make_tracker(tracking_cfg(mode="online"), tmp_path, 2)
    online.use_artifact("novelty-adapter-x", "round-1")
    assert fake_wandb[1].used == ["novelty-adapter-x:round-1"]


def test_artifacts_offline_copy_small_reference_large(no_network_env):
    """A folder under tracking.artifact_copy_max_mb is copied into the artifact; a larger one is a file://
    reference; metadata keeps its lists; the local lines record every artifact."""
    import subprocess
    import sys
    from pathlib import Path

    from coea.tracking import TableData

    tmp_path = no_network_env
    small, big = tmp_path / "adapter", tmp_path / "model"
    small.mkdir(), big.mkdir()
    (small / "a.bin").write_bytes(b"x" * 1000)
    (big / "b.bin").write_bytes(b"y" * 3000)
    tracker = make_tracker(tracking_cfg(artifact_copy_max_mb=0.002), tmp_path / "work", 1)
    tracker.log_artifact("novelty-adapter-t", "model", paths=[small], aliases=["round-1", "promoted"],
                         metadata={"round": 1, "inputs": ["a:round-0"]})
    tracker.log_artifact("relevance-model-t", "model", paths=[big], aliases=["round-1"],
                         table=TableData(columns=["key", "scores"], rows=[["g|0f", "0.900"]]))
    tracker.finish()
    (run,) = (tmp_path / "wandb_dir" / "wandb").glob("offline-run-*")
    exe = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(exe), "leet", "inspect", "--json", str(run)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    arts = {a["name"]: a for a in (json.loads(line)["artifact"] for line in out.splitlines()
                                  if '"type":"artifact"' in line)}
    copied = arts["novelty-adapter-t"]
    assert set(copied["aliases"]) >= {"round-1", "promoted"} and json.loads(copied["metadata"])["inputs"] == [
        "a:round-0"]
    assert [c["path"] for c in copied["manifest"]["contents"]] == ["adapter/a.bin"]
    refs = [c.get("ref", "") for c in arts["relevance-model-t"]["manifest"]["contents"]]
    assert any(r.startswith("file://") and r.endswith("b.bin") for r in refs)
    assert any(c["path"] == "sample.table.json" for c in arts["relevance-model-t"]["manifest"]["contents"])
    lines = read_jsonl(tmp_path / "work" / "tracking" / "metrics.jsonl")
    assert [line["name"] for line in lines if line["kind"] == "artifact"] == ["novelty-adapter-t", "relevance-model-t"]


def _png_size(path):
    data = path.read_bytes()
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_one_round_plot_is_a_summary_not_dots(tmp_path):
    one = plot_rounds([{"round": 1, "val/C-H@1": 0.49, "val/NCP@5": 0.1, "keys/count": 352}], tmp_path / "one.png")
    many = plot_rounds([{"round": r, "val/C-H@1": 0.4 + r / 100, "val/NCP@5": 0.1, "keys/count": 352}
                        for r in (1, 2, 3)], tmp_path / "many.png")
    assert _png_size(one) == (720, 256)  # one 9 x 3.2 in figure: bars + table
    assert _png_size(many) != _png_size(one)

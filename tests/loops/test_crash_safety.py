"""Crash safety: after a crash at any stage boundary a rerun completes and promotes the same KV table.

The reference is an uninterrupted bootstrap + round 1; each faulted run starts from a copy of its round 0.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loops.cycle import run_cycle
from loops.state import read_state, write_state
from storage.kv import KVReader, KVStore

REPO = Path(__file__).resolve().parents[2]
FAULTS = ["data:before_commit", "candidates:start", "candidates:before_commit", "kv:staging", "pco:start",
          "pco:before_commit", "relevance:before_commit", "promote:before_kv", "promote:before_link"]


@pytest.fixture(scope="module")
def reference(tiny_cfg, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    result = run_cycle(tiny_cfg, workdir)
    assert result.promoted and result.round == 1
    return workdir, KVStore(workdir).manifest(1)["checksum"]


def _from_round0(reference: Path, target: Path) -> Path:
    shutil.copytree(reference / "rounds" / "000", target / "rounds" / "000")
    state = read_state(reference)
    write_state(target, {**state, "promoted_round": None, "rounds": [r for r in state["rounds"] if r["round"] == 0]})
    return target


@pytest.mark.parametrize("fault", FAULTS)
def test_rerun_after_crash_promotes_the_same_table(tiny_cfg, reference, tmp_path, monkeypatch, fault):
    ref_dir, checksum = reference
    workdir = _from_round0(ref_dir, tmp_path)
    monkeypatch.setenv("COEA_FAULT", fault)
    with pytest.raises(Exception, match="injected fault"):
        run_cycle(tiny_cfg, workdir)
    assert read_state(workdir)["promoted_round"] is None  # nothing half-promoted
    monkeypatch.delenv("COEA_FAULT")
    result = run_cycle(tiny_cfg, workdir)
    assert result.round == 1 and result.promoted
    assert KVStore(workdir).manifest(1)["checksum"] == checksum
    assert KVStore(workdir).current_round() == 1 and (workdir / "current").resolve().name == "001"


def test_killed_process_during_kv_staging_keeps_serving_the_previous_round(tiny_cfg, reference, tmp_path):
    """A SIGKILL-like exit mid-staging of round 2 leaves round 1 served; the rerun promotes round 2."""
    ref_dir, _ = reference
    workdir = tmp_path / "w"
    shutil.copytree(ref_dir, workdir, symlinks=True)
    cfg_path = tmp_path / "tiny.yaml"
    tiny_cfg.save(cfg_path)
    cmd = [sys.executable, "-m", "coea.cli", "cycle", "--config", str(cfg_path), "--workdir", str(workdir), "--json"]
    env = {**__import__("os").environ, "COEA_FAULT": "kv:staging", "COEA_FAULT_MODE": "exit"}
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    assert killed.returncode == 137
    with KVReader(workdir) as reader:
        assert reader.round == 1
    assert 2 not in KVStore(workdir).list_rounds()
    rerun = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert rerun.returncode in (0, 4), rerun.stderr[-2000:]
    assert json.loads(rerun.stdout)["round"] == 2


def _copy(reference: Path, target: Path) -> Path:
    shutil.copytree(reference, target, symlinks=True)
    return target


def test_corrupt_checkpoint_keeps_the_previous_round_served(tiny_cfg, reference, tmp_path):
    workdir = _copy(reference[0], tmp_path / "w")
    for f in (workdir / "rounds" / "001" / "pco" / "adapter").glob("adapter_model.*"):
        f.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception) as err:
        run_cycle(tiny_cfg, workdir)
    assert str(err.value).strip()  # a reason, not a silent failure
    state = read_state(workdir)
    assert state["promoted_round"] == 1 and state["rounds"][-1]["status"] == "failed"
    with KVReader(workdir) as reader:
        assert reader.round == 1


def test_full_disk_during_kv_staging_keeps_the_previous_round_served(tiny_cfg, reference, tmp_path, monkeypatch):
    import errno

    workdir = _copy(reference[0], tmp_path / "w")

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(KVStore, "stage", no_space)
    with pytest.raises(OSError, match="No space left"):
        run_cycle(tiny_cfg, workdir)
    assert read_state(workdir)["promoted_round"] == 1
    with KVReader(workdir) as reader:
        assert reader.round == 1
    assert (workdir / "current").resolve().name == "001"

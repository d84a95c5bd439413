"""A log file that cannot be written (a full disk) never loops: one line on stderr, the command goes on, and a
cycle on a full disk exits 1 within seconds with its lock released."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
import uuid
from logging.handlers import MemoryHandler
from pathlib import Path

import pytest

from coea.cli import _LogFile
from coea.workdir import log_finished_stages

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to inject ENOSPC")
def test_a_log_file_on_a_full_device_reports_once_and_goes_quiet():
    err = io.StringIO()
    handler = _LogFile(Path("/dev/full"), err)
    logger = logging.getLogger(f"test.full.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(handler)
    # what Session.open_log does: drain a buffer of earlier records into the file handler
    buffer = MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1)
    for i in range(500):
        buffer.handle(logging.makeLogRecord({"msg": f"line {i}", "levelno": logging.INFO, "levelname": "INFO"}))
    t = time.monotonic()
    buffer.setTarget(handler)
    buffer.flush()
    for i in range(500):
        logger.info("more %d", i)
    handler.close()
    assert time.monotonic() - t < 5
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and "cannot be written" in lines[0] and "No space left" in lines[0]
    assert handler.broken


def _mount_full_tmpfs(where: Path) -> bool:
    where.mkdir()
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        return False
    fd = os.open(where / "fill", os.O_WRONLY | os.O_CREAT)
    try:  # fill it: 0 bytes free
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return True


def test_a_cycle_on_a_full_disk_exits_1_within_seconds_and_frees_the_lock(tmp_path):
    mnt = tmp_path / "full"
    if not _mount_full_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights); the handler test injects ENOSPC")
    try:
        (mnt / "wd").mkdir()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        t = time.monotonic()
        cmd = [sys.executable, "-m", "coea.cli", "cycle", "--config", str(REPO / "configs" / "demo.yaml"),
               "--workdir", str(mnt / "wd")]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        took = time.monotonic() - t
        assert done.returncode == 1, done.stderr[-2000:]
        assert took < 60
        err = [ln for ln in done.stderr.splitlines() if ln.startswith("coea:")]
        assert any("cannot be written" in ln for ln in err) and err[-1].startswith("coea: cycle failed: OSError")
        assert sum("cannot be written" in ln for ln in err) == 1
        from loops.state import lock_holder

        assert lock_holder(mnt / "wd") is None  # the next cron run can proceed
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_stage_written_by_this_run_is_not_announced_as_skipped(tmp_path, caplog):
    (tmp_path / "data").mkdir()
    (tmp_path / "dsie").mkdir()
    with caplog.at_level(logging.INFO, logger="coea"):
        names = log_finished_stages(tmp_path, "round 3", this_run=("data",))
    assert names == ["dsie"]
    assert "stage data finished in an earlier run" not in caplog.text

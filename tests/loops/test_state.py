"""state.json bookkeeping, the atomic `current` link and the cycle lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from coea.errors import LockHeldError
from coea.workdir import round_dir
from loops.state import last_finished_round, promote_link, read_state, record_round, workdir_lock


def test_record_and_promote(tmp_path):
    assert read_state(tmp_path)["promoted_round"] is None
    round_dir(tmp_path, 1).mkdir(parents=True)
    record_round(tmp_path, 1, "promoted", metrics={"val/C-H@1": 0.5}, fingerprint="abc")
    promote_link(tmp_path, 1)
    record_round(tmp_path, 2, "refused", reason="guardrail")
    state = read_state(tmp_path)
    assert state["promoted_round"] == 1 and [r["status"] for r in state["rounds"]] == ["promoted", "refused"]
    assert (tmp_path / "current").resolve() == round_dir(tmp_path, 1).resolve()
    assert last_finished_round(tmp_path) == 2


def test_promote_missing_round_keeps_current(tmp_path):
    round_dir(tmp_path, 1).mkdir(parents=True)
    promote_link(tmp_path, 1)
    with pytest.raises(FileNotFoundError):
        promote_link(tmp_path, 7)
    assert (tmp_path / "current").resolve() == round_dir(tmp_path, 1).resolve()


def test_lock_refuses_second_holder_and_recovers_after_crash(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from loops.state import workdir_lock
        with workdir_lock({str(tmp_path)!r}):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeldError, match="pid="):
            with workdir_lock(tmp_path):
                pass
    finally:
        holder.kill()  # a crashed holder: the kernel drops its flock
        holder.wait()
    with workdir_lock(tmp_path):
        pass


def test_lock_holder_probes_without_taking_the_lock(tmp_path, monkeypatch):
    import loops.state as state
    from loops.state import lock_holder

    assert lock_holder(tmp_path) is None
    with workdir_lock(tmp_path):
        assert lock_holder(tmp_path).startswith("pid=")
        monkeypatch.setattr(state, "_flock_held", lambda st: None)  # no /proc/locks: the recorded pid decides
        assert lock_holder(tmp_path).startswith("pid=")
        monkeypatch.undo()
    assert lock_holder(tmp_path) is None
    (tmp_path / ".lock").write_text("pid=999999999 host=elsewhere since=then")  # a dead holder's leftover text
    monkeypatch.setattr(state, "_flock_held", lambda st: None)
    assert lock_holder(tmp_path) is None

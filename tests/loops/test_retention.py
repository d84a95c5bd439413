"""Whole-round retention (loops/retention.py) on a fabricated workdir: what stays, what goes, what rollback offers.

The end-to-end check that expiry never deletes what a later round needs is in tests/loops/test_operations.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coea.workdir import round_dir
from loops.retention import (
    apply_retention, disk_usage, plan_retention, rollback_offers, round_disk_usage, rounds_on_disk,
)
from loops.state import promote_link, read_state, record_round
from storage.kv import KVError, KVStore, encode_value
from storage.keys import kv_key

STATUS = {0: "bootstrapped", 1: "promoted", 2: "refused", 3: "promoted", 4: "promoted", 5: "refused", 6: "failed"}


def _fake_round(workdir: Path, k: int, *, dsie: bool = False, kv: bool = True) -> None:
    rp = round_dir(workdir, k)
    for stage in ("data", "candidates", "pco", "relevance") if k else ("data", "backbone", "novelty", "relevance"):
        (rp / stage).mkdir(parents=True)
        (rp / stage / "blob.bin").write_bytes(b"x" * 10_000)
    if dsie or k == 0:
        (rp / "dsie").mkdir()
        (rp / "dsie" / "users.parquet").write_bytes(b"y" * 5_000)
    if kv and k:
        KVStore(workdir).stage(k, [(kv_key("default", [f"C{k}"]), encode_value(k, ["A"], [0.9]))])


@pytest.fixture
def workdir(tmp_path):
    """Rounds 0-6: DSIE refreshed in round 3, round 4 promoted now, round 6 failed (its retry is pending)."""
    for k, status in STATUS.items():
        _fake_round(tmp_path, k, dsie=k == 3, kv=k != 6)
        record_round(tmp_path, k, status, base=0 if k else None)
        if status == "promoted":
            KVStore(tmp_path).promote(k)
            promote_link(tmp_path, k)
    return tmp_path


def test_plan_keeps_what_later_rounds_and_rollback_need(workdir):
    plan = plan_retention(workdir, keep_rounds=2)
    assert sorted(plan.keep) == [0, 3, 4, 5, 6] and plan.expire == [1, 2]
    assert "promoted now" in plan.keep[4] and "newest 2 finished" in plan.keep[5]
    assert any("DSIE" in why for why in plan.keep[3]) and any("unfinished" in why for why in plan.keep[6])
    assert any("round 0" in why for why in plan.keep[0])


def test_apply_deletes_whole_rounds_and_keeps_serving(workdir):
    freed = round_disk_usage(workdir, 1) + round_disk_usage(workdir, 2)
    before = disk_usage(workdir)
    plan = apply_retention(workdir, keep_rounds=2)
    assert plan.expire == [1, 2]
    assert rounds_on_disk(workdir) == [0, 3, 4, 5, 6]
    assert not round_dir(workdir, 1).exists() and 1 not in KVStore(workdir).list_rounds()
    assert KVStore(workdir).current_round() == 4 and (workdir / "current").resolve().name == "004"
    state = read_state(workdir)
    assert [r["round"] for r in state["rounds"] if r.get("expired")] == [1, 2]  # history stays, marked
    assert state["retention"]["expired"] == [1, 2]
    assert before - disk_usage(workdir) >= freed * 0.9
    assert apply_retention(workdir, keep_rounds=2).expire == []  # idempotent
    # Rollback offers kept rounds that were promoted once, other than the one served: round 3, not refused 5.
    assert rollback_offers(workdir) == [3]


def test_a_dsie_round_is_kept_until_a_newer_refresh(workdir):
    apply_retention(workdir, keep_rounds=1)
    assert 3 in rounds_on_disk(workdir)  # rounds 4-6 reuse round 3's DSIE
    _fake_round(workdir, 7, dsie=True)
    record_round(workdir, 6, "refused")
    record_round(workdir, 7, "promoted")
    KVStore(workdir).promote(7)
    promote_link(workdir, 7)
    plan = apply_retention(workdir, keep_rounds=1)
    assert rounds_on_disk(workdir) == [0, 7] and 3 in plan.expire


def test_the_served_kv_version_and_unknown_folders_are_never_deleted(workdir):
    # A crash between the KV pointer swap and state.json: serving reads round 5 although state.json says 4.
    KVStore(workdir).promote(5)
    _fake_round(workdir, 8, kv=False)  # a folder state.json does not know, below the newest finished round
    _fake_round(workdir, 9)
    record_round(workdir, 9, "refused")
    plan = apply_retention(workdir, keep_rounds=1)
    assert plan.keep[5] == ["served by the KV pointer"] and 5 in KVStore(workdir).list_rounds()
    assert 8 in plan.unknown and round_dir(workdir, 8).is_dir()
    assert read_state(workdir)["promoted_round"] == 4 and round_dir(workdir, 4).is_dir()
    with pytest.raises(KVError):
        KVStore(workdir).remove([5])  # the store itself refuses to delete what serving reads


def test_disk_usage_counts_allocated_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"z" * 100_000)
    (tmp_path / "link").symlink_to(tmp_path / "a")  # not followed
    used = disk_usage(tmp_path)
    assert 100_000 <= used < 200_000
    assert disk_usage(tmp_path / "missing") == 0

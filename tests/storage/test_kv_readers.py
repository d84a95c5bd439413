"""A reader in another process keeps answering, from whole versions only, while the writer promotes rounds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from storage import KVStore, kv_key

REPO = Path(__file__).resolve().parents[2]
N_KEYS = 200

READER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from storage import KVReader, decode_value, kv_key

root = Path({root!r})
keys = [kv_key("4-2", [f"c{{i}}"]) for i in range({n_keys})]
stats = {{"batches": 0, "rounds": [], "errors": []}}
reader = KVReader(root, check_interval_s=0)  # check the pointer on every call: the worst case for races
(root / "reader.ready").touch()
while not (root / "reader.stop").exists():
    try:
        values = reader.multi_get(keys)
        rounds = {{decode_value(v).round if v is not None else None for v in values}}
        if len(rounds) != 1 or None in rounds:
            stats["errors"].append(f"mixed or missing versions in one batch: {{sorted(map(str, rounds))}}")
        (r,) = rounds
        if reader.get("4-2", ["c0"])[0]["score"] < r:  # a later single lookup never goes back in time
            stats["errors"].append(f"went back from round {{r}}")
        if not stats["rounds"] or stats["rounds"][-1] != r:
            stats["rounds"].append(r)
        stats["batches"] += 1
    except Exception as err:  # any error at all fails the test
        stats["errors"].append(repr(err))
(root / "reader.json").write_text(json.dumps(stats))
"""


def rows(round: int) -> list[tuple[bytes, dict]]:
    return [(kv_key("4-2", [f"c{i}"]), {"categories": [f"n{i}"], "scores": [float(round)]}) for i in range(N_KEYS)]


def test_reader_process_sees_only_whole_versions_during_promotions(tmp_path):
    store = KVStore(tmp_path)
    store.stage(1, rows(1))
    store.promote(1)
    script = READER.format(repo=str(REPO), root=str(tmp_path), n_keys=N_KEYS)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "reader.ready").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "reader process did not start"
            time.sleep(0.05)
        for r in range(2, 8):
            store.stage(r, rows(r))
            store.promote(r)
            store.expire(keep=1)  # delete the version the reader may still have open
            time.sleep(0.2)
        (tmp_path / "reader.stop").touch()
        assert proc.wait(timeout=30) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    stats = json.loads((tmp_path / "reader.json").read_text())
    assert stats["errors"] == []
    assert stats["batches"] > 50
    assert stats["rounds"] == sorted(stats["rounds"])  # only forward, whole versions
    assert stats["rounds"][-1] == 7 and len(stats["rounds"]) >= 4
    assert store.list_rounds() == [7]

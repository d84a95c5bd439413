"""Versioned KV tables: value bytes, staging, verify, promote / rollback / expire, crash safety, SST ingestion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from storage import (
    KVError,
    KVIntegrityError,
    KVNotFoundError,
    KVReader,
    KVStore,
    KVValue,
    NoCurrentVersionError,
    decode_value,
    encode_value,
    kv_key,
    table_checksum,
    write_sst_ranges,
)

REPO = Path(__file__).resolve().parents[2]


def entries(round: int, n: int = 50) -> list[tuple[bytes, dict]]:
    """n keys of group "1-2"; the value's top score encodes the round so a reader can tell versions apart."""
    return [
        (kv_key("1-2", [f"c{i}", "Drama"]), {"categories": [f"novel{i}", "War"], "scores": [round + 0.5, 0.1]})
        for i in range(n)
    ]


def staged_store(tmp_path: Path, rounds: list[int], n: int = 50) -> KVStore:
    store = KVStore(tmp_path)
    for r in rounds:
        store.stage(r, entries(r, n))
    return store


# ------------------------------------------------------------------ values


def test_value_bytes_are_compact_utf8_json_and_round_trip():
    data = encode_value(3, ["Film-Noir", "Ciné"], [0.75, 0.25])
    assert data == '{"round":3,"categories":["Film-Noir","Ciné"],"scores":[0.75,0.25]}'.encode()
    value = decode_value(data)
    assert value == KVValue(3, ("Film-Noir", "Ciné"), (0.75, 0.25))
    assert value.as_list() == [{"category": "Film-Noir", "score": 0.75}, {"category": "Ciné", "score": 0.25}]


@pytest.mark.parametrize(
    "categories, scores",
    [(["a", "b"], [0.1]), (["a"], [float("nan")]), ([""], [0.1]), ([3], [0.1])],
)
def test_encode_value_rejects_malformed(categories, scores):
    with pytest.raises(ValueError):
        encode_value(1, categories, scores)


def test_decode_value_rejects_foreign_bytes():
    with pytest.raises(ValueError, match="not a KV value"):
        decode_value(b"\xff\xfe")
    with pytest.raises(ValueError):
        decode_value(b'{"round": 1}')


# ------------------------------------------------------------------ stage / read


def test_stage_promote_and_read_round_trip(tmp_path):
    store = KVStore(tmp_path, batch_size=7)  # several write batches
    seen = []
    table = store.stage(1, entries(1), progress=seen.append)
    assert table.count == 50 and table.path == tmp_path / "kv" / "001"
    assert seen[-1] == 50 and len(seen) == 8
    manifest = json.loads((table.path / "manifest.json").read_text())
    assert manifest["round"] == 1 and manifest["count"] == 50 and manifest["checksum"] == table.checksum
    assert store.list_rounds() == [1] and store.current_round() is None

    store.promote(1)
    assert store.current_round() == 1
    assert os.readlink(tmp_path / "kv" / "CURRENT") == "001"
    with KVReader(tmp_path) as reader:
        assert reader.round == 1
        # order and duplicates of recent categories do not matter (canonical C'_short)
        assert reader.get("1-2", ["Drama", "c3", "Drama"]) == [
            {"category": "novel3", "score": 1.5},
            {"category": "War", "score": 0.1},
        ]
        assert reader.get_value("1-2", ["c3", "Drama"]).round == 1


def test_unknown_key_returns_empty_list(tmp_path):
    store = staged_store(tmp_path, [1])
    store.promote(1)
    with KVReader(tmp_path) as reader:
        assert reader.get("1-2", ["never-seen"]) == []
        assert reader.get("9-9-9", []) == []
        assert reader.get_key(b"nope|0000000000000000") is None
        assert reader.get_value("default", ["x"]) is None


def test_raw_keys_bytes_in_bytes_out(tmp_path):
    store = KVStore(tmp_path)
    raw = [(b"\x00\xffbinary|key", b"\x01\x02opaque"), (b"3-1|abcdef0123456789", encode_value(1, ["A"], [0.5]))]
    store.stage(1, raw)
    store.promote(1, verify=False)  # the opaque value is not a KV value; only the value check would object
    with KVReader(tmp_path) as reader:
        assert reader.get_key(b"\x00\xffbinary|key") == b"\x01\x02opaque"
        assert reader.multi_get([b"3-1|abcdef0123456789", b"missing", b"\x00\xffbinary|key"]) == [
            raw[1][1],
            None,
            raw[0][1],
        ]
        with pytest.raises(TypeError, match="raw bytes"):
            reader.get_key("3-1|abcdef0123456789")


def test_reader_without_promotion_is_a_clear_error(tmp_path):
    staged_store(tmp_path, [1])
    with pytest.raises(NoCurrentVersionError):
        KVReader(tmp_path)


def test_duplicate_keys_and_wrong_round_are_rejected(tmp_path):
    store = KVStore(tmp_path)
    key = kv_key("1", ["a"])
    with pytest.raises(ValueError, match="duplicate"):
        store.stage(1, [(key, {"categories": ["x"], "scores": [1.0]})] * 2)
    with pytest.raises(ValueError, match="carries round 2"):
        store.stage(1, [(key, KVValue(2, ("x",), (1.0,)))])
    assert store.list_rounds() == []
    assert not [p for p in (tmp_path / "kv").iterdir() if p.name.startswith(".staging")]


def test_existing_round_needs_overwrite_and_current_is_never_overwritten(tmp_path):
    store = staged_store(tmp_path, [1, 2])
    with pytest.raises(FileExistsError):
        store.stage(2, entries(2))
    assert store.stage(2, entries(2, n=5), overwrite=True).count == 5
    store.promote(2)
    with pytest.raises(KVError, match="promoted"):
        store.stage(2, entries(2), overwrite=True)


# ------------------------------------------------------------------ verify


def test_verify_accepts_an_intact_round(tmp_path):
    store = staged_store(tmp_path, [1])
    assert store.verify(1)["count"] == 50


def test_verify_detects_tampered_manifest(tmp_path):
    store = staged_store(tmp_path, [1])
    path = tmp_path / "kv" / "001" / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "count": 49}))
    with pytest.raises(KVIntegrityError, match="50 entries on disk, manifest says 49"):
        store.verify(1)
    path.write_text(json.dumps({**manifest, "checksum": "sha256:" + "0" * 64}))
    with pytest.raises(KVIntegrityError, match="checksum"):
        store.verify(1)
    path.write_text("{not json")
    with pytest.raises(KVIntegrityError, match="unreadable manifest"):
        store.verify(1)


def test_verify_detects_missing_and_corrupt_table_files(tmp_path):
    store = staged_store(tmp_path, [1, 2], n=2000)
    (sst,) = sorted((tmp_path / "kv" / "001" / "db").glob("*.sst"))
    sst.unlink()
    with pytest.raises(KVIntegrityError, match="KV round 1: cannot open"):
        store.verify(1)

    (sst,) = sorted((tmp_path / "kv" / "002" / "db").glob("*.sst"))
    data = bytearray(sst.read_bytes())
    data[100] ^= 0xFF  # flip bits inside the first data block
    sst.write_bytes(bytes(data))
    with pytest.raises(KVIntegrityError, match="KV round 2"):
        store.verify(2)


def test_verify_and_promote_of_missing_round(tmp_path):
    store = staged_store(tmp_path, [1])
    with pytest.raises(KVNotFoundError, match=r"available: \[1\]"):
        store.verify(7)
    with pytest.raises(KVNotFoundError):
        store.promote(7)
    (tmp_path / "kv" / "001" / "manifest.json").unlink()
    assert store.list_rounds() == []


def test_promote_refuses_a_corrupt_round_and_keeps_the_current_one(tmp_path):
    store = staged_store(tmp_path, [1, 2])
    store.promote(1)
    for sst in (tmp_path / "kv" / "002" / "db").glob("*.sst"):
        sst.unlink()
    with pytest.raises(KVIntegrityError):
        store.promote(2)
    assert store.current_round() == 1


def test_verify_checks_every_value_carries_the_round(tmp_path):
    store = KVStore(tmp_path)
    store.stage(4, [(b"k|1", encode_value(3, ["A"], [0.5]))])  # pre-encoded bytes are stored as given
    with pytest.raises(KVIntegrityError, match="carries round 3"):
        store.verify(4)


# ------------------------------------------------------------------ promote / rollback / expire


def test_promote_rollback_and_expire(tmp_path):
    store = staged_store(tmp_path, [1, 2, 3, 4])
    store.promote(4)
    store.rollback(2)
    assert store.current_round() == 2
    with KVReader(tmp_path) as reader:
        assert reader.get_value("1-2", ["c0", "Drama"]).round == 2

    # keep the newest 1 (round 4) plus the promoted round 2, never the current one
    assert store.expire(keep=1) == [1, 3]
    assert store.list_rounds() == [2, 4]
    with pytest.raises(KVNotFoundError, match=r"retained rounds are \[2, 4\]"):
        store.rollback(3)
    store.promote(4)
    assert store.expire(keep=1) == [2]
    assert store.list_rounds() == [4] and store.current_round() == 4
    with pytest.raises(ValueError):
        store.expire(keep=0)


def test_reader_refresh_follows_promotion_and_survives_expiry(tmp_path):
    store = staged_store(tmp_path, [1, 2])
    store.promote(1)
    lazy = KVReader(tmp_path, check_interval_s=3600)
    eager = KVReader(tmp_path, check_interval_s=0)
    key = kv_key("1-2", ["c0", "Drama"])
    store.promote(2)
    assert decode_value(eager.get_key(key)).round == 2
    # the lazy reader still serves round 1; deleting its directory underneath does not break it
    assert store.expire(keep=1) == [1]
    assert not (tmp_path / "kv" / "001").exists()
    assert decode_value(lazy.get_key(key)).round == 1
    assert lazy.refresh() and lazy.round == 2
    assert decode_value(lazy.get_key(key)).round == 2


# ------------------------------------------------------------------ crash safety

CRASHING_WRITER = """
import os, sys
sys.path.insert(0, {repo!r})
from storage import KVStore, kv_key

def crash(n):
    if n >= 300:
        os._exit(9)  # like SIGKILL in the middle of staging: no cleanup, no exception handlers

rows = ((kv_key("1-2", [f"c{{i}}"]), {{"categories": ["x"], "scores": [2.5]}}) for i in range(1000))
KVStore({root!r}, batch_size=100).stage(2, rows, progress=crash)
"""


def test_interrupted_stage_leaves_no_version_and_previous_stays_current(tmp_path):
    store = staged_store(tmp_path, [1])
    store.promote(1)
    script = CRASHING_WRITER.format(repo=str(REPO), root=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, timeout=60)
    assert proc.returncode == 9, proc.stderr.decode()

    leftovers = [p.name for p in (tmp_path / "kv").iterdir() if p.name.startswith(".staging-")]
    assert leftovers, "the crashed writer should have left its staging directory behind"
    assert store.list_rounds() == [1] and store.current_round() == 1
    with KVReader(tmp_path) as reader:
        assert reader.get_value("1-2", ["c0", "Drama"]).round == 1

    # a rerun stages the round completely and clears the crashed writer's leftovers
    assert store.stage(2, entries(2)).count == 50
    assert not [p for p in (tmp_path / "kv").iterdir() if p.name.startswith(".staging-")]
    store.promote(2)
    assert store.current_round() == 2


def test_exception_during_stage_removes_staging(tmp_path):
    store = KVStore(tmp_path, batch_size=10)

    def rows():
        yield from entries(1, 25)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.stage(1, rows())
    assert store.list_rounds() == []
    assert [p.name for p in (tmp_path / "kv").iterdir()] == [".writer.lock"]


def test_checksum_is_independent_of_input_order(tmp_path):
    rows = entries(1)
    a = KVStore(tmp_path / "a").stage(1, rows)
    b = KVStore(tmp_path / "b").stage(1, list(reversed(rows)))
    assert a.checksum == b.checksum
    raw = sorted((k, encode_value(1, v["categories"], v["scores"])) for k, v in rows)
    assert table_checksum(raw) == (50, a.checksum)


# ------------------------------------------------------------------ SST ingestion


def test_sst_ranges_ingest_to_the_same_table_as_write_batches(tmp_path):
    rows = sorted(entries(3, n=1000), key=lambda kv: kv[0])
    batch = KVStore(tmp_path / "batch").stage(3, rows)

    ranges = write_sst_ranges(rows, tmp_path / "sst", round=3, entries_per_file=300)
    assert [r.count for r in ranges] == [300, 300, 300, 100]
    assert all(a.last_key < b.first_key for a, b in zip(ranges, ranges[1:], strict=False))
    store = KVStore(tmp_path / "sstwork")
    ingested = store.ingest(3, [r.path for r in ranges])
    assert (ingested.count, ingested.checksum) == (batch.count, batch.checksum)
    assert ingested.writer == "sst"
    store.promote(3)
    with KVReader(tmp_path / "sstwork") as reader:
        assert reader.get("1-2", ["c7", "Drama"])[0] == {"category": "novel7", "score": 3.5}


def test_sst_writer_requires_ascending_unique_keys(tmp_path):
    rows = entries(1, n=10)
    with pytest.raises(ValueError, match="ascending"):
        write_sst_ranges(sorted(rows, key=lambda kv: kv[0], reverse=True), tmp_path / "a", round=1)
    ordered = sorted(rows, key=lambda kv: kv[0])
    with pytest.raises(ValueError, match="ascending"):
        write_sst_ranges(ordered + ordered[-1:], tmp_path / "b", round=1, entries_per_file=5)


def test_failed_ingest_leaves_nothing_visible(tmp_path):
    store = KVStore(tmp_path / "w")
    bogus = tmp_path / "bogus.sst"
    bogus.write_bytes(b"not an sst file")
    with pytest.raises(Exception):  # noqa: B017 - RocksDB reports it as a plain Exception
        store.ingest(1, [bogus])
    assert store.list_rounds() == []
    assert [p.name for p in (tmp_path / "w" / "kv").iterdir()] == [".writer.lock"]

"""spark_jobs.export_kv: exported tables equal the promoted KV version, reconciliation failures, SST ranges."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from storage.keys import DEFAULT_CSID, kv_key
from storage.kv import KVReader, KVStore, decode_value

pytestmark = [pytest.mark.spark, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

CATEGORIES = ["Äpfel", "Zebra", "日本", "😀", "Ａ", "apple", "Film-Noir", "War", "émigré"]
CSIDS = ["3-14-0-7", "1-2-3-4", "0-0-0-0", DEFAULT_CSID]


def entries_for(round_: int, n: int = 60, seed: int = 0) -> dict[bytes, dict]:
    """``n`` distinct keys with awkward floats (1/3, 1e-300, 0.1 + 0.2) to check scores survive exactly."""
    rng = random.Random(seed)
    out: dict[bytes, dict] = {}
    while len(out) < n:
        recent = rng.sample(CATEGORIES, rng.randint(0, 3))
        cats = rng.sample(CATEGORIES, rng.randint(0, 4))
        scores = [rng.choice([1 / 3, 1e-300, 0.1 + 0.2, rng.random()]) for _ in cats]
        out[kv_key(rng.choice(CSIDS), recent)] = {"categories": cats, "scores": scores}
    return out


def write_dsie(round_dir: Path, users: dict[str, str], sizes: dict[str, int]) -> None:
    dsie = round_dir / "dsie"
    dsie.mkdir(parents=True)
    pd.DataFrame({"user_id": list(users), "csid": list(users.values())}).to_parquet(dsie / "users.parquet")
    with open(dsie / "groups.jsonl", "w", encoding="utf-8") as f:
        for csid, size in sizes.items():
            f.write(json.dumps({"csid": csid, "size": size, "portrait": f"likes {csid} ünïcode",
                                "representatives": []}, ensure_ascii=False) + "\n")


def build_workdir(root: Path) -> Path:
    """Round 1: KV + DSIE. Round 2: KV promoted, DSIE reused (no dsie/). Round 3: KV + DSIE staged, not promoted."""
    store = KVStore(root)
    for k in (1, 2, 3):
        store.stage(k, entries_for(k, seed=k).items())
    store.promote(2)
    users = {f"u{i}": CSIDS[i % 3] for i in range(25)} | {"ü-cold": DEFAULT_CSID}
    write_dsie(root / "rounds" / "001", users, {c: 5 for c in CSIDS[:3]})
    (root / "rounds" / "002" / "kv").mkdir(parents=True)
    write_dsie(root / "rounds" / "003", {"later": "9-9-9-9"}, {"9-9-9-9": 1})
    return root


@pytest.fixture()
def workdir(tmp_path) -> Path:
    return build_workdir(tmp_path / "work")


def read_source(root: Path, k: int) -> dict[bytes, bytes]:
    with KVReader(root, check_interval_s=3600) as reader:
        assert reader.round == k
    from rocksdict import AccessType, Options, Rdict

    db = Rdict(str(KVStore(root).db_dir(k)), Options(raw_mode=True), access_type=AccessType.read_only(False))
    try:
        return {bytes(key): bytes(value) for key, value in db.items()}
    finally:
        db.close()


def test_export_equals_promoted_round(spark, workdir, tmp_path):
    from spark_jobs.export_kv import export

    out = tmp_path / "out"
    result = export(workdir, out, spark=spark)
    source = read_source(workdir, 2)
    assert result["round"] == 2 and result["dsie_round"] == 1  # round 3 is newer but not promoted
    assert result["rows"] == {"kv": len(source), "user_csid": 26, "portraits": 3}
    assert json.loads((out / "export.json").read_text())["rows"] == result["rows"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # staging removed

    kv = pd.read_parquet(out / "kv")
    assert [bytes(k) for k in kv["key"]] == sorted(source)  # written in ascending key order
    for row in kv.itertuples():
        key, value = bytes(row.key), decode_value(source[bytes(row.key)])
        assert bytes(row.value) == source[key]
        assert key == f"{row.csid}|{row.short_hash}".encode()
        assert (row.round, list(row.categories), list(row.scores)) == (2, list(value.categories), list(value.scores))
    assert set(kv["csid"]) <= set(CSIDS) and kv["short_hash"].str.fullmatch("[0-9a-f]{16}").all()
    users = pd.read_parquet(out / "user_csid")
    assert dict(zip(users["user_id"], users["csid"]))["ü-cold"] == DEFAULT_CSID
    portraits = pd.read_parquet(out / "portraits")
    assert sorted(portraits["csid"]) == sorted(CSIDS[:3]) and set(portraits["size"]) == {5}
    assert portraits["portrait"].str.contains("ünïcode").all()


def test_tampered_manifest_fails_and_keeps_previous_export(spark, workdir, tmp_path):
    from spark_jobs.export_kv import ReconciliationError, export

    out = tmp_path / "out"
    first = export(workdir, out, spark=spark)
    manifest_path = KVStore(workdir).round_dir(2) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["count"] += 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ReconciliationError, match=r"scanned 60 entries .* manifest says 61"):
        export(workdir, out, spark=spark)
    assert json.loads((out / "export.json").read_text()) == first  # the previous export is untouched
    assert len(pd.read_parquet(out / "kv")) == 60
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_written_rows_are_counted_against_the_manifest(spark, workdir, tmp_path, monkeypatch):
    """A row lost between the KV scan and the written table (simulated) fails the read-back count."""
    import spark_jobs.export_kv as export_kv

    decode = export_kv.decode_kv
    monkeypatch.setattr(export_kv, "decode_kv", lambda raw: decode(raw).limit(59))
    with pytest.raises(export_kv.ReconciliationError, match="kv rows: 59 != expected 60"):
        export_kv.export(workdir, tmp_path / "out", spark=spark)
    assert not (tmp_path / "out" / "kv").exists()


def test_nothing_promoted_or_no_dsie(spark, tmp_path):
    from spark_jobs.export_kv import export
    from storage.kv import NoCurrentVersionError

    with pytest.raises(NoCurrentVersionError):
        export(tmp_path / "empty", tmp_path / "out", spark=spark)
    store = KVStore(tmp_path / "w")
    store.stage(1, {kv_key("1-2", ["A"]): {"categories": ["B"], "scores": [1.0]}}.items())
    store.promote(1)
    with pytest.raises(FileNotFoundError, match="no DSIE tables"):
        export(tmp_path / "w", tmp_path / "out", spark=spark)


def test_range_partitions_and_sst_ingestion(spark, workdir, tmp_path):
    """kv written as 3 key ranges (part i < part i+1); SST files per range ingested by one writer equal the
    source round: same count and checksum in the manifest, same entries."""
    import pyarrow.parquet as pq

    from spark_jobs.export_kv import export, ingest_sst_ranges

    out = tmp_path / "out"
    result = export(workdir, out, spark=spark, range_partitions=3, sst_dir=tmp_path / "sst")
    parts = sorted((out / "kv").glob("part-*.parquet"))
    assert len(parts) == 3
    ranges = [[bytes(k) for k in pq.read_table(p, columns=["key"])["key"].to_pylist()] for p in parts]
    for keys in ranges:
        assert keys == sorted(keys)
    for before, after in zip(ranges, ranges[1:]):
        assert before[-1] < after[0]
    assert len(result["sst"]["files"]) == 3 and result["sst"]["count"] == 60

    target = tmp_path / "ingested"
    staged = ingest_sst_ranges(target, 2, [Path(p) for p in result["sst"]["files"]])
    source = KVStore(workdir).manifest(2)
    assert (staged.count, staged.checksum) == (source["count"], source["checksum"])
    KVStore(target).promote(2)
    assert read_source(target, 2) == read_source(workdir, 2)
    assert KVReader(target).get("3-14-0-7", []) == KVReader(workdir).get("3-14-0-7", [])


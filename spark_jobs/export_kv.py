"""Spark job: the promoted round -> Parquet tables a serving store can bulk-load, reconciled with the KV store.

Inputs (read-only) in a work directory ``W``:

- the promoted KV version: ``W/kv/CURRENT -> NNN``, ``W/kv/NNN/db`` (rocksdict, raw mode) and its
  ``manifest.json`` (entry count, checksum), through :mod:`storage.kv`;
- the DSIE tables of that round: ``W/rounds/NNN/dsie/users.parquet`` (user_id, csid) and ``groups.jsonl``
  (one JSON object per line with csid, size, portrait). DSIE is refreshed only every few rounds and reused in
  between, so when the promoted round has no ``dsie/`` the latest earlier round that has one is used (never a
  later, unpromoted round); ``export.json`` records which.

Outputs in ``DIR``::

    kv/          key binary (exact KV key bytes), csid string, short_hash string, categories array<string>,
                 scores array<double>, round long, value binary (exact KV value bytes)
    user_csid/   user_id string, csid string
    portraits/   csid string, size long, portrait string
    export.json  round, dsie round, row counts, KV manifest count and checksum, paths  (written last)

Reconciliation: the driver streams the KV version in key order and recomputes the manifest's count and
checksum; after writing, each table is read back and counted: kv rows must equal the manifest's entry count,
user_csid rows the rows of users.parquet, portraits rows the lines of groups.jsonl; keys and user ids must be
unique; every value must decode and carry the promoted round. Any mismatch raises :class:`ReconciliationError`
and nothing is published: tables are written into ``DIR/.staging-*`` and moved into place only after the checks.

Large tables: ``range_partitions=N`` range-partitions kv by key and sorts within partitions, so part file i
holds a contiguous key range below part file i+1. :func:`write_sst_ranges` writes one SST file per such range
on the executors (``storage.kv.write_sst_file``) and :func:`ingest_sst_ranges` ingests them in one writer step
in ascending key order (``storage.kv.KVStore.ingest``).

Run::

    spark-submit spark_jobs/export_kv.py --workdir W --out DIR [--range-partitions N] [--sst-dir D]
    coea export --workdir W --out DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from spark_jobs.session import get_spark
from storage.keys import csid_to_str
from storage.kv import KVStore, NoCurrentVersionError, SstRange, TableDigest, read_pointer, write_sst_file

log = logging.getLogger("coea.spark")

EXPORT_MANIFEST = "export.json"
TABLES = ("kv", "user_csid", "portraits")
VALUE_SCHEMA = "round BIGINT, categories ARRAY<STRING>, scores ARRAY<DOUBLE>"
SCAN_BATCH = 50_000  # entries per Arrow batch while streaming the KV version to Parquet


class ReconciliationError(RuntimeError):
    """An exported table does not match its source (KV manifest, users.parquet or groups.jsonl)."""


def export(workdir: Path, out: Path, *, spark: Any = None, range_partitions: int | None = None,
           sst_dir: Path | None = None) -> dict[str, Any]:
    """Export the promoted round of ``workdir`` into Parquet tables under ``out`` (see module docstring).

    Args:
        workdir: the work directory (KV versions under ``workdir/kv``, rounds under ``workdir/rounds``).
        out: output directory; its ``kv/``, ``user_csid/``, ``portraits/`` and ``export.json`` are replaced.
        spark: a SparkSession; ``None`` builds one with :func:`spark_jobs.session.get_spark`.
        range_partitions: write kv as this many key ranges (part i < part i+1); ``None``: one sorted file
            set from a global sort with Spark's default partitioning.
        sst_dir: also write one SST file per key range there (:func:`write_sst_ranges`).

    Returns:
        ``{"round", "dsie_round", "rows": {table: n}, "kv_manifest": {"count", "checksum"}, "paths", ["sst"]}``.

    Raises:
        NoCurrentVersionError: nothing promoted in ``workdir``.
        FileNotFoundError: no DSIE tables at or before the promoted round.
        ReconciliationError: a count, checksum, uniqueness or round check failed; nothing was published.
    """
    from pyspark.sql import functions as F

    workdir, out = Path(workdir), Path(out)
    store = KVStore(workdir)
    kv_round = read_pointer(store.kv_dir)
    if kv_round is None:
        raise NoCurrentVersionError(f"nothing to export: no KV round promoted under {store.kv_dir}")
    manifest = store.manifest(kv_round)
    dsie_round, dsie_dir = find_dsie(workdir, kv_round)
    if spark is None:
        spark = get_spark("coea-export")

    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".staging-{kv_round:03d}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        raw_path = staging / "raw_kv.parquet"
        scanned, checksum = dump_kv_version(store, kv_round, raw_path)
        if (scanned, checksum) != (manifest.get("count"), manifest.get("checksum")):
            raise ReconciliationError(
                f"KV round {kv_round}: scanned {scanned} entries ({checksum}) but the manifest says "
                f"{manifest.get('count')} ({manifest.get('checksum')}); refusing to export")

        kv = decode_kv(spark.read.parquet(str(raw_path)))
        kv = kv.repartitionByRange(range_partitions, "key").sortWithinPartitions("key") \
            if range_partitions else kv.orderBy("key")
        kv.write.parquet(str(staging / "kv"))
        user_csid, n_users = _user_csid(spark, dsie_dir / "users.parquet")
        user_csid.orderBy("user_id").write.parquet(str(staging / "user_csid"))
        portraits, n_groups = _portraits(spark, dsie_dir / "groups.jsonl")
        portraits.orderBy("csid").write.parquet(str(staging / "portraits"))

        written = {name: spark.read.parquet(str(staging / name)) for name in TABLES}
        rows = {name: df.count() for name, df in written.items()}
        kv_check = written["kv"].agg(
            F.countDistinct("key").alias("keys"),
            F.sum((F.col("round") != kv_round).cast("long")).alias("wrong_round"),
            F.sum((F.col("csid").isNull() | F.col("categories").isNull() | F.col("scores").isNull()
                   | (F.size("categories") != F.size("scores"))).cast("long")).alias("undecodable"),
        ).first()
        _reconcile(
            kv_round,
            ("kv rows", rows["kv"], manifest["count"]),
            ("distinct kv keys", kv_check["keys"], manifest["count"]),
            ("kv values with another round", kv_check["wrong_round"] or 0, 0),
            ("kv values that do not decode", kv_check["undecodable"] or 0, 0),
            ("user_csid rows", rows["user_csid"], n_users),
            ("distinct user ids", written["user_csid"].select("user_id").distinct().count(), n_users),
            ("portraits rows", rows["portraits"], n_groups),
        )
        sst = None
        if sst_dir is not None:
            # Re-partition the read-back table: Spark packs small files into read partitions by size, not key.
            ranges = write_sst_ranges(written["kv"].repartitionByRange(range_partitions or 1, "key"),
                                      Path(sst_dir))
            sst = {"dir": str(sst_dir), "files": [str(r.path) for r in ranges],
                   "count": sum(r.count for r in ranges)}
            _reconcile(kv_round, ("SST entries", sst["count"], manifest["count"]))

        raw_path.unlink()
        paths = _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result = {"round": kv_round, "dsie_round": dsie_round, "rows": rows,
              "kv_manifest": {"count": manifest["count"], "checksum": manifest["checksum"]},
              "source": {"workdir": str(workdir), "dsie": str(dsie_dir)}, "paths": paths}
    if sst is not None:
        result["sst"] = sst
    tmp = out / f".{EXPORT_MANIFEST}.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out / EXPORT_MANIFEST)
    log.info("exported round %d: %s", kv_round, rows)
    return result


# ------------------------------------------------------------------------------------------------ reading


def find_dsie(workdir: Path, kv_round: int) -> tuple[int, Path]:
    """The DSIE directory serving round ``kv_round`` used: its own, else the latest earlier one."""
    rounds = Path(workdir) / "rounds"
    candidates = sorted((int(p.name) for p in rounds.iterdir() if p.name.isdigit() and int(p.name) <= kv_round
                         and (p / "dsie" / "users.parquet").is_file()), reverse=True) if rounds.is_dir() else []
    if not candidates:
        raise FileNotFoundError(
            f"no DSIE tables (rounds/NNN/dsie/users.parquet) at or before promoted round {kv_round} in {workdir}")
    k = candidates[0]
    return k, rounds / f"{k:03d}" / "dsie"


def dump_kv_version(store: KVStore, kv_round: int, path: Path, *, batch: int = SCAN_BATCH) -> tuple[int, str]:
    """Stream one KV version, in key order, into a Parquet file of (key binary, value binary).

    Opens the version read-only (it is immutable once staged) and recomputes the manifest's count and
    checksum on the way (``storage.kv.TableDigest``). Memory is bounded by ``batch`` entries.
    """
    from rocksdict import AccessType, Options, Rdict, ReadOptions

    db = Rdict(str(store.db_dir(kv_round)), Options(raw_mode=True), access_type=AccessType.read_only(False))
    schema = pa.schema([("key", pa.binary()), ("value", pa.binary())])
    digest = TableDigest()
    try:
        read_opts = ReadOptions()
        read_opts.set_verify_checksums(True)
        read_opts.fill_cache(False)
        it = db.iter(read_opts)
        it.seek_to_first()
        with pq.ParquetWriter(str(path), schema) as writer:
            keys: list[bytes] = []
            values: list[bytes] = []
            while it.valid():
                key, value = it.key(), it.value()
                digest.update(key, value)
                keys.append(key)
                values.append(value)
                if len(keys) >= batch:
                    writer.write_table(pa.table({"key": keys, "value": values}, schema=schema))
                    keys, values = [], []
                it.next()
            it.status()
            writer.write_table(pa.table({"key": keys, "value": values}, schema=schema))
    finally:
        db.close()
    return digest.count, digest.checksum


def decode_kv(raw: Any) -> Any:
    """(key, value) bytes -> kv table columns; the key splits at its only ``|`` (storage.keys layout)."""
    from pyspark.sql import functions as F

    key_str = F.expr("decode(key, 'UTF-8')")
    value = F.from_json(F.expr("decode(value, 'UTF-8')"), VALUE_SCHEMA)
    return raw.select(
        "key",
        F.substring_index(key_str, "|", 1).alias("csid"),
        F.substring_index(key_str, "|", -1).alias("short_hash"),
        value["categories"].alias("categories"),
        value["scores"].alias("scores"),
        value["round"].alias("round"),
        "value",
    )


def _user_csid(spark: Any, path: Path) -> tuple[Any, int]:
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType

    n = pq.ParquetFile(str(path)).metadata.num_rows
    df = spark.read.parquet(str(path))
    missing = [c for c in ("user_id", "csid") if c not in df.columns]
    if missing:
        raise ReconciliationError(f"{path} lacks column(s) {missing}; found {df.columns}")
    csid = F.col("csid")
    if isinstance(df.schema["csid"].dataType, ArrayType):  # code indices -> "3-14-0-7" (storage.keys)
        csid = F.concat_ws("-", F.transform("csid", lambda c: c.cast("string")))
    return df.select(F.col("user_id").cast("string").alias("user_id"), csid.cast("string").alias("csid")), n


def _portraits(spark: Any, path: Path) -> tuple[Any, int]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                csid = doc["csid"]
                rows.append((csid if isinstance(csid, str) else csid_to_str(csid),
                             None if doc.get("size") is None else int(doc["size"]), str(doc.get("portrait", ""))))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ReconciliationError(f"{path}:{line_no}: not a group record ({err})") from err
    return spark.createDataFrame(rows, "csid string, size long, portrait string"), len(rows)


def _reconcile(kv_round: int, *checks: tuple[str, int, int]) -> None:
    failed = [f"{name}: {got} != expected {want}" for name, got, want in checks if int(got) != int(want)]
    if failed:
        raise ReconciliationError(f"export of round {kv_round} does not reconcile: " + "; ".join(failed))


def _publish(staging: Path, out: Path) -> dict[str, str]:
    """Move each finished table from staging into ``out`` (old one aside first, then removed)."""
    paths = {}
    for name in TABLES:
        final = out / name
        if final.exists():
            trash = out / f".trash-{name}-{os.getpid()}"
            os.rename(final, trash)
            os.rename(staging / name, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(staging / name, final)
        paths[name] = str(final)
    shutil.rmtree(staging, ignore_errors=True)
    return paths


# ------------------------------------------------------------------------------------------------ SST ranges


def write_sst_ranges(kv: Any, sst_dir: Path) -> list[SstRange]:
    """Write one SST file per partition of a range-partitioned, key-sorted kv frame.

    Each non-empty partition ``i`` becomes ``sst_dir/part-{i:05d}.sst`` (written on the executor that holds
    it, so ``sst_dir`` must be a path every executor and the ingesting writer can reach). Partitions of
    ``repartitionByRange(..., "key")`` hold disjoint ascending ranges; this is checked on the returned ranges.
    Values are the exact KV value bytes (the ``value`` column).

    Returns:
        The ranges in ascending key order.
    """
    sst_dir = Path(sst_dir)
    shutil.rmtree(sst_dir, ignore_errors=True)
    sst_dir.mkdir(parents=True)
    target = str(sst_dir)

    def write_partition(index: int, rows: Any) -> Any:
        entries = ((bytes(r["key"]), bytes(r["value"])) for r in rows)
        first = next(entries, None)
        if first is None:
            return iter(())
        import itertools

        sst = write_sst_file(Path(target) / f"part-{index:05d}.sst", itertools.chain([first], entries))
        return iter([(str(sst.path), bytes(sst.first_key), bytes(sst.last_key), sst.count)])

    sorted_kv = kv.select("key", "value").sortWithinPartitions("key")
    ranges = [SstRange(Path(p), first, last, n) for p, first, last, n in
              sorted_kv.rdd.mapPartitionsWithIndex(write_partition).collect()]
    ranges.sort(key=lambda r: r.first_key)
    for before, after in zip(ranges, ranges[1:]):
        if after.first_key <= before.last_key:
            raise ReconciliationError(f"SST ranges overlap: {before.path} ends at {before.last_key!r}, "
                                      f"{after.path} starts at {after.first_key!r}")
    return ranges


def ingest_sst_ranges(root: Path, kv_round: int, ranges: list[SstRange] | list[Path], *,
                      overwrite: bool = False, move: bool = True) -> Any:
    """The single writer step: ingest per-range SST files as KV round ``kv_round`` under ``root``.

    Files are passed in ascending key order (sorted by their first key when ranges are given). Returns the
    staged table (``storage.kv.StagedTable``); promoting it is the caller's decision.
    """
    paths = [r.path for r in sorted(ranges, key=lambda r: r.first_key)] if ranges and \
        isinstance(ranges[0], SstRange) else [Path(p) for p in ranges]
    return KVStore(Path(root)).ingest(kv_round, paths, overwrite=overwrite, move=move)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="work directory with the promoted round")
    p.add_argument("--out", required=True, help="output directory (kv/, user_csid/, portraits/, export.json)")
    p.add_argument("--range-partitions", type=int, default=None, help="write kv as N ascending key ranges")
    p.add_argument("--sst-dir", default=None, help="also write one SST file per key range here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = export(Path(args.workdir), Path(args.out), range_partitions=args.range_partitions,
                    sst_dir=None if args.sst_dir is None else Path(args.sst_dir))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

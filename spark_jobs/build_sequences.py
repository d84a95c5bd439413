"""Spark job: raw event Parquet -> per-user long/short sequences, canonical C'_short and KV keys.

The same semantics as the in-process path (``coea.data.sequences.build_sequences``), for logs that do not fit
one machine; ``tests/spark_jobs/test_build_sequences.py`` builds both on one fixture and compares them:

- Events are ordered by ``(timestamp, user_id, item_id)``; only ``event == "click"`` rows with
  ``timestamp < cutoff`` whose item has a non-empty category count as clicks.
- I_long (Eq. 3): a click is kept when its frequency reaches ``tau`` at level ``long_filter`` -- ``"category"``:
  the user's click count on the item's category; ``"item"``: the user's click count on the item. Chronological,
  the most recent ``max_long_len`` kept (duplicates kept: they are separate clicks).
- S_short: the categories of the user's last ``short_k`` clicks, chronological.
- C'_short = ``storage.keys.canonical_recent(S_short)``, computed in Spark SQL as
  ``array_sort(array_distinct(filter(short, c -> c != '')))``. Spark compares strings as UTF-8 bytes, and UTF-8
  byte order is Unicode code-point order, i.e. Python's ``sorted`` on ``str``.
- ``short_hash`` is ``storage.keys.short_hash`` itself, called in a pandas UDF, so the key bytes are the
  in-process ones by construction; ``key = UTF-8(csid + "|" + short_hash)`` as in ``storage.keys.kv_key``.

Raw rows are cleaned exactly like ``coea.data.clean.clean_interactions`` (:func:`clean_events`): malformed,
bad-kind, unknown-item and duplicate events and bad item rows are dropped and counted by the same reason names,
never fatal. Every user with a valid event (at any time, as in-process) gets a row; a user without a click
before the cut-off has empty lists and the hash of the empty set. Users that only appear in a users table have
no events and no row here (in-process they get the same empty row).

Outputs under ``out_path`` (Parquet)::

    sequences/  user_id, long_items array<string> (item ids), short_categories array<string>,
                c_short array<string>, short_hash string, n_clicks long
                [+ csid string, key binary   when a user -> csid table is given]
    keys/       csid, short_hash, key binary, c_short array<string>, n_users long   (only with a csid table)

Run::

    spark-submit spark_jobs/build_sequences.py --events E.parquet --items I.parquet --out DIR \\
        --tau 5 --long-filter category --short-k 10 --max-long-len 200 [--cutoff 1700000000] [--user-csid U.parquet]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import pandas as pd

from coea.data.schema import EVENT_KINDS
from spark_jobs.session import get_spark
from storage.keys import DEFAULT_CSID, short_hash as _short_hash

log = logging.getLogger("coea.spark")

LONG_FILTERS = ("category", "item")


def build_sequences(spark: Any, events_path: str | list[str], items_path: str, out_path: str, *, tau: int,
                    long_filter: str, short_k: int, max_long_len: int, cutoff: int | None = None,
                    user_csid_path: str | None = None) -> dict[str, Any]:
    """Build per-user sequences (and keys, given a user -> csid table) and write them as Parquet.

    Args:
        spark: a SparkSession (``spark_jobs.session.get_spark()``).
        events_path: Parquet of events (columns of ``coea.data.schema.EVENT_COLUMNS``; ``rating`` optional): a
            file, a directory, or a list of files (the daily cycle passes every file it consumed so far, across
            ``events/date=YYYY-MM-DD`` partitions; their schemas are merged, a missing ``rating`` is null).
        items_path: Parquet of items (``item_id``, ``category``; ``title`` optional).
        out_path: output directory (local path or any Hadoop URI); ``sequences/`` and ``keys/`` are overwritten.
        tau: long-term filter threshold (Eq. 3), >= 1.
        long_filter: ``"category"`` or ``"item"``, the level the tau filter counts at.
        short_k: K, the short-term window in clicks, >= 1.
        max_long_len: most recent items of I_long kept, >= 1.
        cutoff: only events with ``timestamp < cutoff`` (unix seconds) are used; ``None`` uses all.
        user_csid_path: optional Parquet (``user_id``, ``csid``) of group CSIDs; users missing from it get
            ``storage.keys.DEFAULT_CSID``. With it, ``csid`` and ``key`` columns and the ``keys/`` table are written.

    Returns:
        Counts: ``events``, ``rejected`` (by reason), ``events_used``, ``clicks``, ``users``,
        ``users_empty_long``, ``keys`` (only with a csid table), and the output ``paths``.
    """
    _check_args(tau=tau, long_filter=long_filter, short_k=short_k, max_long_len=max_long_len)
    events, items, rejected, n_events = clean_events(spark, events_path, items_path)
    seqs = sequences_frame(events, items, tau=tau, long_filter=long_filter, short_k=short_k,
                           max_long_len=max_long_len, cutoff=cutoff).cache()

    paths = {"sequences": f"{out_path.rstrip('/')}/sequences"}
    keys = None
    if user_csid_path is not None:
        seqs = with_keys(seqs, spark.read.parquet(user_csid_path)).cache()
        keys = keys_frame(seqs)
        paths["keys"] = f"{out_path.rstrip('/')}/keys"
    seqs.write.mode("overwrite").parquet(paths["sequences"])

    from pyspark.sql import functions as F

    row = seqs.agg(F.count("*").alias("users"),
                   F.coalesce(F.sum("n_clicks"), F.lit(0)).alias("clicks"),
                   F.sum((F.size("long_items") == 0).cast("long")).alias("users_empty_long")).first()
    counts: dict[str, Any] = {
        "events": n_events,
        "rejected": rejected,
        "events_used": events.filter(_before(cutoff)).count(),
        "clicks": int(row["clicks"]),
        "users": int(row["users"]),
        "users_empty_long": int(row["users_empty_long"] or 0),
    }
    if keys is not None:
        keys = keys.cache()
        keys.write.mode("overwrite").parquet(paths["keys"])
        counts["keys"] = keys.count()
        keys.unpersist()
    seqs.unpersist()
    counts["paths"] = paths
    log.info("build_sequences: %s", counts)
    return counts


# ------------------------------------------------------------------------------------------- the transforms


def sequences_frame(events: Any, items: Any, *, tau: int, long_filter: str, short_k: int, max_long_len: int,
                    cutoff: int | None = None) -> Any:
    """Cleaned events + items (:func:`clean_events`) -> one row per user (see the module docstring)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    _check_args(tau=tau, long_filter=long_filter, short_k=short_k, max_long_len=max_long_len)
    users = events.select("user_id").distinct()  # every event user, as in-process (even if all are later)
    used = events.filter(_before(cutoff))
    categories = items.filter(F.col("category").isNotNull() & (F.col("category") != "")) \
        .select("item_id", "category").dropDuplicates(["item_id"])
    clicks = used.filter(F.col("event") == "click").join(categories, "item_id", "inner")
    level = ["user_id", "category"] if long_filter == "category" else ["user_id", "item_id"]
    clicks = clicks.withColumn("freq", F.count(F.lit(1)).over(Window.partitionBy(*level)))

    # One array per user, sorted by (timestamp, item_id): within a user this is the global
    # (timestamp, user_id, item_id) order. Sorting structs is deterministic; collect_list order is not.
    per_user = clicks.groupBy("user_id").agg(
        F.array_sort(F.collect_list(F.struct("timestamp", "item_id", "category", "freq"))).alias("clicks"))
    kept = F.filter("clicks", lambda c: c["freq"] >= tau)
    per_user = per_user.select(
        "user_id",
        F.size("clicks").cast("long").alias("n_clicks"),
        F.transform(_last(kept, max_long_len), lambda c: c["item_id"]).alias("long_items"),
        F.transform(_last(F.col("clicks"), short_k), lambda c: c["category"]).alias("short_categories"),
    )
    empty = F.array().cast("array<string>")
    seqs = users.join(per_user, "user_id", "left").select(
        "user_id",
        F.coalesce("long_items", empty).alias("long_items"),
        F.coalesce("short_categories", empty).alias("short_categories"),
        F.coalesce("n_clicks", F.lit(0).cast("long")).alias("n_clicks"),
    )
    seqs = seqs.withColumn("c_short", canonical_recent_col(F.col("short_categories")))
    return seqs.withColumn("short_hash", short_hash_udf()(F.col("c_short"))) \
        .select("user_id", "long_items", "short_categories", "c_short", "short_hash", "n_clicks")


def canonical_recent_col(categories: Any) -> Any:
    """Spark SQL form of ``storage.keys.canonical_recent``: unique, non-empty, code-point order.

    ``array_sort`` on strings compares UTF-8 bytes (the default UTF8_BINARY collation); UTF-8 preserves
    code-point order, so this equals Python's ``sorted`` (tested with non-ASCII and astral-plane names).
    """
    from pyspark.sql import functions as F

    return F.array_sort(F.array_distinct(F.filter(categories, lambda c: c.isNotNull() & (c != ""))))


def short_hash_udf() -> Any:
    """A pandas UDF ``array<string> -> string`` that calls ``storage.keys.short_hash`` on each row."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")
    def short_hash(c_short: pd.Series) -> pd.Series:
        return c_short.map(lambda cats: _short_hash(list(cats) if cats is not None else []))

    return short_hash


def with_keys(seqs: Any, user_csid: Any) -> Any:
    """Add ``csid`` (DEFAULT_CSID for users without a group) and ``key`` = UTF-8(csid + "|" + short_hash)."""
    from pyspark.sql import functions as F

    table = user_csid.select(F.col("user_id").cast("string"), F.col("csid").cast("string")) \
        .dropDuplicates(["user_id"])
    out = seqs.join(table, "user_id", "left") \
        .withColumn("csid", F.coalesce("csid", F.lit(DEFAULT_CSID)))
    bad = out.filter(F.instr("csid", "|") > 0).select("csid").limit(1).collect()
    if bad:
        raise ValueError(f"csid must not contain '|': {bad[0]['csid']!r}")
    return out.withColumn("key", F.encode(F.concat_ws("|", "csid", "short_hash"), "UTF-8"))


def keys_frame(seqs_with_keys: Any) -> Any:
    """Unique (csid, C'_short) pairs: what the Novelty LLM is prompted with, and how many users share each."""
    from pyspark.sql import functions as F

    return seqs_with_keys.groupBy("csid", "short_hash").agg(
        F.first("key").alias("key"), F.first("c_short").alias("c_short"), F.count("*").alias("n_users")) \
        .select("csid", "short_hash", "key", "c_short", "n_users")


# ------------------------------------------------------------------------------------------------ reading


def clean_events(spark: Any, events_path: str | list[str], items_path: str) -> tuple[Any, Any, dict[str, int], int]:
    """Read raw events and items and clean them like ``coea.data.clean.clean_interactions``.

    Rules (docs/data.md, "Cleaning"), checked in this order, each dropped row counted under its reason:
    ids are stripped strings (integers and integer-valued floats in decimal form); ``malformed_row`` = no
    user or item id, a timestamp that is not a non-negative whole number of seconds (timestamp types are
    converted), or a rating that is present but not a number; ``bad_event_kind`` = a kind other than
    ``click`` / ``exposure`` (after stripping); ``unknown_item`` = an item missing from the cleaned items;
    ``duplicate_event`` = an exact repeat of (user_id, item_id, timestamp, event, rating). Items: ``malformed_item``,
    ``duplicate_item`` (the first row in read order is kept), ``item_without_category``.

    Returns:
        (events: user_id, item_id, timestamp, event; items: item_id, category; rejected counts; raw event rows).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    items, item_rejects = _clean_items(spark, items_path)
    paths = [events_path] if isinstance(events_path, str) else list(events_path)
    if not paths:
        raise ValueError("no event files given")
    # Files of a live log may differ in optional columns (one has rating, another not): merge the schemas.
    raw = spark.read.option("mergeSchema", "true").parquet(*paths)
    missing = [c for c in ("user_id", "item_id", "timestamp", "event") if c not in raw.columns]
    if missing:
        raise ValueError(f"events at {events_path} lack required column(s) {missing}; found {raw.columns}")
    if "rating" in raw.columns:
        rating = _number(raw, "rating")
        bad_rating = rating.isNull() & F.col("rating").isNotNull()
    else:
        rating, bad_rating = F.lit(None).cast("double"), F.lit(False)
    typed = raw.select(_id(raw, "user_id").alias("user_id"), _id(raw, "item_id").alias("item_id"),
                       _seconds(raw, "timestamp").alias("timestamp"),
                       _strip(F.col("event").cast("string")).alias("event"),
                       # null and NaN are one value for duplicates, as in pandas
                       F.when(rating.isNull() | F.isnan(rating), F.lit(float("nan"))).otherwise(rating).alias("rating"),
                       bad_rating.alias("_bad_rating"))
    known = items.select("item_id", F.lit(True).alias("_known"))
    typed = typed.join(known, "item_id", "left")
    reason = (F.when(F.col("user_id").isNull() | F.col("item_id").isNull() | F.col("timestamp").isNull()
                     | F.col("_bad_rating"), "malformed_row")
              .when(F.col("event").isNull() | ~F.col("event").isin(*EVENT_KINDS), "bad_event_kind")
              .when(F.col("_known").isNull(), "unknown_item"))
    typed = typed.withColumn("_reject", reason)
    # Valid rows first, so a rejected twin (e.g. an unparseable rating, NaN here) never makes a valid row a duplicate.
    row = Window.partitionBy("user_id", "item_id", "timestamp", "event", "rating") \
        .orderBy(F.col("_reject").isNotNull())
    typed = typed.withColumn("_reject", F.when(F.col("_reject").isNull() & (F.row_number().over(row) > 1),
                                               "duplicate_event").otherwise(F.col("_reject"))).cache()
    counts = typed.groupBy("_reject").count().collect()
    rejected = {r["_reject"]: int(r["count"]) for r in counts if r["_reject"] is not None}
    n_events = sum(int(r["count"]) for r in counts)
    events = typed.filter(F.col("_reject").isNull()).select("user_id", "item_id", "timestamp", "event")
    return events, items, dict(sorted({**item_rejects, **rejected}.items())), n_events


def _clean_items(spark: Any, path: str) -> tuple[Any, dict[str, int]]:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    raw = spark.read.parquet(path)
    missing = [c for c in ("item_id", "category") if c not in raw.columns]
    if missing:
        raise ValueError(f"items at {path} lack required column(s) {missing}; found {raw.columns}")
    typed = raw.select(_id(raw, "item_id").alias("item_id"),
                       _strip(F.col("category").cast("string")).alias("category"),
                       F.monotonically_increasing_id().alias("_order"))
    first = Window.partitionBy("item_id").orderBy("_order")
    reason = (F.when(F.col("item_id").isNull(), "malformed_item")
              .when(F.row_number().over(first) > 1, "duplicate_item")
              .when(F.col("category").isNull() | (F.col("category") == ""), "item_without_category"))
    typed = typed.withColumn("_reject", reason).cache()
    rejected = {r["_reject"]: int(r["count"]) for r in
                typed.filter(F.col("_reject").isNotNull()).groupBy("_reject").count().collect()}
    return typed.filter(F.col("_reject").isNull()).select("item_id", "category"), rejected


#: Every character Python's ``str.strip()`` removes, as one regex class (Spark's ``trim`` removes only spaces).
_SPACE = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in map(chr, range(0x110000)) if c.isspace()) + "]"


def _strip(col: Any) -> Any:
    """Python ``str.strip()`` in Spark SQL; empty results become null."""
    from pyspark.sql import functions as F

    out = F.regexp_replace(col, f"^{_SPACE}+|{_SPACE}+$", "")
    return F.when(out == "", F.lit(None).cast("string")).otherwise(out)


def _id(df: Any, name: str) -> Any:
    """An id as a stripped string: integers and integer-valued floats in decimal form, anything else null."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DecimalType, DoubleType, FloatType, IntegralType, StringType

    dtype, col = df.schema[name].dataType, F.col(name)
    if isinstance(dtype, StringType):
        return _strip(col)
    if isinstance(dtype, IntegralType):
        return col.cast("string")
    if isinstance(dtype, (DoubleType, FloatType, DecimalType)):
        x = col.cast("double")
        whole = ~F.isnan(x) & (F.abs(x) < F.lit(9.2e18)) & (x == F.floor(x))
        return F.when(whole, x.cast("long").cast("string"))
    return F.lit(None).cast("string")


def _number(df: Any, name: str) -> Any:
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType, StringType

    dtype, col = df.schema[name].dataType, F.col(name)
    if isinstance(dtype, NumericType):
        return col.cast("double")
    if isinstance(dtype, StringType):
        return F.expr(f"try_cast(trim({name}) AS DOUBLE)")
    return F.lit(None).cast("double")


def _seconds(df: Any, name: str) -> Any:
    """Unix seconds as bigint; null when negative, not whole or not finite (timestamp types converted)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import TimestampNTZType, TimestampType

    dtype = df.schema[name].dataType
    if isinstance(dtype, (TimestampType, TimestampNTZType)):
        micros = F.unix_micros(F.col(name).cast("timestamp"))
        return F.when((micros >= 0) & (micros % 1_000_000 == 0), F.floor(micros / 1_000_000).cast("long"))
    x = _number(df, name)
    ok = ~F.isnan(x) & (x >= 0) & (x < F.lit(9.2e18)) & (x == F.floor(x))
    return F.when(ok, x.cast("long"))


# ------------------------------------------------------------------------------------------------ helpers


def _before(cutoff: int | None) -> Any:
    from pyspark.sql import functions as F

    return F.lit(True) if cutoff is None else F.col("timestamp") < F.lit(int(cutoff))


def _last(arr: Any, n: int) -> Any:
    """The last ``n`` elements of an array column (``slice`` with a negative start past the front is empty)."""
    from pyspark.sql import functions as F

    return F.slice(arr, F.greatest(F.size(arr) - F.lit(n - 1), F.lit(1)), F.lit(n))


def _check_args(*, tau: int, long_filter: str, short_k: int, max_long_len: int) -> None:
    if long_filter not in LONG_FILTERS:
        raise ValueError(f"long_filter must be one of {LONG_FILTERS}, got {long_filter!r}")
    for name, value in (("tau", tau), ("short_k", short_k), ("max_long_len", max_long_len)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", required=True, nargs="+", help="events Parquet (files or directories)")
    p.add_argument("--items", required=True, help="items Parquet (item_id, category)")
    p.add_argument("--out", required=True, help="output directory (sequences/, keys/)")
    p.add_argument("--tau", type=int, default=5, help="long-term filter threshold (Eq. 3)")
    p.add_argument("--long-filter", choices=LONG_FILTERS, default="category", help="level tau counts at")
    p.add_argument("--short-k", type=int, default=10, help="K: short-term window in clicks")
    p.add_argument("--max-long-len", type=int, default=200, help="most recent items of I_long kept")
    p.add_argument("--cutoff", type=int, default=None, help="use events with timestamp < cutoff (unix s)")
    p.add_argument("--user-csid", default=None, help="Parquet (user_id, csid); adds keys")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    spark = get_spark("coea-build-sequences")
    counts = build_sequences(spark, args.events, args.items, args.out, tau=args.tau,
                             long_filter=args.long_filter, short_k=args.short_k,
                             max_long_len=args.max_long_len, cutoff=args.cutoff, user_csid_path=args.user_csid)
    print(json.dumps(counts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

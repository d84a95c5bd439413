"""A day of coea at MTRec shape, stage by stage, at growing user counts: wall time, peak RSS, growth exponent.

    python benchmarks/scale.py --users 10000,100000,1000000 [--root /tmp/scale-bench]
        [--out benchmarks/results/scale.json] [--stages world,seq_spark,...] [--fresh]

Each (size, stage) runs in its own child process (``--child``), so every peak RSS is that stage's alone:
``ru_maxrss`` of the child from ``os.wait4`` (the driver forking it is a small process), plus the Spark JVM's
own peak (``VmHWM`` of the gateway process, read before it stops) for the Spark stages. Stages read the previous
stage's outputs under ``ROOT/<users>/``. After EVERY stage the results file is rewritten (with the load average
before and after the stage and the fitted exponents so far), and the plot ``--png`` is redrawn: a killed run keeps
what it measured. Running again with other ``--users`` adds to the same file (``--fresh`` starts it over).

Stages (docs/scale.md says what each stands for in the daily cycle):

  world         coea world: the MTRec-shaped click log (594 categories, 27,953 items, 25 days, ~228 clicks/user)
  seq_spark     spark_jobs.build_sequences over every day file (Spark local mode, data.engine: spark)
  seq_chunked   the same sequences in process, one user chunk at a time (the world's files are bucketed by user
                chunk), checked row by row against the Spark output; downstream stages read Spark's output when
                Spark ran on every user, else this one
  seq_pandas    the in-process path: load_parquet + build_sequences (only up to --pandas-max-users: it holds the
                whole log in one pandas frame, which is the point of the Spark path)
  encoder       DSIE encoder training on a fixed-size sample of warm users (--encoder-sample)
  embed         u_long for every user, in batches read from the Spark output (bounded memory)
  rqvae         RQ-VAE 64 x 4 fitted on a fixed-size sample (--rqvae-sample), codes for every warm user in batches
  merge         quantizer.build_csid_map: every realised code tuple -> at most 4,000 groups, with the configured
                quantizer.merge_search (mtrec.yaml: prefix)
  merge_exact   the paper's exact rule on the same codes (up to --merge-exact-max-users): its time, and its
                agreement with the configured rule's groups and with the world's latent groups
  keys          unique (CSID, C'_short) keys (the driver of LLM cost)
  scoring       closed-vocabulary scoring of all 594 categories per key (coea.candidates.rank_categories, shared
                prompt) with the embedded backbone, on --score-keys sampled keys: per-key cost
  kv            the KV table for every key: SST files (storage.kv.write_sst_ranges) + ingest + promote; values are
                the sampled keys' ranked lists reused round-robin (their size is a real value's size)
  dpo           PCO DPO + KL (loops.dpo.run_dpo, embedded backbone) on pairs sampled from 1% of the active users:
                two runs (--pairs-small, --pairs-large) give the marginal per-pair cost
  relevance     the Relevance update (loops.reward.train_reward), same two-run per-pair cost
  export        spark_jobs.export_kv.export of the promoted KV round + user->CSID + portraits (Spark)

Timings on a shared 2-core machine move with its load: each stage records the 1-minute load average before
and after. ``work_s`` is the stage's own timed region, ``process_s`` includes interpreter and library start-up.
The exponent is the least-squares slope of log(work_s) on log(users) over the sizes measured. The full-size plan
grows each data stage's largest measurement by its slope between the two largest sizes (``top_step``): start-up
costs flatten the all-sizes slope and would under-predict.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STAGES = ("world", "seq_spark", "seq_chunked", "seq_pandas", "encoder", "embed", "rqvae", "merge", "merge_exact",
          "keys", "scoring", "kv", "dpo", "relevance", "export")
CONFIG = REPO / "configs" / "mtrec.yaml"
CHUNK_USERS = 50_000
EMBED_BATCH = 50_000  # users per Parquet batch read for inference
RESULT_TAG = "SCALE_RESULT "


# ------------------------------------------------------------------------------------------------ helpers


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def cfg_for_bench():
    """configs/mtrec.yaml with the embedded backbone (CPU, no hub) and one thread everywhere."""
    from coea.config import load_config

    return load_config(CONFIG, ["backbone.name=embedded", "backbone.dtype=float32", "run.num_threads=1",
                                "run.device=cpu", "profile.backend=statistical", "backbone.use_chat_template=false",
                                "cycle.deepspeed=", "cycle.num_processes=1"])


def threads_one() -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def spark_session(users: int):
    from spark_jobs.session import get_spark

    big = users >= 500_000
    return get_spark("coea-scale", master="local[2]", conf={
        "spark.driver.memory": "8g" if big else "3g",
        "spark.sql.shuffle.partitions": "64" if big else "8",
        "spark.local.dir": "/tmp/scale-spark",
        "spark.driver.extraJavaOptions": "-XX:+UseParallelGC",
    })


def jvm_peak_mb(spark) -> float | None:
    try:
        pid = spark.sparkContext._gateway.proc.pid
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except Exception:  # not a local gateway (spark-submit) or /proc unavailable
        return None
    return None


def dir_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20, 1)


def item_vocab(world: Path) -> tuple[list[str], list[str]]:
    """Item ids in id (string) order, as round 0 numbers them (docs/data.md, Vocabularies), and their categories."""
    import pandas as pd

    items = pd.read_parquet(world / "items.parquet", columns=["item_id", "category"])
    items["item_id"] = items["item_id"].astype(str)
    items = items.sort_values("item_id", kind="stable")
    return items["item_id"].tolist(), items["category"].tolist()


def feature_table(world: Path):
    """(codes (U, F) int64 indexed by integer user id, cardinalities, names): values coded in sorted order."""
    import numpy as np
    import pyarrow.parquet as pq

    users = pq.read_table(world / "users.parquet")
    names = [c for c in users.column_names if c != "user_id"]
    uid = users["user_id"].to_numpy()
    codes = np.zeros((int(uid.max()) + 1, len(names)), dtype=np.int64)
    cards = []
    for j, name in enumerate(names):
        col = users[name].to_pandas().astype(str)
        values = sorted(col.unique())
        codes[uid, j] = col.map({v: i + 1 for i, v in enumerate(values)}).to_numpy()
        cards.append(len(values) + 1)
    return codes, cards, names


def sequences_from_batch(batch, vocab_index, vocab: list[str], categories: list[str], features, cards, names):
    """A coea Sequences for one Arrow batch of the Spark job's sequences/ rows (item ids -> vocabulary indices)."""
    import numpy as np
    import pyarrow.compute as pc

    from coea.data.schema import Sequences

    long = batch.column("long_items")
    flat = pc.list_flatten(long)
    idx = pc.index_in(flat, value_set=vocab_index).to_numpy(zero_copy_only=False).astype(np.int64) + 1  # (T,)
    lengths = pc.list_value_length(long).fill_null(0).to_numpy(zero_copy_only=False)
    splits = np.cumsum(lengths)[:-1]
    user_ids = batch.column("user_id").to_pylist()
    rows = np.asarray([int(u) for u in user_ids], dtype=np.int64)
    shorts = batch.column("short_categories").to_pylist()
    c_short = [tuple(x or ()) for x in batch.column("c_short").to_pylist()]
    return Sequences(user_ids=user_ids, item_vocab=vocab, long_items=np.split(idx, splits) if len(lengths) else [],
                     short_categories=[list(s or ()) for s in shorts], c_short=c_short, features=features[rows],
                     feature_cardinalities=cards, cutoff=0, feature_names=names, item_categories=categories)


# ------------------------------------------------------------------------------------------------- stages


def stage_world(n: int, d: Path, args) -> dict:
    from dataclasses import asdict

    from coea.data.world import WorldSpec, write_world

    shutil.rmtree(d / "world", ignore_errors=True)
    spec = WorldSpec(users=n, chunk_users=CHUNK_USERS, seed=0)
    t = time.perf_counter()
    res = write_world(spec, d / "world")
    return {"work_s": time.perf_counter() - t, "clicks": res.clicks, "files": res.files,
            "clicks_per_user": round(res.clicks / n, 1), "disk_mb": dir_mb(d / "world"), "spec": asdict(spec),
            "events_written": "clicks only"}


def _event_files(world: Path, chunks: int | None) -> list[str]:
    files = sorted(str(p) for p in (world / "events").glob("date=*/part-*.parquet"))
    if chunks is not None:
        files = [f for f in files if int(Path(f).stem.split("-")[1]) < chunks]
    return files


def stage_seq_spark(n: int, d: Path, args) -> dict:
    from spark_jobs.build_sequences import build_sequences

    cfg = cfg_for_bench()
    world = d / "world"
    chunks = None
    if args.spark_max_users and n > args.spark_max_users:
        chunks = max(1, args.spark_max_users // CHUNK_USERS)
    files = _event_files(world, chunks)
    shutil.rmtree(d / "seq", ignore_errors=True)
    spark = spark_session(n)
    t = time.perf_counter()
    res = build_sequences(spark, files, str(world / "items.parquet"), str(d / "seq"), tau=cfg.data.tau,
                          long_filter=cfg.data.long_filter, short_k=cfg.data.short_k,
                          max_long_len=cfg.data.max_long_len)
    wall = time.perf_counter() - t
    out = {"work_s": wall, "jvm_peak_rss_mb": jvm_peak_mb(spark), "files": len(files),
           "counts": {k: v for k, v in res.items() if k != "paths"}, "output_mb": dir_mb(d / "seq")}
    if chunks is not None:
        (d / "seq" / "SAMPLED").write_text(f"first {chunks} user chunks\n")
        out["sampled"] = {"users_processed": chunks * CHUNK_USERS, "of_users": n,
                          "why": f"--spark-max-users {args.spark_max_users}: the first {chunks} user chunk files "
                                 "of every day (whole users, exact per-user semantics)",
                          "work_s_scaled_to_all": wall * n / (chunks * CHUNK_USERS)}
    spark.stop()
    return out


def stage_seq_chunked(n: int, d: Path, args) -> dict:
    """The same per-user sequences as spark_jobs.build_sequences, built in process one user chunk at a time.

    The world's files are bucketed by user chunk (part-CCCCC holds users [C * chunk, (C + 1) * chunk) on every day),
    so a chunk's 25 files hold all of its users' events: one chunk at a time in memory, vectorised numpy. Semantics
    are the Spark job's (docs/spark.md): exact duplicates dropped, clicks ordered by (timestamp, item_id as a
    string), freq = the user's clicks on the category, I_long = the newest max_long_len clicks with freq >= tau,
    S_short = the last short_k clicks' categories, C'_short and short_hash from storage.keys. Checked row by row
    against the Spark output wherever that exists (``matches_spark``).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage.keys import short_hash

    cfg = cfg_for_bench()
    tau, k_short, max_len = cfg.data.tau, cfg.data.short_k, cfg.data.max_long_len
    world = d / "world"
    items = pq.read_table(world / "items.parquet", columns=["item_id", "category"])
    item_ids = items["item_id"].to_numpy()
    cat_names = sorted(set(items["category"].to_pylist()))
    cat_of = {c: i for i, c in enumerate(cat_names)}
    item_cat = np.zeros(int(item_ids.max()) + 1, dtype=np.int64)
    item_cat[item_ids] = [cat_of[c] for c in items["category"].to_pylist()]
    item_str = np.array([str(i) for i in range(len(item_cat))], dtype=object)
    rank = np.zeros(len(item_cat), dtype=np.int64)  # item id order as strings (Spark sorts the string ids)
    rank[np.argsort(item_str.astype(str), kind="stable")] = np.arange(len(item_cat))
    cat_arr = pa.array(cat_names)
    out_dir = d / "seq_chunked" / "sequences"
    shutil.rmtree(d / "seq_chunked", ignore_errors=True)
    out_dir.mkdir(parents=True)
    files = _event_files(world, None)
    by_chunk: dict[int, list[str]] = {}
    for f in files:
        by_chunk.setdefault(int(Path(f).stem.split("-")[1]), []).append(f)
    t = time.perf_counter()
    n_users = n_clicks = n_dup = 0
    for c in sorted(by_chunk):
        tab = pa.concat_tables([pq.read_table(f, columns=["user_id", "item_id", "timestamp", "event"])
                                for f in by_chunk[c]])
        click = (tab["event"].to_numpy(zero_copy_only=False) == "click")
        user = tab["user_id"].to_numpy()[click]
        item = tab["item_id"].to_numpy()[click]
        ts = tab["timestamp"].to_numpy()[click]
        del tab
        order = np.lexsort((rank[item], ts, user))  # per user, (timestamp, item id string) order
        user, item, ts = user[order], item[order], ts[order]
        dup = np.zeros(len(user), dtype=bool)
        dup[1:] = (user[1:] == user[:-1]) & (item[1:] == item[:-1]) & (ts[1:] == ts[:-1])
        n_dup += int(dup.sum())
        user, item = user[~dup], item[~dup]
        cat = item_cat[item]
        base = int(user.min())
        local = user - base
        n_local = int(local.max()) + 1
        key = local * len(cat_names) + cat
        freq = np.bincount(key, minlength=n_local * len(cat_names))[key]  # (T,) clicks on the click's category
        starts = np.flatnonzero(np.r_[True, local[1:] != local[:-1]])
        ends = np.r_[starts[1:], len(local)]
        uids = local[starts]
        # S_short: the last k clicks of each user
        pos_end = np.repeat(ends, ends - starts) - np.arange(len(local))  # 1 = the user's last click
        short = pos_end <= k_short
        # I_long: the newest max_len clicks with freq >= tau
        kept = freq >= tau
        kept_rank = np.zeros(len(local), dtype=np.int64)
        kept_user = local[kept]
        k_starts = np.flatnonzero(np.r_[True, kept_user[1:] != kept_user[:-1]]) if len(kept_user) else np.zeros(0, int)
        k_ends = np.r_[k_starts[1:], len(kept_user)]
        kept_rank[kept] = np.repeat(k_ends, k_ends - k_starts) - np.arange(len(kept_user))
        long_mask = kept & (kept_rank <= max_len)

        def lists(mask, values):
            counts = np.bincount(np.searchsorted(uids, local[mask]), minlength=len(uids))
            offsets = np.r_[0, np.cumsum(counts)].astype(np.int32)
            return pa.ListArray.from_arrays(pa.array(offsets), values)

        long_items = lists(long_mask, pa.array(item_str[item[long_mask]].tolist(), type=pa.string()))
        short_cats = lists(short, cat_arr.take(pa.array(cat[short])))
        short_lists = short_cats.to_pylist()
        c_short = [sorted(set(x)) for x in short_lists]
        tab = pa.table({
            "user_id": pa.array([str(base + u) for u in uids]), "long_items": long_items,
            "short_categories": short_cats, "c_short": pa.array(c_short, type=pa.list_(pa.string())),
            "short_hash": pa.array([short_hash(x) for x in c_short]),
            "n_clicks": pa.array((ends - starts).astype(np.int64)),
        })
        pq.write_table(tab, out_dir / f"part-{c:05d}.parquet")
        n_users += len(uids)
        n_clicks += len(local)
        del tab, user, item, ts, cat, local, key, freq
    wall = time.perf_counter() - t
    out = {"work_s": wall, "users": n_users, "clicks": n_clicks, "duplicates_dropped": n_dup,
           "output_mb": dir_mb(d / "seq_chunked")}
    out["matches_spark"] = _compare_with_spark(d)
    return out


def _compare_with_spark(d: Path) -> dict | None:
    """Row-by-row comparison with the Spark job's output on the users both hold."""
    import pyarrow.dataset as ds

    if not (d / "seq" / "sequences").exists():
        return None
    cols = ["user_id", "long_items", "short_categories", "c_short", "short_hash"]
    spark = ds.dataset(str(d / "seq" / "sequences"), format="parquet").to_table(columns=cols).to_pandas()
    mine = ds.dataset(str(d / "seq_chunked" / "sequences"), format="parquet").to_table(columns=cols).to_pandas()
    both = spark.merge(mine, on="user_id", suffixes=("_spark", "_chunked"))
    bad = {c: int(sum(list(a) != list(b) for a, b in zip(both[f"{c}_spark"], both[f"{c}_chunked"])))
           for c in cols[1:]}
    return {"users_compared": len(both), "spark_users": len(spark), "mismatches": bad,
            "equal": len(both) == len(spark) and not any(bad.values())}


def stage_seq_pandas(n: int, d: Path, args) -> dict:
    if n > args.pandas_max_users:
        return {"skipped": f"in-process path holds the whole log in one pandas frame; run only up to "
                           f"--pandas-max-users {args.pandas_max_users}"}
    from coea.data.parquet import load_parquet
    from coea.data.sequences import build_sequences

    cfg = cfg_for_bench()
    t = time.perf_counter()
    inter = load_parquet(d / "world")
    t_load = time.perf_counter() - t
    seqs = build_sequences(inter, cfg.data)
    wall = time.perf_counter() - t
    return {"work_s": wall, "load_s": t_load, "events": len(inter.events), "users": len(seqs.user_ids),
            "warm": sum(1 for s in seqs.long_items if len(s))}


def _seq_dir(d: Path) -> Path:
    """The sequences downstream stages read: Spark's when it ran on every user, else the chunked build's."""
    spark = d / "seq" / "sequences"
    return spark if spark.exists() and not (d / "seq" / "SAMPLED").exists() else d / "seq_chunked" / "sequences"


def _seq_dataset(d: Path):
    import pyarrow.dataset as ds

    return ds.dataset(str(_seq_dir(d)), format="parquet")


def stage_encoder(n: int, d: Path, args) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from coea.encoder import save_encoder, train_encoder

    threads_one()
    cfg = cfg_for_bench()
    vocab, cats = item_vocab(d / "world")
    features, cards, names = feature_table(d / "world")
    data = _seq_dataset(d)
    t = time.perf_counter()
    # a fixed-size sample of warm users: the first rows of the output whose I_long is non-empty (order is arbitrary)
    want = args.encoder_sample
    parts = []
    for batch in data.to_batches(batch_size=EMBED_BATCH):
        warm = pc.greater(pc.list_value_length(batch.column("long_items")).fill_null(0), 0)
        parts.append(batch.filter(warm))
        if sum(p.num_rows for p in parts) >= want:
            break
    sample = pa.Table.from_batches(parts).slice(0, want).combine_chunks().to_batches()[0]
    seqs = sequences_from_batch(sample, pa.array(vocab), vocab, cats, features, cards, names)
    t_read = time.perf_counter() - t
    model, metrics = train_encoder(seqs, cfg.encoder, out_dir=d / "encoder", max_len=cfg.data.max_long_len,
                                   seed=0)
    save_encoder(model, d / "encoder.pt")
    wall = time.perf_counter() - t
    return {"work_s": wall, "read_s": t_read, "sample_users": len(seqs.user_ids), "epochs": cfg.encoder.epochs,
            "loss_first_last": [metrics["epoch_losses"][0], metrics["epoch_losses"][-1]],
            "mean_long_len": float(np.mean([len(s) for s in seqs.long_items]))}


def stage_embed(n: int, d: Path, args) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from coea.encoder import encode_users, load_encoder

    threads_one()
    vocab, cats = item_vocab(d / "world")
    features, cards, names = feature_table(d / "world")
    model = load_encoder(d / "encoder.pt")
    data = _seq_dataset(d)
    total = data.count_rows()
    if args.embed_max_users and total > args.embed_max_users:  # whole files in user order: whole users
        import pyarrow.dataset as ds

        files = sorted(data.files)
        kept, rows = [], 0
        for f in files:
            if rows >= args.embed_max_users:
                break
            kept.append(f)
            rows += ds.dataset(f, format="parquet").count_rows()
        data, total = ds.dataset(kept, format="parquet"), rows
    dim = model.hparams["d_model"]
    u_long = np.lib.format.open_memmap(d / "u_long.npy", mode="w+", dtype=np.float32, shape=(total, dim))
    writer = None
    vocab_index = pa.array(vocab)
    t = time.perf_counter()
    row = 0
    for batch in data.to_batches(batch_size=EMBED_BATCH, columns=["user_id", "long_items", "short_categories",
                                                                    "c_short", "short_hash"]):
        seqs = sequences_from_batch(batch, vocab_index, vocab, cats, features, cards, names)
        u_long[row:row + batch.num_rows] = encode_users(model, seqs, batch_size=1024)  # (B, d)
        warm = np.array([len(s) > 0 for s in seqs.long_items])
        meta = pa.table({"user_id": batch.column("user_id"), "short_hash": batch.column("short_hash"),
                         "c_short": batch.column("c_short"), "warm": pa.array(warm)})
        writer = writer or pq.ParquetWriter(d / "embed_users.parquet", meta.schema)
        writer.write_table(meta)
        row += batch.num_rows
    writer.close()
    u_long.flush()
    wall = time.perf_counter() - t
    out = {"work_s": wall, "users": total, "users_per_s": round(total / wall, 1), "d": dim,
           "sequences_from": str(_seq_dir(d).relative_to(d))}
    if total < n:
        out["users_processed"] = total
        out["sampled"] = (f"--embed-max-users {args.embed_max_users}: the first {total:,} users (whole sequence "
                          f"files, user order) of {n:,}; this stage and every later one work on them")
    return out


def stage_rqvae(n: int, d: Path, args) -> dict:
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from quantizer import RQVAE, train_rqvae

    threads_one()
    cfg = cfg_for_bench()
    q = cfg.quantizer
    u_long = np.load(d / "u_long.npy", mmap_mode="r")
    warm = pq.read_table(d / "embed_users.parquet", columns=["warm"])["warm"].to_numpy(zero_copy_only=False)
    warm_rows = np.flatnonzero(warm)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(warm_rows, size=min(args.rqvae_sample, len(warm_rows)), replace=False))
    t = time.perf_counter()
    torch.manual_seed(0)
    model = RQVAE(input_dim=u_long.shape[1], code_dim=q.code_dim, levels=q.levels, codebook_size=q.codebook_size,
                  hidden_dim=q.hidden_dim, commitment_weight=q.commitment_weight, kmeans_init=q.kmeans_init,
                  threshold_ema_dead_code=q.threshold_ema_dead_code, decay=q.ema_decay, standardize=q.standardize)
    res = train_rqvae(model, torch.from_numpy(np.ascontiguousarray(u_long[sample])), epochs=q.epochs,
                      batch_size=q.batch_size, lr=q.lr, seed=0, progress_bar=False)
    t_fit = time.perf_counter() - t
    codes = np.lib.format.open_memmap(d / "codes.npy", mode="w+", dtype=np.int16, shape=(len(warm_rows), q.levels))
    space = np.lib.format.open_memmap(d / "space.npy", mode="w+", dtype=np.float32,
                                      shape=(len(warm_rows), u_long.shape[1]))
    with torch.no_grad():
        for a in range(0, len(warm_rows), EMBED_BATCH):
            x = torch.from_numpy(np.ascontiguousarray(u_long[warm_rows[a:a + EMBED_BATCH]]))
            codes[a:a + len(x)] = model.encode(x).numpy()
            space[a:a + len(x)] = model.prepare(x).numpy()
    codes.flush()
    space.flush()
    wall = time.perf_counter() - t
    used = [int(len(np.unique(codes[:, j]))) for j in range(q.levels)]
    return {**_processed(d, n), "work_s": wall, "fit_s": t_fit, "assign_s": wall - t_fit, "fit_sample": len(sample),
            "warm_users": len(warm_rows), "codebook": f"{q.codebook_size} x {q.levels}", "codes_used_per_level": used,
            "reconstruction_error": res.reconstruction_error}


def _processed(d: Path, n: int) -> dict:
    """``users_processed`` when the embed stage worked on a sample of the world's users."""
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(d / "embed_users.parquet").metadata.num_rows
    return {"users_processed": rows} if rows < n else {}


def stage_merge(n: int, d: Path, args) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from quantizer import build_csid_map
    from storage.keys import DEFAULT_CSID

    cfg = cfg_for_bench()
    codes = np.load(d / "codes.npy")
    space = np.load(d / "space.npy").astype(np.float64)
    fit = np.arange(len(codes))
    if args.merge_max_users and len(codes) > args.merge_max_users:  # the rule on a sample; everyone assigned
        fit = np.sort(np.random.default_rng(0).choice(len(codes), args.merge_max_users, replace=False))
    t = time.perf_counter()
    m = build_csid_map(codes[fit], space[fit], max_groups=cfg.quantizer.max_groups,
                       min_group_size=cfg.quantizer.min_group_size, search=cfg.quantizer.merge_search)
    t_merge = time.perf_counter() - t
    # every warm user: a seen tuple follows the merge map, an unseen one goes to the nearest centroid (the path
    # later rounds take for new users, coea.dsie.assign_csids)
    csids_warm = m.assign(codes, embeddings=space if len(fit) < len(codes) else None)
    wall = time.perf_counter() - t
    meta = pq.read_table(d / "embed_users.parquet", columns=["user_id", "warm"])
    warm = meta["warm"].to_numpy(zero_copy_only=False)
    csids = np.full(len(warm), DEFAULT_CSID, dtype=object)
    csids[warm] = csids_warm
    pq.write_table(pa.table({"user_id": meta["user_id"], "csid": pa.array(csids.tolist(), type=pa.string())}),
                   d / "user_csid.parquet")
    sizes = np.asarray(m.sizes)
    rescan = _rescan_cost(codes[fit], space[fit], merges=100) if len(m.merge) > cfg.quantizer.max_groups else None
    if rescan:
        rescan["estimated_total_s"] = rescan["per_merge_s"] * (len(m.merge) - len(m.survivors))
    return {**_processed(d, n), "work_s": wall, "merge_s": t_merge, "assign_s": wall - t_merge,
            "search": cfg.quantizer.merge_search, "code_tuples": len(m.merge),
            "vs_latent_groups": _truth_agreement(d, meta["user_id"].to_pylist(), csids.tolist(), warm),
            "previous_rule_rescan": rescan,
            "sampled": None if len(fit) == len(codes) else {
                "fit_users": len(fit), "of_warm_users": len(codes),
                "distinct_tuples_all_users": int(len(np.unique(codes, axis=0))),
                "why": f"--merge-max-users {args.merge_max_users}: the rule is quadratic in code tuples; the map is "
                       "built on a uniform user sample and every user is assigned with it"},
            "groups": len(m.survivors), "warm_users": int(warm.sum()),
            "group_size": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())}}


def _truth_agreement(d: Path, user_ids: list, csids: list, warm) -> dict | None:
    """Purity and NMI of the warm users' CSIDs vs the world's latent groups (coea.dsie.ground_truth_agreement)."""
    import numpy as np
    import pandas as pd

    from coea.dsie import ground_truth_agreement

    path = d / "world" / "ground_truth.parquet"
    if not path.exists():
        return None
    keep = np.flatnonzero(warm)
    truth = pd.read_parquet(path, columns=["user_id", "latent_group"])
    truth["user_id"] = truth["user_id"].astype(str)  # the world writes ints; the sequences carry strings
    res = ground_truth_agreement([str(user_ids[i]) for i in keep], [csids[i] for i in keep], truth)
    return res and {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}


def stage_merge_exact(n: int, d: Path, args) -> dict:
    """The paper's rule (search="exact", every alive group) on the same codes, beside the configured rule that the
    merge stage ran: its time, and how far the two groupings agree (NMI and adjusted Rand index over the warm
    users, and each one's purity / NMI vs the world's latent groups). Only up to --merge-exact-max-users."""
    import numpy as np
    import pyarrow.parquet as pq
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from quantizer import build_csid_map

    cfg = cfg_for_bench()
    codes = np.load(d / "codes.npy")
    if len(codes) > args.merge_exact_max_users:
        return {"skipped": f"{len(codes):,} warm users > --merge-exact-max-users {args.merge_exact_max_users:,}: "
                           "the exact rule is quadratic in code tuples"}
    space = np.load(d / "space.npy").astype(np.float64)
    t = time.perf_counter()
    m = build_csid_map(codes, space, max_groups=cfg.quantizer.max_groups,
                       min_group_size=cfg.quantizer.min_group_size, search="exact")
    wall = time.perf_counter() - t
    exact = np.asarray(m.assign(codes), dtype=object)
    meta = pq.read_table(d / "embed_users.parquet", columns=["user_id", "warm"])
    warm = meta["warm"].to_numpy(zero_copy_only=False)
    configured = np.asarray(pq.read_table(d / "user_csid.parquet", columns=["csid"])["csid"].to_pylist(),
                            dtype=object)[warm]
    full = np.full(len(warm), "default", dtype=object)
    full[warm] = exact
    return {"work_s": wall, "search": "exact", "code_tuples": len(m.merge), "groups": len(m.survivors),
            "vs_configured_rule": {
                "configured_search": cfg.quantizer.merge_search,
                "nmi": round(float(normalized_mutual_info_score(exact, configured)), 4),
                "adjusted_rand": round(float(adjusted_rand_score(exact, configured)), 4)},
            "vs_latent_groups": _truth_agreement(d, meta["user_id"].to_pylist(), full.tolist(), warm)}


def _rescan_cost(codes, space, *, merges: int) -> dict:
    """Time the first ``merges`` merges of the previous rule (rescan every alive group per merge, O(G d) each)."""
    import numpy as np

    uniq, member = np.unique(codes.astype(np.int64), axis=0, return_inverse=True)
    member = member.reshape(-1)
    sizes = np.bincount(member).astype(np.int64)
    sums = np.zeros((len(uniq), space.shape[1]))
    np.add.at(sums, member, space)
    alive = np.ones(len(uniq), dtype=bool)

    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    t = time.perf_counter()
    for _ in range(merges):
        live = np.flatnonzero(alive)
        src = int(live[np.argmin(sizes[live])])
        others = live[live != src]
        dst = int(others[np.argmax(unit(sums[others] / sizes[others, None]) @ unit(sums[src] / sizes[src]))])
        sums[dst] += sums[src]
        sizes[dst] += sizes[src]
        alive[src] = False
    return {"merges_timed": merges, "per_merge_s": (time.perf_counter() - t) / merges}


def stage_keys(n: int, d: Path, args) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = time.perf_counter()
    users = pq.read_table(d / "embed_users.parquet", columns=["user_id", "short_hash", "c_short"])
    csid = pq.read_table(d / "user_csid.parquet", columns=["csid"])["csid"]
    table = users.select(["user_id", "short_hash"]).append_column("csid", csid)
    keys = table.group_by(["csid", "short_hash"]).aggregate([("user_id", "count")])
    keys = keys.rename_columns(["csid", "short_hash", "n_users"])
    # C'_short of each key: short_hash determines it (storage.keys.short_hash), so one row per hash is enough
    first = pa.compute.index_in(pa.compute.unique(users["short_hash"]), value_set=users["short_hash"])
    states = pa.table({"short_hash": users["short_hash"].take(first), "c_short": users["c_short"].take(first)})
    where = pa.compute.index_in(keys["short_hash"], value_set=states["short_hash"])
    keys = keys.append_column("c_short", states["c_short"].take(where))
    pq.write_table(keys, d / "keys.parquet")
    wall = time.perf_counter() - t
    n_states = len(pa.compute.unique(users["short_hash"]))
    return {**_processed(d, n), "work_s": wall, "keys": keys.num_rows, "users": users.num_rows, "distinct_c_short": n_states,
            "distinct_csid": len(pa.compute.unique(csid)), "users_per_key": round(users.num_rows / keys.num_rows, 2)}


def _backbone(d: Path, cfg, categories: list[str]):
    from coea.backbones import build_embedded_backbone, load_causal_lm, load_tokenizer

    out = d / "backbone"
    if not (out / "model").exists():
        shutil.rmtree(out, ignore_errors=True)
        p = cfg.prompts
        texts = [" ".join(categories), "Users in this group keep coming back to and ; they rarely pick .", "none",
                 p.novelty_train, p.novelty_infer, p.relevance]
        build_embedded_backbone(cfg, texts, out)
    tok = load_tokenizer(out / "tokenizer", cfg)
    return out / "model", out / "tokenizer", tok, load_causal_lm(out / "model", cfg, pad_token_id=tok.pad_token_id)


def _sample_keys(d: Path, k: int, seed: int = 0) -> list[dict]:
    import numpy as np
    import pyarrow.parquet as pq

    keys = pq.read_table(d / "keys.parquet")
    rows = np.sort(np.random.default_rng(seed).choice(keys.num_rows, size=min(k, keys.num_rows), replace=False))
    return keys.take(rows).to_pylist()


def _portrait(csid: str) -> str:
    return f"Users in this group keep coming back to group {csid}; they rarely pick none."


def stage_scoring(n: int, d: Path, args) -> dict:
    import pyarrow.parquet as pq

    from coea.candidates import rank_categories
    from coea.prompts import completion_text, novelty_infer_prompt

    threads_one()
    cfg = cfg_for_bench()
    categories = sorted(set(pq.read_table(d / "world" / "items.parquet", columns=["category"])["category"]
                            .to_pylist()))
    _, _, tok, model = _backbone(d, cfg, categories)
    sample = _sample_keys(d, args.score_keys)
    prompts = [novelty_infer_prompt(cfg.prompts, _portrait(k["csid"]), k["c_short"] or ()) for k in sample]
    rank_categories(model, tok, prompts[:1], categories, top_m=cfg.novelty.num_candidates,
                    completion_format=completion_text)  # warm-up
    t = time.perf_counter()
    ranked = rank_categories(model, tok, prompts, categories, exclude=[set(k["c_short"] or ()) for k in sample],
                             top_m=cfg.novelty.num_candidates, batch_size=cfg.novelty.inference_batch_size,
                             completion_format=completion_text)
    wall = time.perf_counter() - t
    (d / "scored.json").write_text(json.dumps([{"csid": k["csid"], "c_short": k["c_short"], "ranked": r}
                                               for k, r in zip(sample, ranked)]))
    prompt_tokens = sum(len(tok(p)["input_ids"]) for p in prompts) / len(prompts)
    completion_tokens = sum(len(tok(completion_text(c))["input_ids"]) + 1 for c in categories) / len(categories)
    n_keys = pq.ParquetFile(d / "keys.parquet").metadata.num_rows
    per_key = wall / len(prompts)
    return {"work_s": wall, "sampled_keys": len(prompts), "keys": n_keys, "categories": len(categories),
            "per_key_s": per_key, "all_keys_cpu_s_extrapolated": per_key * n_keys,
            "prompt_tokens": prompt_tokens, "completion_tokens_per_category": completion_tokens,
            "backbone": {"hidden": cfg.backbone.hidden_size, "layers": cfg.backbone.num_layers,
                         "intermediate": cfg.backbone.intermediate_size, "heads": cfg.backbone.num_heads,
                         "vocab": len(tok), "params": sum(p.numel() for p in model.parameters())},
            "sampled": "per-key cost measured on the sampled keys; the total for all keys is per_key_s x keys"}


def stage_kv(n: int, d: Path, args) -> dict:
    import pyarrow.parquet as pq

    from storage.keys import CATEGORY_SEPARATOR  # noqa: F401  (the key contract the values follow)
    from storage.kv import KVStore, encode_value, write_sst_ranges

    scored = json.loads((d / "scored.json").read_text())
    values = [encode_value(1, [c for c, _ in s["ranked"]], [float(1 / (1 + math.exp(-x))) for _, x in s["ranked"]])
              for s in scored]
    wd = d / "wd"
    shutil.rmtree(wd, ignore_errors=True)
    t = time.perf_counter()
    keys = pq.read_table(d / "keys.parquet", columns=["csid", "short_hash"])
    raw = sorted(f"{c}|{h}".encode() for c, h in zip(keys["csid"].to_pylist(), keys["short_hash"].to_pylist()))
    t_sort = time.perf_counter() - t
    ranges = write_sst_ranges(((k, values[i % len(values)]) for i, k in enumerate(raw)), d / "sst",
                              entries_per_file=250_000)
    t_sst = time.perf_counter() - t - t_sort
    store = KVStore(wd)
    store.ingest(1, [r.path for r in ranges])
    store.promote(1)
    wall = time.perf_counter() - t
    # the DSIE tables export reads for the promoted round
    dsie = wd / "rounds" / "001" / "dsie"
    dsie.mkdir(parents=True)
    shutil.copy(d / "user_csid.parquet", dsie / "users.parquet")
    groups = keys.group_by("csid").aggregate([("short_hash", "count")]).to_pylist()
    (dsie / "groups.jsonl").write_text("".join(json.dumps({"csid": g["csid"], "size": g["short_hash_count"],
                                                           "portrait": _portrait(g["csid"])}) + "\n" for g in groups))
    return {**_processed(d, n), "work_s": wall, "entries": len(raw), "sst_files": len(ranges), "sort_s": t_sort, "sst_write_s": t_sst,
            "ingest_promote_s": wall - t_sort - t_sst, "kv_mb": dir_mb(wd / "kv"),
            "mean_value_bytes": sum(map(len, values)) / len(values)}


def _pairs(d: Path, cfg, k: int) -> list[dict]:
    """Preference pairs from the scored sample: chosen = its best category, rejected = its worst in the top M."""
    from coea.prompts import completion_text, novelty_infer_prompt

    scored = json.loads((d / "scored.json").read_text())
    out = []
    for i in range(k):
        s = scored[i % len(scored)]
        ranked = s["ranked"]
        prompt = novelty_infer_prompt(cfg.prompts, _portrait(s["csid"]), s["c_short"] or ())
        out.append({"prompt": prompt, "chosen": completion_text(ranked[0][0]),
                    "rejected": completion_text(ranked[-1][0])})
    return out


def _active_users(d: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.read_table(d / "embed_users.parquet", columns=["warm"])["warm"].to_numpy(
        zero_copy_only=False).sum())


def stage_dpo(n: int, d: Path, args) -> dict:
    from datasets import Dataset

    from loops.dpo import run_dpo

    threads_one()
    cfg = cfg_for_bench()
    model_dir, tok_dir, tok, _ = _backbone(d, cfg, [])
    runs = {}
    for k in (4, args.pairs_small, args.pairs_large):  # the first run (4 pairs) warms up trl / torch; not used
        pairs = Dataset.from_list(_pairs(d, cfg, k))
        shutil.rmtree(d / f"dpo-{k}", ignore_errors=True)
        t = time.perf_counter()
        run_dpo(cfg.pco, cfg.lora, model_dir, None, None, tok, pairs, d / f"dpo-{k}", seed=0, dtype="float32")
        runs[k] = time.perf_counter() - t
    runs["warmup_4"] = runs.pop(4)
    per_pair = (runs[args.pairs_large] - runs[args.pairs_small]) / (args.pairs_large - args.pairs_small)
    n_pairs = max(1, int(cfg.pco.sample_fraction * _active_users(d)))
    return {"work_s": runs[args.pairs_large], "runs_s": runs, "per_pair_s": per_pair, "pairs_at_1pct": n_pairs,
            "all_pairs_cpu_s_extrapolated": per_pair * n_pairs,
            "sampled": f"measured on {args.pairs_small} and {args.pairs_large} pairs; 1% of the active users is "
                       f"{n_pairs} pairs"}


def stage_relevance(n: int, d: Path, args) -> dict:
    from loops.reward import train_reward

    threads_one()
    cfg = cfg_for_bench()
    model_dir, tok_dir, tok, _ = _backbone(d, cfg, [])
    from coea.prompts import relevance_prompt

    scored = json.loads((d / "scored.json").read_text())
    runs = {}
    for k in (4, args.pairs_small, args.pairs_large):  # the first run (4 pairs) warms up trl / torch; not used
        pairs = []
        for i in range(k):
            s = scored[i % len(scored)]
            portrait = _portrait(s["csid"])
            pairs.append({"prompt": "", "chosen": relevance_prompt(cfg.prompts, portrait, s["c_short"] or (),
                                                                   s["ranked"][0][0]),
                          "rejected": relevance_prompt(cfg.prompts, portrait, s["c_short"] or (),
                                                       s["ranked"][-1][0])})
        shutil.rmtree(d / f"rel-{k}", ignore_errors=True)
        t = time.perf_counter()
        train_reward(cfg, model_dir, tok, pairs, d / f"rel-{k}", epochs=cfg.relevance.update_epochs)
        runs[k] = time.perf_counter() - t
    runs["warmup_4"] = runs.pop(4)
    per_pair = (runs[args.pairs_large] - runs[args.pairs_small]) / (args.pairs_large - args.pairs_small)
    return {"work_s": runs[args.pairs_large], "runs_s": runs, "per_pair_s": per_pair,
            "sampled": f"measured on {args.pairs_small} and {args.pairs_large} pairs (new clicks vs sampled "
                       "negatives); the day's count is the new clicks of D_k"}


def stage_export(n: int, d: Path, args) -> dict:
    from spark_jobs.export_kv import export

    spark = spark_session(n)
    shutil.rmtree(d / "export", ignore_errors=True)
    t = time.perf_counter()
    res = export(d / "wd", d / "export", spark=spark, range_partitions=8)
    wall = time.perf_counter() - t
    out = {**_processed(d, n), "work_s": wall, "rows": res["rows"], "jvm_peak_rss_mb": jvm_peak_mb(spark),
           "output_mb": dir_mb(d / "export")}
    spark.stop()
    return out


# --------------------------------------------------------------------------------------------------- plan

MTREC_USERS, MTREC_CLICKS, MTREC_DAYS, MTREC_CATEGORIES = 1_450_381, 330_722_395, 25, 594
#: Qwen2.5 shapes (hidden, MLP, layers, heads, kv heads, vocab), as benchmarks/gpu.py builds them
QWEN = {"0.5B": (896, 4864, 24, 14, 2, 151_936), "7B": (3584, 18944, 28, 28, 4, 152_064)}
#: ASSUMED, not measured here (no GPU was lent): H200 dense bf16 peak and the fraction of it each path reaches
GPU = {"name": "H200", "peak_flops": 989e12, "mfu_scoring": 0.25, "mfu_training": 0.30}
BPE_TOKENS_PER_WORD = 1.3  # Qwen's BPE against the embedded word-level tokenizer (prompt words, category names)
WINDOW_H = 4.0
NUM_CANDIDATES = 5  # novelty.num_candidates (M) in configs/mtrec.yaml (the default)


def body_params(hidden: int, mlp: int, layers: int, heads: int, kv_heads: int) -> int:
    """Parameters outside the embeddings and LM head: q, o (h x h), k, v (h x kv_dim), MLP (3 x h x I)."""
    kv_dim = hidden // heads * kv_heads
    return layers * (2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * mlp)


def scoring_flops(shape: tuple, prompt_tokens: float, completion_tokens: float, categories: int) -> float:
    """One key, shared-prompt closed-vocabulary scoring (coea.candidates): the prompt once, then every category's
    completion tokens but the last through the cached prompt; LM head on the prompt's last position and every fed
    completion token (2 * N_body per token, 2 * d * V per projected position)."""
    hidden, mlp, layers, heads, kv, vocab = shape
    fed = prompt_tokens + categories * (completion_tokens - 1)
    head_positions = 1 + categories * (completion_tokens - 1)
    return 2 * body_params(hidden, mlp, layers, heads, kv) * fed + 2 * hidden * vocab * head_positions


def pair_flops(shape: tuple, prompt_tokens: float, completion_tokens: float, *, shared_prompt: bool,
               reference_forward: bool) -> float:
    """One preference pair, one training pass: forward + backward (activation gradients: 2x the forward; LoRA's
    own weight gradients are negligible) of prompt + both completions, plus the reference's forward (DPO)."""
    hidden, mlp, layers, heads, kv, vocab = shape
    tokens = (prompt_tokens + 2 * completion_tokens) if shared_prompt else 2 * (prompt_tokens + completion_tokens)
    passes = 3 + (1 if reference_forward else 0)  # forward 1 + backward 2 (+ reference forward 1)
    head_positions = 2 * completion_tokens
    return 2 * body_params(hidden, mlp, layers, heads, kv) * tokens * passes + 2 * hidden * vocab * head_positions * passes


def power_fit(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """(a, b) of y = a * x^b, least squares in log-log."""
    b = _slope(points)
    if b is None:
        return None
    pts = [(math.log(x), math.log(y)) for x, y in points if y > 0]
    a = math.exp(sum(y - b * x for x, y in pts) / len(pts))
    return a, b


def top_step(points: list[tuple[int, float]]) -> dict | None:
    """Full-size seconds from the largest measurement, grown by the slope between the two largest sizes.

    Not the global fit: a fixed start-up cost (Spark's JVM and job planning, a model load) flattens the slope at
    the small sizes, so the all-sizes line bends below the largest point and under-predicts (Spark: 0.71 over
    10k-1M, 0.92 over 100k-1M). The local slope is floored at 0 (a stage on a fixed sample does not get cheaper
    with more users).
    """
    pts = sorted((u, w) for u, w in points if w and w > 0)
    if len(pts) < 2:
        return None
    u1, w1 = pts[-1]
    local = max(0.0, _slope(pts[-2:]))
    return {"exponent_all_sizes": fit_exponent(pts), "exponent_top": round(local, 3), "from_users": u1,
            "full_size_s_2_cores": round(w1 * (MTREC_USERS / u1) ** local, 1)}


def make_plan(doc: dict) -> dict | None:
    """The full-size day (1,450,381 users) from the measured curves; every GPU figure is extrapolated."""
    runs = doc["runs"]
    sizes = sorted(runs, key=int)
    if not sizes:
        return None
    big = sizes[-1]
    keys_fit = power_fit([(runs[s]["keys"].get("users_processed", int(s)), runs[s]["keys"]["keys"]) for s in sizes
                          if "keys" in runs[s].get("keys", {})])
    score = next((runs[s]["scoring"] for s in reversed(sizes) if "per_key_s" in runs[s].get("scoring", {})), None)
    dpo = next((runs[s]["dpo"] for s in reversed(sizes) if "per_pair_s" in runs[s].get("dpo", {})), None)
    rel = next((runs[s]["relevance"] for s in reversed(sizes) if "per_pair_s" in runs[s].get("relevance", {})), None)
    if keys_fit is None or score is None:
        return None
    a, b = keys_fit
    keys_full = a * MTREC_USERS ** b
    warm = runs[big].get("merge", {}).get("warm_users")
    active_share = warm / runs[big]["merge"].get("users_processed", int(big)) if warm else 1.0
    dpo_pairs = max(1, int(0.01 * active_share * MTREC_USERS))
    relevance_pairs_all = MTREC_CLICKS / MTREC_DAYS  # every new click of a day, one sampled negative each
    import yaml

    relevance_pairs_cap = yaml.safe_load(CONFIG.read_text())["relevance"]["max_train_pairs"]  # configs/mtrec.yaml
    p_tok = score["prompt_tokens"] * BPE_TOKENS_PER_WORD
    c_tok = 1 + (score["completion_tokens_per_category"] - 1) * BPE_TOKENS_PER_WORD  # EOS + the name's tokens
    emb = score["backbone"]
    emb_shape = (emb["hidden"], emb["intermediate"], emb["layers"], emb["heads"], emb["heads"], emb["vocab"])
    cpu_flops_per_s = scoring_flops(emb_shape, score["prompt_tokens"], score["completion_tokens_per_category"],
                                    score["categories"]) / score["per_key_s"]
    eff = {"scoring": GPU["peak_flops"] * GPU["mfu_scoring"], "training": GPU["peak_flops"] * GPU["mfu_training"]}
    shapes = {}
    for name, shape in QWEN.items():
        f_key = scoring_flops(shape, p_tok, c_tok, MTREC_CATEGORIES)
        f_dpo = pair_flops(shape, p_tok, c_tok, shared_prompt=True, reference_forward=True)
        f_rel = pair_flops(shape, p_tok, c_tok, shared_prompt=False, reference_forward=False)
        # the Relevance LLM scores the Novelty LLM's M candidates of every key (s_i, then tau_align): one forward
        # of prompt + candidate each (a sequence-classification head: no LM head)
        f_align = 2 * body_params(*shape[:5]) * (p_tok + c_tok) * NUM_CANDIDATES
        gpu_h = {
            "scoring": keys_full * f_key / eff["scoring"] / 3600,
            "relevance_scoring": keys_full * f_align / eff["scoring"] / 3600,
            "dpo": dpo_pairs * f_dpo / eff["training"] / 3600,
            "relevance_all_new_clicks": relevance_pairs_all * f_rel / eff["training"] / 3600,
            "relevance_capped": relevance_pairs_cap * f_rel / eff["training"] / 3600,
        }
        daily = gpu_h["scoring"] + gpu_h["relevance_scoring"] + gpu_h["dpo"]
        total_capped = daily + gpu_h["relevance_capped"]
        total_all = daily + gpu_h["relevance_all_new_clicks"]
        shapes[name] = {
            "body_params": body_params(*shape[:5]), "flops_per_key": f_key, "flops_per_dpo_pair": f_dpo,
            "flops_per_relevance_pair": f_rel, "flops_per_key_relevance_scoring": f_align,
            "gpu_s_per_key": f_key / eff["scoring"], "gpu_s_per_dpo_pair": f_dpo / eff["training"],
            "cpu_to_gpu_factor_scoring": round(eff["scoring"] / cpu_flops_per_s, 1),
            "gpu_hours": {k: round(v, 3) for k, v in gpu_h.items()},
            "gpu_hours_total_capped": round(total_capped, 2), "gpu_hours_total_all_clicks": round(total_all, 2),
        }
    data_stages = {}
    for stage in ("world", "seq_spark", "encoder", "embed", "rqvae", "merge", "keys", "kv", "export"):
        pts = [(runs[s][stage].get("users_processed", int(s)), runs[s][stage]["work_s"]) for s in sizes
               if "work_s" in runs[s].get(stage, {})]
        step = top_step(pts)
        if step:
            data_stages[stage] = step
    merge = runs[big].get("merge", {})
    if isinstance(merge.get("sampled"), dict):  # the map on a fixed user sample + assigning everyone (linear)
        data_stages["merge"] = {"exponent_top": None, "how": "map on the same sample (constant) + assignment x users",
                                "full_size_s_2_cores": round(merge["merge_s"] + merge["assign_s"] * MTREC_USERS
                                                             / merge.get("users_processed", int(big)), 1)}
    cpu_path_s = sum(v["full_size_s_2_cores"] for k, v in data_stages.items() if k != "world")
    return {
        "users": MTREC_USERS, "clicks": MTREC_CLICKS, "categories": MTREC_CATEGORIES, "max_groups": 4000,
        "keys_fit": {"a": a, "b": round(b, 4), "keys_at_full_size": round(keys_full)},
        "active_share": round(active_share, 4), "dpo_pairs": dpo_pairs,
        "relevance_pairs": {"all_new_clicks": round(relevance_pairs_all), "capped": relevance_pairs_cap},
        "tokens": {"prompt_bpe": round(p_tok, 1), "completion_bpe": round(c_tok, 2),
                   "bpe_tokens_per_word": BPE_TOKENS_PER_WORD},
        "measured_cpu": {"per_key_s_embedded": score["per_key_s"], "cpu_flops_per_s_embedded": cpu_flops_per_s,
                         "dpo_per_pair_s_embedded": dpo and dpo["per_pair_s"],
                         "relevance_per_pair_s_embedded": rel and rel["per_pair_s"]},
        "gpu_assumptions": GPU, "shapes": shapes, "data_stages_extrapolated": data_stages,
        "cpu_data_path_s_2_cores": round(cpu_path_s, 1),
        # GPUs so that the GPU stages fit the 4-hour cycle: (a) the whole window (data stages on a cluster, in
        # parallel with the previous day's GPU work), (b) what is left after the data stages at this machine's speed
        "gpus_for_4h": {name: {
            "window_h": WINDOW_H, "capped": math.ceil(v["gpu_hours_total_capped"] / WINDOW_H),
            "all_clicks": math.ceil(v["gpu_hours_total_all_clicks"] / WINDOW_H),
            "window_after_2core_data_path_h": round(WINDOW_H - cpu_path_s / 3600, 2),
            "capped_after_2core_data_path": (math.ceil(v["gpu_hours_total_capped"] / (WINDOW_H - cpu_path_s / 3600))
                                             if cpu_path_s < WINDOW_H * 3600 else None),
        } for name, v in shapes.items()},
        "label": "GPU figures: extrapolated from CPU (FLOP counts x assumed MFU); no GPU was lent to this task",
    }


# ------------------------------------------------------------------------------------------------- driver


def _slope(points: list[tuple[int, float]]) -> float | None:
    pts = [(math.log(u), math.log(w)) for u, w in points if w and w > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else None


def fit_exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(y) on log(users), 3 decimals (None with fewer than two sizes)."""
    b = _slope(points)
    return None if b is None else round(b, 3)


def summarise(doc: dict) -> None:
    sizes = sorted(doc["runs"], key=int)
    exps = {}
    for stage in STAGES:
        rows = [(doc["runs"][s][stage].get("users_processed", int(s)), doc["runs"][s][stage]) for s in sizes
                if stage in doc["runs"][s]]
        # a row that ran a different algorithm on a sample (merge: the map on a user sample) is not on the curve
        same = [(u, r) for u, r in rows if "work_s" in r and not isinstance(r.get("sampled"), dict)]
        pts = [(u, r["work_s"]) for u, r in same]
        rss = [(u, r.get("peak_rss_mb")) for u, r in same]
        exps[stage] = {"wall": fit_exponent(pts), "peak_rss": fit_exponent(rss), "sizes": [p[0] for p in pts],
                       "not_fitted": [u for u, r in rows if isinstance(r.get("sampled"), dict)]}
    keys = [(doc["runs"][s]["keys"].get("users_processed", int(s)), doc["runs"][s]["keys"]["keys"]) for s in sizes
            if "keys" in doc["runs"][s] and "keys" in doc["runs"][s]["keys"]]
    doc["exponents"] = exps
    doc["keys_vs_users"] = {"points": keys, "exponent": fit_exponent(keys)}
    try:
        doc["plan"] = make_plan(doc)
    except Exception as exc:  # a partial run may lack what the plan needs; the measurements stay
        doc["plan"] = {"error": f"{type(exc).__name__}: {exc}"}


def plot(doc: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(doc["runs"], key=int)
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    colours = plt.get_cmap("tab20").colors
    for i, stage in enumerate(STAGES):
        pts = [(doc["runs"][s][stage].get("users_processed", int(s)), doc["runs"][s][stage]["work_s"]) for s in sizes
               if "work_s" in doc["runs"][s].get(stage, {})]
        if pts:
            e = doc["exponents"].get(stage, {}).get("wall")
            a.plot(*zip(*pts), marker="os^Dv"[i % 5], ls=("-", "--")[i % 2], color=colours[i % 20],
                   label=f"{stage} ({'n/a' if e is None else f'{e:+.2f}'})")
    a.set(xscale="log", yscale="log", xlabel="users", ylabel="wall s (stage's own region)",
          title="wall time per stage (slope = growth exponent)")
    a.legend(fontsize=7)
    keys = doc["keys_vs_users"]["points"]
    if keys:
        b.plot(*zip(*keys), marker="o", label=f"unique (CSID, C'_short) keys (exp {doc['keys_vs_users']['exponent']})")
        b.plot([k[0] for k in keys], [k[0] for k in keys], ls="--", c="grey", label="keys = users")
    b.set(xscale="log", yscale="log", xlabel="users", ylabel="keys", title="keys to score vs users")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write(doc: dict, out: Path, png: Path) -> None:
    summarise(doc)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, out)
    # in a child: the driver stays a small process (children fork from it, and a fork starts at its parent's RSS)
    done = subprocess.run([sys.executable, __file__, "--plot", str(out), str(png)], capture_output=True, text=True)
    if done.returncode:  # a plot failure must not lose the figures
        print(f"plot failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)


def run_child(stage: str, n: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, "--users", str(n), "--root", args.root,
           "--encoder-sample", str(args.encoder_sample), "--rqvae-sample", str(args.rqvae_sample),
           "--score-keys", str(args.score_keys), "--pairs-small", str(args.pairs_small),
           "--pairs-large", str(args.pairs_large), "--pandas-max-users", str(args.pandas_max_users),
           "--spark-max-users", str(args.spark_max_users), "--merge-max-users", str(args.merge_max_users),
           "--merge-exact-max-users", str(args.merge_exact_max_users),
           "--embed-max-users", str(args.embed_max_users)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    log_path = Path(args.root) / str(n) / f"{stage}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    before = load_avg()
    t = time.perf_counter()
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, env=env, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.stdout.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    row: dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith(RESULT_TAG):
            row = json.loads(line[len(RESULT_TAG):])
    row.update({"process_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                "load_avg_before": before, "load_avg_after": load_avg(), "rc": proc.returncode})
    if proc.returncode:
        row["error"] = (log_path.read_text().strip().splitlines() or ["?"])[-1][:400]
        row["log"] = str(log_path)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", default="10000,100000,1000000", help="comma-separated user counts")
    ap.add_argument("--root", default="/tmp/scale-bench", help="where worlds and stage outputs go")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scale.json"))
    ap.add_argument("--png", default=str(REPO / "benchmarks" / "results" / "scale.png"))
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset, in pipeline order")
    ap.add_argument("--fresh", action="store_true", help="start the results file over")
    ap.add_argument("--encoder-sample", type=int, default=2_000, help="users the encoder trains on (fixed)")
    ap.add_argument("--rqvae-sample", type=int, default=50_000, help="rows the RQ-VAE is fitted on (fixed)")
    ap.add_argument("--score-keys", type=int, default=16, help="keys scored to measure the per-key cost")
    ap.add_argument("--pairs-small", type=int, default=16)
    ap.add_argument("--pairs-large", type=int, default=64)
    ap.add_argument("--pandas-max-users", type=int, default=100_000)
    ap.add_argument("--spark-max-users", type=int, default=0,
                    help="above this many users, seq_spark runs on the first user chunks only (0 = all users)")
    ap.add_argument("--embed-max-users", type=int, default=0,
                    help="above this many users, embed (and so every later stage) works on the first users only")
    ap.add_argument("--merge-max-users", type=int, default=0,
                    help="above this many warm users, the merge rule runs on a uniform sample of them and every "
                         "user is assigned with the resulting map (0 = all)")
    ap.add_argument("--merge-exact-max-users", type=int, default=100_000,
                    help="merge_exact runs the quadratic exact rule only up to this many warm users")
    ap.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--plot", nargs=2, metavar=("JSON", "PNG"), help="only redraw the plot from a results file")
    args = ap.parse_args(argv)
    if args.plot:
        plot(json.loads(Path(args.plot[0]).read_text()), Path(args.plot[1]))
        return 0

    if args.child:
        n = int(args.users)
        d = Path(args.root) / str(n)
        d.mkdir(parents=True, exist_ok=True)
        row = globals()[f"stage_{args.child}"](n, d, args)
        row = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
        print(RESULT_TAG + json.dumps(row, default=str), flush=True)
        return 0

    out, png = Path(args.out), Path(args.png)
    doc = json.loads(out.read_text()) if out.exists() and not args.fresh else {}
    doc.setdefault("runs", {})
    doc["machine"] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                      "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                      "note": "every stage records the 1-minute load average before and after it (the run's own Spark "
                              "stages use both cores; anything above that is another job)"}
    doc["settings"] = {"config": "configs/mtrec.yaml with backbone.name=embedded (CPU)",
                       "encoder_sample": args.encoder_sample, "rqvae_sample": args.rqvae_sample,
                       "score_keys": args.score_keys, "pairs": [args.pairs_small, args.pairs_large],
                       "chunk_users": CHUNK_USERS, "torch_threads": 1, "spark": "local[2]"}
    stages = [s for s in args.stages.split(",") if s]
    for n in [int(u) for u in args.users.split(",")]:
        runs = doc["runs"].setdefault(str(n), {})
        for stage in stages:
            print(f"[scale] {n:,} users: {stage} ...", file=sys.stderr, flush=True)
            row = run_child(stage, n, args)
            runs[stage] = row
            print(f"[scale] {n:,} users: {stage}: {json.dumps(row)[:300]}", file=sys.stderr, flush=True)
            write(doc, out, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())

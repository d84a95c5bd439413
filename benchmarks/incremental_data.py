"""A round's data on a growing live log: incremental read (new files + carried state) vs a full reload.

    python benchmarks/incremental_data.py [--users 3000] [--days 60] [--bootstrap-days 20] \
        [--out benchmarks/results/incremental_data.json]

Writes a synthetic world as day partitions (coea.data.partitions.write_interactions), bootstraps round 0 on the
first ``--bootstrap-days`` days, then appends one day at a time and runs each round's data stage exactly as
``coea cycle`` does (coea.round_data.load_round: read the day's new files, extend the vocabularies, apply the day
to the carried sequence state, build Sequences at the round's end), no training. Side by side, at the same days,
it times the full rebuild the cycle used to do every day (load every partition into pandas, clean, and
build_sequences at the round's end) and checks that both give the same Sequences. Prints one JSON line per round
and a summary; writes them with the machine, its load average and library versions to ``--out``. Wall times on a
shared machine move with its load; the ratio is measured in the same process, round by round.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coea.config import SyntheticConfig, load_config  # noqa: E402
from coea.data.parquet import load_parquet  # noqa: E402
from coea.data.partitions import DAY, EPOCH, write_day, write_interactions  # noqa: E402
from coea.data.sequences import build_sequences  # noqa: E402
from coea.data.synthetic import generate_world  # noqa: E402
from coea.round_data import load_round  # noqa: E402
from coea.workdir import library_versions  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--bootstrap-days", type=int, default=20)
    p.add_argument("--every", type=int, default=5, help="time the full rebuild every N rounds (and the last)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "incremental_data.json"))
    args = p.parse_args(argv)

    world = generate_world(SyntheticConfig(n_users=args.users, n_days=args.days, n_categories=24,
                                           items_per_category=15), seed=0)
    scratch = Path(tempfile.mkdtemp(prefix="coea-incremental-"))
    log_dir, wd = scratch / "log", scratch / "wd"
    rows = []
    try:
        write_interactions(world, log_dir, through=EPOCH + dt.timedelta(days=args.bootstrap_days - 1))
        cfg = load_config(REPO / "configs" / "demo.yaml", ["data.source=parquet", f"data.path={log_dir}",
                                                           "data.bootstrap_fraction=1.0"])
        t = time.perf_counter()
        load_round(cfg, wd, 0)
        boot_s = time.perf_counter() - t
        ts = world.events["timestamp"]
        for k, d in enumerate(range(args.bootstrap_days, args.days), start=1):
            write_day(log_dir, EPOCH + dt.timedelta(days=d), world.events[(ts >= d * DAY) & (ts < (d + 1) * DAY)])
            t = time.perf_counter()
            data = load_round(cfg, wd, k)
            inc_s = time.perf_counter() - t
            row = {"round": k, "day": d, "events_in_log": int((ts < (d + 1) * DAY).sum()),
                   "events_in_round": data.window["events"], "incremental_s": round(inc_s, 3),
                   "state_clicks": int(len(data.seqs.user_ids) and sum(map(len, data.seqs.long_items))),
                   "data_dir_bytes": sum(f.stat().st_size for f in (wd / "rounds" / f"{k:03d}" / "data").rglob("*")
                                         if f.is_file())}
            if k % args.every == 0 or d == args.days - 1:
                t = time.perf_counter()
                full = load_parquet(log_dir)
                ref = build_sequences(full, cfg.data, cutoff=data.end, vocab=data.vocab)
                row["full_rebuild_s"] = round(time.perf_counter() - t, 3)
                row["same_sequences"] = (ref.long_items == data.seqs.long_items and
                                         ref.short_categories == data.seqs.short_categories and
                                         ref.user_ids == data.seqs.user_ids)
                row["speedup"] = round(row["full_rebuild_s"] / max(inc_s, 1e-9), 2)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    timed = [r for r in rows if "full_rebuild_s" in r]
    summary = {"bootstrap_s": round(boot_s, 3), "rounds": len(rows),
               "incremental_s_median": float(np.median([r["incremental_s"] for r in rows])),
               "last": timed[-1] if timed else None, "all_same_sequences": all(r["same_sequences"] for r in timed)}
    print(json.dumps({"summary": summary}))
    out = {"args": vars(args), "summary": summary, "rounds": rows,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                       "note": "shared machine: other engineers' jobs ran at the same time"},
           "versions": library_versions()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

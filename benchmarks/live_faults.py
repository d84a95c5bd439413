"""Faults on a live log, each from the same good state: does the cron job fail loudly, lose nothing, count nothing
twice, and recover after the fix? (issue 27)

    nice -n 10 python benchmarks/live_faults.py           # benchmarks/results/live_faults.json + live_faults.md
    nice -n 10 python benchmarks/live_faults.py --only corrupt_file,missing_day --out /tmp/lf.json   # a subset

The log is the synthetic world of ``configs/live-bench.yaml`` with 300 users (``synthetic.n_users=300``),
written as day partitions with ``write_day`` (a second base: one ``events.parquet``). The **good state**: log
days 0-16 written, one ``coea cycle`` (round 0 bootstraps on 60% of them, round 1 the rest). Every scenario
copies that state, injects its fault into day 17 (log day 1970-01-18), runs ``coea cycle`` as cron would, applies
the fix an on-call engineer would (the command the failure line names), writes a normal day 18 and runs again.

Per scenario the table records the first run's exit code and line, whether the served table is intact (the
promoted round's KV table opens and answers every promoted user key; after a failed run, byte for byte the
table that was served before), and the reconciliation, computed from the written files with pyarrow (not coea's
reader): the valid events of the scenario's days (ids cast to strings in pyarrow, known items, a click or an
exposure, a timestamp before its partition's end) against every round's consumed ``data/events.parquet``:
events **lost** (written, never consumed) and events **counted twice** (an identity ``(user, item, timestamp,
event)`` consumed more than once, over all rounds). ``recovered``: the last run exits 0 and the window reaches
the end of the scenario's days. Faults that need a full disk mount a tmpfs (root only; skipped otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.live import disk_bytes, last_coea_line, read_state  # noqa: E402
from coea.config import load_config  # noqa: E402
from coea.data.partitions import (  # noqa: E402
    DAY, EPOCH, EVENTS_DIR, EVENTS_FILE, ITEMS_FILE, SUCCESS, USERS_FILE, write_day, write_table,
)
from coea.data.synthetic import generate_world  # noqa: E402

CONFIG = REPO / "configs" / "live-bench.yaml"
OUT = REPO / "benchmarks" / "results" / "live_faults.json"
SETS = ["synthetic.n_users=300", "cycle.keep_rounds=10"]  # keep every round: the reconciliation reads them all
GOOD_DAYS = 17  # log days 0..16 form the good state
D17, D18 = 17, 18
KILL_POINTS = ("data:before_commit", "candidates:before_commit", "kv:staging", "promote:before_link")
COLS = ["user_id", "item_id", "timestamp", "event", "rating"]


def iso(d: int) -> str:
    return (EPOCH + pd.Timedelta(days=d).to_pytimedelta()).isoformat()


# ------------------------------------------------------------------------------------------------ one scenario


class Ctx:
    """One scenario's copy of the good state, and what a cron job and an on-call engineer do to it."""

    def __init__(self, lab: Lab, name: str, kind: str) -> None:
        self.lab, self.name, self.kind = lab, name, kind
        self.dir = lab.root / "scenarios" / name
        if self.dir.exists():
            shutil.rmtree(self.dir)
        shutil.copytree(lab.base(kind), self.dir, symlinks=True)
        self.log, self.wd = self.dir / "log", self.dir / "wd"
        self.runs: list[dict[str, Any]] = []
        self.days: list[int] = []  # log days whose events the reconciliation expects
        self.notes: dict[str, Any] = {}
        self.extra_valid: list[pd.DataFrame] = []

    # ---- the log
    def rows(self, d: int) -> pd.DataFrame:
        return self.lab.rows(d)

    def write(self, d: int, frame: pd.DataFrame | None = None, **kw: Any) -> Path:
        self.days.append(d)
        frame = self.rows(d) if frame is None else frame
        return write_day(self.log, iso(d), frame, name=kw.pop("name", f"part-{iso(d)}.parquet"), **kw)

    def partition(self, d: int) -> Path:
        return self.log / EVENTS_DIR / f"date={iso(d)}"

    # ---- runs
    def cycle(self, *extra: str, what: str, env: dict[str, str] | None = None, wd: Path | None = None) -> dict:
        before = served(self.wd)
        args = ["cycle", "--config", str(CONFIG), "--workdir", str(wd or self.wd), *self.lab.sets(self.log), *extra]
        run = run_cli(args, env=env)
        after = served(wd or self.wd)
        run["what"] = what
        run["command"] = " ".join(["coea cycle --config configs/live-bench.yaml --workdir W", *extra])
        run["served_round"] = after["round"]
        # intact: the served table reads; and when the same round stays served, its table is byte for byte the same
        same = after["round"] == before["round"]
        run["served_intact"] = after["ok"] and (not same or after["digest"] == before["digest"])
        run["data_stage_skipped_line"] = "stage data finished in an earlier run" in run.pop("stderr")
        self.runs.append(run)
        return run


def served(wd: Path) -> dict[str, Any]:
    """What serving reads: the KV table's round (the KV pointer), a digest of that table's files, a digest of its
    content (every user key of that round and the value served for it) and whether every key reads. Two runs that
    serve the same values differ in RocksDB's own files (its IDENTITY, LOG, MANIFEST), so runs are compared by
    content and a kept table by its files."""
    from storage.kv import KVReader

    try:
        with KVReader(wd) as reader:
            k = reader.round
            table = pd.read_parquet(wd / "rounds" / f"{int(k):03d}" / "users.parquet")
            values = []
            keys = {(str(c), tuple(map(str, r))) for c, r in zip(table["csid"], table["recent"])}
            for csid, recent in sorted(keys):
                v = reader.get_value(csid, list(recent))
                values.append((csid, recent, None if v is None else v.as_list()))
    except Exception:  # noqa: BLE001 - a table that does not read is what this records
        return {"round": read_state(wd).get("promoted_round"), "digest": None, "content": None, "ok": False}
    content = hashlib.sha256(json.dumps(values, default=str).encode()).hexdigest()
    h = hashlib.sha256()
    kv = wd / "kv" / f"{int(k):03d}"
    for p in sorted(kv.rglob("*")) if kv.is_dir() else []:
        if p.is_file():
            h.update(p.relative_to(kv).as_posix().encode())
            h.update(p.read_bytes())
    return {"round": k, "digest": h.hexdigest(), "content": content, "keys": len(values), "ok": True}


def run_cli(args: list[str], *, env: dict[str, str] | None = None, wait: bool = True):
    full = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="offline", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env or {}))
    cmd = [sys.executable, "-m", "coea.cli", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=full, capture_output=True, text=True)
    return {"exit": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
            "line": first_line(proc.stderr, proc.stdout), "stderr": proc.stderr}


def first_line(stderr: str, stdout: str) -> str:
    """The line cron mails first: the last ``coea:`` line on stderr, else the last line that says something."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("coea:")]
    return lines[-1][:400] if lines else last_coea_line(stderr + stdout)


# ----------------------------------------------------------------------------------------------- reconciliation


def valid_identities(ctx: Ctx) -> Counter:
    """The valid events of the scenario's days, from the files as written now (pyarrow, not coea's reader)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    known = set(ctx.lab.world.items["item_id"])
    out: Counter = Counter()
    if ctx.kind == "file":
        files = [(ctx.log / EVENTS_FILE, None)]
    else:
        files = [(f, d) for d in sorted(set(ctx.days)) for f in sorted(ctx.partition(d).glob("*.parquet"))
                 if not f.name.startswith((".", "_"))]
    for f, d in files:
        t = ds.dataset(str(f), format="parquet").to_table(columns=["user_id", "item_id", "timestamp", "event"])
        cols = {c: t.column(c) for c in ("user_id", "item_id")}
        cols = {c: (a.cast(pa.string()) if pa.types.is_integer(a.type) else a) for c, a in cols.items()}
        ts = t.column("timestamp")
        if not pa.types.is_integer(ts.type):
            continue  # not integer seconds: never valid (the fault rewrote it; the fix rewrites the file)
        frame = pd.DataFrame({"u": cols["user_id"].to_pylist(), "i": cols["item_id"].to_pylist(),
                              "t": ts.to_pylist(), "e": pc.utf8_trim_whitespace(t.column("event")).to_pylist()})
        frame["u"] = frame["u"].map(lambda v: v.strip() if isinstance(v, str) else v)
        ok = frame["u"].notna() & (frame["u"] != "") & frame["i"].isin(known) & \
            frame["e"].isin(["click", "exposure"])
        if d is None:  # one file: the rows of the scenario's days
            in_days = (frame["t"] // DAY).isin(ctx.days)
        else:  # a partition: every row before its end (late rows included; future rows are never valid)
            in_days = (frame["t"] >= 0) & (frame["t"] < (d + 1) * DAY)
        for row in frame[ok & in_days].itertuples(index=False):
            out[(str(row.u), str(row.i), int(row.t), str(row.e))] = 1
    return out


def consumed_identities(wd: Path) -> Counter:
    """Every event every round consumed (rounds/NNN/data/events.parquet), with multiplicity."""
    out: Counter = Counter()
    for p in sorted((wd / "rounds").glob("*/data/events.parquet")):
        ev = pd.read_parquet(p, columns=["user_id", "item_id", "timestamp", "event"])
        out.update(zip(ev["user_id"].astype(str), ev["item_id"].astype(str), ev["timestamp"].astype("int64"),
                       ev["event"].astype(str)))
    return out


def reconcile(ctx: Ctx) -> dict[str, Any]:
    expected = valid_identities(ctx)
    got = consumed_identities(ctx.wd)
    lost = [k for k in expected if k not in got]
    twice = sum(n - 1 for n in got.values() if n > 1)
    window = (read_state(ctx.wd).get("clock") or {}).get("windows", {})
    end = max([int(w["end"]) for w in window.values() if w] + [0])
    return {"expected_events": len(expected), "lost": len(lost), "counted_twice": twice,
            "window_end_utc": pd.Timestamp(end, unit="s").strftime("%Y-%m-%d"),
            "reaches_end": end >= (max(ctx.days) + 1) * DAY}


# ------------------------------------------------------------------------------------------------- the faults


def f_control(c: Ctx) -> None:
    c.write(D17)
    c.cycle(what="day 17 normal")
    c.lab.control_table = served(c.wd)["content"]  # what the kill -9 scenarios must serve, value for value
    c.write(D18)
    c.cycle(what="day 18 normal")


def f_extra_columns(c: Ctx) -> None:
    c.write(D17, c.rows(D17).assign(price=1.5, session="s-1"))
    c.cycle(what="day 17 with extra columns")
    c.write(D18)
    c.cycle(what="day 18 normal")


def f_int_ids(c: Ctx) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    c.write(D17)
    big = [1234567890123456789, 1234567890123456788, *range(9000000000000000001, 9000000000000000007), None]
    items = c.rows(D17)["item_id"].iloc[: len(big)].tolist()
    t0 = D17 * DAY + 50_000
    table = pa.table({"user_id": pa.array(big, pa.int64()), "item_id": pa.array(items),
                      "timestamp": pa.array([t0 + i for i in range(len(big))], pa.int64()),
                      "event": pa.array(["click"] * len(big))})
    pq.write_table(table, c.partition(D17) / "ids-int64.parquet")
    c.cycle(what="day 17 + a file of int64 user ids with a null")
    users = set(pd.read_parquet(c.wd / "rounds" / "002" / "data" / "events.parquet")["user_id"])
    c.notes["int64_ids_exact"] = {"1234567890123456789", "1234567890123456788"} <= users
    c.write(D18)
    c.cycle(what="day 18 normal")


def f_rewritten_with_duplicates(c: Ctx) -> None:
    f = c.partition(D17 - 1) / f"part-{iso(D17 - 1)}.parquet"
    rows = pd.read_parquet(f)
    pd.concat([rows, rows.iloc[:200]]).to_parquet(f, index=False)  # a consumed file rewritten in place
    c.days.append(D17 - 1)
    c.write(D17)
    c.cycle(what="day 16's consumed file rewritten with 200 duplicates; day 17")
    c.write(D18)
    c.cycle("--reconsume", f"date={iso(D17 - 1)}", what="fix: --reconsume the partition; day 18")


def f_recategorised_item(c: Ctx) -> None:
    items = c.lab.world.items.copy()
    items.loc[0, "category"] = items["category"].iloc[-1]
    write_table(c.log, ITEMS_FILE, items)
    c.write(D17)
    c.cycle(what="an item re-categorised in items.parquet; day 17")
    c.write(D18)
    c.cycle(what="day 18 normal")


def f_deleted_item(c: Ctx) -> None:
    gone = c.rows(D17)["item_id"].iloc[0]
    write_table(c.log, ITEMS_FILE, c.lab.world.items[c.lab.world.items["item_id"] != gone])
    c.write(D17)
    c.cycle(what=f"item {gone} (clicked on day 17) deleted from items.parquet; day 17")
    c.write(D18)
    c.cycle(what="day 18 normal")


def f_two_cycles(c: Ctx) -> None:
    c.write(D17)
    args = ["cycle", "--config", str(CONFIG), "--workdir", str(c.wd), *c.lab.sets(c.log)]
    from loops.state import lock_holder

    first = run_cli(args, wait=False)
    waited = time.monotonic()
    while lock_holder(c.wd) is None and first.poll() is None and time.monotonic() - waited < 120:
        time.sleep(0.2)  # the second starts once the first holds the lock
    second = run_cli(args)
    out, err = first.communicate()
    c.runs.append({"what": "two cycles at once: the second", "exit": second["exit"], "line": second["line"],
                   "wall_s": second["wall_s"], "served_round": served(c.wd)["round"], "served_intact": True})
    c.runs.append({"what": "two cycles at once: the first", "exit": first.returncode,
                   "line": first_line(err, out), "wall_s": None, "served_round": served(c.wd)["round"],
                   "served_intact": served(c.wd)["ok"]})
    c.write(D18)
    c.cycle(what="day 18 normal")


def kill_at(point: str) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        c.write(D17)
        c.cycle(what=f"kill -9 at {point}", env={"COEA_FAULT": point, "COEA_FAULT_MODE": "exit"})
        c.cycle(what="the next cron run")
        c.notes["kill_point"] = point
        c.notes["served_values_identical_to_control"] = served(c.wd)["content"] == c.lab.control_table
    return f


def f_future_rows(c: Ctx) -> None:
    part = c.write(D17)
    c.rows(D17).iloc[:5].assign(timestamp=lambda f: f["timestamp"] + 40 * DAY).to_parquet(
        part / "future.parquet", index=False)
    c.cycle(what="5 rows 40 days in the future in day 17's partition")
    c.write(D18)
    c.cycle(what="day 18 normal")


def f_null_blank_ids(c: Ctx) -> None:
    rows = c.rows(D17).copy()
    rows["user_id"] = rows["user_id"].astype(object)
    rows.loc[:2, "user_id"] = None
    rows.loc[3:4, "user_id"] = "  "
    c.write(D17, rows)
    c.cycle(what="day 17 with 3 null and 2 blank user ids")
    c.write(D18)
    c.cycle(what="day 18 normal")


def f_corrupt_file(c: Ctx) -> None:
    part = c.write(D17)
    f = part / f"part-{iso(D17)}.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated under _SUCCESS
    c.cycle(what="day 17's file truncated under _SUCCESS")
    c.rows(D17).to_parquet(f, index=False)
    c.write(D18)
    c.cycle(what="fix: the file rewritten; day 18")


def f_missing_event_column(c: Ctx) -> None:
    part = c.write(D17)
    f = part / f"part-{iso(D17)}.parquet"
    c.rows(D17).drop(columns=["event"]).to_parquet(f, index=False)
    c.cycle(what="day 17's file without the event column")
    c.rows(D17).to_parquet(f, index=False)
    c.write(D18)
    c.cycle(what="fix: the file rewritten; day 18")


def f_iso_timestamps(c: Ctx) -> None:
    part = c.write(D17)
    f = part / f"part-{iso(D17)}.parquet"
    rows = c.rows(D17)
    rows.assign(timestamp=pd.to_datetime(rows["timestamp"], unit="s").dt.strftime("%Y-%m-%dT%H:%M:%S")).to_parquet(
        f, index=False)
    c.cycle(what="day 17 with ISO-string timestamps (every row malformed)")
    rows.to_parquet(f, index=False)
    c.write(D18)
    c.cycle(what="fix: the corrected rewrite; day 18")


def f_redelivered_day(c: Ctx) -> None:
    part = c.partition(D17 - 1)
    old = part / f"part-{iso(D17 - 1)}.parquet"
    rows = pd.read_parquet(old)
    old.unlink()
    write_day(c.log, iso(D17 - 1), rows, append=True, name="part-00000-c000.snappy.parquet")  # a Spark overwrite
    c.days.append(D17 - 1)
    c.write(D17)
    c.cycle(what="day 16 re-delivered under a new file name; day 17")
    window = json.loads((c.wd / "rounds" / "002" / "data" / "window.json").read_text())
    c.notes["already_consumed"] = window.get("already_consumed")
    c.notes["redelivered_rows"] = len(rows)
    c.write(D18)
    c.cycle(what="day 18 normal")


def f_missing_day(c: Ctx) -> None:
    for d in (D18, D18 + 1, D18 + 2):
        c.write(d)
    c.cycle(what="day 17 missing; days 18-20 complete")
    c.write(D17)
    c.cycle(what="fix: day 17 written")


def f_unmarked_empty_day(c: Ctx) -> None:
    for d in (D18, D18 + 1, D18 + 2):
        c.write(d)
    c.cycle(what="day 17 had no events and no marker; days 18-20 complete")
    c.cycle("--skip-day", iso(D17), what=f"fix: --skip-day {iso(D17)}")


def on_tmpfs(c: Ctx, free_bytes: int) -> Path | None:
    """Move the workdir onto a tmpfs with ``free_bytes`` left; None when no tmpfs can be mounted."""
    mnt = c.dir / "mnt"
    mnt.mkdir()
    size = disk_bytes(c.wd) + (8 << 20)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        c.notes["skipped"] = f"cannot mount a tmpfs: {done.stderr.decode().strip()[:200]}"
        return None
    shutil.copytree(c.wd, mnt / "wd", symlinks=True)
    shutil.rmtree(c.wd)
    c.wd = mnt / "wd"
    st = os.statvfs(mnt)
    fill = max(0, st.f_bavail * st.f_frsize - free_bytes)
    fd = os.open(mnt / "fill", os.O_WRONLY | os.O_CREAT)
    try:
        while fill > 0:
            fill -= os.write(fd, b"\0" * min(fill, 1 << 20))
        if free_bytes == 0:
            while os.write(fd, b"\0" * 4096):
                pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return mnt


def disk_fault(free_bytes: int, label: str) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        mnt = on_tmpfs(c, free_bytes)
        if mnt is None:
            return
        try:
            c.write(D17)
            run = c.cycle(what=f"day 17; the workdir's disk {label}")
            from loops.state import lock_holder

            c.notes["lock_free_after"] = lock_holder(c.wd) is None
            c.notes["first_run_s"] = run["wall_s"]
            (mnt / "fill").unlink()
            c.write(D18)
            c.cycle(what="fix: space freed; day 18")
            c.notes["reconciliation"] = reconcile(c)
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    return f


def f_single_file_future_row(c: Ctx) -> None:
    ev = c.lab.world.events
    day = ev["timestamp"] // DAY
    future = c.rows(D17).iloc[:1].assign(timestamp=400 * DAY + 77)
    c.days += [D17]
    write_table(c.log, EVENTS_FILE, pd.concat([ev[day <= D17][COLS], c.rows(D18).iloc[:100], future]))
    c.cycle(what="events.parquet: day 17 complete, day 18 arriving, one row on day 400")
    c.days += [D18]
    write_table(c.log, EVENTS_FILE, pd.concat([ev[day <= D18][COLS], c.rows(D18 + 1).iloc[:100]]))
    c.cycle(what="fix: the future row removed; day 18 complete")


FAULTS: list[tuple[str, str, str, Callable[[Ctx], None]]] = [
    # (name, base, held on main 54efa28 | failed on main, what)
    ("control", "partitions", "-", f_control),
    ("extra_columns", "partitions", "held", f_extra_columns),
    ("int64_ids", "partitions", "held", f_int_ids),
    ("rewritten_with_duplicates", "partitions", "held", f_rewritten_with_duplicates),
    ("recategorised_item", "partitions", "held", f_recategorised_item),
    ("deleted_item", "partitions", "held", f_deleted_item),
    ("two_cycles_at_once", "partitions", "held", f_two_cycles),
    *[(f"kill9_{p.replace(':', '_')}", "partitions", "held", kill_at(p)) for p in KILL_POINTS],
    ("future_rows_in_partition", "partitions", "held", f_future_rows),
    ("nearly_full_disk", "partitions", "held", disk_fault(128 << 10, "nearly full (128 KiB free)")),
    ("null_and_blank_ids", "partitions", "held", f_null_blank_ids),
    ("corrupt_file", "partitions", "failed", f_corrupt_file),
    ("missing_event_column", "partitions", "failed", f_missing_event_column),
    ("whole_day_rejected", "partitions", "failed", f_iso_timestamps),
    ("redelivered_day", "partitions", "failed", f_redelivered_day),
    ("missing_day", "partitions", "failed", f_missing_day),
    ("unmarked_empty_day", "partitions", "failed", f_unmarked_empty_day),
    ("full_disk", "partitions", "failed", disk_fault(0, "full (0 bytes free)")),
    ("single_file_future_row", "file", "failed", f_single_file_future_row),
]


# ------------------------------------------------------------------------------------------------- the lab


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cfg = load_config(CONFIG, SETS)
        self.world = generate_world(self.cfg.synthetic, self.cfg.run.seed)
        day = self.world.events["timestamp"] // DAY
        self._rows = {int(d): g[COLS].reset_index(drop=True) for d, g in self.world.events.groupby(day)}
        self.control_table: str | None = None

    def rows(self, d: int) -> pd.DataFrame:
        return self._rows[d].copy()

    def sets(self, log: Path) -> list[str]:
        return [a for s in [f"data.path={log}", *SETS] for a in ("--set", s)]

    def base(self, kind: str) -> Path:
        """The good state (built once per kind): log days 0..16 consumed by round 0 + round 1."""
        d = self.root / f"base-{kind}"
        if (d / "done").exists():
            return d
        if d.exists():
            shutil.rmtree(d)
        log, wd = d / "log", d / "wd"
        write_table(log, ITEMS_FILE, self.world.items)
        write_table(log, USERS_FILE, self.world.users)
        if kind == "partitions":
            for n in range(GOOD_DAYS):
                write_day(log, iso(n), self.rows(n), name=f"part-{iso(n)}.parquet")
        else:  # one file: day 16 complete, day 17 arriving (the newest day of a single file is still arriving)
            ev = self.world.events
            write_table(log, EVENTS_FILE, pd.concat([ev[ev["timestamp"] < GOOD_DAYS * DAY][COLS],
                                                     self.rows(GOOD_DAYS).iloc[:100]]))
        run = run_cli(["cycle", "--config", str(CONFIG), "--workdir", str(wd), *self.sets(log)])
        if run["exit"] not in (0, 4):
            raise SystemExit(f"live_faults: the good state ({kind}) did not build: exit {run['exit']}: {run['line']}")
        (d / "done").write_text(json.dumps({"exit": run["exit"], "wall_s": run["wall_s"]}))
        print(f"good state ({kind}): exit {run['exit']} in {run['wall_s']} s", flush=True)
        return d


def verdict(row: dict[str, Any]) -> dict[str, Any]:
    """Every row must read: non-zero exit where data is at risk, nothing lost, nothing twice, recovery."""
    first = row["runs"][0] if row["runs"] else {}
    rec = row.get("reconciliation") or {}
    at_risk = row["name"] in AT_RISK
    loud = (first.get("exit") not in (0, None)) if at_risk else True
    last = row["runs"][-1] if row["runs"] else {}
    return {"loud_where_at_risk": loud, "nothing_lost": rec.get("lost") == 0,
            "nothing_twice": rec.get("counted_twice") == 0,
            "recovered": last.get("exit") == 0 and bool(rec.get("reaches_end")),
            "served_intact": all(r.get("served_intact") for r in row["runs"]),
            "ok": loud and rec.get("lost") == 0 and rec.get("counted_twice") == 0 and last.get("exit") == 0
            and bool(rec.get("reaches_end")) and all(r.get("served_intact") for r in row["runs"])}


#: Faults where going on silently would lose or double data: the first run must exit non-zero.
AT_RISK = {"rewritten_with_duplicates", "corrupt_file", "missing_event_column", "whole_day_rejected",
           "missing_day", "unmarked_empty_day", "full_disk", "nearly_full_disk", "single_file_future_row",
           "two_cycles_at_once", *[f"kill9_{p.replace(':', '_')}" for p in KILL_POINTS]}


def run_scenario(lab: Lab, name: str, kind: str, before: str, fn: Callable[[Ctx], None]) -> dict[str, Any]:
    t0 = time.perf_counter()
    c = Ctx(lab, name, kind)
    fn(c)
    rec = c.notes.pop("reconciliation", None) or (reconcile(c) if "skipped" not in c.notes else None)
    row = {"name": name, "log": kind, "on_main": before, "runs": c.runs, "notes": c.notes, "reconciliation": rec,
           "wall_s": round(time.perf_counter() - t0, 1)}
    row["verdict"] = verdict(row) if "skipped" not in c.notes else {"ok": None}
    if "skipped" not in c.notes:
        shutil.rmtree(c.dir, ignore_errors=True)
    return row


def render_md(r: dict[str, Any]) -> str:
    out = [f"# benchmarks/live_faults.py: {len(r['rows'])} scenarios on a live log, each from the same good state",
           "", f"`{r['command']}` at commit `{r['commit']}`; wall {r['wall_s']} s; load average "
           f"{r['machine']['loadavg_start']} at the start, {r['machine']['loadavg_now']} at the end; "
           f"run.num_threads 1; {r['machine']['cpus']} CPUs.", "",
           "Good state: log days 0-16 (1970-01-01..1970-01-17) of `configs/live-bench.yaml` with 300 users, "
           "consumed by round 0 and round 1; the fault goes into day 17 (1970-01-18), day 18 is normal. "
           "Lost / twice: from the written files (pyarrow) against every round's consumed events.", "",
           f"All rows ok: **{r['all_ok']}**", "",
           "| fault | on main | first exit | first line | served intact | lost | twice | fix, then exit | "
           "recovered | ok |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        runs, rec, v = row["runs"], row.get("reconciliation") or {}, row["verdict"]
        if "skipped" in row["notes"]:
            out.append(f"| {row['name']} | {row['on_main']} | skipped | {row['notes']['skipped']} | | | | | | |")
            continue
        first = runs[0]
        fix = "; ".join(f"{x['what']} -> {x['exit']}" for x in runs[1:])
        line = (first["line"] or "").replace("|", "/")[:220]
        out.append(f"| {row['name']} | {row['on_main']} | {first['exit']} | {line} | {v['served_intact']} | "
                   f"{rec.get('lost')} | {rec.get('counted_twice')} | {fix} | {v['recovered']} | {v['ok']} |")
    out += ["", "Notes per scenario: " + "; ".join(f"{row['name']}: {row['notes']}" for row in r["rows"]
                                                    if row["notes"]), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/live-faults", help="scratch directory (deleted first)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--only", default="", help="comma-separated scenario names")
    args = p.parse_args(argv)
    root = Path(args.root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    results: dict[str, Any] = {
        "benchmark": "live_faults", "command": " ".join(["python", "benchmarks/live_faults.py", *(argv or
                                                                                                 sys.argv[1:])]),
        "commit": commit, "tree_dirty": dirty, "config": "configs/live-bench.yaml", "overrides": SETS,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "nice": os.nice(0),
                    "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": []}
    lab = Lab(root)
    only = set(filter(None, args.only.split(",")))
    t0 = time.perf_counter()
    for name, kind, before, fn in FAULTS:
        if only and name not in only:
            continue
        row = run_scenario(lab, name, kind, before, fn)
        results["rows"].append(row)
        runs = ", ".join(f"{x['exit']}" for x in row["runs"])
        print(f"{name:<28} exits [{runs}] lost {(row['reconciliation'] or {}).get('lost')} twice "
              f"{(row['reconciliation'] or {}).get('counted_twice')} ok {row['verdict']['ok']} "
              f"({row['wall_s']} s) {row['runs'][0]['line'][:150] if row['runs'] else row['notes']}", flush=True)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["machine"]["loadavg_now"] = [round(x, 2) for x in os.getloadavg()]
    results["all_ok"] = all(r["verdict"]["ok"] for r in results["rows"] if r["verdict"]["ok"] is not None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(render_md(results))
    print(f"all rows ok: {results['all_ok']}; wall {results['wall_s']} s; {out}", flush=True)
    return 0 if results["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

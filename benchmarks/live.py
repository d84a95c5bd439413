"""60 days of cron on a live log: the synthetic world as day partitions, one `coea cycle` subprocess per day.

    nice -n 10 python benchmarks/live.py                  # 60 days; benchmarks/results/live.json + live.md
    nice -n 10 python benchmarks/live.py --days 5 --out /tmp/live-dry.json   # a dry run
    nice -n 10 python benchmarks/live.py --resume         # continue a killed run where it stopped

What it does (issue 11, "Done when"):

1. Generates the synthetic world of ``configs/live-bench.yaml`` (``synthetic``: 240 users, 12 categories) and turns
   it into a live log: most users exist from the start, the others *join* two a day (their events before that
   day are dropped, users.parquet grows); some items are *released* on a few days (items.parquet grows, their
   earlier events are dropped); the last category is *brand new* on one day (its items and events start then);
   one day has *no events* (a partition holding only ``_SUCCESS``); and two *late batches*: rows withheld from an
   already consumed day and written later as a new file into that day's partition (``write_day(append=True)``),
   and rows of the previous day inside a new day's file.
2. Day 0 (deployment): the first ``HISTORY_DAYS`` days are written, then ``coea cycle`` bootstraps round 0
   (``data.bootstrap_fraction`` of those days) and runs round 1 on the rest.
3. Each simulated day: the day's partition is written (the log grows by one day), then ``coea cycle --config
   configs/live-bench.yaml --workdir W --set data.path=LOG`` runs as a subprocess, as cron would (no
   ``--until``: the watermark is the newest complete day). On the fault days the environment holds
   ``COEA_FAULT=pco:start``: the round fails every day until ``cycle.max_attempts`` stops it (exit 5); then the
   benchmark does what that line tells the operator: fix the cause (here: the fault leaves the environment) and
   run ``coea cycle --retry``. The next day's cron run catches up.
4. After every day it records the exit codes, the windows (state.json's ``clock.windows``, which retention keeps),
   each round's ``data/window.json`` while the round is still on disk, the serving lag (the newest complete day
   vs the end of the promoted round's window), the disk use of the workdir (``keep_rounds: 3``), whether the new
   category is in a served KV value (every promoted user key read through ``storage.kv.KVReader``; the first hit
   also through ``coea lookup --user``) and rewrites the results, so a kill loses nothing (``--resume``).
5. At the end: the reconciliation, computed independently from the partition files this script wrote (pyarrow,
   not coea's reader): ``sum over rounds >= 1 of window.events == rows with round 0's cut-off <= timestamp <
   watermark, minus the late rows`` (late = a row whose timestamp's day is before the day its file arrived, as
   the clock documents them: consumed into the sequences, counted as ``late``, kept out of D_k), exact; and
   ``sum of window.late == the late rows written``; and ``coea status --json`` of the final workdir.

Run it under ``nice -n 10`` on a shared machine; every torch process uses one thread (``run.num_threads: 1``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from coea.config import load_config  # noqa: E402
from coea.data.partitions import (  # noqa: E402
    DAY, EPOCH, EVENTS_DIR, ITEMS_FILE, SUCCESS, USERS_FILE, write_day, write_table,
)
from coea.data.synthetic import generate_world  # noqa: E402

CONFIG = REPO / "configs" / "live-bench.yaml"
OUT = REPO / "benchmarks" / "results" / "live.json"
HISTORY_DAYS = 10  # days of log before the deployment (round 0 bootstraps on 60% of them, round 1 the rest)
FAULT = "pco:start"
INITIAL_USER_SHARE = 0.5  # users active from day 0; the rest join over the simulated days
RELEASED_SLOTS = 2  # the last this-many items of every category are released during the simulated days
LATE_ROWS = 40  # rows in each late batch


def log_day(n: int) -> dt.date:
    """The UTC day of log day ``n`` (day 0 = 1970-01-01, as the synthetic world's timestamps)."""
    return EPOCH + dt.timedelta(days=n)


# ---------------------------------------------------------------------------------------------- the schedule


@dataclass
class Schedule:
    """Which simulated day (1..days) carries which event. Log day of simulated day n = HISTORY_DAYS - 1 + n."""

    days: int
    max_attempts: int
    fault_days: list[int]
    empty_day: int
    new_category_day: int
    late_file_day: int  # a file written into an already consumed partition ...
    late_file_target: int  # ... of this simulated day
    late_rows_day: int  # a new day's file holding rows of the previous day
    new_item_days: list[int]

    @classmethod
    def for_days(cls, days: int, max_attempts: int) -> Schedule:
        """Spread the events evenly over ``days`` (at least 6 x ``max_attempts``): the fault (``max_attempts``
        days), the empty day, the new category, the late file, the late rows; new items on four days. A shorter run
        (a dry run) packs them one after the other from day 1; those that fall after its last day do not happen."""
        if days >= 6 * max_attempts:
            slots = [int(round((i + 1) * days / 6)) for i in range(5)]
        else:
            slots = [1] + [1 + max_attempts + i for i in range(4)]
        fault = list(range(slots[0], slots[0] + max_attempts))
        taken = fault + slots[1:]
        if len(set(taken)) != len(taken) or slots[1] <= fault[-1]:
            raise ValueError(f"--days {days}: the schedule's events collide (fault over {max_attempts} days, an "
                             "empty day, a new category, two late batches); use more days or fewer attempts")
        items = sorted({min(days, max(1, int(round(days * f)))) for f in (0.08, 0.42, 0.75, 0.92)})
        return cls(days=days, max_attempts=max_attempts, fault_days=fault, empty_day=slots[1],
                   new_category_day=slots[2], late_file_day=slots[3], late_file_target=slots[3] - 1,
                   late_rows_day=slots[4], new_item_days=items)

    def log_day_of(self, n: int) -> int:
        return HISTORY_DAYS - 1 + n


# ------------------------------------------------------------------------------------------------- the world


@dataclass
class LiveWorld:
    """The synthetic world cut into what arrives each day (all frames hold only rows that exist by then)."""

    items: pd.DataFrame  # every item with ``release`` (log day it enters items.parquet)
    users: pd.DataFrame  # every user with ``join`` (log day)
    events: dict[int, pd.DataFrame]  # log day -> the rows written into that day's partition (its main file)
    late_file: pd.DataFrame  # rows written later into the target day's partition
    new_category: str
    late_rows_in: dict[int, int] = field(default_factory=dict)  # log day -> late rows inside its main file


def build_world(cfg, schedule: Schedule) -> LiveWorld:
    """Cut the synthetic world (``cfg.synthetic``, seed ``run.seed``) into daily arrivals (module docstring)."""
    world = generate_world(cfg.synthetic, cfg.run.seed)
    rng = np.random.default_rng(cfg.run.seed + 1)
    n_days = cfg.synthetic.n_days  # log days 0 .. n_days - 1 exist; the run writes 0 .. HISTORY_DAYS - 1 + days
    if n_days < HISTORY_DAYS + schedule.days:
        raise ValueError(f"synthetic.n_days={n_days}: the log needs {HISTORY_DAYS + schedule.days} days "
                         f"({HISTORY_DAYS} of history, {schedule.days} simulated)")
    first_sim = HISTORY_DAYS  # log day of simulated day 1

    users = world.users.copy()
    n0 = int(round(INITIAL_USER_SHARE * len(users)))
    joiners = len(users) - n0
    per_day = max(1, -(-joiners // schedule.days))  # ceil: someone joins every simulated day
    users["join"] = [0 if i < n0 else first_sim + min(schedule.days - 1, (i - n0) // per_day)
                     for i in range(len(users))]

    items = world.items.copy()
    per_cat = cfg.synthetic.items_per_category
    new_category = world.categories[-1]
    release = np.zeros(len(items), dtype=np.int64)
    item_days = [schedule.log_day_of(d) for d in schedule.new_item_days]
    slot = np.arange(len(items)) % per_cat
    cat_index = np.arange(len(items)) // per_cat
    late_slot = slot >= per_cat - RELEASED_SLOTS
    release[late_slot] = [item_days[(c * RELEASED_SLOTS + s) % len(item_days)]
                          for c, s in zip(cat_index[late_slot], slot[late_slot])]
    is_new_cat = (items["category"] == new_category).to_numpy()
    release[is_new_cat] = schedule.log_day_of(schedule.new_category_day)
    items["release"] = release

    ev = world.events
    day = (ev["timestamp"].to_numpy() // DAY).astype(np.int64)
    joined = day >= ev["user_id"].map(dict(zip(users["user_id"], users["join"]))).to_numpy()
    released = day >= ev["item_id"].map(dict(zip(items["item_id"], items["release"]))).to_numpy()
    empty = day == schedule.log_day_of(schedule.empty_day)
    keep = joined & released & ~empty & (day < n_days)
    ev = ev[keep].reset_index(drop=True)
    day = day[keep]
    cols = ["user_id", "item_id", "timestamp", "event", "rating"]
    events = {d: ev.loc[day == d, cols].reset_index(drop=True) for d in range(n_days)}

    # Late batch 1: rows withheld from an already consumed day, written into its partition later.
    target = schedule.log_day_of(schedule.late_file_target)
    late_file = events[0].iloc[:0]
    if target < n_days:
        pick = np.sort(rng.choice(len(events[target]), size=min(LATE_ROWS, len(events[target])), replace=False))
        late_file = events[target].iloc[pick].reset_index(drop=True)
        events[target] = events[target].drop(index=pick).reset_index(drop=True)
    # Late batch 2: rows of the previous day that arrive in the next day's file.
    arrive = schedule.log_day_of(schedule.late_rows_day)
    late_rows_in = {}
    if arrive < n_days:
        prev = events[arrive - 1]
        pick = np.sort(rng.choice(len(prev), size=min(LATE_ROWS, len(prev)), replace=False))
        moved = prev.iloc[pick]
        events[arrive - 1] = prev.drop(index=pick).reset_index(drop=True)
        events[arrive] = pd.concat([events[arrive], moved], ignore_index=True)
        late_rows_in[arrive] = len(moved)
    return LiveWorld(items=items, users=users, events=events, late_file=late_file, new_category=new_category,
                     late_rows_in=late_rows_in)


def write_log_day(world: LiveWorld, log_dir: Path, d: int, schedule: Schedule) -> dict[str, Any]:
    """The log grows by log day ``d``: tables as of that day, then its partition (idempotent: a complete
    partition is left alone). Returns what was written."""
    items = world.items[world.items["release"] <= d].drop(columns="release")
    users = world.users[world.users["join"] <= d].drop(columns="join")
    write_table(log_dir, ITEMS_FILE, items)
    write_table(log_dir, USERS_FILE, users)
    part = log_dir / EVENTS_DIR / f"date={log_day(d).isoformat()}"
    wrote = {"log_day": log_day(d).isoformat(), "rows": len(world.events[d]), "items": len(items),
             "users": len(users), "late_rows": world.late_rows_in.get(d, 0), "late_file_rows": 0}
    if not (part / SUCCESS).exists():
        write_day(log_dir, log_day(d), world.events[d], name=f"part-{log_day(d).isoformat()}.parquet")
    if schedule.log_day_of(schedule.late_file_day) == d:
        target = log_day(schedule.log_day_of(schedule.late_file_target))
        name = f"late-{log_day(d).isoformat()}.parquet"
        if not (log_dir / EVENTS_DIR / f"date={target.isoformat()}" / name).exists():
            write_day(log_dir, target, world.late_file, append=True, name=name)
        wrote["late_file_rows"] = len(world.late_file)
        wrote["late_file_into"] = target.isoformat()
    return wrote


# ----------------------------------------------------------------------------------------------- measuring


def disk_bytes(path: Path) -> int:
    """Bytes on disk under ``path`` (allocated blocks, as ``du``), symlinks not followed."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except FileNotFoundError:
                continue
            total += st.st_blocks * 512
    return total


def read_state(workdir: Path) -> dict[str, Any]:
    path = workdir / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"rounds": [], "promoted_round": None}


def served_categories(workdir: Path, category: str) -> dict[str, Any]:
    """Read every promoted user's key through KVReader; count the values holding ``category``."""
    from storage.kv import KVReader

    state = read_state(workdir)
    k = state.get("promoted_round")
    users_path = workdir / "rounds" / f"{int(k):03d}" / "users.parquet" if k else None
    if not k or users_path is None or not users_path.exists():
        return {"round": k, "keys": 0, "with_category": 0, "in_recent": 0, "example_user": None}
    table = pd.read_parquet(users_path)
    keys = {}
    for user, csid, recent in zip(table["user_id"], table["csid"], table["recent"]):
        keys.setdefault((str(csid), tuple(str(c) for c in recent)), str(user))
    hits, in_recent, example = 0, 0, None
    with KVReader(workdir) as reader:
        served = reader.round
        for (csid, recent), user in keys.items():
            value = reader.get_value(csid, list(recent))
            cats = [] if value is None else [c["category"] for c in value.as_list()]
            if category in cats:
                hits += 1
                example = example or user
            in_recent += category in recent
    return {"round": served, "keys": len(keys), "with_category": hits, "in_recent": in_recent,
            "example_user": example}


def window_lag(state: dict[str, Any], watermark: int) -> dict[str, Any]:
    """Days between the newest complete day's end and the end of the promoted / newest round's window."""
    clock = state.get("clock") or {}
    windows = clock.get("windows", {})

    def end_of(k):
        if k is None:
            return None
        if int(k) == 0:
            return clock.get("round0_cutoff")
        w = windows.get(str(int(k)))
        return w["end"] if w else None

    finished = [r["round"] for r in state.get("rounds", []) if r["status"] in ("promoted", "refused",
                                                                               "bootstrapped")]
    promoted, newest = state.get("promoted_round"), (max(finished) if finished else None)
    p_end, n_end = end_of(promoted), end_of(newest)
    return {"promoted_round": promoted, "served_end": p_end,
            "serving_lag_days": None if p_end is None else round((watermark - p_end) / DAY, 3),
            "newest_round": newest, "newest_lag_days": None if n_end is None else round((watermark - n_end) / DAY, 3)}


def last_coea_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("coea:") or "nothing new" in ln]
    return lines[-1][:400] if lines else ""


def run_coea(args: list[str], *, env: dict[str, str], log_path: Path) -> dict[str, Any]:
    """One `coea ...` subprocess, as cron runs it: output appended to the day's log file. The returned record's
    ``stdout`` is for the caller to read, not to store."""
    cmd = [sys.executable, "-m", "coea.cli", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    with log_path.open("a") as fh:
        fh.write(f"$ {' '.join(['coea', *args])}\n{proc.stdout}{proc.stderr}exit {proc.returncode}\n")
    return {"command": " ".join(["coea", *args]), "exit": proc.returncode, "wall_s": round(wall, 1),
            "line": last_coea_line(proc.stderr + proc.stdout), "stdout": proc.stdout}


# ------------------------------------------------------------------------------------------------ the run


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:  # noqa: D107
        self.args = args
        self.root = Path(args.root)
        self.workdir, self.log_dir, self.cron_dir = self.root / "workdir", self.root / "log", self.root / "cron"
        self.cfg = load_config(args.config, list(args.set))
        self.schedule = Schedule.for_days(args.days, self.cfg.cycle.max_attempts)
        self.world = build_world(self.cfg, self.schedule)
        self.out = Path(args.out)
        self.results: dict[str, Any] = {}

    def common_args(self) -> list[str]:
        sets = [a for s in [f"data.path={self.log_dir}", *self.args.set] for a in ("--set", s)]
        return ["--config", str(self.args.config), "--workdir", str(self.workdir), *sets]

    def env(self, fault: bool) -> dict[str, str]:
        env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="offline", WANDB_SILENT="true",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env.pop("COEA_FAULT", None)
        if fault:
            env["COEA_FAULT"] = FAULT
        return env

    # ---- results

    def start(self) -> None:
        if self.args.resume and self.out.exists():
            self.results = json.loads(self.out.read_text())
            if self.results.get("root") != str(self.root) or not self.workdir.exists():
                raise SystemExit(f"live: --resume: {self.out} belongs to root {self.results.get('root')!r} or the "
                                 f"workdir {self.workdir} is gone; run without --resume to start over")
            self.results["resumed"] = self.results.get("resumed", 0) + 1
            return
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        self.cron_dir.mkdir()
        self.results = {
            "benchmark": "live", "status": "running", "root": str(self.root),
            "command": " ".join(["python", "benchmarks/live.py", *self.args.argv]),
            "config": str(Path(self.args.config).resolve().relative_to(REPO)) if Path(self.args.config).resolve()
            .is_relative_to(REPO) else str(self.args.config), "overrides": list(self.args.set),
            "schedule": asdict(self.schedule), "history_days": HISTORY_DAYS, "fault": FAULT,
            "new_category": self.world.new_category, "keep_rounds": self.cfg.cycle.keep_rounds,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                        "nice": os.nice(0), "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": 0.0,
            "out": str(self.out), "days": [], "windows": {}, "round_windows": {}, "new_category_first_served": None,
        }

    def save(self) -> None:
        self.results["machine"]["loadavg_now"] = [round(x, 2) for x in os.getloadavg()]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        tmp.write_text(json.dumps(self.results, indent=1) + "\n")
        os.replace(tmp, self.out)
        self.out.with_suffix(".md").write_text(render_md(self.results))

    # ---- days

    def run(self) -> int:
        self.start()
        done = {d["day"] for d in self.results["days"]}
        for n in range(0, self.schedule.days + 1):
            if n in done:
                continue
            t0 = time.perf_counter()
            record = self.one_day(n)
            record["wall_s"] = round(time.perf_counter() - t0, 1)
            self.results["days"].append(record)
            self.results["wall_s"] = round(self.results["wall_s"] + record["wall_s"], 1)
            self.collect_windows()
            self.save()
            print(self.day_line(record), flush=True)
        self.finish()
        self.save()
        print(summary_text(self.results), flush=True)
        return 0 if self.results["checks"]["all"] else 1

    def one_day(self, n: int) -> dict[str, Any]:
        s = self.schedule
        log_path = self.cron_dir / f"day-{n:02d}.log"
        if n == 0:
            wrote = [write_log_day(self.world, self.log_dir, d, s) for d in range(HISTORY_DAYS)]
            last = HISTORY_DAYS - 1
        else:
            last = s.log_day_of(n)
            wrote = [write_log_day(self.world, self.log_dir, last, s)]
        watermark = (last + 1) * DAY
        events = [k for k, on in (("new_items", n in s.new_item_days), ("fault", n in s.fault_days),
                                  ("empty_day", n == s.empty_day), ("new_category", n == s.new_category_day),
                                  ("late_file", n == s.late_file_day), ("late_rows", n == s.late_rows_day)) if on]
        runs = [run_coea(["cycle", *self.common_args()], env=self.env(n in s.fault_days), log_path=log_path)]
        if runs[-1]["exit"] == 5:  # what the line tells the operator: fix the cause, then `coea cycle --retry`
            runs.append(run_coea(["cycle", "--retry", *self.common_args()], env=self.env(False), log_path=log_path))
        for r in runs:
            r["stdout_tail"] = r.pop("stdout").strip().splitlines()[-2:]
        state = read_state(self.workdir)
        record: dict[str, Any] = {
            "day": n, "log_day": log_day(last).isoformat(), "events": events,
            "rows_written": sum(w["rows"] + w["late_file_rows"] for w in wrote),
            "users_in_table": wrote[-1]["users"], "items_in_table": wrote[-1]["items"],
            "exit": runs[0]["exit"], "exits": [r["exit"] for r in runs], "runs": runs,
            "watermark_utc": log_day(last + 1).isoformat() + "T00:00:00Z",
            **window_lag(state, watermark),
            "rounds_on_disk": sorted(int(p.name) for p in (self.workdir / "rounds").iterdir()
                                     if p.is_dir() and p.name.isdigit()) if (self.workdir / "rounds").exists() else [],
            "disk_bytes": disk_bytes(self.workdir),
            "disk_rounds_bytes": disk_bytes(self.workdir / "rounds"), "disk_kv_bytes": disk_bytes(self.workdir / "kv"),
            "log_bytes": disk_bytes(self.log_dir),
            "loadavg": round(os.getloadavg()[0], 2),
        }
        if n >= s.new_category_day:
            served = served_categories(self.workdir, self.world.new_category)
            record["new_category"] = served
            if served["with_category"] and self.results["new_category_first_served"] is None:
                look = run_coea(["lookup", "--workdir", str(self.workdir), "--user", served["example_user"]],
                                env=self.env(False), log_path=log_path)
                answer = json.loads(look["stdout"])
                self.results["new_category_first_served"] = {
                    "day": n, "log_day": record["log_day"], "days_after_arrival": n - s.new_category_day,
                    "round": served["round"], "keys_with_it": served["with_category"], "keys": served["keys"],
                    "user": served["example_user"],
                    "lookup": {"exit": look["exit"], "status": answer.get("status"), "round": answer.get("round"),
                               "categories": [c["category"] for c in answer.get("categories", [])]}}
        return record

    def collect_windows(self) -> None:
        """state.json's windows (kept after expiry) and each on-disk round's window.json (first time seen)."""
        state = read_state(self.workdir)
        self.results["windows"] = (state.get("clock") or {}).get("windows", {})
        self.results["round0_cutoff"] = (state.get("clock") or {}).get("round0_cutoff")
        status = {str(r["round"]): r["status"] for r in state.get("rounds", [])}
        self.results["round_status"] = status
        for path in sorted((self.workdir / "rounds").glob("*/data/window.json")):
            k = str(int(path.parent.parent.name))
            w = json.loads(path.read_text())
            self.results["round_windows"][k] = {
                key: w.get(key) for key in ("start_utc", "end_utc", "days", "events", "clicks", "late",
                                            "late_clicks", "rows", "files", "new_users")} | {
                "rejected": (w.get("rejects") or {}).get("total", 0),
                "new_items": (w.get("vocab") or {}).get("new_items", 0),
                "new_categories": (w.get("vocab") or {}).get("new_categories", [])}

    def day_line(self, r: dict[str, Any]) -> str:
        nc = r.get("new_category")
        return (f"day {r['day']:>2} ({r['log_day']}) exits {r['exits']} {','.join(r['events']) or '-':<22} "
                f"promoted {r['promoted_round']} lag {r['serving_lag_days']} d, rounds on disk {r['rounds_on_disk']}, "
                f"workdir {r['disk_bytes'] / 2**20:.1f} MiB" + (f", new category in {nc['with_category']}/{nc['keys']} "
                                                                  "served values" if nc else "")
                + f", {r['wall_s']} s")

    # ---- the end

    def finish(self) -> None:
        self.results["reconciliation"] = reconcile(self.log_dir, self.results, self.schedule)
        status = run_coea(["status", "--workdir", str(self.workdir), "--json"], env=self.env(False),
                          log_path=self.cron_dir / "status.log")
        try:
            parsed = json.loads(status["stdout"])
            self.results["final_status"] = {"exit": status["exit"], "disk": parsed.get("disk"),
                                            "rounds": [{k: r.get(k) for k in ("round", "status", "disk_bytes",
                                                                               "expired")}
                                                       for r in parsed.get("rounds", [])]}
        except (ValueError, IndexError, KeyError) as exc:
            self.results["final_status"] = {"exit": status["exit"], "error": f"unparsed: {exc}"}
        self.results["checks"] = checks(self.results, self.schedule)
        complete = len(self.results["days"]) == self.schedule.days + 1
        self.results["status"] = "complete" if complete else "partial"
        self.results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def reconcile(log_dir: Path, results: dict[str, Any], schedule: Schedule) -> dict[str, Any]:
    """The exact reconciliation from the written partitions (pyarrow, not coea's reader)."""
    import pyarrow.dataset as ds

    c0 = results.get("round0_cutoff")
    days = results["days"]
    last = dt.date.fromisoformat(days[-1]["log_day"])
    watermark = ((last - EPOCH).days + 1) * DAY
    in_range, late, before_c0, total = 0, 0, 0, 0
    for part in sorted((log_dir / EVENTS_DIR).glob("date=*")):
        arrived_default = dt.date.fromisoformat(part.name.split("=", 1)[1])
        for f in sorted(part.glob("*.parquet")):
            if f.name.startswith((".", "_")):
                continue
            ts = ds.dataset(str(f), format="parquet").to_table(columns=["timestamp"]).column(0).to_numpy()
            # the day a file arrived: its partition's day, or (a late file) the day in its name
            arrived = dt.date.fromisoformat(f.stem.split("-", 1)[1]) if f.name.startswith("late-") else arrived_default
            if (arrived - EPOCH).days * DAY >= watermark:
                continue
            total += len(ts)
            is_late = ts < (arrived - EPOCH).days * DAY
            in_range += int(((ts >= c0) & (ts < watermark)).sum())
            late += int((is_late & (ts >= c0)).sum())
            before_c0 += int((ts < c0).sum())
    windows = {int(k): v for k, v in results.get("windows", {}).items()}
    rounds = sorted(k for k in windows if k >= 1)
    events = sum(int(windows[k]["events"]) for k in rounds)
    late_rounds = sum(int(windows[k]["late"]) for k in rounds)
    rejected = sum(int(w.get("rejected", 0)) for k, w in results.get("round_windows", {}).items() if int(k) >= 1)
    seen = {int(k) for k in results.get("round_windows", {})}
    expected_events = in_range - late
    return {
        "round0_cutoff_utc": dt.datetime.fromtimestamp(c0, dt.timezone.utc).strftime("%Y-%m-%d") if c0 else None,
        "watermark_utc": dt.datetime.fromtimestamp(watermark, dt.timezone.utc).strftime("%Y-%m-%d"),
        "rows_written": total, "rows_before_cutoff": before_c0,
        "rows_in_cutoff_to_watermark": in_range, "late_rows_written": late,
        "expected_events": expected_events, "rounds": len(rounds), "sum_events": events,
        "sum_late": late_rounds, "rejected_rows": rejected,
        "rounds_without_window_json": sorted(set(rounds) - seen),
        "exact": events == expected_events and late_rounds == late,
        "diff_events": events - expected_events, "diff_late": late_rounds - late,
    }


def checks(results: dict[str, Any], schedule: Schedule) -> dict[str, Any]:
    days = [d for d in results["days"] if d["day"] >= 1]
    fault = set(schedule.fault_days)
    lag_ok = [d["day"] for d in days if d["serving_lag_days"] is not None and d["serving_lag_days"] <= 1]
    lag_bad = [d["day"] for d in days if d["day"] not in lag_ok]
    expect_exit = {d["day"]: d["exit"] for d in days}
    fault_exits = [expect_exit.get(n) for n in schedule.fault_days]
    disk = [d["disk_bytes"] for d in days]
    half = len(disk) // 2
    out = {
        "reconciliation_exact": results["reconciliation"]["exact"],
        "serving_lag_le_1_day": not lag_bad, "days_lag_over_1": lag_bad,
        "days_lag_over_1_outside_fault": [n for n in lag_bad if n not in fault],
        "fault_exits": fault_exits,
        "fault_stops_at_attempt_limit": fault_exits[-1:] == [5] and all(e == 1 for e in fault_exits[:-1]),
        "operator_retry_exit": next((d["exits"][-1] for d in days if len(d["exits"]) > 1), None),
        "exit_codes": sorted({d["exit"] for d in days}),
        "disk_max_first_half_mib": round(max(disk[:half]) / 2**20, 1) if half else None,
        "disk_max_second_half_mib": round(max(disk[half:]) / 2**20, 1) if disk else None,
        "disk_last_mib": round(disk[-1] / 2**20, 1) if disk else None,
        "max_rounds_on_disk": max((len(d["rounds_on_disk"]) for d in days), default=0),
        "new_category_served_day": (results.get("new_category_first_served") or {}).get("day"),
    }
    # Bounded: retention keeps at most keep_rounds + 4 finished rounds plus one unfinished (docs/cycle.md); the
    # size of a round grows only with the users and the catalogue (its sequence state and vocabularies).
    out["rounds_on_disk_limit"] = results["keep_rounds"] + 5
    per_round = [d["disk_rounds_bytes"] / max(1, len(d["rounds_on_disk"])) for d in days]
    out["mib_per_round_first_last"] = [round(per_round[0] / 2**20, 2), round(per_round[-1] / 2**20, 2)] \
        if per_round else None
    out["disk_bounded"] = bool(disk) and out["max_rounds_on_disk"] <= out["rounds_on_disk_limit"]
    out["all"] = bool(out["reconciliation_exact"] and out["fault_stops_at_attempt_limit"]
                      and out["operator_retry_exit"] in (0, 4) and not out["days_lag_over_1_outside_fault"]
                      and out["disk_bounded"])
    return out


# ------------------------------------------------------------------------------------------------ reports


def render_md(r: dict[str, Any]) -> str:
    rec, chk = r.get("reconciliation"), r.get("checks")
    lines = [f"# benchmarks/live.py: {len(r['days']) - 1} of {r['schedule']['days']} days of cron on a live log "
             f"({r['status']})", "",
             f"`{r['command']}` ({r['config']}, keep_rounds {r['keep_rounds']}); wall {r['wall_s']} s; load average "
             f"{r['machine']['loadavg_start'][0]} at the start, {r['machine'].get('loadavg_now', ['?'])[0]} now; "
             f"nice {r['machine']['nice']}.", ""]
    if rec:
        lines += [f"Reconciliation: sum of events over rounds 1..{rec['rounds']} = {rec['sum_events']}; rows with "
                  f"{rec['round0_cutoff_utc']} <= timestamp < {rec['watermark_utc']} in the written partitions = "
                  f"{rec['rows_in_cutoff_to_watermark']}, minus {rec['late_rows_written']} late rows = "
                  f"{rec['expected_events']}: **{'exact' if rec['exact'] else 'NOT exact'}** (events off by "
                  f"{rec['diff_events']}, late off by {rec['diff_late']}; rejected rows {rec['rejected_rows']}).", ""]
    first = r.get("new_category_first_served")
    served = (f"day {first['day']} (round {first['round']}, {first['keys_with_it']} of {first['keys']} user keys; "
              f"`coea lookup --user {first['user']}`: {first['lookup']['status']}, {first['lookup']['categories']})"
              if first else "not yet")
    lines += [f"New category `{r['new_category']}` arrives on day {r['schedule']['new_category_day']}; first in a "
              f"served KV value: {served}", ""]
    if chk:
        lines += ["Checks: " + ", ".join(f"{k} {v}" for k, v in chk.items()), ""]
    lines += ["| day | log day | events | exit(s) | round window (events, late) | promoted | lag d | rounds on disk | "
              "workdir MiB | s |", "|---|---|---|---|---|---|---|---|---|---|"]
    windows = r.get("windows", {})
    for d in r["days"]:
        newest = d.get("newest_round")
        w = windows.get(str(newest)) if newest else None
        win = f"r{newest} {w['start_utc'][5:10]}..{w['end_utc'][5:10]} ({w['events']}, {w['late']})" if w else "-"
        lines.append(f"| {d['day']} | {d['log_day']} | {','.join(d['events']) or ''} | {d['exits']} | {win} | "
                     f"{d['promoted_round']} | {d['serving_lag_days']} | {len(d['rounds_on_disk'])} | "
                     f"{d['disk_bytes'] / 2**20:.1f} | {d['wall_s']} |")
    return "\n".join(lines) + "\n"


def summary_text(r: dict[str, Any]) -> str:
    rec, chk = r["reconciliation"], r["checks"]
    return (f"live: {len(r['days']) - 1} days ({r['status']}), wall {r['wall_s']} s; exit codes "
            f"{chk['exit_codes']}; reconciliation {'exact' if rec['exact'] else 'NOT exact'} ({rec['sum_events']} "
            f"events over {rec['rounds']} rounds vs {rec['expected_events']}; late {rec['sum_late']} vs "
            f"{rec['late_rows_written']}); days with serving lag > 1 d: {chk['days_lag_over_1'] or 'none'}; workdir "
            f"{chk['disk_last_mib']} MiB (max {chk['disk_max_first_half_mib']} / {chk['disk_max_second_half_mib']} "
            f"MiB in the first / second half); new category first served on day {chk['new_category_served_day']}; "
            f"all checks "
            f"{'pass' if chk['all'] else 'FAIL'}; wrote {r.get('out', '')}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=60, help="simulated days of cron after the deployment (default 60)")
    ap.add_argument("--config", default=str(CONFIG), help="cycle config (default configs/live-bench.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--root", default="/tmp/coea-live-bench", help="scratch folder: log, workdir, cron logs")
    ap.add_argument("--out", default=str(OUT), help="results JSON (a .md table is written next to it)")
    ap.add_argument("--resume", action="store_true", help="continue the run recorded in --out (same --root)")
    args = ap.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        bench = Bench(args)
    except ValueError as exc:
        print(f"live: {exc}", file=sys.stderr)
        return 2
    return bench.run()


if __name__ == "__main__":
    sys.exit(main())

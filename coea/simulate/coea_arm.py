"""The CoEA-family arms of the closed-loop simulation: ``coea``, ``wo_kl``, ``wo_rllm``, ``google_v1``.

Every arm owns a coea workdir and runs, after each simulated day, one in-process ``coea cycle``
(:func:`loops.cycle.run_cycle`, live clock, ``until`` = the end of the day) on the arm's own growing log. Before
each day it serves, for each user, what production serving returns: the promoted round's KV table read with
:class:`storage.kv.KVReader` on the user's current key (docs/simulate.md, "The LLM arms")::

    variant     the daily cycle (over sim.coea_config)                        the KV value it serves
    coea        as configured: DPO + alpha * KL (Eq. 16-17), Relevance update  C_align, by Relevance score
    wo_kl       pco.alpha = 0: DPO without the KL term of Eq. 17               C_align, by Relevance score
    wo_rllm     relevance.filter: false, pco.epochs: 0, update_epochs: 0       every Novelty candidate, Novelty order
    google_v1   pco.epochs: 0, relevance.update_epochs: 0                      C_align of the frozen round-0 LLMs

``wo_rllm`` serves the Novelty LLM's candidates without the Relevance filter. Without a Relevance LLM there is no
preference signal for PCO either (Eq. 15 picks chosen / rejected by the Relevance score), so its Novelty LLM stays
round 0's, as in the offline evaluation's ``wo_rllm`` (coea/exploration/llm.py); the Relevance LLM is still
scored (reported in the candidates table), never trained and never used to filter. ``google_v1`` keeps round 0's
Novelty and Relevance LLMs (and the Relevance calibration) byte for byte: each daily round carries the base's
adapter and model forward (``pco.epochs: 0`` and ``relevance.update_epochs: 0``, loops/cycle.py), so its KV table
is refreshed daily for the users' current keys with the frozen models. Both frozen arms promote every round
(``cycle.guardrail_margin: 1``: there is no training to guard against). Simplification: Google-v1's own SFT on
short-term-only prompts (the offline evaluation's w/o Long workdir) would cost a second bootstrap per world seed;
here it shares CoEA's round 0.

The current key (storage/keys.py): the CSID from the promoted round's ``users.parquet`` (what ``coea lookup
--user`` reads) and the canonical set of the categories of the user's last ``data.short_k`` clicks, recomputed
from ``recent``. A user the promoted round does not know is served the key of the default CSID with no recent
categories, as :func:`loops.serving.lookup` does. **Fallback**: a key missing from the table (unknown user,
``unknown_key``) or an answer with fewer than ``slots`` categories (an empty C_align) is filled with the *base
ranking* of the exploitation arm: the user's own clicked categories (most clicked first), then every user's most
clicked ones (ties: the popularity prior) -- what the feed shows when exploration has nothing to add, so an arm
whose table is empty serves what exploitation serves. ``fill_stats`` counts every case per day.

Shared start, once per world seed (:func:`bootstrap_round0`): round 0 on the warm-up log up to the start of its
last day. Each arm (:func:`make_coea_arm`) copies that workdir and runs its own round 1 on the last warm-up day of
the same log with its own settings, so every arm serves its own table from the first simulated day; afterwards
the arm's ``data.path`` is the arm's log, which must hold the warm-up partitions as exact copies (same file names)
or none of them: files already consumed are known by their path (coea/round_data.py).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd

from coea.config import Config
from coea.data.partitions import DAY, EPOCH, EVENTS_DIR, PARTITION_KEY, SUCCESS, day_of, scan_log
from coea.workdir import write_json
from loops.cycle import run_cycle
from loops.state import FINISHED, read_state
from storage.keys import DEFAULT_CSID, canonical_recent, kv_key
from storage.kv import KVReader, decode_value

log = logging.getLogger("coea.simulate")

VARIANTS = ("coea", "wo_kl", "wo_rllm", "google_v1")
ROUND0_FILE = "sim_round0.json"  # in the shared round-0 workdir: the warm-up log and its end
ARM_FILE = "arm.json"  # in the arm's directory: what make_coea_arm built
FILL_STATUSES = ("found", "empty", "unknown_user", "unknown_key")


# ------------------------------------------------------------------------------------------------- configs


def arm_config(cfg: Config, variant: str, log_dir: str | Path) -> Config:
    """The cycle config of ``variant`` (module docstring table) on the log ``log_dir``: a deep copy of ``cfg``.

    Always: ``data.source: parquet``, ``data.path = log_dir``, ``cycle.clock: live``, ``data.bootstrap_fraction:
    1`` (round 0's cut-off is the ``until`` the simulation gives).

    Raises:
        ValueError: an unknown variant.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown CoEA-family variant {variant!r} (known: {', '.join(VARIANTS)})")
    c = copy.deepcopy(cfg)
    c.data.source, c.data.path, c.cycle.clock, c.data.bootstrap_fraction = "parquet", str(log_dir), "live", 1.0
    if variant == "wo_kl":
        c.pco.alpha = 0.0
    if variant in ("wo_rllm", "google_v1"):
        c.pco.epochs, c.relevance.update_epochs, c.cycle.guardrail_margin = 0.0, 0.0, 1.0
    if variant == "wo_rllm":
        c.relevance.filter = False
    return c


# ---------------------------------------------------------------------------------------------- round 0


def bootstrap_round0(cfg: Config, log_dir: Path, out_dir: Path, *, until: int) -> Path:
    """Round 0 of one world seed, shared by its LLM arms: bootstrap on ``log_dir``'s days before ``until - 1 day``.

    Args:
        cfg: the CoEA config (``sim.coea_config``).
        log_dir: the warm-up log (day partitions of organic traffic, items.parquet, users.parquet).
        out_dir: the round-0 workdir (created; an existing finished one is reused as it is).
        until: unix seconds, a day boundary: the end of the warm-up. Its last day is left for each arm's round 1.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: ``until`` is not a day boundary or the warm-up has fewer than 2 days before it.
    """
    out_dir = Path(out_dir)
    if until % DAY:
        raise ValueError(f"bootstrap_round0: until must be a day boundary (unix seconds); got {until}")
    if any(r["round"] == 0 and r["status"] in FINISHED for r in read_state(out_dir)["rounds"]) and \
            (out_dir / ROUND0_FILE).exists():
        return out_dir
    first = scan_log(log_dir).partitions[0].day
    if day_of(until - 2 * DAY) < first:
        raise ValueError(f"bootstrap_round0: the warm-up log {log_dir} needs 2 complete days before {until} "
                         f"(round 0 trains on all but the last, each arm's round 1 on the last); it starts {first}")
    c = arm_config(cfg, "coea", log_dir)
    t0 = time.perf_counter()
    res = run_cycle(c, out_dir, until=until - DAY)  # bootstraps round 0, then finds nothing new before until - 1d
    write_json(out_dir / ROUND0_FILE, {"log_dir": str(Path(log_dir).resolve()), "until": int(until),
                                       "round0_cutoff": int(until - DAY), "status": res.status,
                                       "wall_time_s": round(time.perf_counter() - t0, 2)})
    return out_dir


# ------------------------------------------------------------------------------------------------- the arm


class CoeaArm:
    """One CoEA-family arm: a policy of the simulation (coea/simulate/policies.py, ``Policy``), duck-typed.

    Attributes:
        name: the variant.
        workdir: the arm's coea workdir.
        cycles: one record per daily cycle (day, round, status, wall time, stage timings, a few metrics). A cycle
            that raises is recorded as ``failed`` (with its reason) and the simulation goes on: serving keeps the
            promoted table, as after a failed cron run, and the next day's cycle retries the round.
        fill_stats: per served day, how many users each lookup status covered and how many slots the fallback
            filled.
    """

    def __init__(self, variant: str, cfg: Config, arm_dir: Path, catalogue: Any, round0_dir: Path) -> None:
        self.name = variant
        self.cfg = arm_config(cfg, variant, "")  # data.path: the arm's log, set on the first observe
        self.arm_dir = Path(arm_dir)
        self.workdir = self.arm_dir / "workdir"
        self.round0_dir = Path(round0_dir)
        self.categories = list(catalogue.categories)
        pop = list(getattr(catalogue, "popularity", []))
        order = sorted(range(len(self.categories)), key=lambda i: (-float(pop[i]) if pop else 0.0, i))
        self.by_popularity = [self.categories[i] for i in order]  # ties everywhere: the prior, then the index
        self._prior_rank = {c: r for r, c in enumerate(self.by_popularity)}
        self.by_clicks = list(self.by_popularity)  # every user's clicks, most first; set by each fill
        self.log_dir: Path | None = None
        self.cycles: list[dict[str, Any]] = []
        self.fill_stats: list[dict[str, Any]] = []
        self._users: tuple[str, dict[str, str]] | None = None  # (users.parquet path it came from, user -> CSID)

    # -------------------------------------------------------------------------------------------- set-up

    def start(self) -> None:
        """Copy the shared round 0 (unless the arm's workdir exists) and run the arm's round 1 on the warm-up's
        last day, with this variant's settings. Idempotent: a resumed simulation finds both done."""
        meta = json.loads((self.round0_dir / ROUND0_FILE).read_text())
        if not (self.workdir / "state.json").exists():
            tmp = self.arm_dir / ".workdir.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            self.arm_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(self.round0_dir, tmp, symlinks=True, ignore=shutil.ignore_patterns("*.lock", ".lock*"))
            tmp.replace(self.workdir)
        if read_state(self.workdir)["promoted_round"] is None:
            t0 = time.perf_counter()
            res = run_cycle(arm_config(self.cfg, self.name, meta["log_dir"]), self.workdir, until=meta["until"])
            self._record(meta["until"] // DAY - 1, res, time.perf_counter() - t0)
            if read_state(self.workdir)["promoted_round"] is None:
                raise RuntimeError(f"{self.name}: round 1 on the warm-up's last day did not promote ({res.status}: "
                                   f"{res.reason}); nothing to serve")
        (self.arm_dir / ARM_FILE).write_text(json.dumps({"variant": self.name, "round0": str(self.round0_dir),
                                                         "workdir": str(self.workdir)}))

    # --------------------------------------------------------------------------------------------- serving

    def fill(self, day: int, users: list[str], recent: list[list[str]], slots: int) -> list[list[str]]:
        """``slots`` categories per user: the promoted KV value on the user's current key, then the fallback."""
        csid_of = self._csids()
        self.count_clicks(recent)
        k = self.cfg.data.short_k
        keys, status = [], []
        for u, r in zip(users, recent):
            csid = csid_of.get(str(u))
            if csid is None:  # as loops.serving.lookup: an unknown user gets the default CSID, no recent categories
                keys.append(kv_key(DEFAULT_CSID, ()))
                status.append("unknown_user")
            else:
                keys.append(kv_key(csid, canonical_recent(r[-k:] if k else [])))
                status.append("")
        with KVReader(self.workdir, check_interval_s=0) as reader:
            values = reader.multi_get(keys)
            served_round = reader.round
        out, counts, fallback_slots = [], Counter(), 0
        for i, (raw, r) in enumerate(zip(values, recent)):
            served = list(dict.fromkeys(decode_value(raw).categories)) if raw is not None else []
            if not status[i]:
                status[i] = "unknown_key" if raw is None else ("found" if served else "empty")
            counts[status[i]] += 1
            picked = served[:slots]
            if len(picked) < slots:
                base = [c for c in self.base_ranking(r) if c not in set(picked)]
                fallback_slots += min(slots - len(picked), len(base))
                picked += base[:slots - len(picked)]
            while picked and len(picked) < slots:  # a catalogue smaller than the slots: repeat
                picked.append(picked[len(picked) % max(1, len(set(picked)))])
            out.append(picked)
        self.fill_stats.append({"day": int(day), "round": served_round, "users": len(users),
                                **{s: counts.get(s, 0) for s in FILL_STATUSES}, "fallback_slots": fallback_slots,
                                "slots": slots * len(users)})
        return out

    def count_clicks(self, recent: Sequence[Sequence[str]]) -> None:
        """``by_clicks``: the categories by every user's clicks in ``recent`` (ties: the popularity prior)."""
        total = Counter(c for r in recent for c in r)
        self.by_clicks = sorted(self.categories, key=lambda c: (-total[c], self._prior_rank[c]))

    def base_ranking(self, recent: Sequence[str]) -> list[str]:
        """The fallback, the exploitation arm's base ranking (coea/simulate/policies.py): the user's clicked
        categories, most clicked first, then every user's most clicked ones (ties: the popularity prior)."""
        counts = Counter(recent)
        own = sorted(counts, key=lambda c: (-counts[c], self._prior_rank.get(c, len(self._prior_rank))))
        return own + [c for c in self.by_clicks if c not in counts]

    def _csids(self) -> dict[str, str]:
        """user -> CSID of the promoted round (``current/users.parquet``), cached until the promoted round changes."""
        path = (self.workdir / "current").resolve() / "users.parquet"
        if self._users is None or self._users[0] != str(path):
            table = pd.read_parquet(path, columns=["user_id", "csid"])
            self._users = (str(path), dict(zip(table["user_id"].astype(str), table["csid"].astype(str))))
        return self._users[1]

    # ------------------------------------------------------------------------------------------- learning

    def observe(self, day: int, log_dir: Path, events: pd.DataFrame) -> None:
        """Run day ``day``'s cycle on ``log_dir`` (the arm's log, holding that day's complete partition)."""
        self._use_log(Path(log_dir))
        part = Path(log_dir) / EVENTS_DIR / f"{PARTITION_KEY}={(EPOCH + pd.Timedelta(days=int(day))).isoformat()}"
        if not (part / SUCCESS).exists():
            raise ValueError(f"{self.name}: day {day}'s partition {part} is not complete; observe(day) expects the "
                             "day written with coea.data.partitions.write_day (day = days since 1970-01-01)")
        t0 = time.perf_counter()
        try:
            res = run_cycle(self.cfg, self.workdir, until=(int(day) + 1) * DAY)
        except Exception as exc:  # noqa: BLE001 - as a failed cron run: serving keeps the promoted table
            # The round's attempt and traceback are in the workdir (state.json, rounds/NNN/failure-<n>.log); the
            # next day's cycle retries it (cycle.max_attempts) and then catches up on the days in between.
            log.warning("%s: the cycle after day %d failed (%s: %s); serving stays on round %s", self.name, day,
                        type(exc).__name__, exc, self._promoted())
            res = SimpleNamespace(round=self._promoted(), status="failed", metrics={}, timings={},
                                  reason=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        self._record(day, res, time.perf_counter() - t0)

    def _promoted(self) -> int | None:
        return read_state(self.workdir)["promoted_round"]

    def _use_log(self, log_dir: Path) -> None:
        """Point the cycle at the arm's log; the first time, check the warm-up files there were consumed already."""
        if self.log_dir == log_dir.resolve():
            return
        meta = json.loads((self.round0_dir / ROUND0_FILE).read_text())
        known = {(f.path, f.size) for p in scan_log(meta["log_dir"]).partitions for f in p.files}
        foreign = [f.path for p in scan_log(log_dir).partitions if (p.day - EPOCH).days * DAY < meta["until"]
                   for f in p.files if (f.path, f.size) not in known]
        if foreign:
            raise ValueError(f"{self.name}: {log_dir} holds warm-up files that are not the shared warm-up log's "
                             f"({', '.join(foreign[:3])}), so the cycle would read them as late events; copy the "
                             "warm-up partitions with their file names, or leave them out")
        self.log_dir = log_dir.resolve()
        self.cfg.data.path = str(self.log_dir)

    def _record(self, day, res, wall: float) -> None:
        m = res.metrics
        entry = {"day": int(day), "round": res.round, "status": res.status, "wall_s": round(wall, 2),
                 "promoted": int(res.status == "promoted"), "failed": int(res.status == "failed"),
                 **{k[5:-2]: v for k, v in res.timings.items()},
                 **{k: m[k] for k in ("keys/count", "keys/aligned", "pco/pairs", "relevance/train_pairs",
                                      "val/C-H@1", "val/NCP@5", "pco/kl", "pco/loss") if k in m}}
        if res.reason:
            entry["reason"] = res.reason
        self.cycles.append(entry)
        with (self.arm_dir / "cycles.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\n")

    # --------------------------------------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, Any]:
        """The workdir on disk is the state; this records where it is and what the arm logged so far."""
        return {"variant": self.name, "workdir": str(self.workdir), "log_dir": str(self.log_dir or ""),
                "cycles": list(self.cycles), "fill_stats": list(self.fill_stats)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("variant") != self.name:
            raise ValueError(f"state of arm {d.get('variant')!r} loaded into arm {self.name!r}")
        if Path(d["workdir"]) != self.workdir:
            raise ValueError(f"{self.name}: state for workdir {d['workdir']}, this arm's is {self.workdir}")
        self.cycles, self.fill_stats = list(d.get("cycles", [])), list(d.get("fill_stats", []))
        if d.get("log_dir"):
            self._use_log(Path(d["log_dir"]))


def make_coea_arm(variant: str, cfg: Config, arm_dir: Path, catalogue: Any, round0_dir: Path) -> CoeaArm:
    """A started CoEA-family arm (module docstring): the shared round 0 copied into ``arm_dir/workdir`` and the
    variant's round 1 run on the warm-up's last day (both skipped when already there: resume).

    Args:
        variant: ``coea`` | ``wo_kl`` | ``wo_rllm`` | ``google_v1``.
        cfg: the CoEA config (``sim.coea_config``); the variant's settings are applied to a copy.
        arm_dir: the arm's directory (its workdir, ``cycles.jsonl``, ``arm.json``).
        catalogue: what every policy may know (``categories``, ``popularity``: the fallback's order).
        round0_dir: :func:`bootstrap_round0`'s workdir for this world seed.
    """
    arm = CoeaArm(variant, cfg, arm_dir, catalogue, round0_dir)
    arm.start()
    return arm

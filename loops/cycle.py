"""One co-evolution cycle (round k), top to bottom. See docs/cycle.md.

    window      events since round k-1 (static data: the replay schedule reveals the next ``cycle.replay_days``)
    dsie        refreshed every ``cycle.dsie_refresh_every`` rounds, reused otherwise
    candidates  every unique key (CSID, canonical C'_short) at the round's cut-off -> Novelty LLM (round k-1)
                -> Relevance LLM scores -> C_align (s_i > tau_align)
    kv          staged, verified KV table for round k
    pco         uniform sample of D_k -> (chosen, rejected) = (max, min) Relevance score (Eq. 15)
                -> DPO + alpha * KL against the round k-1 Novelty LLM (Eq. 16-17)
    relevance   Relevance LLM updated on the new clicks of D_k (Eq. 12-14)
    validation  held-out users: state at the previous cut-off, round-k models, truth = their clicks in D_k
    promote     guardrail on validation C-H@1, then KV pointer + ``current`` link + state.json

Each stage writes into ``rounds/NNN/<stage>`` through :func:`coea.workdir.stage`, so a rerun after a crash skips
what finished. Validation users (a stable hash of the user id) never contribute training signal.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from coea.config import Config
from coea.workdir import (
    fault_point, read_json, round_dir, setup_run, stage, stage_done, write_json, write_manifest,
)
from loops.state import last_finished_round, promote_link, read_state, record_round, workdir_lock

log = logging.getLogger("coea.cycle")

DAY = 86_400
VALIDATION_SHARE = 0.1


@dataclass
class CycleResult:
    round: int
    promoted: bool
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ replay windows


def timeline(inter) -> tuple[int, int]:
    ts = inter.events["timestamp"]
    return int(ts.min()), int(ts.max()) + 1


def cutoff(cfg: Config, inter, k: int) -> int:
    """Events with timestamp < cutoff(k) are known at the end of round k (round 0 = the bootstrap share)."""
    start, end = timeline(inter)
    c0 = start + int(cfg.data.bootstrap_fraction * (end - start))
    return min(end, c0 + int(round(k * cfg.cycle.replay_days * DAY)))


def is_validation_user(user_id: str) -> bool:
    """Stable 10% of users held out from every training signal of the cycle."""
    h = int.from_bytes(hashlib.blake2b(str(user_id).encode(), digest_size=4).digest(), "big")
    return h / 2**32 < VALIDATION_SHARE


# -------------------------------------------------------------------------------------------------- data + DSIE


def load_data(cfg: Config):
    """Load and clean the configured data set (rejects are counted, never fatal)."""
    from coea.data.loaders import load_interactions

    return load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)


def write_data_stage(cfg: Config, round_path: Path, inter, *, start: int | None, end: int) -> dict[str, Any]:
    """``rounds/NNN/data``: the round's window and the rejects file (every rejected row with its reason)."""
    from coea.data.loaders import write_rejects

    if stage_done(round_path, "data"):
        return read_json(round_path / "data" / "window.json")
    with stage(round_path, "data") as tmp:
        counts = write_rejects(inter.rejects, tmp / "rejects.jsonl")
        ev = inter.events
        in_window = (ev["timestamp"] < end) & ((ev["timestamp"] >= start) if start is not None else True)
        window = {"start": start, "end": end, "events": int(in_window.sum()),
                  "clicks": int((in_window & (ev["event"] == "click")).sum()),
                  "users": int(ev.loc[in_window, "user_id"].nunique()), "rejects": counts}
        write_json(tmp / "window.json", window)
        write_manifest(tmp, cfg)
    if inter.rejects.total:
        log.warning("data: %d input rows rejected (%s); see %s", inter.rejects.total, inter.rejects.counts,
                    round_path / "data" / "rejects.jsonl")
    return window


def run_dsie_stage(cfg: Config, workdir: Path) -> dict[str, Any]:
    """``coea dsie``: DSIE on the round-0 share of the timeline into ``rounds/000/dsie``; returns its report."""
    from coea.data.sequences import build_sequences
    from coea.dsie import run_dsie

    setup_run(cfg)
    rp = round_dir(workdir, 0)
    if stage_done(rp, "dsie"):
        log.info("dsie: already finished in %s", rp / "dsie")
        return read_json(rp / "dsie" / "report.json")
    t0 = time.perf_counter()
    inter = load_data(cfg)
    end = cutoff(cfg, inter, 0)
    write_data_stage(cfg, rp, inter, start=None, end=end)
    seqs = build_sequences(inter, cfg.data, cutoff=end)
    result = run_dsie(cfg, rp, inter, seqs)
    report = dict(result.report)
    report["wall_time_total_s"] = round(time.perf_counter() - t0, 2)
    write_json(rp / "dsie" / "stage_time.json", {"wall_time_total_s": report["wall_time_total_s"]})
    return report

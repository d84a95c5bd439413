"""What one cycle leaves in W&B (or the local tracking files), after the round is decided. docs/metrics.md.

One run per cycle (``round-NNN``, grouped by workdir) holds:

    round figures     val/*, pco/*, relevance/*, keys/*, ... against ``round``; round 1's run also holds the
                      bootstrap's figures at round 0 (``bootstrap/*``)
    trainer curves    each training stage's ``trainer_state.json`` replayed under a stage prefix against that
                      stage's own step: pretrain/*, novelty_sft/*, relevance_reward/* (round 0, in round 1's run),
                      novelty_dpo/*, relevance_update/* (every round); DSIE losses per epoch when DSIE ran
    artifacts         candidates-<group> and kv-table-<group> (KV manifest + a sample Table) of round k, and when k
                      is promoted novelty-adapter-<group> / relevance-model-<group> (aliases round-K, promoted);
                      round 1's run also logs round 0's models (alias round-0), the models round 1 started from
    lineage           adapter (round base) -> candidates (round k) -> KV (round k): ``inputs`` in each artifact's
                      metadata, and online also ``use_artifact`` of the base round's models

Tracking never fails a round: every step is wrapped by the tracker (coea/tracking.py) or skipped with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from coea.config import Config
from coea.rounds import latest_dsie_dir, novelty_adapter, read_state, relevance_model_dir
from coea.tracking import PLOT_METRICS, TableData, Tracker, artifact_name, make_tracker, plot_rounds, workdir_group
from coea.workdir import read_json, round_dir
from loops.trainer_log import HISTORY_FILE
from storage.keys import DEFAULT_CSID, kv_key
from storage.kv import KVStore

log = logging.getLogger("coea.tracking")

PORTRAIT_CHARS = 160  # portrait excerpt in the KV Table


def trainer_histories(workdir: Path, k: int) -> list[tuple[str, Path]]:
    """``(prefix, trainer_state.json)`` of round k's training stages (and round 0's when k == 1) that exist."""
    r0, rk = round_dir(workdir, 0), round_dir(workdir, k)
    stages = [("novelty_dpo", rk / "pco"), ("relevance_update", rk / "relevance")]
    if k == 1:
        stages = [("pretrain", r0 / "backbone" / "pretrain"), ("novelty_sft", r0 / "novelty"),
                  ("relevance_reward", r0 / "relevance"), *stages]
    return [(prefix, d / HISTORY_FILE) for prefix, d in stages if (d / HISTORY_FILE).is_file()]


def dsie_histories(workdir: Path, k: int) -> list[tuple[str, list[dict[str, Any]]]]:
    """Per-epoch losses of the DSIE encoder and RQ-VAE trained in this cycle (round k, or round 0 when k == 1)."""
    out = []
    for j in ((0, k) if k == 1 else (k,)):
        report = round_dir(workdir, j) / "dsie" / "report.json"
        if not report.is_file():
            continue
        rep = read_json(report)
        for prefix, losses in (("dsie_encoder", (rep.get("encoder") or {}).get("epoch_losses") or []),
                               ("dsie_rqvae", rep.get("epoch_losses") or [])):
            if losses:
                out.append((prefix, [{"epoch": i + 1, "loss": v} for i, v in enumerate(losses)]))
    return out


def kv_sample(cfg: Config, workdir: Path, k: int, rows: int) -> TableData | None:
    """A uniform sample of round k's KV entries as read from the candidates table the KV was built from."""
    import pandas as pd

    path = round_dir(workdir, k) / "candidates" / "candidates.parquet"
    if rows <= 0 or not path.is_file():
        return None
    table = pd.read_parquet(path)
    portraits: dict[str, str] = {}
    try:
        groups = latest_dsie_dir(workdir, k) / "groups.jsonl"
        portraits = {g["csid"]: g.get("portrait", "") for g in map(json.loads, groups.read_text().splitlines()) if g}
    except (FileNotFoundError, ValueError, KeyError) as exc:
        log.debug("KV sample without portraits: %s", exc)
    rng = np.random.default_rng(cfg.run.seed + k)
    picks = sorted(rng.choice(len(table), size=min(rows, len(table)), replace=False).tolist()) if len(table) else []

    def scores(values) -> str:
        return ", ".join(f"{float(v):.3f}" for v in values)

    data = []
    for i in picks:
        r = table.iloc[i]
        portrait = portraits.get(r["csid"]) or portraits.get(DEFAULT_CSID, "")
        data.append([kv_key(r["csid"], list(r["recent"])).decode(), str(r["csid"]),
                     portrait[:PORTRAIT_CHARS] + ("..." if len(portrait) > PORTRAIT_CHARS else ""),
                     ", ".join(r["recent"]), ", ".join(r["aligned"]), scores(r["aligned_scores"]),
                     ", ".join(r["candidates"]), scores(r["scores"]), int(len(r["aligned"]))])
    return TableData(columns=["key", "csid", "portrait", "recent", "categories", "scores", "candidates",
                              "candidate_scores", "n_categories"], rows=data)


def log_artifacts(tracker: Tracker, cfg: Config, workdir: Path, k: int, base: int, promoted: bool) -> None:
    """Candidates and KV of round k; round k's models when promoted (round 0's too in round 1's run)."""
    group = cfg.tracking.group or workdir_group(workdir, cfg.run.name)
    adapter, relevance = artifact_name("novelty-adapter", group), artifact_name("relevance-model", group)
    candidates, kv = artifact_name("candidates", group), artifact_name("kv-table", group)
    inputs = [f"{adapter}:round-{base}", f"{relevance}:round-{base}"]
    if k == 1 and base == 0:
        _log_models(tracker, workdir, 0, adapter, relevance, aliases=["round-0"], trained_from=None)
    else:
        tracker.use_artifact(adapter, f"round-{base}")
        tracker.use_artifact(relevance, f"round-{base}")
    rk = round_dir(workdir, k)
    summary = rk / "candidates" / "summary.json"
    tracker.log_artifact(candidates, "candidates", paths=[rk / "candidates" / "candidates.parquet", summary],
                         aliases=[f"round-{k}"],
                         metadata={"round": k, "scored_by_round": base, "inputs": inputs,
                                   **(read_json(summary) if summary.is_file() else {})})
    store = KVStore(workdir)
    manifest = store.manifest(k) if k in store.list_rounds() else {}
    manifest_file = store.round_dir(k) / "manifest.json"
    table = kv_sample(cfg, workdir, k, cfg.tracking.table_rows)
    tracker.log_artifact(kv, "kv-table", paths=[manifest_file] if manifest_file.is_file() else [],
                         aliases=[f"round-{k}"] + (["promoted"] if promoted else []),
                         metadata={"round": k, "promoted": promoted, "inputs": [f"{candidates}:round-{k}"],
                                   **manifest}, table=table)
    if table is not None:
        tracker.log_table("kv/sample", table, round=k)
    if promoted:
        _log_models(tracker, workdir, k, adapter, relevance, aliases=[f"round-{k}", "promoted"], trained_from=base)


def _log_models(tracker: Tracker, workdir: Path, k: int, adapter: str, relevance: str, *, aliases: list[str],
                trained_from: int | None) -> None:
    for name, path, kind in ((adapter, novelty_adapter(workdir, k), "Novelty LLM LoRA adapter"),
                             (relevance, relevance_model_dir(workdir, k), "Relevance LLM (reward model)")):
        if not path.is_dir():
            log.warning("W&B: %s of round %d is missing (%s); not logged", kind, k, path)
            continue
        meta: dict[str, Any] = {"round": k, "what": kind, "path": str(path)}
        if trained_from is not None:
            meta["inputs"] = [f"{name}:round-{trained_from}"]
        tracker.log_artifact(name, "model", paths=[path], aliases=aliases, metadata=meta)


def track_round(cfg: Config, workdir: Path, k: int, metrics: dict[str, Any], *,
                base: int | None = None) -> Path | None:
    """Log round k to this cycle's tracker (see the module docstring), then draw ``rounds/NNN/metrics.png``.

    Args:
        base: the promoted round whose models round k started from (None: the promoted round before k in
            state.json, else k - 1).
    Returns:
        The path of metrics.png (None with ``tracking.plot_rounds: false``).
    """
    state = read_state(workdir)
    entry = next((r for r in state["rounds"] if r["round"] == k), {})
    promoted = entry.get("status") == "promoted" if entry else state.get("promoted_round") == k
    if base is None:
        base = max((r["round"] for r in state["rounds"] if r["round"] < k
                    and r["status"] in ("promoted", "bootstrapped")), default=k - 1)
    tracker = make_tracker(cfg.tracking, workdir, k, run_name=cfg.run.name, config=cfg.to_dict())
    try:
        if k == 1:
            boot = next((r for r in state["rounds"] if r["round"] == 0), None)
            if boot and boot.get("metrics"):
                tracker.log({f"bootstrap/{m}": v for m, v in boot["metrics"].items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)}, round=0)
        tracker.log({m: v for m, v in metrics.items() if m != "round"}, round=k)
        for prefix, path in trainer_histories(workdir, k):
            tracker.log_history(prefix, read_json(path).get("log_history", []))
        for prefix, rows in dsie_histories(workdir, k):
            tracker.log_history(prefix, rows, step="epoch", step_name="epoch")
        pco = round_dir(workdir, k) / "pco" / "metrics.json"
        for alert in (read_json(pco).get("alerts", []) if pco.exists() else []):
            tracker.alert(f"coea round {k}: DPO alert", str(alert))
        if cfg.tracking.log_models:
            try:
                log_artifacts(tracker, cfg, workdir, k, base, promoted)
            except Exception as exc:  # noqa: BLE001 - a missing file must not fail a promoted round
                log.warning("tracking: artifacts of round %d not logged (%s: %s)", k, type(exc).__name__, exc)
        tracker.summary({"round": k, "promoted": promoted, **{m: metrics[m] for m in
                                                              ("val/C-H@1", "keys/count") if m in metrics}})
    finally:
        tracker.finish()
    if not cfg.tracking.plot_rounds:
        return None
    history = [dict(r["metrics"], round=r["round"]) for r in read_state(workdir)["rounds"] if r["metrics"]
               and r["round"] > 0]
    return plot_rounds(history, round_dir(workdir, k) / "metrics.png", PLOT_METRICS, title=Path(workdir).name)

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
what finished. Validation users (a stable hash of the user id) never contribute training signal. With
``cycle.num_processes > 1`` candidate scoring, DPO and the Relevance update run on that many ``accelerate launch``
workers (loops/workers.py; training also with ``cycle.deepspeed`` on one GPU); this process keeps the lock, the
stages and promotion.
"""

from __future__ import annotations

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
from coea.inference import Key, Models, load_models, propose_and_score, user_keys
from coea.rounds import (
    base_model_path, cutoff, is_validation_user, latest_dsie_dir, load_data, novelty_adapter, relevance_model_dir,
    timeline, tokenizer_path, write_data_stage,
)
from loops.launch import scores_in_workers, trains_in_workers
from loops.state import last_finished_round, promote_link, read_state, record_round, workdir_lock

log = logging.getLogger("coea.cycle")


@dataclass
class CycleResult:
    round: int
    promoted: bool
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


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


# ---------------------------------------------------------------------------------------------- candidates + KV


def stage_candidates(cfg: Config, workdir: Path, k: int, base: int, keys: list[Key], portraits: dict[str, str],
                     categories: list[str], device: str) -> pd.DataFrame:
    """``rounds/NNN/candidates``: one row per unique key with candidates, Relevance scores and C_align.

    Scored by round ``base``'s models, in this process or, with ``cycle.num_processes > 1``, sharded over that many
    workers (loops/workers.py): the same rows either way (scores to float32 rounding, docs/cycle.md).
    """
    rp = round_dir(workdir, k)
    if not stage_done(rp, "candidates"):
        with stage(rp, "candidates") as tmp:
            t0 = time.perf_counter()
            if scores_in_workers(cfg):
                from loops.workers import launch_candidates

                rows = launch_candidates(cfg, workdir, base, base, keys, portraits, categories, tmp)
            else:
                rows = propose_and_score(cfg, load_models(cfg, workdir, base, base, device), keys, portraits,
                                         categories)
            table = pd.DataFrame(rows)
            table.to_parquet(tmp / "candidates.parquet", index=False)
            write_json(tmp / "summary.json", {"keys": len(keys), "aligned": int(table["aligned"].map(len).sum()),
                                              "keys_with_aligned": int((table["aligned"].map(len) > 0).sum()),
                                              "wall_time_s": round(time.perf_counter() - t0, 2)})
    return pd.read_parquet(rp / "candidates" / "candidates.parquet")


def stage_kv(workdir: Path, k: int, table: pd.DataFrame) -> dict[str, Any]:
    """Stage and verify the round's KV table (storage/ owns the bytes; see docs/storage.md)."""
    from storage.keys import kv_key
    from storage.kv import KVStore, encode_value

    store = KVStore(workdir)
    if k in store.list_rounds():
        return store.manifest(k)
    def entries():
        for i, r in enumerate(table.sort_values(["csid"]).itertuples()):
            if i == 1:
                fault_point("kv:staging")  # crash-safety tests: die with a half-written table
            yield kv_key(r.csid, r.recent), encode_value(k, list(r.aligned), list(r.aligned_scores))

    staged = store.stage(k, entries())
    store.verify(k)
    return {"count": staged.count, "checksum": staged.checksum}


# ----------------------------------------------------------------------------------------------------- PCO


def sample_users(active: list[str], fraction: float, seed: int) -> list[str]:
    """Uniform sample of D_k without replacement: N = floor(fraction * |D_k|), at least 1 (when D_k is not empty)."""
    if not active:
        return []
    n = max(1, math.floor(fraction * len(active)))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(sorted(active), size=min(n, len(active)), replace=False).tolist())


def preference_pairs(cfg: Config, table: pd.DataFrame, user_key: dict[str, Key], users: list[str],
                     portraits: dict[str, str]) -> list[dict[str, str]]:
    """Eq. 15: chosen / rejected = the highest / lowest Relevance score among the Novelty LLM's candidates."""
    from coea.prompts import completion_text, novelty_infer_prompt
    from storage.keys import DEFAULT_CSID

    by_key = {(r.csid, tuple(r.recent)): r for r in table.itertuples()}
    pairs = []
    for u in users:
        key = user_key[u]
        row = by_key.get((key.csid, key.recent))
        if row is None or len(row.candidates) < 2:
            continue
        scores = np.asarray(row.scores)
        hi, lo = int(np.argmax(scores)), int(np.argmin(scores))
        if scores[hi] == scores[lo]:
            continue  # no preference to learn from
        portrait = portraits.get(key.csid) or portraits.get(DEFAULT_CSID, "")
        pairs.append({"prompt": novelty_infer_prompt(cfg.prompts, portrait, key.recent),
                      "chosen": completion_text(row.candidates[hi]),
                      "rejected": completion_text(row.candidates[lo]), "user_id": u})
    return pairs


def stage_pco(cfg: Config, workdir: Path, k: int, pairs: list[dict[str, str]]) -> dict[str, Any]:
    """``rounds/NNN/pco``: DPO + alpha * KL of the Novelty LLM against the round k-1 (or round-0) model."""
    from loops.dpo import run_dpo
    from loops.pairs import preference_dataset

    rp = round_dir(workdir, k)
    if stage_done(rp, "pco"):
        return read_json(rp / "pco" / "metrics.json")
    with stage(rp, "pco") as tmp:
        write_json(tmp / "pairs.json", pairs)
        previous = novelty_adapter(workdir, k - 1)
        anchor = novelty_adapter(workdir, 0) if cfg.pco.anchor == "round0" else None
        if not pairs:
            raise RuntimeError("pco: no preference pairs in the sample (every key had < 2 distinct scores)")
        if trains_in_workers(cfg):
            from loops.workers import launch_dpo

            result = launch_dpo(cfg, base_model_path(cfg, workdir), previous, anchor, tokenizer_path(workdir),
                                tmp / "pairs.json", tmp, seed=cfg.run.seed + k)
        else:
            result = run_dpo(cfg.pco, cfg.lora, base_model_path(cfg, workdir), previous, anchor,
                             str(tokenizer_path(workdir)), preference_dataset(pairs), tmp, seed=cfg.run.seed + k,
                             dtype=cfg.backbone.dtype, deepspeed=cfg.cycle.deepspeed)
        # DpoResult.alerts are "[kind] step N: message" lines, kept whole.
        write_manifest(tmp, cfg, {"pairs": len(pairs), "alerts": list(result.alerts)})
    return read_json(rp / "pco" / "metrics.json")


# ------------------------------------------------------------------------------------------------ validation


def validation_metrics(cfg: Config, models: Models, inter, seqs_prev, csids_prev: dict[str, str],
                       portraits: dict[str, str], start: int, end: int) -> dict[str, float]:
    """Held-out users: lists from their state at the previous cut-off with the round-k models; truth = D_k clicks.

    C_u^pref = categories of I_long at the previous cut-off; C_u^hist = every category the user clicked before it
    (App. A.4; ``val/NCP-recent@K`` is the variant against C'_short); clicked = categories the user clicked in
    [start, end). Validation users never contribute training signal to the cycle.
    """
    from coea.data.sequences import click_categories_by_user
    from coea.metrics import evaluate_users, long_tail_categories

    clicks = click_categories_by_user(inter, start=start, end=end)
    history = click_categories_by_user(inter, end=start)
    category_of = inter.item_category
    item_cat = {j + 1: category_of.get(i) for j, i in enumerate(seqs_prev.item_vocab)}
    rows = [i for i, u in enumerate(seqs_prev.user_ids) if is_validation_user(u) and u in clicks]
    if not rows:
        return {}
    keys = user_keys(seqs_prev, csids_prev)
    uniq = sorted({(keys[seqs_prev.user_ids[i]].csid, keys[seqs_prev.user_ids[i]].recent) for i in rows})
    table = propose_and_score(cfg, models, [Key(c, r) for c, r in uniq], portraits, inter.categories)
    by_key = {(r["csid"], tuple(r["recent"])): r for r in table}
    recs, truth = [], []
    for i in rows:
        u = seqs_prev.user_ids[i]
        row = by_key[(keys[u].csid, keys[u].recent)]
        recs.append(row["aligned"] or row["candidates"])
        truth.append({"pref": {item_cat[j] for j in seqs_prev.long_items[i]},
                      "hist": {c for _, c in history.get(u, [])}, "recent": set(seqs_prev.c_short[i]),
                      "clicked": {c for _, c in clicks[u]}})
    counts = inter.events.loc[inter.events["event"] == "click", "item_id"].map(inter.item_category).value_counts()
    tail = long_tail_categories({c: int(counts.get(c, 0)) for c in inter.categories})
    metrics = evaluate_users(recs, truth, n_categories=len(inter.categories), tail=tail, ks=(1, 5, 10))
    metrics = {f"val/{k}": float(v) for k, v in metrics.items()}
    metrics["val/users"] = len(rows)
    return metrics


# ---------------------------------------------------------------------------------------------------- the cycle


def next_round(workdir: Path) -> tuple[int, int]:
    """(k, base): the round to run and the promoted round whose models it starts from."""
    state = read_state(workdir)
    finished = last_finished_round(workdir)
    base = state["promoted_round"] if state["promoted_round"] is not None else 0
    return (finished or 0) + 1, base


def run_cycle(cfg: Config, workdir: Path) -> CycleResult:
    """One co-evolution round; bootstraps round 0 first when it is missing. See the module docstring."""
    workdir = Path(workdir)
    with workdir_lock(workdir):
        device = setup_run(cfg)
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[f"time/{name}_s"] = round(now - clock, 2)
            clock = now

        if not any(r["round"] == 0 for r in read_state(workdir)["rounds"]):
            from loops.bootstrap import run_bootstrap

            boot = run_bootstrap(cfg, workdir)
            record_round(workdir, 0, "bootstrapped", metrics=_flat_metrics(boot), fingerprint=cfg.fingerprint())
            lap("bootstrap")
        k, base = next_round(workdir)
        inter = load_data(cfg)
        start, end = cutoff(cfg, inter, k - 1), cutoff(cfg, inter, k)
        if start >= timeline(inter)[1]:
            log.warning("cycle: no new events after round %d (the replay schedule reached the end of the data)",
                        k - 1)
            return CycleResult(round=k - 1, promoted=False, reason="no new events")
        log.info("round %d: events in [%d, %d), starting from round %d's models", k, start, end, base)
        try:
            result = _run_round(cfg, workdir, k, base, inter, start, end, device, timings, lap)
        except Exception as exc:
            record_round(workdir, k, "failed", reason=f"{type(exc).__name__}: {exc}"[:500])
            log.error("round %d failed; round %s stays promoted", k, read_state(workdir)["promoted_round"])
            raise
        return result


def _run_round(cfg: Config, workdir: Path, k: int, base: int, inter, start: int, end: int, device: str,
               timings: dict[str, float], lap) -> CycleResult:
    from coea.data.sequences import build_sequences
    from coea.dsie import assign_csids, load_dsie, run_dsie

    rp = round_dir(workdir, k)
    window = write_data_stage(cfg, rp, inter, start=start, end=end)
    seqs = build_sequences(inter, cfg.data, cutoff=end)
    seqs_prev = build_sequences(inter, cfg.data, cutoff=start)
    every = cfg.cycle.dsie_refresh_every
    if every and k % every == 0 and not stage_done(rp, "dsie"):
        run_dsie(cfg, rp, inter, seqs)
    dsie = load_dsie(latest_dsie_dir(workdir, k))
    csids, csids_prev = assign_csids(dsie, seqs), assign_csids(dsie, seqs_prev)
    portraits = dsie.portraits
    lap("data_dsie")

    keys_by_user = user_keys(seqs, csids)
    keys = sorted({(kk.csid, kk.recent) for kk in keys_by_user.values()})
    write_users_table(rp, keys_by_user)
    table = stage_candidates(cfg, workdir, k, base, [Key(c, r) for c, r in keys], portraits, inter.categories,
                             device)
    lap("candidates")
    kv = stage_kv(workdir, k, table)
    lap("kv")

    active = sorted(set(inter.events.loc[(inter.events["timestamp"] >= start) & (inter.events["timestamp"] < end),
                                         "user_id"]))
    train_users = [u for u in active if not is_validation_user(u)]
    sample = sample_users(train_users, cfg.pco.sample_fraction, cfg.run.seed + k)
    pairs = preference_pairs(cfg, table, keys_by_user, sample, portraits)
    pco = stage_pco(cfg, workdir, k, pairs)
    lap("pco")
    rel = stage_relevance(cfg, workdir, k, base, inter, seqs_prev, csids_prev, portraits, start, end)
    lap("relevance")

    new_models = load_models(cfg, workdir, k, k, device)
    val = validation_metrics(cfg, new_models, inter, seqs_prev, csids_prev, portraits, start, end)
    lap("validation")

    metrics = {"round": k, **val, **_prefixed("pco", pco.get("summary", {})), **_prefixed("relevance", rel),
               "keys/count": len(keys), "keys/users": len(keys_by_user),
               "keys/aligned": int(table["aligned"].map(len).sum()), "pco/pairs": len(pairs),
               "pco/alerts": len(pco.get("alerts", [])),
               "data/events": window["events"], "data/users": window["users"], "kv/entries": kv["count"],
               **timings}
    promoted, reason = guardrail(cfg, workdir, metrics)
    if promoted:
        promote(workdir, k, keep=cfg.cycle.keep_rounds)
    record_round(workdir, k, "promoted" if promoted else "refused", reason=reason, metrics=metrics,
                 fingerprint=cfg.fingerprint())
    write_json(rp / "metrics.json", metrics)
    track(cfg, workdir, k, metrics)
    log.info("round %d %s%s: %s", k, "promoted" if promoted else "NOT promoted", f" ({reason})" if reason else "",
             {m: metrics[m] for m in ("val/C-H@1", "val/NCP@5", "keys/count", "keys/aligned") if m in metrics})
    return CycleResult(round=k, promoted=promoted, reason=reason, metrics=metrics, timings=timings)


def guardrail(cfg: Config, workdir: Path, metrics: dict[str, Any]) -> tuple[bool, str]:
    """Refuse promotion when validation C-H@1 drops more than ``cycle.guardrail_margin`` below the promoted round's."""
    state = read_state(workdir)
    promoted = [r for r in state["rounds"] if r["round"] == state["promoted_round"]]
    new = metrics.get("val/C-H@1")
    old = promoted[0]["metrics"].get("val/C-H@1") if promoted else None
    if new is None or old is None:
        return True, ""
    n = metrics.get("val/users", 0)
    if n < cfg.cycle.guardrail_min_users:
        log.warning("guardrail: only %d validation users (< cycle.guardrail_min_users = %d); promoting without "
                    "judging C-H@1 %.4f against %.4f", n, cfg.cycle.guardrail_min_users, new, old)
        return True, ""
    if new < old - cfg.cycle.guardrail_margin:
        return False, (f"guardrail: validation C-H@1 {new:.4f} is more than {cfg.cycle.guardrail_margin} below "
                       f"round {state['promoted_round']}'s {old:.4f}")
    return True, ""


def promote(workdir: Path, k: int, *, keep: int) -> None:
    """KV pointer first (what serving reads), then the ``current`` link; then expire old KV versions."""
    from storage.kv import KVStore

    store = KVStore(workdir)
    fault_point("promote:before_kv")
    store.promote(k)
    fault_point("promote:before_link")
    promote_link(workdir, k)
    store.expire(keep)


def rollback(workdir: Path, to: int) -> None:
    """Promote an earlier round that is still kept (KV version and models)."""
    from storage.kv import KVStore

    with workdir_lock(workdir):
        KVStore(workdir).rollback(to)
        promote_link(workdir, to)
        state = read_state(workdir)
        state["promoted_round"] = to
        state.setdefault("rollbacks", []).append({"to": to, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        from loops.state import write_state

        write_state(workdir, state)


def lookup(workdir: Path, *, user: str | None = None, csid: str | None = None,
           recent: list[str] | None = None) -> dict[str, Any]:
    """What serving returns: by (CSID, recent categories), or by user through the promoted round's tables."""
    from storage.keys import DEFAULT_CSID, canonical_recent
    from storage.kv import KVReader

    if user is not None:
        csid, recent = _user_state(workdir, user)
    assert csid is not None
    with KVReader(workdir) as reader:
        value = reader.get(csid, recent or [])
        return {"round": reader.round, "csid": csid, "recent": list(canonical_recent(recent or [])),
                "fallback": csid == DEFAULT_CSID, "categories": value}


def write_users_table(rp: Path, keys_by_user: dict[str, Key]) -> None:
    """``rounds/NNN/users.parquet``: user_id, csid, recent (C'_short) -- what ``coea lookup --user`` reads."""
    table = pd.DataFrame({"user_id": list(keys_by_user), "csid": [k.csid for k in keys_by_user.values()],
                          "recent": [list(k.recent) for k in keys_by_user.values()]})
    tmp = rp / ".users.parquet.tmp"
    table.to_parquet(tmp, index=False)
    tmp.replace(rp / "users.parquet")


def _user_state(workdir: Path, user: str) -> tuple[str, list[str]]:
    """A user's CSID and C'_short at the promoted round (unknown users -> default CSID, no recent categories)."""
    from storage.keys import DEFAULT_CSID

    current = Path(workdir) / "current"
    path = current / "users.parquet"
    if path.exists():
        users = pd.read_parquet(path)
        hit = users[users["user_id"] == str(user)]
        if len(hit):
            return str(hit.iloc[0]["csid"]), list(hit.iloc[0]["recent"])
    return DEFAULT_CSID, []


def _prefixed(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flat_metrics(result: Any) -> dict[str, Any]:
    import dataclasses

    d = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else dict(result or {})
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def track(cfg: Config, workdir: Path, k: int, metrics: dict[str, Any]) -> None:
    """W&B (or local) run for this cycle, plus the across-rounds plot in ``rounds/NNN/metrics.png``."""
    from coea.tracking import make_tracker, plot_rounds

    tracker = make_tracker(cfg.tracking, workdir, k)
    try:
        tracker.log({m: v for m, v in metrics.items() if m != "round"}, round=k)
        pco = round_dir(workdir, k) / "pco" / "metrics.json"
        for alert in (read_json(pco).get("alerts", []) if pco.exists() else []):
            tracker.alert(f"coea round {k}: DPO alert", str(alert))
    finally:
        tracker.finish()
    history = [dict(r["metrics"], round=r["round"]) for r in read_state(workdir)["rounds"] if r["metrics"]
               and r["round"] > 0]
    plot_rounds(history, round_dir(workdir, k) / "metrics.png")


def stage_relevance(cfg: Config, workdir: Path, k: int, base: int, inter, seqs_prev, csids_prev: dict[str, str],
                    portraits: dict[str, str], start: int, end: int) -> dict[str, Any]:
    """``rounds/NNN/relevance``: continue the promoted Relevance LLM on D_k's new clicks (validation users held out)."""
    from coea.data.sequences import click_categories_by_user, exposures_by_user
    from loops.reward import relevance_pairs
    from storage.keys import DEFAULT_CSID

    rp = round_dir(workdir, k)
    if stage_done(rp, "relevance"):
        return read_json(rp / "relevance" / "metrics.json")
    clicks = click_categories_by_user(inter, start=start, end=end)
    exposures = exposures_by_user(inter, start=start, end=end)
    history = click_categories_by_user(inter, end=start)
    portrait_of = {u: portraits.get(csids_prev.get(u, DEFAULT_CSID)) or portraits.get(DEFAULT_CSID, "")
                   for u in clicks}
    users = sorted(clicks)
    train = [u for u in users if not is_validation_user(u)]
    val = [u for u in users if is_validation_user(u)]
    pairs = relevance_pairs(cfg, clicks, exposures, portrait_of, inter.categories, train, history=history,
                            seed=cfg.run.seed + k)
    val_pairs = relevance_pairs(cfg, clicks, exposures, portrait_of, inter.categories, val, history=history,
                                seed=cfg.run.seed + k + 1)
    if cfg.relevance.max_train_pairs and len(pairs) > cfg.relevance.max_train_pairs:
        rng = np.random.default_rng(cfg.run.seed + k)
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), cfg.relevance.max_train_pairs, replace=False))]
    with stage(rp, "relevance") as tmp:
        previous = relevance_model_dir(workdir, base)
        if pairs and cfg.relevance.update_epochs > 0:
            res = _update_relevance(cfg, workdir, previous, pairs, val_pairs[:2000], tmp)
            metrics = {"accuracy": res.accuracy, "train_pairs": res.train_pairs,
                       "loss": res.loss_curve[-1] if res.loss_curve else float("nan"), "eval_pairs": len(val_pairs)}
        else:  # nothing new to learn from: carry the previous model forward unchanged
            import shutil

            shutil.copytree(previous, tmp / "model")
            metrics = {"train_pairs": 0}
        write_json(tmp / "metrics.json", metrics)
        write_manifest(tmp, cfg)
    return metrics


def _update_relevance(cfg: Config, workdir: Path, previous: Path, pairs: list[dict[str, str]],
                      eval_pairs: list[dict[str, str]], out_dir: Path):
    """Continue ``previous`` on ``pairs`` for ``relevance.update_epochs``, here or on the (num_processes) workers."""
    if trains_in_workers(cfg):
        from loops.workers import launch_reward

        return launch_reward(cfg, previous, tokenizer_path(workdir), pairs, out_dir,
                             epochs=cfg.relevance.update_epochs, eval_pairs=eval_pairs)
    from coea.backbones import load_tokenizer
    from loops.reward import train_reward

    tok = load_tokenizer(tokenizer_path(workdir), cfg)
    return train_reward(cfg, previous, tok, pairs, out_dir, epochs=cfg.relevance.update_epochs,
                        eval_pairs=eval_pairs)

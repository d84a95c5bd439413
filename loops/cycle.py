"""One co-evolution cycle (round k), top to bottom. See docs/cycle.md.

    window      events since round k-1, up to the watermark (coea/clock.py, coea/round_data.py: live log or replay)
    dsie        refreshed every ``cycle.dsie_refresh_every`` rounds, reused otherwise
    candidates  every unique key (CSID, canonical C'_short) at the round's cut-off -> Novelty LLM (the base's)
                -> Relevance LLM scores -> C_align (s_i > tau_align)
    kv          staged, verified KV table for round k
    pco         uniform sample of D_k -> (chosen, rejected) = (max, min) Relevance score (Eq. 15)
                -> DPO + alpha * KL, policy and reference = the promoted round's Novelty LLM (Eq. 16-17)
    relevance   the promoted round's Relevance LLM updated on the new clicks of D_k (Eq. 12-14)
    validation  held-out users: state at the previous cut-off, round-k models, truth = their clicks in D_k
    promote     guardrail on validation C-H@1, then KV pointer + ``current`` link + state.json (loops/serving.py)
    retention   keep ``cycle.keep_rounds`` finished rounds (and what later rounds need), expire the rest whole

Every model of round k starts from the *promoted* round ("the base", recorded as ``base`` in state.json and
``cycle/base_round`` in metrics.json), never from a refused round k-1. Each attempt is counted in state.json; a
failing one writes its traceback to ``rounds/NNN/failure-<attempt>.log`` and the round is not retried after
``cycle.max_attempts`` (loops/state.py).

Each stage writes into ``rounds/NNN/<stage>`` through :func:`coea.workdir.stage`, so a rerun after a crash skips
what finished. Validation users (a stable hash of the user id) never contribute training signal. With
``cycle.num_processes > 1`` candidate scoring, DPO and the Relevance update run on that many ``accelerate launch``
workers (loops/workers.py; training also with ``cycle.deepspeed`` on one GPU); this process keeps the lock, the
stages and promotion.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from coea.config import Config
from coea.console import banner, plural
from coea.data.partitions import utc
from coea.data.sequences import click_categories_by_user
from coea.dsie import assign_csids, load_dsie, run_dsie
from coea.inference import Key, Models, load_models, propose_and_score, user_keys
from coea.metrics import evaluate_users, long_tail_categories
from coea.round_data import RoundData, load_round, metrics_of
from coea.rounds import (
    base_model_path, is_validation_user, latest_dsie_dir, novelty_adapter, previous_csids, tokenizer_path,
)
from coea.workdir import (
    fault_point, log_finished_stages, read_json, round_dir, setup_run, stage, stage_done, write_json,
    write_manifest,
)
from loops.bootstrap import grow_backbone, run_bootstrap
from loops.dpo import run_dpo
from loops.guardrail import hits_at_1, judge, paired_stats
from loops.launch import scores_in_workers, trains_in_workers
from loops.pairs import preference_dataset
from loops.pco import dk_records, preference_pairs, sample_records
from loops.relevance_update import stage_relevance
from loops.retention import apply_retention, discard_unfinished
from loops.serving import promote, write_users_table
from loops.state import (
    FINISHED, check_attempts, last_finished_round, read_state, record_round, round_attempt, round_entry,
    workdir_lock,
)
from loops.track import track_round
from loops.workers import launch_candidates, launch_dpo
from storage.keys import kv_key
from storage.kv import KVStore, encode_value

log = logging.getLogger("coea.cycle")


@dataclass
class CycleResult:
    """What one ``run_cycle`` did. ``status``: ``promoted`` | ``refused`` (guardrail) | ``nothing_new`` (no round
    ran; ``round`` is then the newest finished one). The CLI maps it to exit codes 0 / 4 / 0 (coea/errors.py)."""

    round: int
    promoted: bool
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    status: str = ""  # "promoted" | "refused" | "nothing_new" (no round ran: the log held nothing new)
    base: int | None = None  # the promoted round whose models this round started from
    window: dict[str, Any] = field(default_factory=dict)  # the round's data/window.json (UTC bounds, counts, late)

    def __post_init__(self) -> None:
        if not self.status:
            self.status = "promoted" if self.promoted else "refused"


def run_dsie_stage(cfg: Config, workdir: Path, *, until: int | None = None) -> dict[str, Any]:
    """``coea dsie``: DSIE on the round-0 share of the timeline into ``rounds/000/dsie``; returns its report."""
    setup_run(cfg)
    rp = round_dir(workdir, 0)
    if stage_done(rp, "dsie"):
        log.info("dsie: already finished in %s", rp / "dsie")
        return read_json(rp / "dsie" / "report.json")
    t0 = time.perf_counter()
    data = load_round(cfg, workdir, 0, until=until)
    result = run_dsie(cfg, rp, data.inter, data.seqs)
    report = dict(result.report)
    report["wall_time_total_s"] = round(time.perf_counter() - t0, 2)
    write_json(rp / "dsie" / "stage_time.json", {"wall_time_total_s": report["wall_time_total_s"]})
    return report


# ---------------------------------------------------------------------------------------------- candidates + KV


def stage_candidates(cfg: Config, workdir: Path, k: int, base: int, keys: list[Key], portraits: dict[str, str],
                     categories: list[str], device: str, *, relevance_round: int | None = None) -> pd.DataFrame:
    """``rounds/NNN/candidates``: one row per unique key with candidates, Relevance scores and C_align.

    Proposed by round ``base``'s Novelty LLM and scored by round ``relevance_round``'s Relevance LLM (the cycle
    passes k: the model its relevance stage kept; default ``base``), in this process or, with ``cycle.num_processes > 1``, sharded over that many
    workers (loops/workers.py): the same rows either way (scores to float32 rounding, docs/cycle.md).
    """
    rp = round_dir(workdir, k)
    if not stage_done(rp, "candidates"):
        with stage(rp, "candidates") as tmp:
            t0 = time.perf_counter()
            rel = base if relevance_round is None else relevance_round
            banner("candidates", plural(len(keys), "key"), f"Novelty top-{cfg.novelty.num_candidates} from round "
                   f"{base}'s model, Relevance scores from round {rel}'s")
            if scores_in_workers(cfg):
                rows = launch_candidates(cfg, workdir, base, rel, keys, portraits, categories, tmp)
            else:
                rows = propose_and_score(cfg, load_models(cfg, workdir, base, rel, device), keys, portraits,
                                         categories)
            table = pd.DataFrame(rows)
            table.to_parquet(tmp / "candidates.parquet", index=False)
            summary = {"keys": len(keys), "aligned": int(table["aligned"].map(len).sum()),
                       "keys_with_aligned": int((table["aligned"].map(len) > 0).sum()),
                       "wall_time_s": round(time.perf_counter() - t0, 2)}
            write_json(tmp / "summary.json", summary)
            log.info("candidates: %d of %d keys have aligned categories (%.0f%%)", summary["keys_with_aligned"],
                     len(keys), 100 * summary["keys_with_aligned"] / max(len(keys), 1))
    return pd.read_parquet(rp / "candidates" / "candidates.parquet")


def stage_kv(workdir: Path, k: int, table: pd.DataFrame) -> dict[str, Any]:
    """Stage and verify the round's KV table (storage/ owns the bytes; see docs/storage.md)."""
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


def sample_pairs(cfg: Config, workdir: Path, k: int, base: int, data: RoundData, csids: dict[str, str],
                 portraits: dict[str, str], table: pd.DataFrame, device: str) -> tuple[list[dict], dict[str, Any]]:
    """Eq. 15's sample of D_k and its preference pairs (loops/pco.py), scored by round k's own Relevance LLM.

    Keys of sampled records that the candidates table (the users' states at the cut-off) already holds reuse its
    rows, which round k's models scored; the others are proposed and scored here with the same models. Returns the
    pairs and the ``pco/*`` sample metrics.
    """
    inter = data.inter
    clicks = click_categories_by_user(inter, end=data.end)
    users = sorted(u for u in set(clicks) | set(data.history) if not is_validation_user(u))
    records = dk_records(clicks, data.history, csids, users, cfg.data.short_k, data.start,
                         known=data.hist_categories)
    sample = sample_records(records, cfg.pco.sample_fraction, cfg.run.seed + k)
    scored = {(r.csid, tuple(r.recent)): {"candidates": list(r.candidates), "scores": list(r.scores)}
              for r in table.itertuples()}
    missing = sorted({(r.key.csid, tuple(r.key.recent)) for r in sample} - set(scored))
    if missing:
        keys = [Key(c, r) for c, r in missing]
        if scores_in_workers(cfg):
            rows = launch_candidates(cfg, workdir, base, k, keys, portraits, inter.categories,
                                     round_dir(workdir, k) / "pco-keys")
        else:
            rows = propose_and_score(cfg, load_models(cfg, workdir, base, k, device), keys, portraits,
                                     inter.categories)
        scored.update({(r["csid"], tuple(r["recent"])): r for r in rows})
    pairs = preference_pairs(cfg, scored, sample, portraits)
    info = {"pco/dk_records": len(records), "pco/sampled_records": len(sample),
            "pco/sampled_window_share": float(np.mean([r.in_window for r in sample])) if sample else float("nan"),
            "pco/keys_scored": len(missing)}
    log.info("pco: D_k holds %d records; a uniform %.4g gives %d, %d pairs (%d keys scored for the sample)",
             len(records), cfg.pco.sample_fraction, len(sample), len(pairs), len(missing))
    return pairs, info


def _carry_adapter(cfg: Config, tmp: Path, previous: Path, base: int, summary: dict[str, float],
                   note: dict[str, Any], *, pairs: int, reference: str | None) -> dict[str, Any]:
    """A pco stage that trains nothing: the base round's adapter copied into the stage, with why in ``note``."""
    import shutil

    shutil.copytree(previous, tmp / "adapter")
    write_json(tmp / "metrics.json", {"summary": summary, "history": [], "alerts": [], **note,
                                      "policy_start": str(previous)})
    write_manifest(tmp, cfg, {"pairs": pairs, "alerts": [], "base_round": base, "policy_start": str(previous),
                              "reference": reference, **note})
    return read_json(tmp / "metrics.json")  # the stage commits on leaving the block


def stage_pco(cfg: Config, workdir: Path, k: int, pairs: list[dict[str, str]], base: int,
              sample: dict[str, Any] | None = None) -> dict[str, Any]:
    """``rounds/NNN/pco``: DPO + alpha * KL of the Novelty LLM, starting from the promoted round ``base``.

    The policy starts from round ``base``'s adapter; the reference is the same adapter (``pco.anchor: previous``:
    "the previous round" is the previous *promoted* round, never a refused one) or round 0's (``round0``).

    No preference pairs (every sampled key's candidates scored alike, e.g. after a calibration with slope 0, or an
    empty sample) is a round with nothing to learn from, not a failure: the base round's adapter is carried
    forward unchanged (``summary.skipped``), as the Relevance update does without new clicks. Failing instead
    would repeat on every retry of the same window and stop the daily cycle at ``cycle.max_attempts``.

    ``pco.epochs: 0`` trains nothing: the stage holds a copy of the base's adapter (a frozen Novelty LLM).
    ``sample`` (the ``pco/*`` figures of Eq. 15's sample, :func:`sample_pairs`) is kept in metrics.json.
    """
    rp = round_dir(workdir, k)
    if stage_done(rp, "pco"):
        return read_json(rp / "pco" / "metrics.json")
    with stage(rp, "pco") as tmp:
        write_json(tmp / "pairs.json", pairs)
        previous = novelty_adapter(workdir, base)
        anchor = novelty_adapter(workdir, 0) if cfg.pco.anchor == "round0" else None
        if cfg.pco.epochs == 0:  # no DPO: a frozen Novelty LLM, the base's adapter carried forward byte for byte
            return _carry_adapter(cfg, tmp, previous, base, {"steps": 0.0, "n_pairs": float(len(pairs))},
                                  {"frozen": True, "sample": sample or {}}, pairs=len(pairs), reference=None)
        if not pairs:
            why = "no preference pairs in the sample (every sampled key's candidates scored alike, or no key)"
            log.warning("pco: round %d: %s; the Novelty adapter of round %d is carried forward unchanged", k, why,
                        base)
            return _carry_adapter(cfg, tmp, previous, base, {"n_pairs": 0, "skipped": 1},
                                  {"skipped": why, "sample": sample or {}}, pairs=0, reference=str(anchor or previous))
        if trains_in_workers(cfg):
            result = launch_dpo(cfg, base_model_path(cfg, workdir), previous, anchor, tokenizer_path(workdir),
                                tmp / "pairs.json", tmp, seed=cfg.run.seed + k)
        else:
            result = run_dpo(cfg.pco, cfg.lora, base_model_path(cfg, workdir), previous, anchor,
                             str(tokenizer_path(workdir)), preference_dataset(pairs), tmp, seed=cfg.run.seed + k,
                             dtype=cfg.backbone.dtype, deepspeed=cfg.cycle.deepspeed)
        written = read_json(tmp / "metrics.json")
        write_json(tmp / "metrics.json", {**written, "sample": sample or {}})
        # DpoResult.alerts are "[kind] step N: message" lines, kept whole.
        write_manifest(tmp, cfg, {"pairs": len(pairs), "alerts": list(result.alerts), "base_round": base,
                                  "policy_start": str(previous), "reference": str(anchor or previous)})
    return read_json(rp / "pco" / "metrics.json")


# ------------------------------------------------------------------------------------------------ validation


def validation_metrics(cfg: Config, models: Models, inter, seqs_prev, csids_prev: dict[str, str],
                       portraits: dict[str, str], start: int, end: int,
                       popularity: dict[str, int] | None = None,
                       hist: dict[str, set[str]] | None = None,
                       base_models: Models | None = None) -> dict[str, float]:
    """Held-out users: lists from their state at the previous cut-off with the round-k models; truth = D_k clicks.

    C_u^pref = categories of I_long at the previous cut-off; C_u^hist = every category the user clicked before it
    (App. A.4; ``val/NCP-recent@K`` is the variant against C'_short); clicked = categories the user clicked in
    [start, end). Validation users never contribute training signal to the cycle. ``hist`` (user -> categories
    clicked before ``start``; the round's sequence state has them, coea/round_data.py) defaults to ``inter``'s
    clicks before ``start``. The long tail comes from ``popularity`` (clicks per category before ``start``;
    ``None``: the clicks in ``inter``). With ``base_models`` (the promoted round's) the same users' lists from
    those models too, and the paired C-H@1 figures the guardrail judges (``guardrail/*``, loops/guardrail.py).
    """
    clicks = click_categories_by_user(inter, start=start, end=end)
    if hist is None:
        hist = {u: {c for _, c in cl} for u, cl in click_categories_by_user(inter, end=start).items()}
    category_of = inter.item_category
    item_cat = {j + 1: category_of.get(i) for j, i in enumerate(seqs_prev.item_vocab)}
    rows = [i for i, u in enumerate(seqs_prev.user_ids) if is_validation_user(u) and u in clicks]
    if not rows:
        return {}
    banner("validation", plural(len(rows), "held-out user"), "round-k models, truth = their clicks in the window")
    keys = user_keys(seqs_prev, csids_prev)
    uniq = sorted({(keys[seqs_prev.user_ids[i]].csid, keys[seqs_prev.user_ids[i]].recent) for i in rows})
    drop = {seqs_prev.user_ids[i]: set(hist.get(seqs_prev.user_ids[i], ())) for i in rows} \
        if cfg.novelty.exclude == "history" else {}

    def lists(m: Models) -> list[list[str]]:
        table = propose_and_score(cfg, m, [Key(c, r) for c, r in uniq], portraits, inter.categories)
        by_key = {(r["csid"], tuple(r["recent"])): r for r in table}
        out = []
        for u in (seqs_prev.user_ids[i] for i in rows):
            row = by_key[(keys[u].csid, keys[u].recent)]
            aligned = [c for c in row["aligned"] if c not in drop.get(u, ())]  # novelty.exclude: history
            out.append(aligned or [c for c in row["candidates"] if c not in drop.get(u, ())])
        return out

    recs, truth = lists(models), []
    for i in rows:
        u = seqs_prev.user_ids[i]
        truth.append({"pref": {item_cat[j] for j in seqs_prev.long_items[i]},
                      "hist": set(hist.get(u, ())), "recent": set(seqs_prev.c_short[i]),
                      "clicked": {c for _, c in clicks[u]}})
    counts = popularity if popularity is not None else \
        inter.events.loc[inter.events["event"] == "click", "item_id"].map(inter.item_category).value_counts()
    tail = long_tail_categories({c: int(counts.get(c, 0)) for c in inter.categories})
    metrics = evaluate_users(recs, truth, n_categories=len(inter.categories), tail=tail, ks=(1, 5, 10))
    metrics = {f"val/{k}": float(v) for k, v in metrics.items()}
    metrics["val/users"] = len(rows)
    if base_models is not None:
        new_hits, base_hits = hits_at_1(recs, truth), hits_at_1(lists(base_models), truth)
        metrics.update(paired_stats(new_hits, base_hits))
        metrics["guardrail/hits"] = {"users": [seqs_prev.user_ids[i] for i in rows], "new": new_hits,
                                     "base": base_hits}  # popped by the cycle into rounds/NNN/validation_hits.json
    return metrics


# ---------------------------------------------------------------------------------------------------- the cycle


def next_round(workdir: Path) -> tuple[int, int]:
    """(k, base): the round to run and the promoted round whose models it starts from.

    k follows the newest finished round (promoted or refused: a refused round keeps its number); base is the
    round served now (after ``coea rollback --to J``, J), or round 0 before any promotion.
    """
    state = read_state(workdir)
    finished = last_finished_round(workdir)
    base = state["promoted_round"] if state["promoted_round"] is not None else 0
    return (finished or 0) + 1, base


def run_cycle(cfg: Config, workdir: Path, *, until: int | None = None) -> CycleResult:
    """One co-evolution round; bootstraps round 0 first when it is missing. See the module docstring.

    ``until`` (unix seconds) sets the watermark explicitly (``coea cycle --until``; docs/cycle.md, "The clock").
    A log with nothing new after the previous round returns ``status == "nothing_new"`` and runs no round.
    """
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

        if not any(r["round"] == 0 and r["status"] in FINISHED for r in read_state(workdir)["rounds"]):
            with round_attempt(workdir, 0, max_attempts=cfg.cycle.max_attempts, context=_context(cfg)):
                boot = run_bootstrap(cfg, workdir, until=until)
            record_round(workdir, 0, "bootstrapped", metrics=_flat_metrics(boot), fingerprint=cfg.fingerprint())
            lap("bootstrap")
        k, base = next_round(workdir)
        check_attempts(workdir, k, cfg.cycle.max_attempts)  # before loading data: exit 5 costs nothing
        _restart_if_base_changed(workdir, k, base)
        # Outside the attempt: "nothing new" is not an attempt, and load_round commits nothing until it has a window.
        data = load_round(cfg, workdir, k, until=until)
        if data.status == "nothing_new":
            return CycleResult(round=k - 1, promoted=False, reason=data.message, status="nothing_new", base=base,
                               window={"start_utc": utc(data.start), "end_utc": utc(data.end)})
        log.info("round %d: events in [%s, %s), starting from round %d's models", k, utc(data.start),
                 utc(data.end), base)
        with round_attempt(workdir, k, max_attempts=cfg.cycle.max_attempts, base=base,
                           context=_context(cfg, start=data.start, end=data.end)) as attempt:
            attempt.set_window(data.start, data.end)
            log_finished_stages(round_dir(workdir, k), f"round {k}", extra={"kv": _kv_staged(workdir, k)},
                                this_run=("data",) if data.fresh else ())
            result = _run_round(cfg, workdir, k, base, data, device, timings, lap)
        _retain(cfg, workdir)
        return result


def _restart_if_base_changed(workdir: Path, k: int, base: int) -> None:
    """An unfinished round whose finished stages came from another base (a rollback since) starts over.

    Its candidates and KV table were scored by the old base's models; mixing them with DPO and Relevance updates
    from the new base would build round k on two different rounds.
    """
    entry = round_entry(read_state(workdir), k)
    if entry is None or entry["status"] in FINISHED or entry.get("base") in (None, base):
        return
    log.warning("round %d: its earlier attempts started from round %s, the promoted round is now %d (rollback); "
                "starting round %d over", k, entry["base"], base, k)
    discard_unfinished(workdir, k)


def _context(cfg: Config, **window: int | None) -> dict[str, Any]:
    """Lines at the top of a failure log: enough to reproduce the attempt."""
    import sys

    return {"command": " ".join(sys.argv), "config fingerprint": cfg.fingerprint(), "seed": cfg.run.seed,
            **{f"window {name}": value for name, value in window.items()}}


def _kv_staged(workdir: Path, k: int) -> bool:
    return k in KVStore(workdir).list_rounds()


def _retain(cfg: Config, workdir: Path) -> None:
    """Retention after a finished round; a failure here never fails the round (it is already recorded)."""
    try:
        apply_retention(workdir, cfg.cycle.keep_rounds)
    except Exception as exc:  # noqa: BLE001 - the next finished round retries the expiry
        log.warning("retention failed (the round stands; the next round retries): %s: %s", type(exc).__name__, exc)


def _run_round(cfg: Config, workdir: Path, k: int, base: int, data: RoundData, device: str,
               timings: dict[str, float], lap) -> CycleResult:
    rp = round_dir(workdir, k)
    inter, seqs, seqs_prev, start, end = data.inter, data.seqs, data.seqs_prev, data.start, data.end
    every = cfg.cycle.dsie_refresh_every
    if every and k % every == 0 and not stage_done(rp, "dsie"):
        run_dsie(cfg, rp, inter, seqs)
    dsie_dir = latest_dsie_dir(workdir, k)
    dsie = load_dsie(dsie_dir)
    # A user keeps last round's CSID unless DSIE was refreshed or their I_long / features changed (docs/data.md).
    csids_prev = previous_csids(workdir, k, dsie_dir)
    if csids_prev is None:
        csids_prev = assign_csids(dsie, seqs_prev)
    csids = assign_csids(dsie, seqs, previous=(seqs_prev, csids_prev))
    portraits = dsie.portraits
    lap("data_dsie")

    keys_by_user = user_keys(seqs, csids)
    keys = sorted({(kk.csid, kk.recent) for kk in keys_by_user.values()})
    write_users_table(rp, keys_by_user, list(inter.categories),
                      history=_history_at_end(data) if cfg.novelty.exclude == "history" else None)
    vocab = grow_backbone(cfg, workdir, k, inter.categories)  # new category names become tokens, then candidates
    # The Relevance LLM learns first, so that this round's scores (C_align and Eq. 15's pairs) are its own.
    rel = stage_relevance(cfg, workdir, k, base, inter, seqs_prev, csids_prev, portraits, start, end,
                          history=data.history, known=data.hist_categories, popularity=data.category_clicks)
    lap("relevance")
    table = stage_candidates(cfg, workdir, k, base, [Key(c, r) for c, r in keys], portraits, inter.categories,
                             device, relevance_round=k)
    lap("candidates")
    kv = stage_kv(workdir, k, table)
    lap("kv")

    sample_info: dict[str, Any] = {}
    if stage_done(rp, "pco"):
        pairs = read_json(rp / "pco" / "pairs.json")
    else:
        pairs, sample_info = sample_pairs(cfg, workdir, k, base, data, csids, portraits, table, device)
    pco = stage_pco(cfg, workdir, k, pairs, base, sample_info)
    lap("pco")

    new_models = load_models(cfg, workdir, k, k, device)
    val = validation_metrics(cfg, new_models, inter, seqs_prev, csids_prev, portraits, start, end,
                             popularity=data.category_clicks, hist=data.hist_categories,
                             base_models=load_models(cfg, workdir, base, base, device))
    hits = val.pop("guardrail/hits", None)
    if hits:  # per-user C-H@1 of both rounds' models: what the guardrail judged, kept for audits
        write_json(rp / "validation_hits.json", hits)
    lap("validation")

    metrics = {"round": k, **val, **_prefixed("pco", pco.get("summary", {})), **_prefixed("relevance", rel),
               **{m: v for m, v in pco.get("sample", {}).items()},
               "keys/count": len(keys), "keys/users": len(keys_by_user),
               "keys/aligned": int(table["aligned"].map(len).sum()), "pco/pairs": len(pairs),
               "pco/alerts": len(pco.get("alerts", [])), **metrics_of(data.window), "kv/entries": kv["count"],
               "cycle/base_round": base, **vocab, **timings}
    promoted, reason = guardrail(cfg, workdir, metrics)
    if promoted:
        promote(workdir, k)
    record_round(workdir, k, "promoted" if promoted else "refused", reason=reason, metrics=metrics,
                 fingerprint=cfg.fingerprint(), base=base)
    write_json(rp / "metrics.json", metrics)
    track(cfg, workdir, k, metrics, base=base)
    log.info("round %d %s%s: %s", k, "promoted" if promoted else "NOT promoted", f" ({reason})" if reason else "",
             ", ".join(f"{m} {metrics[m]:.3f}" if isinstance(metrics[m], float) else f"{m} {metrics[m]}"
                       for m in ("val/C-H@1", "val/NCP@5", "keys/count", "keys/aligned") if m in metrics))
    return CycleResult(round=k, promoted=promoted, reason=reason, metrics=metrics, timings=timings, base=base,
                       window=data.window)


def guardrail(cfg: Config, workdir: Path, metrics: dict[str, Any]) -> tuple[bool, str]:
    """Promote round k unless validation shows a real C-H@1 regression against the promoted round (loops/guardrail.py).

    Paired (the default in the cycle): both rounds' models on this round's validation users; refused when the mean
    per-user drop exceeds ``cycle.guardrail_margin`` *and* the exact one-sided sign test on the users whose hit
    changed is significant at ``cycle.guardrail_alpha``. Without paired figures: the unpaired rule against the promoted round's
    recorded C-H@1. Fewer than ``cycle.guardrail_min_users`` validation users: promoted with a warning.
    """
    state = read_state(workdir)
    promoted = [r for r in state["rounds"] if r["round"] == state["promoted_round"]]
    old = promoted[0]["metrics"].get("val/C-H@1") if promoted else None
    return judge(metrics, old, state["promoted_round"] if promoted else 0, margin=cfg.cycle.guardrail_margin,
                 alpha=cfg.cycle.guardrail_alpha, min_users=cfg.cycle.guardrail_min_users)


def _history_at_end(data: RoundData) -> dict[str, set[str]]:
    """Every category each user clicked before the round's end: the carried state's plus the window's clicks."""
    out = {u: set(cs) for u, cs in data.hist_categories.items()}
    for u, cl in click_categories_by_user(data.inter, start=data.start, end=data.end).items():
        out.setdefault(u, set()).update(c for _, c in cl)
    return out


def _prefixed(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flat_metrics(result: Any) -> dict[str, Any]:
    import dataclasses

    d = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else dict(result or {})
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def track(cfg: Config, workdir: Path, k: int, metrics: dict[str, Any], *, base: int | None = None) -> None:
    """W&B (or local) run for this cycle, plus the across-rounds plot in ``rounds/NNN/metrics.png`` (loops/track.py)."""
    track_round(cfg, workdir, k, metrics, base=base)

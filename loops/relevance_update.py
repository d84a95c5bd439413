"""The cycle's Relevance update (Eq. 12-14 on D_k's new clicks) that does not forget. See docs/cycle.md.

    start     the promoted round's Relevance LLM (warm start; never a refused round's)
    data      the window's new clicks of training users (loops/reward.py relevance_pairs)
              + every pair of the promoted round's replay buffer (bounded: ``relevance.replay_pairs``)
    train     ``relevance.update_epochs`` at ``relevance.lr`` (loops/reward.py train_reward)
    judge     the trained and the promoted model on the same held-out pairs (the window's validation users):
              pairwise accuracy and calibration, overall and on probes of categories new to the user (a clicked
              new category against an unclicked new one, relevance_pairs ``new_only``), beside two trivial
              scorers (global category popularity, the user's own click share; coea.relevance.heldout_report)
    keep      the trained model, unless its held-out accuracy is below the promoted one's by more than
              ``relevance.keep_tolerance``: then the round keeps the promoted model and calibration
              (``relevance/kept_promoted`` = 1 and a warning say so)
    replay    the round's buffer = a uniform sample of ``relevance.replay_pairs`` from (promoted buffer + new pairs)
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from coea.backbones import load_relevance_model, load_tokenizer
from coea.config import Config
from coea.data.sequences import click_categories_by_user, exposures_by_user
from coea.relevance import CALIBRATION_FILE, heldout_report, load_calibration, pair_logits
from coea.rounds import base_model_path, is_validation_user, relevance_model_dir, tokenizer_path
from coea.workdir import read_json, round_dir, stage, stage_done, write_json, write_manifest
from loops.launch import trains_in_workers
from loops.reward import finish_calibration, relevance_pairs, train_reward
from loops.workers import launch_reward
from storage.keys import DEFAULT_CSID

log = logging.getLogger("coea.relevance_update")

REPLAY_FILE = "replay.jsonl"
MAX_EVAL_PAIRS = 2000


def replay_buffer(previous: list[dict], new: list[dict], cap: int, seed: int) -> list[dict]:
    """The next replay buffer: a uniform sample of at most ``cap`` pairs from ``previous + new`` (order kept).

    A pair from round j survives each later round with probability <= cap / (cap + new pairs), so old rounds fade
    geometrically while the buffer never holds more than ``cap``. ``cap = 0``: no replay.
    """
    pool = list(previous) + list(new)
    if cap <= 0:
        return []
    if len(pool) <= cap:
        return pool
    idx = np.random.default_rng(seed).choice(len(pool), size=cap, replace=False)
    return [pool[i] for i in sorted(idx)]


def read_replay(workdir: Path, k: int) -> list[dict]:
    """Round k's replay buffer (empty for a round written before replay existed)."""
    path = round_dir(workdir, k) / "relevance" / REPLAY_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_replay(stage_dir: Path, pairs: list[dict]) -> None:
    (Path(stage_dir) / REPLAY_FILE).write_text("".join(json.dumps(p) + "\n" for p in pairs))


def stage_relevance(cfg: Config, workdir: Path, k: int, base: int, inter, seqs_prev, csids_prev: dict[str, str],
                    portraits: dict[str, str], start: int, end: int,
                    history: dict[str, list[tuple[int, str]]] | None = None,
                    known: dict[str, set[str]] | None = None,
                    popularity: dict[str, int] | None = None) -> dict[str, Any]:
    """``rounds/NNN/relevance``: update the promoted Relevance LLM on D_k's new clicks; keep it only if not worse.

    Writes the kept model (adapter + score head over the round's base, or full weights; docs/llms.md), its
    calibration, the replay buffer and metrics.json. Returns the ``relevance/*`` metrics (module docstring; the
    ``heldout_*`` figures are the kept model's, ``promoted_accuracy`` the promoted one's on the same pairs).
    ``history`` (clicks before ``start``; the live clock passes the carried state's) defaults to ``inter``'s;
    ``known`` (every category a user clicked before ``start``) and ``popularity`` (clicks per category before
    ``start``) feed the new-to-user split and the popularity scorer.
    """
    rp = round_dir(workdir, k)
    if stage_done(rp, "relevance"):
        return read_json(rp / "relevance" / "metrics.json")
    clicks = click_categories_by_user(inter, start=start, end=end)
    exposures = exposures_by_user(inter, start=start, end=end)
    held = click_categories_by_user(inter, end=start)  # replay: the whole past; live: empty, the state has it
    for u, h in (history or {}).items():
        held.setdefault(u, h)
    if popularity is None:
        popularity = dict(Counter(c for cl in held.values() for _, c in cl))
    portrait_of = {u: portraits.get(csids_prev.get(u, DEFAULT_CSID)) or portraits.get(DEFAULT_CSID, "")
                   for u in clicks}
    users = sorted(clicks)
    train = [u for u in users if not is_validation_user(u)]
    val = [u for u in users if is_validation_user(u)]
    pairs = relevance_pairs(cfg, clicks, exposures, portrait_of, inter.categories, train, history=held,
                            seed=cfg.run.seed + k, known=known)
    val_pairs = relevance_pairs(cfg, clicks, exposures, portrait_of, inter.categories, val, history=held,
                                seed=cfg.run.seed + k + 1, known=known)[:MAX_EVAL_PAIRS]
    val_new = relevance_pairs(cfg, clicks, exposures, portrait_of, inter.categories, val, history=held,
                              seed=cfg.run.seed + k + 2, known=known, new_only=True)[:MAX_EVAL_PAIRS]
    if cfg.relevance.max_train_pairs and len(pairs) > cfg.relevance.max_train_pairs:
        rng = np.random.default_rng(cfg.run.seed + k)
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), cfg.relevance.max_train_pairs, replace=False))]
    replay = read_replay(workdir, base) if cfg.relevance.replay_pairs else []
    with stage(rp, "relevance") as tmp:
        previous = relevance_model_dir(workdir, base)
        metrics: dict[str, Any] = {"new_pairs": len(pairs), "replay_pairs": len(replay), "eval_pairs": len(val_pairs)}
        if pairs and cfg.relevance.update_epochs > 0:
            res = _update_relevance(cfg, workdir, previous, pairs + replay, val_pairs, tmp)
            metrics.update({"accuracy": res.accuracy, "train_pairs": res.train_pairs,
                            "loss": res.loss_curve[-1] if res.loss_curve else float("nan"),
                            **{m: v for m, v in res.calibration.items() if m != "fitted"}})
            judged = _judge(cfg, workdir, tmp / "model", previous, val_pairs, popularity, val_new)
            metrics.update(judged)
            if judged.get("kept_promoted"):
                shutil.rmtree(tmp / "model")
                shutil.copytree(previous, tmp / "model")
                (tmp / "calibration.json").unlink(missing_ok=True)  # the promoted round's is carried below
        else:  # nothing new to learn from: carry the previous model (and its calibration) forward unchanged
            shutil.copytree(previous, tmp / "model")
            metrics["train_pairs"] = 0
        metrics["calibration_fitted"] = int(finish_calibration(tmp, previous, base) == "fit")
        metrics["base_round"] = base
        write_replay(tmp, replay_buffer(replay, pairs, cfg.relevance.replay_pairs, cfg.run.seed + k))
        write_json(tmp / "metrics.json", metrics)
        write_manifest(tmp, cfg, {"base_round": base, "start_model": str(previous)})
    return metrics


def _judge(cfg: Config, workdir: Path, trained: Path, promoted: Path, val_pairs: list[dict],
           popularity: dict[str, int], val_new: list[dict] | None = None) -> dict[str, Any]:
    """Held-out report of the trained model (``heldout_*``) and the promoted one (``promoted_*``); keep or not.

    No held-out pairs: nothing to judge on, the trained model is kept and ``judged`` = 0 says so.
    """
    if not val_pairs:
        log.warning("relevance: no held-out pairs in this window; the updated model is kept unjudged")
        return {"judged": 0, "kept_promoted": 0}
    tok = load_tokenizer(tokenizer_path(workdir), cfg)
    base_model = base_model_path(cfg, workdir)
    # The trained model carries the promoted calibration when it fitted none (finish_calibration).
    trained_cal = trained if (trained.parent / CALIBRATION_FILE).exists() else promoted
    reports = {name: report_model(cfg, model_dir, cal_dir, tok, base_model, val_pairs, popularity, val_new)
               for name, model_dir, cal_dir in (("trained", trained, trained_cal),
                                                ("promoted", promoted, promoted))}
    new, old = reports["trained"]["accuracy"], reports["promoted"]["accuracy"]
    worse = new < old - cfg.relevance.keep_tolerance
    kept = reports["promoted"] if worse else reports["trained"]
    out: dict[str, Any] = {"judged": 1, "kept_promoted": int(worse), "trained_accuracy": new,
                           "promoted_accuracy": old, "trained_accuracy_new": reports["trained"]["accuracy_new"],
                           "promoted_accuracy_new": reports["promoted"]["accuracy_new"],
                           **{m if m.startswith("heldout_") else f"heldout_{m}": v for m, v in kept.items()}}
    if worse:
        log.warning("relevance: the updated model's held-out pairwise accuracy %.4f is below the promoted round's "
                    "%.4f (tolerance %g) on the same %d pairs; the round keeps the promoted Relevance LLM", new, old,
                    cfg.relevance.keep_tolerance, len(val_pairs))
    if not kept["beats_trivial"]:
        log.warning("relevance: the Relevance LLM (held-out accuracy %.4f) does not beat the trivial scorers "
                    "(category popularity %.4f, the user's click share %.4f) on %d held-out pairs",
                    kept["accuracy"], kept["popularity_accuracy"], kept["share_accuracy"], len(val_pairs))
    return out


def report_model(cfg: Config, model_dir: Path, calibration_of: Path, tokenizer, base_model: str | Path,
                 pairs: list[dict], popularity: dict[str, int], new_pairs: list[dict] | None = None) -> dict[str, float]:
    """:func:`coea.relevance.heldout_report` of the Relevance LLM in ``model_dir`` with ``calibration_of``'s
    calibration (a model directory; its ``../calibration.json``) on ``pairs``; the new-to-user figures on
    ``new_pairs`` (relevance_pairs ``new_only``) when given."""
    model = load_relevance_model(cfg, model_dir, base_model=base_model, tokenizer=tokenizer).eval()
    batch = cfg.relevance.per_device_batch_size * 4
    chosen, rejected = pair_logits(model, tokenizer, pairs, batch_size=batch)
    new = (new_pairs, *pair_logits(model, tokenizer, new_pairs, batch_size=batch)) if new_pairs else None
    return heldout_report(pairs, chosen, rejected, load_calibration(calibration_of), popularity, new)


def _update_relevance(cfg: Config, workdir: Path, previous: Path, pairs: list[dict[str, str]],
                      eval_pairs: list[dict[str, str]], out_dir: Path):
    """Continue ``previous`` on ``pairs`` for ``relevance.update_epochs``, here or on the (num_processes) workers.

    ``previous`` (an adapter or full weights) is loaded over the newest base model and tokenizer, which encode
    this round's catalogue (loops.bootstrap.grow_backbone ran before the relevance stage).
    """
    base_model = base_model_path(cfg, workdir)
    if trains_in_workers(cfg):
        return launch_reward(cfg, previous, tokenizer_path(workdir), pairs, out_dir,
                             epochs=cfg.relevance.update_epochs, eval_pairs=eval_pairs, base_model=base_model)
    tok = load_tokenizer(tokenizer_path(workdir), cfg)
    return train_reward(cfg, previous, tok, pairs, out_dir, epochs=cfg.relevance.update_epochs,
                        eval_pairs=eval_pairs, base_model=base_model)

"""Relevance LLM: Bradley-Terry reward model (Eq. 12-14) trained with trl's RewardTrainer.

Pairs (docs/llms.md): prompt = D_s + C'_short(t) (the user state before click t, rendered by the same function
inference uses: coea.prompts.relevance_prompt of coea.prompts.recent_at), c_pos = the category clicked at t, c_neg =
a category exposed but not clicked on the same day where exposures exist, otherwise sampled uniformly from
catalogue categories the user did not click that day; ``relevance.negatives_per_positive`` distinct negatives per
click (fewer when the pool is smaller).

On disk (docs/llms.md "Relevance model on disk"): with ``lora.enabled`` a round's Relevance LLM is its LoRA adapter
plus the fully trained score head over the shared base model (a few MB at 7B instead of a merged copy of the base);
without LoRA it is full weights. ``calibration.json`` beside it holds the round's Platt scaling.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coea.backbones import fit_to_tokenizer, is_adapter_dir, load_relevance_model, load_reward_model, lora_config
from coea.console import plural
from coea.prompts import click_sequence_text, recent_at, relevance_prompt
from coea.relevance import CALIBRATION_FILE, Calibration, calibrate, load_calibration, pair_logits
from loops.pairs import preference_dataset
from loops.trainer_log import reporting, round_of

log = logging.getLogger("coea.reward")
DAY = 86_400


@dataclass
class RewardResult:
    model_dir: Path
    loss_curve: list[float]
    train_pairs: int
    accuracy: float
    calibration: dict[str, Any] = field(default_factory=dict)  # coea.relevance.calibrate's metrics; fitted: bool


def relevance_pairs(cfg: Any, clicks: dict[str, list[tuple[int, str]]], exposures: dict[str, list[tuple[int, str]]],
                    portraits_by_user: dict[str, str], categories: list[str], users: list[str], *,
                    history: dict[str, list[tuple[int, str]]] | None = None, seed: int = 0,
                    known: dict[str, set[str]] | None = None, new_only: bool = False) -> list[dict[str, Any]]:
    """Preference records for the reward model (prompt "" + whole relevance texts, see loops/pairs.py).

    ``clicks`` / ``exposures`` are the window's events per user; ``history`` (optional) holds earlier clicks that
    supply the state (C'_short) of the window's first clicks. A click at position t >= 2 of the user's click
    history gives a pair (Eq. 11's prompt needs S_short(t-2:t-1)); its prompt is C'_short(t) = the canonical set of
    the last ``data.short_k`` clicked categories before it -- the text inference renders for that state. Each
    record carries ``user_id``, ``click`` (one id per click, shared by its negatives) and ``sequence`` (the last
    two clicks in click order -> the clicked category, coea.prompts.click_sequence_text: the embedded backbone's
    pretraining text, never a training or inference text of the Relevance LLM).

    Each record also names its categories and what the held-out report (coea.relevance.heldout_report) needs:
    ``pos`` / ``neg``; ``pos_new`` / ``neg_new`` (the category is new to the user: not among the categories they
    clicked before the click, ``known`` -- every category clicked before the window -- plus ``history`` and the
    window's earlier clicks); ``pos_share`` / ``neg_share`` (the category's share of those earlier clicks).

    ``new_only`` (held-out probes of what the Relevance filter judges): only clicks on a category new to the user
    give pairs, and their negatives are categories also new to the user that they did not click that day.
    """
    rng = np.random.default_rng(seed)
    short_k = cfg.data.short_k
    out = []
    n_clicks = 0
    for u in users:
        seq = clicks.get(u, [])
        held = [c for _, c in (history or {}).get(u, [])]
        past = held[-max(short_k, 2):]
        cats = past + [c for _, c in seq]
        offset = len(past)
        seen = set((known or {}).get(u, ())) | set(held)
        counts = Counter(held)
        by_day_clicks: dict[int, set[str]] = {}
        for ts, c in seq:
            by_day_clicks.setdefault(ts // DAY, set()).add(c)
        by_day_exp: dict[int, set[str]] = {}
        for ts, c in exposures.get(u, []):
            by_day_exp.setdefault(ts // DAY, set()).add(c)
        for j, (ts, pos) in enumerate(seq):
            t = j + offset
            if j:  # the window's earlier clicks are known before this one
                seen.add(seq[j - 1][1])
                counts[seq[j - 1][1]] += 1
            if t < 2:
                continue
            recent = recent_at(cats, t, short_k)
            day = ts // DAY
            if new_only:
                if pos in seen:
                    continue
                pool = [c for c in categories if c not in by_day_clicks[day] and c not in seen]
            else:
                pool = sorted(by_day_exp.get(day, set()) - by_day_clicks[day])
            if not pool and not new_only:
                pool = [c for c in categories if c not in by_day_clicks[day]]
            if not pool:
                continue
            n_neg = cfg.relevance.negatives_per_positive
            picks = [int(rng.integers(len(pool)))] if n_neg == 1 else \
                rng.choice(len(pool), size=min(n_neg, len(pool)), replace=False).tolist()
            portrait = portraits_by_user.get(u, "")
            chosen = relevance_prompt(cfg.prompts, portrait, recent, pos)
            sequence = click_sequence_text(cfg.prompts, portrait, cats[t - 2:t], pos)
            total = max(sum(counts.values()), 1)
            for i in picks:
                out.append({"prompt": "", "chosen": chosen, "user_id": u, "click": n_clicks, "sequence": sequence,
                            "rejected": relevance_prompt(cfg.prompts, portrait, recent, pool[i]),
                            "pos": pos, "neg": pool[i], "pos_new": pos not in seen, "neg_new": pool[i] not in seen,
                            "pos_share": counts[pos] / total, "neg_share": counts[pool[i]] / total})
            n_clicks += 1
    return out


def train_reward(cfg: Any, init_model: str | Path, tokenizer, pairs: list[dict[str, str]], out_dir: Path, *,
                 epochs: float, eval_pairs: list[dict[str, str]] | None = None,
                 base_model: str | Path | None = None) -> RewardResult:
    """Train (or continue training) the Relevance LLM into ``out_dir/model``; calibrate it on ``eval_pairs``.

    ``init_model`` is either the base model (round 0: a fresh score head; ``base_model`` None or the same path) or
    the previous round's Relevance model (``coea.rounds.relevance_model_dir``): an adapter directory, loaded over
    ``base_model``, or full weights. With ``lora.enabled`` the LoRA adapter and the score head are trained and
    saved as an adapter over the base (not merged) -- except when continuing a full-weights model, which is saved
    merged since its adapter would not sit on the shared base. Without LoRA every weight trains and the model is
    saved in full. Models older than the tokenizer are grown to it first (coea.backbones.fit_to_tokenizer).

    On the main process the held-out ``eval_pairs`` give the pairwise accuracy and the round's calibration
    (coea.relevance.calibrate: Platt scaling on the held-out users' categories, ECE / Brier cross-fitted over two
    folds of them), written to ``out_dir/calibration.json`` when there were enough examples. Under
    ``accelerate launch`` (loops/workers.py) it trains data-parallel; only the main process saves and reports
    (``accuracy`` is nan elsewhere).
    """
    import torch
    from trl import RewardConfig, RewardTrainer

    r = cfg.relevance
    from_base = not is_adapter_dir(init_model) and (base_model is None or Path(base_model) == Path(init_model))
    base = init_model if base_model is None else base_model
    if is_adapter_dir(init_model):
        model = load_relevance_model(cfg, init_model, base_model=base, tokenizer=tokenizer, trainable=cfg.lora.enabled)
    else:
        model = load_reward_model(init_model, cfg, pad_token_id=tokenizer.pad_token_id)
        fit_to_tokenizer(model, tokenizer)
    fresh_lora = cfg.lora.enabled and not is_adapter_dir(init_model)
    save_adapter = cfg.lora.enabled and (from_base or is_adapter_dir(init_model))
    if cfg.lora.enabled and not save_adapter:
        log.info("reward: continuing a full-weights Relevance model (%s); saving it merged", init_model)
    data = preference_dataset(pairs).remove_columns("prompt")
    args = RewardConfig(output_dir=str(out_dir / "trainer"), num_train_epochs=epochs, learning_rate=r.lr,
                        per_device_train_batch_size=r.per_device_batch_size,
                        gradient_accumulation_steps=r.gradient_accumulation_steps, logging_steps=1,
                        save_strategy="no", report_to=[], seed=cfg.run.seed, disable_tqdm=True, max_length=512,
                        use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
                        deepspeed=cfg.cycle.deepspeed or None, ddp_find_unused_parameters=False,
                        center_rewards_coefficient=0.01)
    peft_config = lora_config(cfg.lora, "SEQ_CLS") if fresh_lora else None
    # trl's DataCollatorForPreference right-pads by itself; the tokenizer's padding side stays as loaded.
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                            peft_config=peft_config)
    title = "Relevance reward model" if round_of(out_dir) in (0, None) else "Relevance update"
    with reporting(trainer, title, plural(len(pairs), "pair"), out_dir):
        trainer.train()
    model = trainer.model
    if save_adapter:
        model.peft_config["default"].base_model_name_or_path = str(base)  # informative; loading passes the base
    elif hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    target = out_dir / "model"
    curve = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    acc, calibration = float("nan"), {}
    # Data-parallel runs (loops/workers.py): every rank holds the same weights; the main process alone writes them
    # and measures the held-out accuracy and calibration (the other ranks would only repeat it).
    if trainer.is_world_process_zero():
        if save_adapter:
            # The adapter alone (LoRA + score head); never the embedding matrix, which is the base's.
            model.save_pretrained(target, save_embedding_layers=False)
        else:
            model.save_pretrained(target)
        acc, calibration = evaluate_relevance(cfg, model, tokenizer, eval_pairs or [], out_dir)
    log.info("%s: %s, loss %.3f -> %.3f, held-out pairwise accuracy %.3f", title, plural(len(pairs), "pair"),
             curve[0] if curve else float("nan"), curve[-1] if curve else float("nan"), acc)
    return RewardResult(model_dir=target, loss_curve=curve, train_pairs=len(pairs), accuracy=acc,
                        calibration=calibration)


def evaluate_relevance(cfg: Any, model, tokenizer, eval_pairs: list[dict[str, str]],
                       out_dir: Path) -> tuple[float, dict[str, Any]]:
    """Held-out pairwise accuracy and the round's calibration from one scoring pass over ``eval_pairs``.

    Writes ``out_dir/calibration.json`` when a calibration was fitted (``relevance.calibration: platt`` and enough
    held-out examples) or when ``relevance.calibration: none`` (the identity); otherwise writes nothing and the
    caller keeps the previous round's (:func:`finish_calibration`). The returned metrics say ``fitted``.
    """
    if not eval_pairs:
        metrics: dict[str, Any] = {"fitted": cfg.relevance.calibration == "none"}
        if cfg.relevance.calibration == "none":
            Calibration(source="identity (relevance.calibration: none)").save(out_dir / CALIBRATION_FILE)
        return float("nan"), metrics
    chosen, rejected = pair_logits(model, tokenizer, eval_pairs, batch_size=cfg.relevance.per_device_batch_size * 4)
    acc = float((chosen > rejected).mean())
    cal, metrics = calibrate(eval_pairs, chosen, rejected, cfg.relevance.tau_align,
                             bins=cfg.relevance.calibration_bins, min_examples=cfg.relevance.calibration_min_examples)
    if cfg.relevance.calibration == "none":  # report what is applied: the identity
        cal = Calibration(source="identity (relevance.calibration: none)")
        metrics.update({m: metrics[f"{m}_raw"] for m in ("ece", "brier", "pass_rate") if f"{m}_raw" in metrics})
        metrics.update({"calibration_a": 1.0, "calibration_b": 0.0})
    metrics["fitted"] = cal is not None
    if cal is not None:
        cal.save(out_dir / CALIBRATION_FILE, {"metrics": metrics})
    return acc, metrics


def finish_calibration(out_dir: Path, previous_model_dir: Path | None, previous_round: int | None) -> str:
    """Make sure ``out_dir/calibration.json`` exists: the fitted one, else the previous round's, else the identity.

    Returns its ``source``.
    """
    path = Path(out_dir) / CALIBRATION_FILE
    if path.exists():
        return Calibration.load(path).source
    if previous_model_dir is not None and (Path(previous_model_dir).parent / CALIBRATION_FILE).exists():
        prev = load_calibration(previous_model_dir)
        source = f"carried from round {previous_round}"
        Calibration(a=prev.a, b=prev.b, source=source).save(path)
        return source
    Calibration(source="identity (too few held-out examples)").save(path)
    return "identity (too few held-out examples)"

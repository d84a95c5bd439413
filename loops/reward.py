"""Relevance LLM: Bradley-Terry reward model (Eq. 12-14) trained with trl's RewardTrainer.

Pairs (docs/llms.md): prompt = D_s + C'_short(t-2:t-1), c_pos = the category clicked at t, c_neg = a category
exposed but not clicked on the same day where exposures exist, otherwise sampled uniformly from catalogue
categories the user did not click that day; ``relevance.negatives_per_positive`` distinct negatives per click
(fewer when the pool is smaller).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coea.console import plural
from loops.trainer_log import reporting, round_of

log = logging.getLogger("coea.reward")
DAY = 86_400


@dataclass
class RewardResult:
    model_dir: Path
    loss_curve: list[float]
    train_pairs: int
    accuracy: float


def relevance_pairs(cfg: Any, clicks: dict[str, list[tuple[int, str]]], exposures: dict[str, list[tuple[int, str]]],
                    portraits_by_user: dict[str, str], categories: list[str], users: list[str], *,
                    history: dict[str, list[tuple[int, str]]] | None = None, seed: int = 0) -> list[dict[str, str]]:
    """Preference records for the reward model (prompt "" + whole relevance texts, see loops/pairs.py).

    ``clicks`` / ``exposures`` are the window's events per user; ``history`` (optional) holds earlier clicks that
    supply S_short(t-2:t-1) for the window's first clicks.
    """
    from coea.prompts import relevance_prompt

    rng = np.random.default_rng(seed)
    out = []
    for u in users:
        seq = clicks.get(u, [])
        past = [c for _, c in (history or {}).get(u, [])][-2:]
        cats = past + [c for _, c in seq]
        offset = len(past)
        by_day_clicks: dict[int, set[str]] = {}
        for ts, c in seq:
            by_day_clicks.setdefault(ts // DAY, set()).add(c)
        by_day_exp: dict[int, set[str]] = {}
        for ts, c in exposures.get(u, []):
            by_day_exp.setdefault(ts // DAY, set()).add(c)
        for j, (ts, pos) in enumerate(seq):
            t = j + offset
            if t < 2:
                continue
            recent = cats[t - 2:t]
            day = ts // DAY
            pool = sorted(by_day_exp.get(day, set()) - by_day_clicks[day])
            if not pool:
                pool = [c for c in categories if c not in by_day_clicks[day]]
            if not pool:
                continue
            n_neg = cfg.relevance.negatives_per_positive
            picks = [int(rng.integers(len(pool)))] if n_neg == 1 else \
                rng.choice(len(pool), size=min(n_neg, len(pool)), replace=False).tolist()
            portrait = portraits_by_user.get(u, "")
            chosen = relevance_prompt(cfg.prompts, portrait, recent, pos)
            for i in picks:
                out.append({"prompt": "", "chosen": chosen, "user_id": u,
                            "rejected": relevance_prompt(cfg.prompts, portrait, recent, pool[i])})
    return out


def train_reward(cfg: Any, init_model: str | Path, tokenizer, pairs: list[dict[str, str]], out_dir: Path, *,
                 epochs: float, eval_pairs: list[dict[str, str]] | None = None) -> RewardResult:
    """Train (or continue training) the Relevance LLM; saves a full model to ``out_dir/model``.

    ``init_model`` is the backbone (round 0: a fresh score head on the pretrained LM) or the previous round's
    Relevance model. With ``lora.enabled`` a LoRA adapter (plus the score head) is trained and merged before
    saving, so every round's Relevance LLM loads with plain ``from_pretrained``. Under ``accelerate launch``
    (loops/workers.py) it trains data-parallel; only the main process saves and reports ``accuracy`` (nan elsewhere).
    """
    import torch
    from trl import RewardConfig, RewardTrainer

    from coea.backbones import load_reward_model, lora_config
    from coea.relevance import pairwise_accuracy
    from loops.pairs import preference_dataset

    r = cfg.relevance
    model = load_reward_model(init_model, cfg, pad_token_id=tokenizer.pad_token_id)
    data = preference_dataset(pairs).remove_columns("prompt")
    args = RewardConfig(output_dir=str(out_dir / "trainer"), num_train_epochs=epochs, learning_rate=r.lr,
                        per_device_train_batch_size=r.per_device_batch_size,
                        gradient_accumulation_steps=r.gradient_accumulation_steps, logging_steps=1,
                        save_strategy="no", report_to=[], seed=cfg.run.seed, disable_tqdm=True, max_length=512,
                        use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
                        deepspeed=cfg.cycle.deepspeed or None, ddp_find_unused_parameters=False,
                        center_rewards_coefficient=0.01)
    peft_config = lora_config(cfg.lora, "SEQ_CLS") if cfg.lora.enabled else None
    # trl's DataCollatorForPreference right-pads by itself; the tokenizer's padding side stays as loaded.
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                            peft_config=peft_config)
    title = "Relevance reward model" if round_of(out_dir) in (0, None) else "Relevance update"
    with reporting(trainer, title, plural(len(pairs), "pair"), out_dir):
        trainer.train()
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    target = out_dir / "model"
    curve = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    acc = float("nan")
    # Data-parallel runs (loops/workers.py): every rank holds the same merged weights; the main process alone
    # writes them and measures the held-out accuracy (the other ranks would only repeat it).
    if trainer.is_world_process_zero():
        model.save_pretrained(target)
        acc = pairwise_accuracy(model, tokenizer, eval_pairs or [], batch_size=r.per_device_batch_size * 4)
    log.info("%s: %s, loss %.3f -> %.3f, held-out pairwise accuracy %.3f", title, plural(len(pairs), "pair"),
             curve[0] if curve else float("nan"), curve[-1] if curve else float("nan"), acc)
    return RewardResult(model_dir=target, loss_curve=curve, train_pairs=len(pairs), accuracy=acc)

"""Novelty LLM SFT (Eq. 8-9) with trl's SFTTrainer: prompt-completion data, loss on the completion only."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coea.backbones import load_causal_lm, lora_config
from coea.console import plural
from loops.trainer_log import loss_line, reporting

log = logging.getLogger("coea.sft")


@dataclass
class SftResult:
    adapter_dir: Path
    loss_curve: list[float]
    train_examples: int


def _common_args(cfg: Any, out_dir: Path, *, epochs: float, lr: float, batch: int, accum: int) -> dict[str, Any]:
    import torch

    return dict(output_dir=str(out_dir / "trainer"), num_train_epochs=epochs, learning_rate=lr,
                per_device_train_batch_size=batch, gradient_accumulation_steps=accum, logging_steps=1,
                save_strategy="no", report_to=[], seed=cfg.run.seed, disable_tqdm=True,
                use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
                deepspeed=cfg.cycle.deepspeed or None, ddp_find_unused_parameters=False,
                lr_scheduler_type="constant_with_warmup", warmup_steps=0)


def train_sft(cfg: Any, base_model: str | Path, tokenizer, examples: list[dict[str, str]], out_dir: Path, *,
              full_weights: bool = False, completion_only: bool = True, epochs: float | None = None,
              lr: float | None = None) -> SftResult:
    """Train the Novelty LLM on ``{"prompt", "completion"}`` examples; saves ``out_dir/adapter`` (or the model).

    ``full_weights`` trains every weight and saves a full model to ``out_dir/model`` -- used only to pretrain the
    embedded backbone on the round-0 corpus (a stand-in for the pretraining a hub checkpoint already has).
    Under ``accelerate launch`` (loops/workers.py) it trains data-parallel and only the main process saves.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    n = cfg.novelty
    args = SFTConfig(**_common_args(cfg, out_dir, epochs=n.sft_epochs if epochs is None else epochs,
                                    lr=n.sft_lr if lr is None else lr, batch=n.per_device_batch_size,
                                    accum=n.gradient_accumulation_steps),
                     completion_only_loss=completion_only, max_length=512, packing=False,
                     dataset_num_proc=None)
    model = load_causal_lm(base_model, cfg, pad_token_id=tokenizer.pad_token_id)
    peft_config = None if (full_weights or not cfg.lora.enabled) else lora_config(cfg.lora, "CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                         processing_class=tokenizer, peft_config=peft_config)
    title = "backbone pretraining" if full_weights else "Novelty SFT"
    with reporting(trainer, title, plural(len(examples), "example"), out_dir):
        trainer.train()
    curve = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    target = out_dir / ("model" if full_weights else "adapter")
    # Data-parallel runs (loops/workers.py): every rank holds the same weights (DDP, ZeRO-2); one writes them.
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(target)
        if full_weights:
            tokenizer.save_pretrained(target)
    loss_line(title, curve, len(examples), "example")
    return SftResult(adapter_dir=target, loss_curve=curve, train_examples=len(examples))

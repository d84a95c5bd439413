"""Backbones: the `embedded` Qwen2-architecture model and any Hugging Face checkpoint, through one load path.

`embedded` (docs/llms.md): a small Qwen2 causal LM (and its sequence-classification twin, num_labels=1) built
from ``BackboneConfig``, with a word-level tokenizer trained on the catalogue's category names, the prompt
templates and the group portraits. It is saved with ``save_pretrained`` and from then on loaded exactly like a
hub checkpoint (``from_pretrained`` on a directory). Runs on CPU in seconds; nothing is ever downloaded.

Any other ``backbone.name`` is a Hugging Face directory or hub id (e.g. Qwen/Qwen2.5-7B-Instruct) loaded with the
configured dtype and attention implementation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("coea.backbones")

SPECIAL = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}
# Split on whitespace, then isolate punctuation that templates put next to words ("category:", "Jazz,").
_PUNCT = r"[,.:;!?()\[\]{}\"]"


def build_word_tokenizer(texts: Iterable[str]):
    """A word-level tokenizer over ``texts`` (category names stay single tokens, e.g. "Sci-Fi")."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL["unk"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(_PUNCT), behavior="isolated"),
    ])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL.values()), min_frequency=1,
                                        show_progress=False)  # its Rust bar draws on the terminal directly
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=SPECIAL["pad"], eos_token=SPECIAL["eos"],
                                   bos_token=SPECIAL["bos"], unk_token=SPECIAL["unk"])
    fast.padding_side = "left"
    return fast


def build_embedded_backbone(cfg: Any, texts: Iterable[str], out_dir: Path) -> tuple[Path, Path]:
    """Train the word-level tokenizer on ``texts`` and save a fresh Qwen2 causal LM; returns (model, tokenizer) dirs."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    tok = build_word_tokenizer(texts)
    tok_dir, model_dir = out_dir / "tokenizer", out_dir / "model"
    tok.save_pretrained(tok_dir)
    b = cfg.backbone
    torch.manual_seed(cfg.run.seed)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=b.hidden_size, num_hidden_layers=b.num_layers,
        num_attention_heads=b.num_heads, num_key_value_heads=b.num_heads, intermediate_size=b.intermediate_size,
        max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, use_cache=True,
    )
    Qwen2ForCausalLM(config).save_pretrained(model_dir)
    log.info("embedded backbone: vocab %d, hidden %d, layers %d", len(tok), b.hidden_size, b.num_layers)
    return model_dir, tok_dir


def _dtype(name: str):
    return {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _model_kwargs(cfg: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {"dtype": _dtype(cfg.backbone.dtype)}
    if cfg.backbone.attn_implementation:
        kw["attn_implementation"] = cfg.backbone.attn_implementation
    return kw


def load_tokenizer(path: str | Path, cfg: Any | None = None):
    """Tokenizer with a pad token always set (falls back to EOS), left padding for batched inference."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_causal_lm(path: str | Path, cfg: Any, *, pad_token_id: int | None = None):
    """A causal LM; the pad id is always set (the tokenizer's when given, else the model's EOS)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), **_model_kwargs(cfg))
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def load_reward_model(path: str | Path, cfg: Any, *, pad_token_id: int | None = None):
    """A sequence-classification model with one output (the Relevance LLM); pad id always set."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, **_model_kwargs(cfg))
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def lora_config(cfg_lora: Any, task_type: str):
    """peft LoRA config: rank r on every linear layer by default; the score head trains fully for SEQ_CLS."""
    from peft import LoraConfig

    targets: str | list[str] = cfg_lora.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=cfg_lora.r, lora_alpha=cfg_lora.alpha, lora_dropout=cfg_lora.dropout,
                      target_modules=targets, task_type=task_type,
                      modules_to_save=["score"] if task_type == "SEQ_CLS" else None)

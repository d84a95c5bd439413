"""Backbones: the `embedded` Qwen2-architecture model and any Hugging Face checkpoint, through one load path.

`embedded` (docs/llms.md): a small Qwen2 causal LM (and its sequence-classification twin, num_labels=1) built
from ``BackboneConfig``, with a word-level tokenizer trained on the catalogue's category names, the prompt
templates and the group portraits. It is saved with ``save_pretrained`` and from then on loaded exactly like a
hub checkpoint (``from_pretrained`` on a directory). Runs on CPU in seconds; nothing is ever downloaded.

Any other ``backbone.name`` is a Hugging Face directory or hub id (e.g. Qwen/Qwen2.5-7B-Instruct) loaded with the
configured dtype and attention implementation.

Vocabulary growth (docs/llms.md "A growing catalogue"): when a round's catalogue holds a category name the
word-level tokenizer cannot encode (a word it maps to ``<unk>``), :func:`grow_word_tokenizer` appends the missing
words with new ids (old ids never shift) and :func:`grow_embeddings` appends embedding / LM-head rows, each new row
the mean of the rows of the tokens that spell the catalogue's category names before the growth. The growth record
(``coea_vocab.json``, kept in the tokenizer directory) lets any older model -- a full-weights Relevance LLM, a
base of an earlier round -- be grown to a newer tokenizer with the same rule (:func:`fit_to_tokenizer`). A
Hugging Face BPE tokenizer encodes new names as subwords; it is never grown, only checked (:func:`vocab_check`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from coea.prompts import completion_text

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


# ------------------------------------------------------------------------------------------ vocabulary growth

GROWTH_FILE = "coea_vocab.json"


@dataclass
class VocabCheck:
    """How a tokenizer encodes a catalogue's names as completions (``coea.prompts.completion_text``).

    ``unknown``: names with a token the tokenizer maps to its unk id (they would all look alike to the LLMs);
    ``ambiguous``: names whose token ids equal another name's; ``not_round_trip``: names whose ids do not decode
    back to the name (reported only: closed-vocabulary scoring needs distinct ids, not a faithful decoder).
    """

    names: int
    unknown: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    not_round_trip: list[str] = field(default_factory=list)

    @property
    def faithful(self) -> bool:
        return not self.unknown and not self.ambiguous


def vocab_check(tokenizer, names: Sequence[str]) -> VocabCheck:
    """Check that every name encodes to known, distinct token ids (and whether it decodes back)."""
    unk = tokenizer.unk_token_id
    ids = [tuple(tokenizer(completion_text(n), add_special_tokens=False)["input_ids"]) for n in names]
    seen: dict[tuple[int, ...], int] = {}
    for x in ids:
        seen[x] = seen.get(x, 0) + 1
    check = VocabCheck(names=len(names))
    for n, x in zip(names, ids):
        if unk is not None and unk in x:
            check.unknown.append(n)
        elif seen[x] > 1:
            check.ambiguous.append(n)
        if tokenizer.decode(list(x), skip_special_tokens=False).strip() != n.strip():
            check.not_round_trip.append(n)
    return check


def is_word_level(tokenizer) -> bool:
    """True for the embedded backbone's tokenizer (a ``tokenizers`` WordLevel model): the one coea grows."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.model).__name__ == "WordLevel"


def read_growth(tokenizer_dir: str | Path) -> dict[str, Any]:
    """The growth record saved with a tokenizer; an empty history when it was never grown."""
    path = Path(tokenizer_dir) / GROWTH_FILE
    return json.loads(path.read_text()) if path.exists() else {"growth": []}


def grow_word_tokenizer(tokenizer, names: Sequence[str], *, round_k: int,
                        growth: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Append the words of ``names`` the word-level tokenizer does not know; returns (tokenizer, growth record).

    Words are split exactly as the tokenizer's own pre-tokenizer splits text, appended in order of first
    appearance with ids ``len(tokenizer), len(tokenizer) + 1, ...``: every existing token keeps its id. The record
    gains one entry ``{round, from_size, to_size, tokens, categories, init_from}`` where ``init_from`` are the ids
    of the tokens that spell the names already encodable (the catalogue's category tokens): the rows new tokens
    start from (:func:`grow_embeddings`).
    """
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    if not is_word_level(tokenizer):
        raise TypeError("grow_word_tokenizer: only the embedded word-level tokenizer is grown")
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy; the caller's stays as it was
    vocab = backend.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1
    known = [n for n in names if not _unknown_words(backend, vocab, n)]
    init_from = sorted({vocab[w] for n in known for w, _ in backend.pre_tokenizer.pre_tokenize_str(n)})
    new_words: list[str] = []
    grown_names: list[str] = []
    for n in names:
        missing = [w for w in _unknown_words(backend, vocab, n) if w not in new_words]
        if missing:
            grown_names.append(n)
        new_words += missing
    word_vocab = backend.get_vocab(with_added_tokens=False)
    word_vocab.update({w: size + i for i, w in enumerate(new_words)})
    backend.model = models.WordLevel(vocab=word_vocab, unk_token=tokenizer.unk_token)
    grown = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=tokenizer.pad_token,
                                    eos_token=tokenizer.eos_token, bos_token=tokenizer.bos_token,
                                    unk_token=tokenizer.unk_token)
    grown.padding_side = tokenizer.padding_side
    record = {"growth": list((growth or {"growth": []})["growth"])}
    if new_words:
        record["growth"].append({"round": int(round_k), "from_size": size, "to_size": size + len(new_words),
                                 "tokens": new_words, "categories": grown_names, "init_from": init_from})
    return grown, record


def _unknown_words(backend, vocab: dict[str, int], name: str) -> list[str]:
    return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(completion_text(name)) if w not in vocab]


def save_tokenizer(tokenizer, growth: dict[str, Any], out_dir: str | Path) -> Path:
    """``save_pretrained`` plus the growth record (``coea_vocab.json``) in the same directory."""
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / GROWTH_FILE).write_text(json.dumps(growth, indent=2))
    return out_dir


def embedding_rows(model) -> int:
    return int(model.get_input_embeddings().weight.shape[0])


@torch.no_grad()
def grow_embeddings(model, growth: dict[str, Any]) -> int:
    """Grow ``model``'s input embeddings (and an untied LM head) to the newest size of ``growth``; rows added.

    ``resize_token_embeddings`` keeps every existing row (and the tie between embeddings and LM head); each new
    row is then set to the mean of the model's own rows ``init_from`` of the growth entry that added it, entries
    applied in order, so growing in one step or several gives the same rows. A model already as large is left
    alone (a Hugging Face checkpoint whose embedding matrix is padded past its tokenizer, for instance).
    """
    entries = sorted(growth.get("growth", []), key=lambda e: e["from_size"])
    if not entries:
        return 0
    before, target = embedding_rows(model), max(e["to_size"] for e in entries)
    if before >= target:
        return 0
    model.resize_token_embeddings(target, mean_resizing=False)
    matrices = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not matrices[0]:
        matrices.append(out.weight)
    for e in entries:
        new = range(max(e["from_size"], before), e["to_size"])
        if not len(new):
            continue
        src = [i for i in e["init_from"] if i < e["from_size"]] or list(range(e["from_size"]))
        for w in matrices:
            w[new.start:new.stop] = w[src].mean(dim=0, keepdim=True).expand(len(new), -1)
    return target - before


def fit_to_tokenizer(model, tokenizer, tokenizer_dir: str | Path | None = None) -> int:
    """Grow ``model`` to ``tokenizer`` when the tokenizer was grown after the model was saved; rows added.

    The growth record is read from ``tokenizer_dir`` (default: the directory the tokenizer was loaded from).
    """
    if embedding_rows(model) >= len(tokenizer):
        return 0
    where = tokenizer_dir or getattr(tokenizer, "name_or_path", "")
    growth = read_growth(where) if where and Path(where).is_dir() else {"growth": []}
    if not growth["growth"]:
        raise ValueError(f"the model has {embedding_rows(model)} embedding rows for a tokenizer of {len(tokenizer)} "
                         f"tokens, and {where or 'the tokenizer'} holds no growth record ({GROWTH_FILE})")
    added = grow_embeddings(model, growth)
    log.info("grew a model by %d embedding rows to its tokenizer's %d tokens", added, len(tokenizer))
    return added


# ------------------------------------------------------------------------------------------- Relevance LLM


def is_adapter_dir(path: str | Path) -> bool:
    """A peft ``save_pretrained`` directory (an adapter, not full weights)."""
    return (Path(path) / "adapter_config.json").exists()


def load_relevance_model(cfg: Any, model_dir: str | Path, *, base_model: str | Path, tokenizer,
                         trainable: bool = False):
    """A round's Relevance LLM, either layout, grown to ``tokenizer`` (docs/llms.md "Relevance model on disk").

    - adapter + score head (``lora.enabled``): the sequence-classification twin of ``base_model`` with the round's
      LoRA adapter and its fully trained ``score`` head (peft ``modules_to_save``). ``trainable=True`` returns the
      ``PeftModel`` ready to train further; otherwise the adapter is merged (a plain transformers model).
    - full weights (``lora.enabled: false``, or a workdir written before adapters were saved): ``from_pretrained``.

    Either way the model ends with at least as many embedding rows as the tokenizer has tokens.
    """
    pad = tokenizer.pad_token_id
    if not is_adapter_dir(model_dir):
        model = load_reward_model(model_dir, cfg, pad_token_id=pad)
        fit_to_tokenizer(model, tokenizer)
        return model
    from peft import PeftModel

    base = load_reward_model(base_model, cfg, pad_token_id=pad)  # its score head is replaced by the adapter's
    fit_to_tokenizer(base, tokenizer)
    model = PeftModel.from_pretrained(base, str(model_dir), is_trainable=trainable)
    model.peft_config["default"].base_model_name_or_path = str(base_model)
    return model if trainable else model.merge_and_unload()

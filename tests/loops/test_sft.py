"""Novelty SFT (Eq. 8-9) on a Hugging Face checkpoint loaded by path: a tiny BPE Qwen2 built and saved here."""

from __future__ import annotations

import numpy as np
import pytest

from coea.config import load_config
from coea.prompts import completion_text, novelty_train_example

CATS = ["Jazz", "Hiking", "Sci-Fi", "Opera", "Chess"]


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A byte-level BPE tokenizer without a pad token and a random Qwen2, saved like a hub snapshot."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("hf")
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = __import__("tokenizers").decoders.ByteLevel()
    raw.train_from_iterator([" ".join(CATS) + " Group portrait: Recent categories: Next category: likes music"] * 5,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", unk_token="<unk>").save_pretrained(path)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=raw.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                                 eos_token_id=1)).save_pretrained(path)
    cfg = load_config(None, [f"backbone.name={path}", "novelty.per_device_batch_size=8", "novelty.sft_lr=0.01",
                             "backbone.dtype=float32"])
    return path, cfg


def test_sft_examples_keep_only_targets_absent_from_i_long():
    """Eq. 8: S_short(t) must be novel w.r.t. I_long; t starts at 2 so S_short(t-2:t-1) exists."""
    from loops.bootstrap import sft_examples

    cfg = load_config(None, [])
    clicks = {"u": [(1, "Jazz"), (2, "Opera"), (3, "Jazz"), (4, "Chess"), (5, "Hiking")]}
    ex = sft_examples(cfg, clicks, {"u": {"Jazz", "Opera"}}, {"u": "D"}, ["u"])
    assert [e["completion"] for e in ex] == [completion_text("Chess"), completion_text("Hiking")]
    assert "Recent categories: Jazz, Opera" in ex[0]["prompt"]  # S_short(t-2:t-1) = (Opera, Jazz), canonical


def test_sft_on_a_local_hf_checkpoint_trains_the_adapter_with_completion_only_labels(hf_checkpoint, tmp_path):
    from datasets import Dataset
    from peft import PeftModel
    from trl import SFTConfig, SFTTrainer

    from coea.backbones import load_causal_lm, load_tokenizer
    from loops.sft import train_sft

    path, cfg = hf_checkpoint
    tok = load_tokenizer(path, cfg)
    assert tok.pad_token is not None  # the checkpoint has none: loading sets one
    examples = [novelty_train_example(cfg.prompts, "likes music", ["Jazz", "Opera"], "Chess")] * 16
    res = train_sft(cfg, path, tok, examples, tmp_path, epochs=2)
    assert len(res.loss_curve) == 2 and all(np.isfinite(res.loss_curve))  # 16 / (8 x accumulation 2) x 2 epochs
    assert res.loss_curve[-1] < res.loss_curve[0]
    tuned = PeftModel.from_pretrained(load_causal_lm(path, cfg), str(res.adapter_dir))
    assert any(p.abs().sum() > 0 for n, p in tuned.named_parameters() if "lora_B" in n)  # B starts at zero

    # Eq. 9 -- what trl 1.16 does with prompt-completion records: labels are -100 on every prompt token and equal
    # the input ids on the completion (the name's tokens + the EOS trl appends).
    trainer = SFTTrainer(model=load_causal_lm(path, cfg), processing_class=tok, train_dataset=Dataset.from_list(
        examples[:1]), args=SFTConfig(output_dir=str(tmp_path / "t"), report_to=[], use_cpu=True,
                                      completion_only_loss=True))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    n_prompt = len(tok(examples[0]["prompt"], add_special_tokens=False)["input_ids"])
    completion = tok(examples[0]["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] == completion

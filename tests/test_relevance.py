"""Relevance scoring sees the same token ids the RewardTrainer trained on, with or without a BOS-adding tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from coea.backbones import build_word_tokenizer
from coea.config import load_config
from coea.prompts import relevance_prompt
from coea.relevance import align, encode, score

CATS = ["Jazz", "Opera", "Chess"]


def _tokenizer(bos: bool):
    from tokenizers import processors

    tok = build_word_tokenizer([" ".join(CATS), load_config(None, []).prompts.relevance, "likes music"])
    if bos:  # like a Llama tokenizer: the post-processor prepends BOS to every text
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)])
    return tok


@pytest.mark.parametrize("bos", [False, True])
def test_scoring_ids_equal_the_reward_trainers(bos, tmp_path):
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tok = _tokenizer(bos)
    p = load_config(None, []).prompts
    chosen, rejected = (relevance_prompt(p, "likes music", ["Jazz"], c) for c in ("Opera", "Chess"))
    model = Qwen2ForSequenceClassification(Qwen2Config(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=32, num_labels=1, pad_token_id=tok.pad_token_id))
    trainer = RewardTrainer(model=model, processing_class=tok, train_dataset=Dataset.from_list(
        [{"chosen": chosen, "rejected": rejected}]), args=RewardConfig(output_dir=str(tmp_path), report_to=[],
                                                                      use_cpu=True))
    row = trainer.train_dataset[0]
    assert encode(tok, [chosen, rejected]) == [row["chosen_ids"], row["rejected_ids"]]
    assert (encode(tok, [chosen])[0][0] == tok.bos_token_id) == bos
    s = score(model, tok, [chosen, rejected, chosen], batch_size=2)
    assert s[0] == pytest.approx(s[2], abs=1e-6) and ((s > 0) & (s < 1)).all()


def test_align_is_strict_and_ordered():
    assert align(["A", "B", "C"], np.array([0.6, 0.4, 0.9]), 0.5) == [("C", pytest.approx(0.9)), ("A", 0.6)]
    assert align([], [], 0.5) == []

"""Embedded backbone: tokenizer round trip, the reward twin from the saved causal LM, LoRA on the score head."""

from __future__ import annotations

import pytest

from coea.backbones import build_embedded_backbone, load_causal_lm, load_reward_model, load_tokenizer, lora_config
from coea.config import load_config

CATS = ["Children's", "Sci-Fi", "Film-Noir", "Science Fiction", "Jazz"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = load_config(None, ["backbone.hidden_size=16", "backbone.num_layers=1", "backbone.num_heads=2",
                             "backbone.intermediate_size=32"])
    p = cfg.prompts
    model_dir, tok_dir = build_embedded_backbone(cfg, [" ".join(CATS), p.novelty_train, p.novelty_infer,
                                                       p.relevance], tmp_path_factory.mktemp("b"))
    return cfg, model_dir, tok_dir


def test_category_names_round_trip_through_the_tokenizer(tiny):
    _, _, tok_dir = tiny
    tok = load_tokenizer(tok_dir)
    for name in CATS:
        ids = tok(name, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids and tok.decode(ids) == name
    assert tok.padding_side == "left" and tok.pad_token == "<pad>"
    assert tok("Unseen-Word", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_reward_twin_loads_from_the_saved_causal_lm(tiny):
    cfg, model_dir, tok_dir = tiny
    tok = load_tokenizer(tok_dir)
    lm = load_causal_lm(model_dir, cfg, pad_token_id=tok.pad_token_id)
    rm = load_reward_model(model_dir, cfg, pad_token_id=tok.pad_token_id)
    assert type(rm).__name__ == "Qwen2ForSequenceClassification" and rm.config.num_labels == 1
    assert rm.config.pad_token_id == lm.config.pad_token_id == tok.pad_token_id
    ids = tok(["Jazz", "Sci-Fi Jazz"], padding=True, return_tensors="pt")
    assert rm(**ids).logits.shape == (2, 1)
    # the transformer weights are shared with the causal LM; only the score head is new
    assert (rm.model.embed_tokens.weight == lm.model.embed_tokens.weight).all()


def test_seq_cls_lora_trains_the_score_head_fully(tiny):
    from peft import get_peft_model

    cfg, model_dir, _ = tiny
    model = get_peft_model(load_reward_model(model_dir, cfg), lora_config(cfg.lora, "SEQ_CLS"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("score" in n and "modules_to_save" in n for n in trainable)
    assert any("lora_A" in n for n in trainable)
    assert lora_config(cfg.lora, "CAUSAL_LM").r == 8 and lora_config(cfg.lora, "CAUSAL_LM").lora_alpha == 16
    names = load_config(None, ["lora.target_modules=q_proj, v_proj"]).lora
    assert set(lora_config(names, "CAUSAL_LM").target_modules) == {"q_proj", "v_proj"}

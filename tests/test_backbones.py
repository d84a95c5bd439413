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


# ------------------------------------------------------------------------------------------ vocabulary growth


def _grown(tiny, names, k=1, growth=None, tok=None):
    from coea.backbones import grow_word_tokenizer, read_growth

    _, _, tok_dir = tiny
    tok = tok or load_tokenizer(tok_dir)
    return grow_word_tokenizer(tok, names, round_k=k, growth=growth or read_growth(tok_dir))


def test_growing_the_word_tokenizer_appends_and_never_shifts_an_id(tiny):
    from coea.backbones import vocab_check

    _, _, tok_dir = tiny
    old = load_tokenizer(tok_dir)
    names = CATS + ["Zydeco", "Indie Jazz"]  # one new word; one new word beside a known one
    assert vocab_check(old, names).unknown == ["Zydeco", "Indie Jazz"]
    grown, growth = _grown(tiny, names)
    assert all(grown.get_vocab()[w] == i for w, i in old.get_vocab().items())
    assert [grown.convert_tokens_to_ids(w) for w in ("Zydeco", "Indie")] == [len(old), len(old) + 1]
    entry = growth["growth"][-1]
    assert entry["tokens"] == ["Zydeco", "Indie"] and entry["categories"] == ["Zydeco", "Indie Jazz"]
    assert (entry["from_size"], entry["to_size"]) == (len(old), len(old) + 2)
    # init_from: the tokens spelling the names already encodable (Jazz, Sci-Fi, Science, Fiction, ...)
    assert old.convert_tokens_to_ids("Jazz") in entry["init_from"]
    assert old.convert_tokens_to_ids(":") not in entry["init_from"]
    check = vocab_check(grown, names)
    assert check.faithful and not check.not_round_trip
    assert grown(" Indie Jazz", add_special_tokens=False)["input_ids"] == [len(old) + 1,
                                                                            grown.convert_tokens_to_ids("Jazz")]
    same, again = _grown(tiny, names, k=2, growth=growth, tok=grown)  # nothing new: nothing appended
    assert len(same) == len(grown) and again == growth


def test_saved_grown_tokenizer_loads_with_its_growth_record(tiny, tmp_path):
    from coea.backbones import read_growth, save_tokenizer

    grown, growth = _grown(tiny, ["Zydeco"])
    save_tokenizer(grown, growth, tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.get_vocab() == grown.get_vocab() and read_growth(tmp_path / "tok") == growth
    assert loaded.padding_side == "left" and loaded.pad_token_id == grown.pad_token_id


def test_grown_embeddings_keep_old_rows_and_start_new_rows_at_the_category_mean(tiny):
    import torch

    from coea.backbones import grow_embeddings

    cfg, model_dir, tok_dir = tiny
    grown, growth = _grown(tiny, CATS + ["Zydeco", "Polka"])
    model = load_causal_lm(model_dir, cfg)
    before = model.get_input_embeddings().weight.detach().clone()
    assert grow_embeddings(model, growth) == 2 and model.config.vocab_size == len(grown)
    after = model.get_input_embeddings().weight.detach()
    assert torch.equal(after[: len(before)], before)
    mean = before[growth["growth"][-1]["init_from"]].mean(0)
    torch.testing.assert_close(after[-1], mean) and torch.testing.assert_close(after[-2], mean)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert grow_embeddings(model, growth) == 0  # already grown


def test_growing_in_two_steps_equals_one_step_and_untied_heads_grow_too(tiny, tmp_path):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from coea.backbones import fit_to_tokenizer, grow_embeddings, save_tokenizer

    cfg, _, tok_dir = tiny
    old = load_tokenizer(tok_dir)
    step1, g1 = _grown(tiny, CATS + ["Zydeco"])
    step2, g2 = _grown(tiny, CATS + ["Zydeco", "Polka"], k=2, growth=g1, tok=step1)
    torch.manual_seed(0)
    untied = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(old), hidden_size=16, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=2, intermediate_size=32,
                                          tie_word_embeddings=False))
    untied.save_pretrained(tmp_path / "m")
    a, b = Qwen2ForCausalLM.from_pretrained(tmp_path / "m"), Qwen2ForCausalLM.from_pretrained(tmp_path / "m")
    grow_embeddings(a, g1), grow_embeddings(a, g2)
    save_tokenizer(step2, g2, tmp_path / "tok")
    assert fit_to_tokenizer(b, load_tokenizer(tmp_path / "tok")) == 2  # one step, from the record next to it
    for w in ("get_input_embeddings", "get_output_embeddings"):
        torch.testing.assert_close(getattr(a, w)().weight, getattr(b, w)().weight)
    head = b.get_output_embeddings().weight
    torch.testing.assert_close(head[-1], head[g2["growth"][0]["init_from"]].mean(0))
    with pytest.raises(ValueError, match="no growth record"):
        fit_to_tokenizer(Qwen2ForCausalLM.from_pretrained(tmp_path / "m"), step2, tmp_path / "nowhere")


def test_a_bpe_tokenizer_needs_no_growth_and_names_round_trip():
    """A byte-level BPE (as in Qwen2.5) spells an unseen category name in subwords: nothing to grow."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from coea.backbones import is_word_level, vocab_check

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([" ".join(CATS)] * 5, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>")
    check = vocab_check(tok, CATS + ["Zydeco", "Québécois Folk"])
    assert check.faithful and not check.not_round_trip and not is_word_level(tok)


def test_relevance_adapter_and_full_models_load_on_a_grown_base(tiny, tmp_path):
    """Round j's Relevance LLM, saved as an adapter or in full, scores old texts identically after a growth."""
    import numpy as np
    import torch
    from peft import get_peft_model

    from coea.backbones import grow_embeddings, load_relevance_model, lora_config, save_tokenizer
    from coea.prompts import relevance_prompt
    from coea.relevance import reward_logits

    cfg, model_dir, tok_dir = tiny
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    peft_model = get_peft_model(load_reward_model(model_dir, cfg, pad_token_id=tok.pad_token_id),
                                lora_config(cfg.lora, "SEQ_CLS"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.normal_(0, 0.5)  # make the adapter and the head matter
    peft_model.save_pretrained(tmp_path / "adapter", save_embedding_layers=False)
    full = peft_model.merge_and_unload()
    full.save_pretrained(tmp_path / "full")
    texts = [relevance_prompt(cfg.prompts, "D", ["Jazz"], c) for c in ("Sci-Fi", "Film-Noir")]
    expected = reward_logits(full, tok, texts)

    grown, growth = _grown(tiny, CATS + ["Zydeco"])
    save_tokenizer(grown, growth, tmp_path / "tok")
    grown = load_tokenizer(tmp_path / "tok")
    base = load_causal_lm(model_dir, cfg)
    grow_embeddings(base, growth)
    base.save_pretrained(tmp_path / "base1")
    for layout in ("adapter", "full"):
        model = load_relevance_model(cfg, tmp_path / layout, base_model=tmp_path / "base1", tokenizer=grown)
        assert model.get_input_embeddings().weight.shape[0] == len(grown)
        np.testing.assert_allclose(reward_logits(model, grown, texts), expected, rtol=1e-5, atol=1e-5)
        new_text = relevance_prompt(cfg.prompts, "D", ["Jazz"], "Zydeco")
        assert grown.convert_tokens_to_ids("Zydeco") in grown(new_text)["input_ids"]
        assert np.isfinite(reward_logits(model, grown, [new_text])).all()
    trainable = load_relevance_model(cfg, tmp_path / "adapter", base_model=tmp_path / "base1", tokenizer=grown,
                                     trainable=True)
    assert any(p.requires_grad for n, p in trainable.named_parameters() if "lora_" in n)

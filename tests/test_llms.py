"""Backbones, prompts, SFT, reward model and Relevance scoring on tiny models built here (never downloaded)."""

from __future__ import annotations

import numpy as np
import pytest

from coea.backbones import (
    build_embedded_backbone, load_causal_lm, load_relevance_model, load_tokenizer, lora_config,
)
from coea.config import load_config
from coea.prompts import completion_text, novelty_infer_prompt, novelty_train_example, relevance_prompt
from coea.relevance import align, pairwise_accuracy, score

CATS = ["Jazz", "Hiking", "Sci-Fi", "Children's", "Opera", "Chess"]


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, ["backbone.hidden_size=32", "backbone.num_layers=1", "backbone.num_heads=2",
                              "backbone.intermediate_size=64", "novelty.per_device_batch_size=8",
                              "relevance.per_device_batch_size=8", "relevance.lr=0.01", "novelty.sft_lr=0.01"])


@pytest.fixture(scope="module")
def backbone(cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("backbone")
    texts = [" ".join(CATS), cfg.prompts.novelty_train, cfg.prompts.novelty_infer, cfg.prompts.relevance,
             "portrait of a group that likes music none"]
    model_dir, tok_dir = build_embedded_backbone(cfg, texts, out)
    return model_dir, tok_dir


def test_tokenizer_keeps_category_names_whole_and_has_distinct_specials(backbone):
    tok = load_tokenizer(backbone[1])
    for c in CATS:
        assert tok.convert_ids_to_tokens(tok(c, add_special_tokens=False)["input_ids"]) == [c]
    assert len({tok.pad_token_id, tok.eos_token_id, tok.unk_token_id}) == 3


def test_saved_backbone_loads_through_from_pretrained(cfg, backbone):
    model = load_causal_lm(backbone[0], cfg)
    tok = load_tokenizer(backbone[1])
    ids = tok("Recent categories: Jazz", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))
    assert model.config.pad_token_id == tok.pad_token_id


def test_lora_targets_every_linear_layer(cfg, backbone):
    from peft import get_peft_model

    model = get_peft_model(load_causal_lm(backbone[0], cfg), lora_config(cfg.lora, "CAUSAL_LM"))
    wrapped = {n.split(".")[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped >= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_prompts_are_deterministic_in_the_key_inputs(cfg):
    p = cfg.prompts
    ex = novelty_train_example(p, "likes music", ["Opera", "Jazz"], "Chess")
    assert ex["completion"] == completion_text("Chess") == " Chess"
    assert "Jazz, Opera" in ex["prompt"]  # canonical order, same as inference
    assert novelty_infer_prompt(p, "D", ("Jazz", "Opera")).endswith("Next category:")
    assert "Candidate category: Chess" in relevance_prompt(p, "D", ["Jazz"], "Chess")


def test_sft_trains_lora_on_completion_only(cfg, backbone, tmp_path):
    from loops.sft import train_sft

    tok = load_tokenizer(backbone[1])
    examples = [novelty_train_example(cfg.prompts, "likes music", ["Jazz", "Opera"], "Chess")] * 16
    res = train_sft(cfg, backbone[0], tok, examples, tmp_path, epochs=3)
    assert all(np.isfinite(res.loss_curve)) and res.loss_curve[-1] < res.loss_curve[0]
    from peft import PeftModel

    tuned = PeftModel.from_pretrained(load_causal_lm(backbone[0], cfg), str(res.adapter_dir))
    changed = [n for n, p in tuned.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert changed  # lora_B starts at zero; trained adapters moved it
    # completion-only: trl masks prompt tokens out of the labels
    from trl import SFTConfig, SFTTrainer
    from datasets import Dataset

    trainer = SFTTrainer(model=load_causal_lm(backbone[0], cfg), processing_class=tok,
                         args=SFTConfig(output_dir=str(tmp_path / "t"), report_to=[], use_cpu=True,
                                        completion_only_loss=True), train_dataset=Dataset.from_list(examples[:2]))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    n_completion = (batch["labels"] != -100).sum().item()
    assert n_completion == len(tok(" Chess", add_special_tokens=False)["input_ids"]) + 1  # name + EOS


def test_reward_model_learns_and_scores_are_batch_and_padding_invariant(cfg, backbone, tmp_path):
    from loops.reward import train_reward

    tok = load_tokenizer(backbone[1])
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(48):  # separable: the clicked candidate is always a music category
        pos, neg = rng.choice(["Jazz", "Opera"]), rng.choice(["Chess", "Hiking"])
        pairs.append({"prompt": "", "chosen": relevance_prompt(cfg.prompts, "likes music", ["Jazz"], pos),
                      "rejected": relevance_prompt(cfg.prompts, "likes music", ["Jazz"], neg)})
    res = train_reward(cfg, backbone[0], tok, pairs[:40], tmp_path, epochs=4, eval_pairs=pairs[40:])
    assert res.accuracy > 0.5 and res.loss_curve[-1] < res.loss_curve[0]
    assert (res.model_dir / "adapter_config.json").exists()  # LoRA: the adapter + score head, not a merged copy
    model = load_relevance_model(cfg, res.model_dir, base_model=backbone[0], tokenizer=tok)
    texts = [relevance_prompt(cfg.prompts, "likes music", ["Jazz"], c) for c in CATS]
    long_text = relevance_prompt(cfg.prompts, "likes music " * 20, ["Jazz", "Opera"], "Chess")
    alone = np.array([score(model, tok, [t])[0] for t in texts])
    batched = score(model, tok, texts + [long_text], batch_size=7)[:-1]
    tok.padding_side = "right"
    other_side = score(model, tok, texts + [long_text], batch_size=7)[:-1]
    np.testing.assert_allclose(alone, batched, atol=1e-5)
    np.testing.assert_allclose(alone, other_side, atol=1e-5)
    assert ((alone > 0) & (alone < 1)).all()
    assert pairwise_accuracy(model, tok, pairs[40:]) == res.accuracy


def _music_pairs(cfg, n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"prompt": "", "user_id": f"u{i}", "click": i,
             "chosen": relevance_prompt(cfg.prompts, "likes music", ["Jazz"], rng.choice(["Jazz", "Opera"])),
             "rejected": relevance_prompt(cfg.prompts, "likes music", ["Jazz"], rng.choice(["Chess", "Hiking"]))}
            for i in range(n)]


def test_relevance_continues_as_an_adapter_and_writes_a_calibration(cfg, backbone, tmp_path):
    """Round k continues round k-1's adapter over the same base; the calibration is fitted on held-out pairs."""
    import copy

    import torch
    from safetensors.torch import load_file

    from coea.relevance import Calibration
    from loops.reward import finish_calibration, train_reward

    tok = load_tokenizer(backbone[1])
    c = copy.deepcopy(cfg)
    c.relevance.calibration_min_examples = 10
    first = train_reward(c, backbone[0], tok, _music_pairs(c, 32), tmp_path / "r0", epochs=2,
                         eval_pairs=_music_pairs(c, 80, seed=1))
    cal = Calibration.load(tmp_path / "r0" / "calibration.json")
    assert first.calibration["fitted"] and cal.source == "fit" and cal.a > 0
    assert {"ece", "brier", "ece_raw", "brier_raw", "pass_rate"} <= set(first.calibration)
    again = train_reward(c, first.model_dir, tok, _music_pairs(c, 32, seed=2), tmp_path / "r1", epochs=1,
                         eval_pairs=_music_pairs(c, 4, seed=3), base_model=backbone[0])
    assert (again.model_dir / "adapter_config.json").exists() and not again.calibration["fitted"]
    assert finish_calibration(tmp_path / "r1", first.model_dir, 0) == "carried from round 0"
    assert Calibration.load(tmp_path / "r1" / "calibration.json").a == cal.a
    w0, w1 = load_file(first.model_dir / "adapter_model.safetensors"), load_file(
        again.model_dir / "adapter_model.safetensors")
    assert w0.keys() == w1.keys() and any(not torch.equal(w0[k], w1[k]) for k in w0)  # the same adapter, trained on


def test_relevance_without_lora_saves_full_weights(cfg, backbone, tmp_path):
    import copy

    from loops.reward import train_reward

    tok = load_tokenizer(backbone[1])
    c = copy.deepcopy(cfg)
    c.lora.enabled = False
    res = train_reward(c, backbone[0], tok, _music_pairs(c, 16), tmp_path / "full", epochs=1)
    assert (res.model_dir / "config.json").exists() and not (res.model_dir / "adapter_config.json").exists()
    more = train_reward(c, res.model_dir, tok, _music_pairs(c, 16), tmp_path / "more", epochs=1,
                        base_model=backbone[0])
    assert (more.model_dir / "config.json").exists()


def test_align_keeps_scores_above_tau_highest_first():
    assert align(["A", "B", "C"], [0.6, 0.4, 0.9], 0.5) == [("C", 0.9), ("A", 0.6)]
    assert align(["A"], [0.5], 0.5) == []


def test_a_hugging_face_checkpoint_from_a_local_directory(cfg, tmp_path):
    """The same code path loads a HF checkpoint saved to disk (a tiny BPE-tokenizer Qwen2 built here)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator([" ".join(CATS) + " Group portrait Recent categories Next category"] * 5,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", unk_token="<unk>")
    tok.save_pretrained(tmp_path)  # no pad token: loading must set one
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    hf = load_config(None, [f"backbone.name={tmp_path}"])
    tok = load_tokenizer(tmp_path, hf)
    model = load_causal_lm(tmp_path, hf, pad_token_id=tok.pad_token_id)
    assert tok.pad_token is not None and model.config.pad_token_id is not None
    from coea.candidates import rank_categories

    ranked = rank_categories(model, tok, [novelty_infer_prompt(hf.prompts, "D", ("Jazz",))], CATS,
                             exclude=[{"Jazz"}], top_m=3, completion_format=completion_text)
    assert len(ranked[0]) == 3 and {c for c, _ in ranked[0]} <= set(CATS) - {"Jazz"}

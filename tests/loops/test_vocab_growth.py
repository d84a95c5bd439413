"""A category that appears after round 0 grows the embedded tokenizer and base model and becomes a candidate.

Round 0 runs on a Parquet log whose catalogue lacks "Zydeco"; then items of that category are appended to the
catalogue (as a live log grows) and the next cycle runs. One module-scoped workdir keeps this affordable.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from coea.config import load_config
from coea.rounds import backbone_round, base_model_path, relevance_model_dir, tokenizer_path

NEW = "Zydeco"


@pytest.fixture(scope="module")
def grown(tiny_cfg, tmp_path_factory):
    import copy

    from coea.data.loaders import load_interactions
    from coea.data.parquet import write_parquet
    from loops.bootstrap import run_bootstrap
    from loops.cycle import run_cycle

    root = tmp_path_factory.mktemp("growth")
    data, workdir = root / "log", root / "work"
    write_parquet(load_interactions(tiny_cfg.data, tiny_cfg.synthetic, tiny_cfg.run.seed), data)
    cfg = copy.deepcopy(tiny_cfg)
    cfg.data.source, cfg.data.path = "parquet", str(data)
    run_bootstrap(cfg, workdir)
    items = pd.read_parquet(data / "items.parquet")
    new_items = pd.DataFrame({"item_id": [f"z{i:02d}" for i in range(5)], "category": NEW,
                              "title": [f"{NEW} #{i}" for i in range(5)]})
    pd.concat([items, new_items], ignore_index=True).to_parquet(data / "items.parquet", index=False)
    result = run_cycle(cfg, workdir)
    return cfg, workdir, result


def test_the_tokenizer_grows_append_only(grown):
    from coea.backbones import load_tokenizer, vocab_check

    cfg, workdir, result = grown
    assert backbone_round(workdir, 0) == 0 and backbone_round(workdir) == result.round == 1
    old, new = load_tokenizer(tokenizer_path(workdir, 0)), load_tokenizer(tokenizer_path(workdir, 1))
    old_vocab, new_vocab = old.get_vocab(), new.get_vocab()
    assert all(new_vocab[w] == i for w, i in old_vocab.items())  # no old id shifted
    assert NEW not in old_vocab and new_vocab[NEW] == len(old) and len(new) == len(old) + 1
    assert vocab_check(old, [NEW]).unknown == [NEW] and vocab_check(new, [NEW]).faithful
    metrics = json.loads((workdir / "rounds" / "001" / "metrics.json").read_text())
    assert metrics["backbone/new_tokens"] == 1 and metrics["backbone/unknown_names"] == 0
    assert metrics["backbone/vocab_size"] == len(new)


def test_the_grown_base_keeps_old_rows_and_starts_new_ones_at_the_category_mean(grown):
    from coea.backbones import load_causal_lm, load_tokenizer

    cfg, workdir, _ = grown
    old_tok = load_tokenizer(tokenizer_path(workdir, 0))
    old = load_causal_lm(base_model_path(cfg, workdir, 0), cfg).get_input_embeddings().weight.detach()
    model = load_causal_lm(base_model_path(cfg, workdir, 1), cfg)
    new = model.get_input_embeddings().weight.detach()
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # tied
    assert new.shape[0] == old.shape[0] + 1 and bool((new[: old.shape[0]] == old).all())
    categories = [c for c in cfg_categories(cfg) if c != NEW]
    ids = sorted({old_tok.convert_tokens_to_ids(c) for c in categories})
    np.testing.assert_allclose(new[-1].numpy(), old[ids].mean(0).numpy(), rtol=1e-6, atol=1e-7)


def cfg_categories(cfg) -> list[str]:
    from coea.data.loaders import load_interactions

    return load_interactions(cfg.data, cfg.synthetic, cfg.run.seed).categories


def test_the_new_category_is_a_candidate_in_the_next_round(grown):
    _, workdir, _ = grown
    table = pd.read_parquet(workdir / "rounds" / "001" / "candidates" / "candidates.parquet")
    with_new = table[table["candidates"].map(lambda c: NEW in list(c))]
    assert len(with_new) > 0, "the new category was never proposed"
    for row in with_new.itertuples():  # it got a Relevance score like any other candidate
        s = dict(zip(row.candidates, row.scores))[NEW]
        assert 0.0 < s < 1.0


def test_earlier_rounds_models_load_on_the_grown_base(grown):
    """Round 0's Novelty adapter and Relevance model score old texts on the grown base exactly as on their own."""
    import torch

    from coea.inference import load_models
    from coea.prompts import novelty_infer_prompt, relevance_prompt
    from coea.relevance import reward_logits

    cfg, workdir, _ = grown
    on_own = load_models(cfg, workdir, 0, 0, "cpu", backbone_round=0)
    on_grown = load_models(cfg, workdir, 0, 0, "cpu", backbone_round=1)
    prompt = novelty_infer_prompt(cfg.prompts, "a portrait", ("Jazz", "Chess"))
    ids = on_own.tokenizer(prompt, return_tensors="pt")
    assert ids["input_ids"].tolist() == on_grown.tokenizer(prompt, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        a, b = on_own.novelty(**ids).logits[0, -1], on_grown.novelty(**ids).logits[0, -1]
    assert b.shape[0] == a.shape[0] + 1
    torch.testing.assert_close(a, b[: a.shape[0]], rtol=1e-5, atol=1e-5)
    texts = [relevance_prompt(cfg.prompts, "a portrait", ["Jazz"], c) for c in ("Chess", "Poetry")]
    np.testing.assert_allclose(reward_logits(on_own.relevance, on_own.tokenizer, texts),
                               reward_logits(on_grown.relevance, on_grown.tokenizer, texts), rtol=1e-5, atol=1e-5)


def test_round_1_relevance_is_an_adapter_over_the_grown_base_with_a_calibration(grown):
    from safetensors import safe_open

    cfg, workdir, result = grown
    model_dir = relevance_model_dir(workdir, 1)
    assert (model_dir / "adapter_config.json").exists() and not (model_dir / "model.safetensors").exists()
    with safe_open(str(model_dir / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("score" in k for k in keys) and not any("embed_tokens" in k for k in keys)
    pco = workdir / "rounds" / "001" / "pco" / "adapter"
    with safe_open(str(pco / "adapter_model.safetensors"), "pt") as f:
        assert not any("embed_tokens" in k or "lm_head" in k for k in f.keys())  # DPO adapter stays LoRA only
    cal = json.loads((model_dir.parent / "calibration.json").read_text())
    assert {"a", "b", "source"} <= set(cal)
    assert "relevance/calibration_fitted" in result.metrics


def test_a_hugging_face_tokenizer_is_checked_not_grown(tmp_path):
    """A byte-level BPE backbone: a new name is spelled in subwords, nothing is grown, no backbone stage is written."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from loops.bootstrap import grow_backbone

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(["Jazz Chess Poetry"] * 5, trainer=trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>").save_pretrained(
        tmp_path / "rounds" / "000" / "backbone" / "tokenizer")
    cfg = load_config(None, [f"backbone.name={tmp_path / 'some-hf-checkpoint'}"])
    metrics = grow_backbone(cfg, tmp_path, 1, ["Chess", "Jazz", "Poetry", NEW, "Québécois Folk"])
    assert metrics["backbone/new_tokens"] == 0 and metrics["backbone/unknown_names"] == 0
    assert metrics["backbone/not_round_trip_names"] == 0 and metrics["backbone/round"] == 0
    assert not (tmp_path / "rounds" / "001" / "backbone").exists()
    assert base_model_path(cfg, tmp_path, 1) == cfg.backbone.name

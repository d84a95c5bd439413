"""Representatives (Eq. 7), statistical and llm portraits, the portrait cache."""

from __future__ import annotations

import numpy as np
import pytest

from coea.config import BackboneConfig, ProfileConfig
from coea.data.schema import Sequences
from coea.groups import (
    LlmPortraitWriter, PortraitCache, build_portraits, category_counts, representatives, statistical_portrait,
)

CATS = ["Chess", "Hiking", "Horror", "Jazz", "Opera", "Poetry"]


def tiny() -> tuple[Sequences, dict[str, str], np.ndarray]:
    """Two groups: A loves Jazz/Hiking/Chess, B loves Horror/Opera; every category has 2 items (i1..i12)."""
    item_category = {f"i{2 * c + j + 1}": cat for c, cat in enumerate(CATS) for j in range(2)}
    taste = {"A": ["Jazz", "Hiking", "Chess", "Jazz"], "B": ["Horror", "Opera", "Horror", "Poetry"]}
    idx = {cat: [j + 1 for j in range(12) if item_category[f"i{j + 1}"] == cat] for cat in CATS}
    long_items = [[idx[c][t % 2] for t, c in enumerate(taste["A" if u < 6 else "B"] * 2)] for u in range(12)]
    seqs = Sequences(user_ids=[f"u{u}" for u in range(12)], item_vocab=[f"i{j}" for j in range(1, 13)],
                     long_items=long_items, short_categories=[[]] * 12, c_short=[()] * 12,
                     features=np.zeros((12, 0), np.int64), feature_cardinalities=[], cutoff=0)
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal([3, 0], 0.5, (6, 2)), rng.normal([0, 3], 0.5, (6, 2))])
    return seqs, item_category, emb


def test_category_counts():
    seqs, item_category, _ = tiny()
    counts = category_counts(seqs, item_category, CATS)
    assert counts.shape == (12, 6)
    assert counts[0].tolist() == [2, 2, 0, 4, 0, 0]  # Chess, Hiking, Horror, Jazz, Opera, Poetry


def test_representatives_are_nearest_to_centroid():
    emb = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, -0.1], [0.0, 1.0]])
    reps = representatives(emb, ["a", "a", "a", "a", "b"], k=2)
    # centroid of a = (0.75, 0.25); row 2 points away from it
    assert set(reps["a"]) == {0, 1} or set(reps["a"]) == {0, 3}
    assert 2 not in reps["a"] and reps["b"] == [4]


def test_statistical_portrait_names_core_categories():
    seqs, item_category, _ = tiny()
    counts = category_counts(seqs, item_category, CATS)
    text, top = statistical_portrait(counts[:6].sum(0), counts.sum(0), CATS, top=3)
    assert top == ["Jazz", "Chess", "Hiking"]
    assert text == "Users in this group keep coming back to Jazz, Chess and Hiking; they rarely pick Horror."
    assert statistical_portrait(counts[:6].sum(0), counts.sum(0), CATS, top=3) == (text, top)


def test_build_portraits_statistical_with_default_group():
    seqs, item_category, emb = tiny()
    csids = ["0-1"] * 6 + ["2-0"] * 5 + ["default"]
    groups = build_portraits(csids=csids, embeddings=emb, user_ids=seqs.user_ids,
                             counts=category_counts(seqs, item_category, CATS), categories=CATS,
                             profile=ProfileConfig(k_representatives=3, top_categories=3),
                             backbone=BackboneConfig(), default_csid="default")
    assert [g.csid for g in groups] == ["0-1", "2-0", "default"]
    assert groups[0].size == 6 and len(groups[0].representatives) == 3
    assert set(groups[0].representatives) <= {f"u{u}" for u in range(6)}
    assert set(groups[1].top_categories) == {"Horror", "Opera", "Poetry"}
    assert groups[2].size == 1 and groups[2].representatives == [] and groups[2].portrait.startswith("A new user")


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    """A random 1-layer Qwen2 with a word-level tokenizer, saved offline."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    words = ["[UNK]", "[PAD]", "[EOS]", *CATS, "Here", "are", "the", "long-term", "interests", "of", "similar",
             "users", ":", "-", ",", "Describe", "this", "group's", "in", "two", "sentences", ".", "3", "2"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]",
                                   model_input_names=["input_ids", "attention_mask"])
    path = tmp_path_factory.mktemp("tiny_llm")
    fast.save_pretrained(path)
    cfg = Qwen2Config(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      pad_token_id=1, eos_token_id=2, bos_token_id=2)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    return str(path)


def test_llm_backend_generates_and_caches(tiny_llm, tmp_path):
    seqs, item_category, emb = tiny()
    profile = ProfileConfig(backend="llm", model=tiny_llm, k_representatives=2, max_new_tokens=4)
    writer = LlmPortraitWriter(model_path=tiny_llm, prompt=profile.prompt, max_new_tokens=4)
    assert "- Jazz, Chess, Hiking" in writer.render(["Jazz, Chess, Hiking"])
    counts = category_counts(seqs, item_category, CATS)
    csids = ["0-1"] * 6 + ["2-0"] * 6
    cache = PortraitCache()
    kw = dict(csids=csids, embeddings=emb, user_ids=seqs.user_ids, counts=counts, categories=CATS,
              profile=profile, backbone=BackboneConfig(), default_csid="default")
    groups = build_portraits(**kw, cache=cache)
    assert len(groups) == 3 and all(g.portrait for g in groups)
    assert cache.hits == 0 and set(cache.entries) == {"0-1", "2-0"}
    cache.save(tmp_path / "cache.json")

    class Refuses:  # a writer that must not be called: both groups are cached
        identity = writer.identity

        def write(self, lines):
            raise AssertionError("regenerated an unchanged group")

    again = PortraitCache.load(tmp_path / "cache.json")
    groups2 = build_portraits(**kw, cache=again, writer=Refuses())
    assert again.hits == 2 and [g.portrait for g in groups2] == [g.portrait for g in groups]


def test_llm_backend_refuses_embedded():
    with pytest.raises(ValueError, match="statistical"):
        LlmPortraitWriter(model_path="embedded", prompt="{k}{users}", max_new_tokens=2)

"""Novelty candidate generation: closed-vocabulary scoring and trie-constrained decoding.

A tiny random Qwen2 (hidden 32, 2 layers) with two tokenizers built offline and loaded back through
``from_pretrained``: a word-level one (punctuation split off, so "Sci-Fi" is three tokens) and a byte-level BPE
trained on a small corpus (multi-token names, leading-space variants). Categories share prefixes on purpose.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config

from coea.candidates import (
    CategoryTrie,
    CompletionTokenizer,
    category_logprobs,
    generate_candidates,
    propose,
    rank_categories,
)
from coea.config import NoveltyConfig

CATEGORIES = [
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Science", "Science Fiction", "Thriller",
    "War", "Western",
]
WORDS = ["the", "user", "likes", "group", "enjoys", "recent", "watched", "next", "new", "interest", "is", "and"]
TEMPLATE = "Group: {portrait}\nRecent: {recent}\nA new interest:"


def _corpus() -> list[str]:
    lines = []
    for i, c in enumerate(CATEGORIES):
        other = CATEGORIES[(i * 7 + 3) % len(CATEGORIES)]
        lines.append(TEMPLATE.format(portrait=f"the group likes {c} and {other}", recent=f"{other}, {c}") + " " + c)
        lines.append(f"{c} {other} {c}, {other}: {c}-{other} {c}'s")
    lines.append(" ".join(WORDS) + " : , - ' \n")
    return lines


def _wrap(tok: Tokenizer, path) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    fast.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def _word_level(path) -> PreTrainedTokenizerFast:
    pre = pre_tokenizers.Whitespace()
    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2}
    for line in _corpus():
        for word, _ in pre.pre_tokenize_str(line):
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()  # joins words with spaces; decoded text is never used to find names
    return _wrap(tok, path)


def _byte_bpe(path) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["[PAD]", "[UNK]", "[EOS]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    return _wrap(tok, path)


def _model(vocab_size: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=2, bos_token_id=None)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    with torch.no_grad():  # random init is near-uniform; sharpen it so rankings mean something
        model.lm_head.weight.mul_(40.0)
    return model


@pytest.fixture(scope="module", params=["word", "bpe"])
def lm(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    tokenizer = _word_level(path) if request.param == "word" else _byte_bpe(path)
    return _model(len(tokenizer), seed=1), tokenizer, request.param


def _prompt(portrait_words: list[str], recent: list[str]) -> str:
    return TEMPLATE.format(portrait="the group " + " ".join(portrait_words), recent=", ".join(recent))


def _naive_logprob(model, tokenizer, prompt: str, completion: str, append_eos: bool = True) -> float:
    """Full forward on prompt + completion; the completion starts where tok(prompt) and tok(prompt + completion)
    diverge (trl's SFT convention)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + completion)["input_ids"] + ([tokenizer.eos_token_id] if append_eos else [])
    n = 0
    while n < min(len(prompt_ids), len(full)) and prompt_ids[n] == full[n]:
        n += 1
    ids = torch.tensor([full])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # (T, V)
    return sum(logp[t - 1, full[t]].item() for t in range(n, len(full)))


PROMPTS = [
    _prompt(["likes", "Drama"], ["Comedy", "Sci-Fi"]),
    _prompt(["enjoys", "Science", "Fiction", "and", "Film-Noir", "the", "recent", "watched"], ["War"]),
    _prompt([], ["Children's", "Horror", "Western", "Musical"]),
    "Next:",  # very short: its batch mates are much longer (left padding)
]


# ------------------------------------------------------------------------------------------------ tokenisation


def test_fixture_has_multi_token_names_and_shared_prefixes(lm):
    _, tokenizer, kind = lm
    comp = CompletionTokenizer(tokenizer, CATEGORIES, append_eos=False)
    pairs = comp.in_context(PROMPTS[0], comp.prompt_ids([PROMPTS[0]])[0])
    ids = {c: completion for c, (_, completion) in zip(CATEGORIES, pairs)}
    assert len(ids["Sci-Fi"]) >= 2 and len(ids["Film-Noir"]) >= 2 and len(ids["Science Fiction"]) >= 2
    assert ids["Science Fiction"][: len(ids["Science"])] == ids["Science"]  # "Science" ends inside a longer name
    if kind == "bpe":  # leading-space variant: " Drama" in context is not "Drama" on its own
        assert tokenizer("Drama", add_special_tokens=False)["input_ids"] != list(ids["Drama"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(list("abcXYZ -:',\n") + ["Sci", "Fi", "Science ", " the", "  "]),
                      max_size=40))
def test_tail_shortcut_matches_full_tokenisation(lm, pieces):
    _, tokenizer, _ = lm
    prompt = "Group: " + "".join(pieces)
    cached = CompletionTokenizer(tokenizer, CATEGORIES, boundary_chars=8)
    exact = CompletionTokenizer(tokenizer, CATEGORIES, boundary_chars=None)
    ids = cached.prompt_ids([prompt])[0]
    assert cached.in_context(prompt, ids) == exact.in_context(prompt, ids)


def test_unstable_boundary_conditions_on_the_sft_context(lm):
    """A prompt ending in a space: BPE merges " Drama" across the boundary; scoring must follow trl's split."""
    model, tokenizer, kind = lm
    prompt = PROMPTS[0] + " "
    if kind == "bpe":  # the trailing space merges into every name: the context drops it
        comp = CompletionTokenizer(tokenizer, CATEGORIES, completion_format=lambda c: c)
        prompt_ids = comp.prompt_ids([prompt])[0]
        assert {context for context, _ in comp.in_context(prompt, prompt_ids)} == {tuple(prompt_ids[:-1])}
    got = category_logprobs(model, tokenizer, [prompt], CATEGORIES, completion_format=lambda c: c)
    for c, name in enumerate(CATEGORIES):
        assert got[0, c].item() == pytest.approx(_naive_logprob(model, tokenizer, prompt, name), abs=1e-4)


# ------------------------------------------------------------------------------------------------ scoring


@pytest.mark.parametrize("append_eos", [True, False])
def test_scores_equal_naive_forward(lm, append_eos):
    model, tokenizer, _ = lm
    got = category_logprobs(model, tokenizer, PROMPTS, CATEGORIES, append_eos=append_eos, batch_size=3, max_rows=7)
    for p, prompt in enumerate(PROMPTS):
        for c, name in enumerate(CATEGORIES):
            want = _naive_logprob(model, tokenizer, prompt, " " + name, append_eos)
            assert got[p, c].item() == pytest.approx(want, abs=1e-4), (prompt, name)


def test_scores_do_not_depend_on_batch_composition(lm):
    model, tokenizer, _ = lm
    long = _prompt(["likes"] * 40, ["Drama"])
    alone = category_logprobs(model, tokenizer, [PROMPTS[3]], CATEGORIES)
    batched = category_logprobs(model, tokenizer, [long, PROMPTS[3], PROMPTS[0]], CATEGORIES, batch_size=8)
    torch.testing.assert_close(batched[1], alone[0], atol=1e-5, rtol=0)


def test_rank_is_sorted_top_m_and_respects_exclusion(lm):
    model, tokenizer, _ = lm
    exclude = [{"Comedy", "Sci-Fi"}, set(), {"Science"}, set(CATEGORIES[:-2])]
    ranked = rank_categories(model, tokenizer, PROMPTS, CATEGORIES, exclude=exclude, top_m=5)
    full = category_logprobs(model, tokenizer, PROMPTS, CATEGORIES)
    for p, row in enumerate(ranked):
        names = [n for n, _ in row]
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True)
        assert not set(names) & exclude[p]
        allowed = [(full[p, c].item(), n) for c, n in enumerate(CATEGORIES) if n not in exclude[p]]
        assert names == [n for _, n in sorted(allowed, key=lambda x: -x[0])][: len(names)]
        assert len(row) == min(5, len(allowed))
    assert len(ranked[3]) == 2  # only two categories left to propose
    everything = rank_categories(model, tokenizer, PROMPTS[:1], CATEGORIES, exclude=[set(CATEGORIES)], top_m=5)
    assert everything == [[]]


def test_peft_wrapped_model_scores_like_its_base(lm):
    peft = pytest.importorskip("peft")
    model, tokenizer, _ = lm
    wrapped = peft.get_peft_model(_model(len(tokenizer), seed=1),
                                  peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_alpha=4))
    torch.testing.assert_close(category_logprobs(wrapped, tokenizer, PROMPTS[:2], CATEGORIES),
                               category_logprobs(model, tokenizer, PROMPTS[:2], CATEGORIES), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ trie


def test_trie_allows_eos_only_at_complete_names():
    names = ["Science", "Science Fiction", "Sci-Fi"]
    trie = CategoryTrie([[(5,)], [(5, 6)], [(7, 8, 9)]], names)
    everything = 0b111
    assert sorted(trie.allowed(trie.root, everything)[0]) == [5, 7]
    assert trie.allowed(trie.walk([5]), everything) == ([6], True)  # "Science" may end or continue
    assert trie.allowed(trie.walk([7, 8]), everything) == ([9], False)
    assert trie.allowed(trie.walk([5]), 0b001) == ([], True)  # "Science Fiction" excluded
    assert trie.allowed(trie.root, 0b100) == ([7], False)
    assert trie.match([5, 6, 2], eos_id=2, allowed_mask=everything) == 1
    assert trie.match([5, 6], eos_id=2, allowed_mask=everything) is None  # cut off before EOS
    assert trie.match([7, 8, 2], eos_id=2, allowed_mask=everything) is None  # incomplete name
    assert trie.match([5, 2], eos_id=2, allowed_mask=0b110) is None  # excluded
    with pytest.raises(ValueError, match="same ids"):
        CategoryTrie([[(5,)], [(5,)]], ["A", "B"])


# ------------------------------------------------------------------------------------------------ decoding


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_decoded_candidates_are_always_allowed_catalogue_names(lm, data):
    model, tokenizer, _ = lm
    categories = data.draw(st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=len(CATEGORIES), unique=True))
    n = data.draw(st.integers(1, 3))
    prompts, exclude = [], []
    for _ in range(n):
        words = data.draw(st.lists(st.sampled_from(WORDS + CATEGORIES), max_size=12))
        prompts.append(_prompt(words, words[:2]) + data.draw(st.sampled_from(["", " ", "\n", ":"])))
        exclude.append(set(data.draw(st.lists(st.sampled_from(categories), max_size=len(categories)))))
    mode = data.draw(st.sampled_from(["sample", "beam"]))
    m = data.draw(st.integers(1, 4))
    result = generate_candidates(model, tokenizer, prompts, categories, mode=mode, num_candidates=m,
                                 exclude=exclude, temperature=data.draw(st.sampled_from([0.0, 0.7, 1.5])),
                                 seed=data.draw(st.integers(0, 99)), batch_size=2)
    assert len(result.candidates) == n
    for names, ex in zip(result.candidates, exclude):
        assert set(names) <= set(categories) and not set(names) & ex
        assert len(names) == len(set(names)) <= m
    assert 0 <= result.dropped <= result.decoded


@pytest.mark.parametrize("mode", ["sample", "beam"])
def test_all_excluded_fails_closed_and_counts(lm, mode):
    model, tokenizer, _ = lm
    exclude = [set(CATEGORIES), {"Drama"}]
    result = generate_candidates(model, tokenizer, PROMPTS[:2], CATEGORIES, mode=mode, num_candidates=3,
                                 exclude=exclude, seed=0)
    assert result.candidates[0] == []
    assert len(result.candidates[1]) == 3 and "Drama" not in result.candidates[1]
    assert result.dropped >= 3  # the first prompt's three sequences, none decoded unconstrained


def test_truncated_names_are_dropped_not_guessed(lm):
    model, tokenizer, _ = lm
    multi = ["Sci-Fi", "Film-Noir", "Science Fiction"]  # at least two tokens each, plus EOS
    result = generate_candidates(model, tokenizer, PROMPTS[:1], multi, mode="sample", num_candidates=2,
                                 max_new_tokens=1, sample_rounds=1)
    assert result.candidates == [[]] and result.dropped == result.decoded == 2


def test_exhaustive_beam_matches_closed_vocabulary_ranking(lm):
    """With a beam per category and one token sequence per name, beam search is exact: same top-M as scoring."""
    model, tokenizer, kind = lm
    if kind != "word":
        pytest.skip("BPE adds standalone variants, which beam search may also follow")
    result = generate_candidates(model, tokenizer, PROMPTS[:2], CATEGORIES, mode="beam", num_candidates=4,
                                 num_beams=len(CATEGORIES))
    ranked = rank_categories(model, tokenizer, PROMPTS[:2], CATEGORIES, top_m=4)
    assert result.candidates == [[n for n, _ in r] for r in ranked]
    assert result.dropped == 0


def test_beam_is_batch_invariant_and_sampling_is_seeded(lm):
    model, tokenizer, _ = lm
    long = _prompt(["likes"] * 30, ["Drama"])
    alone = generate_candidates(model, tokenizer, [PROMPTS[3]], CATEGORIES, mode="beam", num_candidates=3)
    batched = generate_candidates(model, tokenizer, [long, PROMPTS[3]], CATEGORIES, mode="beam", num_candidates=3)
    assert batched.candidates[1] == alone.candidates[0]
    a = generate_candidates(model, tokenizer, PROMPTS, CATEGORIES, mode="sample", num_candidates=3, seed=5)
    b = generate_candidates(model, tokenizer, PROMPTS, CATEGORIES, mode="sample", num_candidates=3, seed=5)
    assert a == b


# ------------------------------------------------------------------- transformers' prefix_allowed_tokens_fn


def _both(model, tokenizer, prompts, categories, **kw):
    ours = generate_candidates(model, tokenizer, prompts, categories, constraint="processor", **kw)
    hf = generate_candidates(model, tokenizer, prompts, categories, constraint="transformers", **kw)
    return ours, hf


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_prefix_allowed_tokens_fn_gives_the_processors_candidates(lm, data):
    """transformers' prefix constraint and coea's trie processor: identical candidates, drops and decoded counts
    (same seed for sampling, same beams), on random catalogues, prompts (stable and unstable boundaries),
    exclusions (everything excluded included), temperatures and beam widths (wider than the catalogue included)."""
    model, tokenizer, _ = lm
    categories = data.draw(st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=len(CATEGORIES), unique=True))
    n = data.draw(st.integers(1, 3))
    prompts, exclude = [], []
    for _ in range(n):
        words = data.draw(st.lists(st.sampled_from(WORDS + CATEGORIES), max_size=12))
        prompts.append(_prompt(words, words[:2]) + data.draw(st.sampled_from(["", " ", "\n", ":"])))
        exclude.append(set(data.draw(st.lists(st.sampled_from(categories), max_size=len(categories)))))
    mode = data.draw(st.sampled_from(["sample", "beam"]))
    kw = dict(mode=mode, num_candidates=data.draw(st.integers(1, 4)), exclude=exclude,
              temperature=data.draw(st.sampled_from([0.0, 0.7, 1.5])), seed=data.draw(st.integers(0, 99)),
              batch_size=data.draw(st.sampled_from([1, 2, 8])), sample_rounds=data.draw(st.integers(1, 3)),
              num_beams=data.draw(st.sampled_from([None, 3, 8, 25])))
    ours, hf = _both(model, tokenizer, prompts, categories, **kw)
    assert hf == ours


@pytest.mark.parametrize("mode", ["sample", "beam"])
def test_prefix_constraint_equals_processor_on_fixed_cases(lm, mode):
    model, tokenizer, _ = lm
    exclude = [set(CATEGORIES), {"Drama"}, set(), {"Science", "Sci-Fi"}]  # the first: every row a dead end
    ours, hf = _both(model, tokenizer, PROMPTS, CATEGORIES, mode=mode, num_candidates=5, exclude=exclude, seed=3,
                     num_beams=len(CATEGORIES) + 4)
    assert hf == ours and hf.candidates[0] == [] and hf.dropped > 0
    assert all(len(c) == 5 for c in hf.candidates[1:])
    short = _both(model, tokenizer, PROMPTS[:2], ["Sci-Fi", "Film-Noir", "Science Fiction"], mode=mode,
                  num_candidates=2, max_new_tokens=1, sample_rounds=1)  # cut off before EOS: all dropped
    assert short[0] == short[1] and short[1].candidates == [[], []]


def test_unknown_constraint_is_refused(lm):
    model, tokenizer, _ = lm
    with pytest.raises(ValueError, match="constraint"):
        generate_candidates(model, tokenizer, PROMPTS[:1], CATEGORIES, num_candidates=1, constraint="trie")


@pytest.mark.parametrize("mode", ["score", "sample", "beam"])
def test_propose_follows_config(lm, mode):
    model, tokenizer, _ = lm
    config = NoveltyConfig(generation_mode=mode, num_candidates=2)
    recent = [{"Comedy", "Sci-Fi"}, {"War"}]
    result = propose(model, tokenizer, PROMPTS[:2], CATEGORIES, recent=recent, config=config)
    for names, ex in zip(result.candidates, recent):
        assert len(names) == 2 and not set(names) & ex
    if mode == "score":
        assert result.dropped == 0 and math.isfinite(result.decoded)

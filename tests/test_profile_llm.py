"""The Profile LLM end to end: ``profile.backend: llm`` on a tiny local Hugging Face checkpoint.

The checkpoint is a Qwen2 built so that greedy decoding is known in advance: its layers add nothing to the
residual stream (o_proj and down_proj are zero), each token's embedding is a scaled one-hot, and ``lm_head`` maps
token t to the one-hot of next(t). The model is a bigram table: after a prompt ending in the category ``Jazz`` it
writes ``jazz lovers.`` and stops (EOS). The profile prompt ends with the representatives' lines, so each group's
portrait is fixed by the last category of its last representative's line, which the test works out from the data
on its own.

The test runs a whole cycle (DSIE -> bootstrap -> round 1) with that writer and checks that the portraits in
groups.jsonl are the LLM's words for each group, that they are cached, and that the later stages use them: the
PCO preference pairs of round 1 are built on Novelty prompts carrying exactly those portraits.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from coea.groups import LlmPortraitWriter, tidy_portrait, user_line

PROMPT = "Describe these {k} users in a few words:\n{users}"
# Qwen's ChatML layout, in miniature
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def reply(category: str) -> list[str]:
    """What the tiny checkpoint writes after a prompt whose last token is `` <category>``."""
    return [" " + category.lower(), " lovers", "."]


CHAT_REPLY = [" group", " lovers", "."]


def build_checkpoint(path: Path, categories: list[str]) -> Path:
    """A byte-level BPE tokenizer (what Qwen2Tokenizer loads) and the bigram Qwen2, saved with save_pretrained.

    transformers 5 loads the tokenizer of a ``qwen2`` checkpoint as ``Qwen2Tokenizer`` whatever its
    tokenizer_config says, so the tokenizer has to be a byte-level BPE like Qwen's; the chain is built on the ids
    of the tokenizer as loaded back.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    words = [*categories, *[c.lower() for c in categories], "lovers", "group"]
    lines = ["- " + ", ".join(categories[i:] + categories[:i]) for i in range(len(categories))]
    corpus = [PROMPT.format(k=k, users="\n".join(lines[:k])) for k in range(1, 10)]
    corpus += [" ".join(words) + "." for _ in range(30)] + ["<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    v = len(fast)
    Qwen2Config(vocab_size=v).save_pretrained(path)  # so that AutoTokenizer resolves it as a Qwen2 checkpoint
    tok = AutoTokenizer.from_pretrained(path)

    def one(text: str) -> int:
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) == 1, (text, ids)
        return ids[0]

    eos = tok.eos_token_id
    nxt = {}
    for c in categories:
        chain = [one(" " + c), *[one(t) for t in reply(c)], eos]
        nxt |= dict(zip(chain[:-1], chain[1:]))
    chat_end = tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True)
    chat_end = chat_end["input_ids"] if hasattr(chat_end, "keys") else chat_end
    chain = [chat_end[-1], *[one(t) for t in CHAT_REPLY], eos]
    nxt |= dict(zip(chain[:-1], chain[1:]))

    hidden = -(-v // 4) * 4  # two heads of even width (rotary embeddings)
    cfg = Qwen2Config(vocab_size=v, hidden_size=hidden, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=eos, bos_token_id=None)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :v] = 10.0 * torch.eye(v)  # token t -> 10 * e_t
        for layer in model.model.layers:  # every block adds nothing: the last hidden state is the last embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for t in range(v):  # logits = one-hot of next(t), EOS by default
            model.lm_head.weight[nxt.get(t, eos), t] = 1.0
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    return path


def decoded(checkpoint: Path, tokens: list[str]) -> str:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    ids = [i for t in tokens for i in tok.encode(t, add_special_tokens=False)]
    return tidy_portrait(tok.decode(ids, skip_special_tokens=True), finished=True)


@pytest.fixture(scope="module")
def checkpoint(tiny_cfg, tmp_path_factory):
    from coea.rounds import load_data

    return build_checkpoint(tmp_path_factory.mktemp("profile_llm"), list(load_data(tiny_cfg).categories))


def test_tiny_checkpoint_writes_what_it_was_built_to(checkpoint):
    plain = LlmPortraitWriter(model_path=str(checkpoint), prompt=PROMPT, max_new_tokens=8)
    assert plain.write(["Jazz, Chess", "Poetry, Hiking"]) == decoded(checkpoint, reply("Hiking")) == "hiking lovers."
    chat = LlmPortraitWriter(model_path=str(checkpoint), prompt=PROMPT, max_new_tokens=8, use_chat_template=True)
    rendered = chat.render(["Jazz, Chess"])
    assert rendered.startswith("<|im_start|>user\nDescribe these 1 users") and rendered.endswith("assistant\n")
    assert chat.write(["Jazz, Chess"]) == decoded(checkpoint, CHAT_REPLY) == "group lovers."
    cut = LlmPortraitWriter(model_path=str(checkpoint), prompt=PROMPT, max_new_tokens=2)
    assert cut.write(["Jazz"]) == "jazz lovers"  # cut before its full stop: no complete sentence to trim back to


def test_tidy_portrait():
    assert tidy_portrait("  Likes jazz.\n\nAnd chess. They also", finished=False) == "Likes jazz. And chess."
    assert tidy_portrait("Likes jazz.\nAnd chess. They also", finished=True) == "Likes jazz. And chess. They also"
    assert tidy_portrait("no sentence end", finished=False) == "no sentence end"


@pytest.fixture(scope="module")
def llm_cycle(tiny_cfg, checkpoint, tmp_path_factory):
    from loops.cycle import run_cycle

    cfg = dataclasses.replace(tiny_cfg, profile=dataclasses.replace(
        tiny_cfg.profile, backend="llm", model=str(checkpoint), prompt=PROMPT, max_new_tokens=16,
        k_representatives=3))
    workdir = tmp_path_factory.mktemp("llm_cycle")
    result = run_cycle(cfg, workdir)
    return cfg, workdir, result


def _expected_portraits(cfg, workdir: Path, checkpoint: Path) -> dict[str, str]:
    """Per warm group: the tiny checkpoint's reply to the last category of its last representative's line."""
    from coea.data.sequences import build_sequences
    from coea.groups import category_counts
    from coea.rounds import cutoff, load_data

    inter = load_data(cfg)
    seqs = build_sequences(inter, cfg.data, cutoff=cutoff(cfg, inter, 0))
    counts = category_counts(seqs, inter.item_category, list(inter.categories))
    row = {u: i for i, u in enumerate(seqs.user_ids)}
    out = {}
    for line in (workdir / "rounds" / "000" / "dsie" / "groups.jsonl").read_text().splitlines():
        g = json.loads(line)
        if g["csid"] == "default":
            continue
        last = user_line(counts[row[g["representatives"][-1]]], list(inter.categories),
                         cfg.profile.categories_per_user).split(", ")[-1]
        out[g["csid"]] = decoded(checkpoint, reply(last))
    return out


def test_dsie_writes_the_llms_portraits_and_caches_them(llm_cycle, checkpoint):
    cfg, workdir, result = llm_cycle
    assert result.promoted
    dsie = workdir / "rounds" / "000" / "dsie"
    groups = {g["csid"]: g for g in map(json.loads, (dsie / "groups.jsonl").read_text().splitlines())}
    expected = _expected_portraits(cfg, workdir, checkpoint)
    assert len(expected) > 1 and len(set(expected.values())) > 1  # the groups got different portraits
    assert {c: groups[c]["portrait"] for c in expected} == expected
    assert groups["default"]["portrait"].startswith("A new user")  # cold start keeps the statistical text
    cache = json.loads((dsie / "portrait_cache.json").read_text())
    assert {c: e["portrait"] for c, e in cache.items()} == expected


def test_later_stages_use_the_llms_portraits(llm_cycle, checkpoint):
    from coea.dsie import load_dsie
    from coea.prompts import novelty_infer_prompt

    cfg, workdir, _ = llm_cycle
    portraits = load_dsie(workdir / "rounds" / "000" / "dsie").portraits
    llm_written = {c: p for c, p in portraits.items() if c != "default"}
    pairs = json.loads((workdir / "rounds" / "001" / "pco" / "pairs.json").read_text())
    assert pairs
    prefix = {p: novelty_infer_prompt(cfg.prompts, p, []).split(p)[0] + p for p in portraits.values()}
    used = [next((c for c, p in portraits.items() if pair["prompt"].startswith(prefix[p])), None) for pair in pairs]
    assert None not in used  # every PCO prompt opens with one of the DSIE portraits
    assert {c for c in used if c != "default"} and all(portraits[c] in pair["prompt"] for c, pair in zip(used, pairs))
    assert not any("keep coming back" in pair["prompt"] for pair in pairs)  # no statistical portrait anywhere
    from coea.groups_report import load_groups, render_table

    table = render_table(load_groups(workdir), width=200)
    assert all(p.split()[0] in table for p in llm_written.values())


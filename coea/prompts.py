"""The one prompt module for every LLM (STYLE habit 6); templates live in ``cfg.prompts``.

- P_ft-nov (Eq. 8-9): D_s + recent categories -> completion S_short(t)           :func:`novelty_train_example`
- P_infer-nov: D_s + C'_short + novelty trigger                                  :func:`novelty_infer_prompt`
- P_ft-rel / P_infer-rel (Eq. 11): D_s + recent categories + candidate           :func:`relevance_prompt`
- LLM-as-a-Judge (Base, LS, CoT, LtM): history + recommended category -> 1-5      coea/judge_prompts.py

One user state renders one text. A state is (portrait of the user's group, C'_short), where C'_short at click
position t is :func:`recent_at`: the canonical set (storage.keys.canonical_recent) of the categories of the user's
last ``data.short_k`` clicks before t -- exactly what ``coea.data.sequences`` gives as ``c_short`` at a cut-off
just before that click, and what the KV key hashes. Every function here renders ``{recent}`` through the same
canonicalisation, whatever order or duplicates the caller passes, so training (SFT examples, Relevance pairs) and
inference (candidates, Relevance scores, DPO pairs) cannot disagree on the text of one state. With
``data.short_k: 2`` (demo, ml-100k, ml-1m) C'_short(t) is the paper's S_short(t-2:t-1) as a set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coea.data.loaders import load_interactions
from coea.data.sequences import build_sequences, click_categories_by_user
from coea.judge_prompts import render_judge_sample
from storage.keys import canonical_recent, kv_key


def completion_text(category: str) -> str:
    """The exact completion string SFT trains on and candidate scoring / decoding produce."""
    return f" {category}"


def recent_at(clicked: Sequence[str], t: int, short_k: int) -> tuple[str, ...]:
    """C'_short of the user state before click position ``t`` of ``clicked`` (chronological click categories).

    The canonical set of ``clicked[t - short_k : t]``: what ``build_sequences`` returns as ``c_short`` at a cut-off
    between clicks t-1 and t.
    """
    return canonical_recent(clicked[max(0, t - short_k):t])


def _recent(cfg_prompts: Any, recent: Sequence[str]) -> str:
    canon = canonical_recent(recent)  # one rendering per state: the canonical order inference and the KV key use
    return cfg_prompts.recent_separator.join(canon) if canon else "none"


def novelty_train_example(cfg_prompts: Any, portrait: str, recent: Sequence[str], target: str) -> dict[str, str]:
    """P_ft-nov: {"prompt", "completion"} in trl's prompt-completion format (loss on the completion only)."""
    return {"prompt": cfg_prompts.novelty_train.format(portrait=portrait, recent=_recent(cfg_prompts, recent)),
            "completion": completion_text(target)}


def novelty_infer_prompt(cfg_prompts: Any, portrait: str, c_short: Sequence[str]) -> str:
    """P_infer-nov for a key (CSID -> portrait, C'_short): also the prompt of DPO's preference pairs."""
    return cfg_prompts.novelty_infer.format(portrait=portrait, recent=_recent(cfg_prompts, c_short))


def relevance_prompt(cfg_prompts: Any, portrait: str, recent: Sequence[str], candidate: str) -> str:
    """P_ft-rel / P_infer-rel: the text the Relevance LLM scores, in training and at inference alike.

    ``recent`` is the state's C'_short in any order (it is canonicalised here); the tokenizer's EOS is appended
    when scoring (coea.relevance.encode).
    """
    return cfg_prompts.relevance.format(portrait=portrait, recent=_recent(cfg_prompts, recent), candidate=candidate)


def click_sequence_text(cfg_prompts: Any, portrait: str, clicked: Sequence[str], next_category: str) -> str:
    """Pretraining text of the embedded backbone: the Relevance template with the recent clicks *in click order*.

    The one rendering that keeps the order (and duplicates) of the clicks: it is a stand-in for the pretraining a
    hub checkpoint already has, and which category came last is what it teaches (docs/llms.md, "Backbones").
    Never used to fine-tune or to query an LLM: those render user states through :func:`relevance_prompt`.
    """
    recent = cfg_prompts.recent_separator.join(clicked) if clicked else "none"
    return cfg_prompts.relevance.format(portrait=portrait, recent=recent, candidate=next_category)


def render_sample(cfg: Any) -> str:
    """Every template rendered for a sample user of the configured data set (``coea prompts``).

    The sample is the first user with a click (t >= 2) whose category is not in the C'_short before it, so the
    P_ft-nov example shows a real (C'_short(t) -> S_short(t)) step; the inference prompts use that user's C'_short
    at the end of the data.
    """
    inter = load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)
    seqs = build_sequences(inter, cfg.data)
    clicks = click_categories_by_user(inter)
    row, recent, target = 0, [], inter.categories[0]
    for i, u in enumerate(seqs.user_ids):
        cats = [c for _, c in clicks.get(u, [])]
        t = next((t for t in range(2, len(cats)) if cats[t] not in recent_at(cats, t, cfg.data.short_k)), None)
        if t is not None:
            row, recent, target = i, list(recent_at(cats, t, cfg.data.short_k)), cats[t]
            break
    c_short = seqs.c_short[row]
    portrait = "<portrait of the user's group, written by the Profile LLM>"
    candidate = next((c for c in inter.categories if c not in c_short), inter.categories[0])
    ex = novelty_train_example(cfg.prompts, portrait, recent, target)
    parts = [
        f"# sample user {seqs.user_ids[row]}: C'_short = {list(c_short)}; "
        f"P_ft-nov step: C'_short(t) = {recent} -> S_short(t) = {target!r}",
        f"# KV key (csid 'default'): {kv_key('default', c_short).decode()}",
        "## P_ft-nov (prompt + completion)", ex["prompt"] + ex["completion"],
        "## P_infer-nov", novelty_infer_prompt(cfg.prompts, portrait, c_short),
        "## P_ft-rel / P_infer-rel", relevance_prompt(cfg.prompts, portrait, c_short, candidate),
        render_judge_sample(list(c_short), candidate),
    ]
    return "\n".join(parts)

"""The one prompt module for every LLM (STYLE habit 6); templates live in ``cfg.prompts``.

- P_ft-nov (Eq. 8-9): D_s + S_short(t-2:t-1) -> completion S_short(t)            :func:`novelty_train_example`
- P_infer-nov: D_s + C'_short + novelty trigger                                  :func:`novelty_infer_prompt`
- P_ft-rel / P_infer-rel (Eq. 11): D_s + recent categories + candidate           :func:`relevance_prompt`

Recent categories at inference are the canonical C'_short (storage.keys.canonical_recent), so the prompt is a
deterministic function of exactly the KV key's inputs (CSID -> portrait, canonical C'_short). App. A.2 pairs the
short-term input with S_short(t-2:t-1) in training and uses the last two categories at inference; with
``data.short_k: 2`` (demo, ml-100k) C'_short is exactly that pair, and training renders S_short(t-2:t-1) in the
same canonical order, so the two prompts carry the same information in the same form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def completion_text(category: str) -> str:
    """The exact completion string SFT trains on and candidate scoring / decoding produce."""
    return f" {category}"


def _recent(cfg_prompts: Any, recent: Sequence[str]) -> str:
    return cfg_prompts.recent_separator.join(recent) if recent else "none"


def novelty_train_example(cfg_prompts: Any, portrait: str, recent: Sequence[str], target: str) -> dict[str, str]:
    """P_ft-nov: {"prompt", "completion"} in trl's prompt-completion format (loss on the completion only)."""
    from storage.keys import canonical_recent

    canon = canonical_recent(recent)  # the same canonical order inference and the KV key use
    return {"prompt": cfg_prompts.novelty_train.format(portrait=portrait, recent=_recent(cfg_prompts, canon)),
            "completion": completion_text(target)}


def novelty_infer_prompt(cfg_prompts: Any, portrait: str, c_short: Sequence[str]) -> str:
    """P_infer-nov for a key: ``c_short`` must be canonical (it is what the KV key hashes)."""
    return cfg_prompts.novelty_infer.format(portrait=portrait, recent=_recent(cfg_prompts, c_short))


def relevance_prompt(cfg_prompts: Any, portrait: str, recent: Sequence[str], candidate: str) -> str:
    """P_ft-rel / P_infer-rel: the text the Relevance LLM scores (the tokenizer's EOS is appended when scoring)."""
    return cfg_prompts.relevance.format(portrait=portrait, recent=_recent(cfg_prompts, recent), candidate=candidate)


def render_sample(cfg: Any) -> str:
    """Every template rendered for a sample user of the configured data set (``coea prompts``).

    The sample is the first user with a click whose category differs from the two before it, so the P_ft-nov
    example shows a real (S_short(t-2:t-1) -> S_short(t)) step; the inference prompts use that user's C'_short.
    """
    from coea.data.loaders import load_interactions
    from coea.data.sequences import build_sequences, click_categories_by_user
    from storage.keys import kv_key

    inter = load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)
    seqs = build_sequences(inter, cfg.data)
    clicks = click_categories_by_user(inter)
    row, recent, target = 0, [], inter.categories[0]
    for i, u in enumerate(seqs.user_ids):
        cats = [c for _, c in clicks.get(u, [])]
        t = next((t for t in range(2, len(cats)) if cats[t] not in cats[t - 2:t]), None)
        if t is not None:
            row, recent, target = i, cats[t - 2:t], cats[t]
            break
    c_short = seqs.c_short[row]
    portrait = "<portrait of the user's group, written by the Profile LLM>"
    candidate = next((c for c in inter.categories if c not in c_short), inter.categories[0])
    ex = novelty_train_example(cfg.prompts, portrait, recent, target)
    parts = [
        f"# sample user {seqs.user_ids[row]}: C'_short = {list(c_short)}; "
        f"P_ft-nov step: S_short(t-2:t-1) = {recent} -> S_short(t) = {target!r}",
        f"# KV key (csid 'default'): {kv_key('default', c_short).decode()}",
        "## P_ft-nov (prompt + completion)", ex["prompt"] + ex["completion"],
        "## P_infer-nov", novelty_infer_prompt(cfg.prompts, portrait, c_short),
        "## P_ft-rel / P_infer-rel", relevance_prompt(cfg.prompts, portrait, c_short, candidate),
    ]
    return "\n".join(parts)

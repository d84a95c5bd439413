"""Exploration methods of Table 2 and the slot policy that puts their novel categories into a final list.

Every method returns, per user, an ordered list of *novel* categories -- never one of the user's C_u^hist -- and
:func:`place_in_slots` puts the first ones into the same positions of the same exploitation ranking, so methods
differ only in which novel categories they choose (docs/evaluation.md).

    random       uniformly random unexplored categories (seeded)
    popular      most clicked unexplored categories (clicks before the test cut)
    ucb          global UCB1 category bandit: rate_c + c * sqrt(ln N / n_c) over exposures before the test cut
    google_v1    round-0 Novelty LLM of a workdir on a short-term-only prompt (no portrait, no Relevance LLM)
    coea         the promoted KV table of a workdir: C_align of the user's (CSID, C'_short) key
    wo_rllm      round-0 Novelty LLM with the full prompt, its own order (no Relevance filter, no DPO)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("coea.evaluate")


# --------------------------------------------------------------------------------------------------- slot policy


def parse_slots(text: str, length: int) -> list[int]:
    """``"2,4"`` -> [2, 4] (1-based, sorted, unique, each within the list length)."""
    slots = sorted({int(s) for s in str(text).split(",") if str(s).strip()})
    if not slots or slots[0] < 1 or slots[-1] > length:
        raise ValueError(f"eval.slots: positions must lie in 1..{length}; got {text!r}")
    return slots


def place_in_slots(base: Sequence[str], novel: Sequence[str], slots: Sequence[int], length: int) -> list[str]:
    """The final list: ``novel[j]`` at position ``slots[j]`` (1-based), the base ranking everywhere else.

    A novel category that also appears in the base ranking moves to its slot (no duplicates). When a method has
    fewer novel categories than slots, the spare slots keep the base ranking.

    >>> place_in_slots(["a", "b", "c", "d", "e"], ["x", "c"], [2, 4], 5)
    ['a', 'x', 'b', 'c', 'd']
    """
    chosen = list(dict.fromkeys(novel))[: len(slots)]
    at = dict(zip(slots[: len(chosen)], chosen))
    rest = iter(c for c in base if c not in set(chosen))
    out = []
    for pos in range(1, length + 1):
        c = at[pos] if pos in at else next(rest, None)
        if c is None:
            break
        out.append(c)
    return out


# --------------------------------------------------------------------------------------------- simple baselines


def random_unexplored(hist: Sequence[set[str]], categories: Sequence[str], n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    out = []
    for h in hist:
        pool = [c for c in categories if c not in h]
        out.append([pool[i] for i in rng.permutation(len(pool))[:n]])
    return out


def by_score_unexplored(hist: Sequence[set[str]], score: Mapping[str, float], n: int) -> list[list[str]]:
    """Highest ``score`` first (ties by name), skipping each user's hist categories."""
    order = sorted(score, key=lambda c: (-score[c], c))
    return [[c for c in order if c not in h][:n] for h in hist]


def ucb_scores(clicks: Mapping[str, int], shows: Mapping[str, int], c: float) -> dict[str, float]:
    """UCB1 per category: clicks_c / n_c + c * sqrt(ln N / n_c), N = sum of n_c; never-shown categories -> inf.

    ``shows`` counts exposures *and* clicks (a click is a shown item too); ``categories`` = keys of ``shows``
    plus ``clicks``.
    """
    cats = set(shows) | set(clicks)
    total = sum(max(shows.get(k, 0), clicks.get(k, 0)) for k in cats)
    out = {}
    for k in cats:
        n = max(shows.get(k, 0), clicks.get(k, 0))
        if n == 0:
            out[k] = math.inf
            continue
        out[k] = clicks.get(k, 0) / n + c * math.sqrt(math.log(max(total, 1)) / n)
    return out


# --------------------------------------------------------------------------------------------------- LLM methods


@dataclass
class Novelty:
    """A Novelty LLM loaded for scoring."""

    model: Any
    tokenizer: Any


def load_novelty(cfg, workdir: Path, k: int, device: str) -> Novelty:
    """Round ``k``'s Novelty LLM of a workdir (base + LoRA adapter), as loops.cycle loads it."""
    from peft import PeftModel

    from coea.backbones import load_causal_lm, load_tokenizer
    from coea.rounds import base_model_path, novelty_adapter, tokenizer_path

    tok = load_tokenizer(tokenizer_path(workdir), cfg)
    base = load_causal_lm(base_model_path(cfg, workdir), cfg, pad_token_id=tok.pad_token_id)
    model = PeftModel.from_pretrained(base, str(novelty_adapter(workdir, k))).to(device).eval()
    return Novelty(model, tok)


def llm_unexplored(novelty: Novelty, prompts: Sequence[str], categories: Sequence[str], hist: Sequence[set[str]],
                   n: int, batch_size: int = 32) -> list[list[str]]:
    """Top-n categories by completion log-probability, hist categories excluded (closed vocabulary)."""
    from coea.candidates import rank_categories

    uniq = sorted(set(prompts))
    excl_of = {}
    for p, h in zip(prompts, hist):
        excl_of.setdefault(p, set()).update(h)  # prompts that render the same recent set share one hist
    ranked = rank_categories(novelty.model, novelty.tokenizer, uniq, list(categories),
                             exclude=[excl_of[p] for p in uniq], top_m=n + max(len(h) for h in excl_of.values()),
                             batch_size=batch_size)
    by_prompt = dict(zip(uniq, ranked))
    return [[c for c, _ in by_prompt[p] if c not in h][:n] for p, h in zip(prompts, hist)]


def google_v1_prompt(cfg, recent: Sequence[str]) -> str:
    """Short-term-only prompt: ``eval.llm_prompt`` or the Novelty inference template with an empty portrait."""
    from coea.prompts import novelty_infer_prompt

    if cfg.eval.llm_prompt:
        return cfg.eval.llm_prompt.format(recent=cfg.prompts.recent_separator.join(recent) if recent else "none")
    return novelty_infer_prompt(cfg.prompts, "", recent)


@dataclass
class CoeaLists:
    """Per user, CoEA's novel categories from one workdir, and where they came from."""

    novel: list[list[str]]
    round: int
    stats: dict[str, int] = field(default_factory=dict)


def promoted_round(workdir: Path) -> int | None:
    from coea.rounds import read_state

    if not (Path(workdir) / "state.json").exists():
        return None
    return read_state(Path(workdir))["promoted_round"]


def user_keys_at(workdir: Path, k: int, seqs) -> dict[str, tuple[str, tuple[str, ...]]]:
    """(CSID, canonical C'_short) of every user of ``seqs``, CSIDs from the newest DSIE at or before round k."""
    from coea.dsie import assign_csids, load_dsie
    from coea.rounds import latest_dsie_dir
    from storage.keys import DEFAULT_CSID

    csids = assign_csids(load_dsie(latest_dsie_dir(workdir, k)), seqs)
    return {u: (csids.get(u, DEFAULT_CSID), tuple(c)) for u, c in zip(seqs.user_ids, seqs.c_short)}


def coea_unexplored(cfg, workdir: Path, seqs, users: Sequence[str], hist: Sequence[set[str]], categories: list[str],
                    n: int, device: str) -> CoeaLists:
    """CoEA's novel categories for ``users``: the promoted KV value of each user's key at the test cut.

    Keys are recomputed from the test-cut sequences (CSID from the promoted round's DSIE, canonical C'_short), as
    serving would. A key the KV table does not hold (the test cut is not a round's cut-off) is computed with the
    promoted round's Novelty + Relevance LLMs exactly as the cycle's candidates stage does; an empty C_align falls
    back to the Novelty candidates (the cycle's validation rule). Hist categories are dropped.
    """
    import pandas as pd

    from coea.dsie import load_dsie
    from coea.inference import Key, load_models, propose_and_score
    from coea.rounds import latest_dsie_dir
    from storage.kv import KVReader

    k = promoted_round(workdir)
    if k is None:
        raise FileNotFoundError(f"{workdir}: no promoted round")
    keys = user_keys_at(workdir, k, seqs)
    wanted = sorted({keys[u] for u in users})
    value: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    with KVReader(workdir) as reader:
        for key in wanted:
            got = reader.get(key[0], key[1])
            if got:
                value[key] = [v["category"] for v in got]
    stats = {"keys": len(wanted), "kv_hits": len(value)}
    cand_path = Path(workdir) / "rounds" / f"{k:03d}" / "candidates" / "candidates.parquet"
    if cand_path.exists():  # keys whose C_align is empty are stored empty: use the round's candidates instead
        table = pd.read_parquet(cand_path)
        for r in table.itertuples():
            key = (r.csid, tuple(r.recent))
            if key in set(wanted) and key not in value and len(r.candidates):
                value[key] = list(r.aligned) or list(r.candidates)
    missing = [key for key in wanted if key not in value]
    stats["computed"] = len(missing)
    if missing:
        log.info("coea: %d of %d keys not in round %d's tables; scoring them with its models", len(missing),
                 len(wanted), k)
        models = load_models(cfg, workdir, k, k, device)
        portraits = load_dsie(latest_dsie_dir(workdir, k)).portraits
        for row in propose_and_score(cfg, models, [Key(c, r) for c, r in missing], portraits, categories):
            value[(row["csid"], tuple(row["recent"]))] = row["aligned"] or row["candidates"]
    novel = [[c for c in value.get(keys[u], []) if c not in h][:n] for u, h in zip(users, hist)]
    return CoeaLists(novel=novel, round=k, stats=stats)


def round0_unexplored(cfg, workdir: Path, seqs, users: Sequence[str], hist: Sequence[set[str]],
                      categories: list[str], n: int, device: str, *, portrait: bool) -> list[list[str]]:
    """Round-0 Novelty LLM, no Relevance LLM: ``portrait=False`` is Google-v1, ``True`` is CoEA w/o R-LLM."""
    from coea.dsie import load_dsie
    from coea.prompts import novelty_infer_prompt
    from coea.rounds import latest_dsie_dir
    from storage.keys import DEFAULT_CSID

    novelty = load_novelty(cfg, workdir, 0, device)
    keys = user_keys_at(workdir, 0, seqs)
    if portrait:
        portraits = load_dsie(latest_dsie_dir(workdir, 0)).portraits
        prompts = [novelty_infer_prompt(cfg.prompts, portraits.get(keys[u][0]) or portraits.get(DEFAULT_CSID, ""),
                                        keys[u][1]) for u in users]
    else:
        prompts = [google_v1_prompt(cfg, keys[u][1]) for u in users]
    return llm_unexplored(novelty, prompts, categories, hist, n, batch_size=cfg.novelty.inference_batch_size)

"""LLM exploration methods, read from trained coea workdirs through the public entry points (coea.rounds,
coea.inference, coea.candidates, coea.relevance). Every method ranks the whole catalogue for each user.

    coea        the promoted round's Novelty LLM proposes M candidates for the user's key (CSID, C'_short), its
                Relevance LLM scores them, C_align = candidates scoring > tau_align (``propose_and_score``, as the
                cycle does). Ranking: C_align by score (what the KV value serves), then every other category --
                the candidates the filter dropped included -- by its Relevance score. The ablations (w/o Long, w/o Short, w/o KL) are the same on their workdirs.
    google_v1   Wang et al. 2024 ("LLMs for User Interest Exploration in Large-scale Recommendation Systems") as
                a fair dual-model baseline: the same ranking as ``coea`` with the round-0 Novelty and Relevance
                LLMs of a workdir trained on short-term-only prompts (no group portrait: the w/o Long workdir's
                round 0) -- its own SFT on its own prompt, a Relevance filter, no group identity, no co-evolution.
                Simplified: the paper's LLM is a large pretrained model fine-tuned on cluster transitions, here the
                embedded backbone; its item-level grounding is not part of a category-level evaluation.
    google_v2   a single Novelty LLM on short-term context, no Relevance model: the same round-0 Novelty LLM's
                categories by log-probability (recent categories last, as the Novelty LLM never proposes them).
    llm_kerec   after Zhao et al. 2024 (LLM-KERec, CIKM): an LLM infers a complementary graph between entities
                (here: categories, the edge a -> b weighted by the short-term Novelty LLM's probability of b given
                "recent: a", the top ``eval.kerec_edges`` edges per category kept); a user's score mixes the
                first-order view (their own click share per category) and the second-order complementary one
                (click share propagated over the graph): (1 - beta) f_u + beta f_u W. Simplified: no entity
                extractor (categories are the entities), no LLM judge beyond the embedded Novelty LLM, and a
                mixing weight chosen on validation instead of the E-E-I GNN weight model.
    wo_rllm     CoEA w/o R-LLM: the CoEA workdir's round-0 Novelty LLM with the full prompt, its own order.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from coea.backbones import load_causal_lm, load_tokenizer
from coea.candidates import category_logprobs
from coea.data.sequences import build_sequences
from coea.dsie import assign_csids, load_dsie
from coea.exploration.bandits import _rank
from coea.inference import Key, Models, load_models, propose_and_score, user_keys
from coea.prompts import novelty_infer_prompt, relevance_prompt
from coea.relevance import score
from coea.rounds import base_model_path, latest_dsie_dir, novelty_adapter, read_state, tokenizer_path
from storage.keys import DEFAULT_CSID

log = logging.getLogger("coea.evaluate")


@dataclass
class LlmRound:
    """One workdir round's LLMs loaded for inference, with the config (prompts, novelty, relevance) they ran with."""

    cfg: Any
    workdir: Path
    round: int
    novelty: Any
    tokenizer: Any
    relevance: Any = None
    portraits: dict[str, str] = field(default_factory=dict)
    calibration: Any = None  # the Relevance round's Platt scaling (coea.relevance.Calibration), as serving loads it


def promoted_round(workdir: Path) -> int | None:
    if not (Path(workdir) / "state.json").exists():
        return None
    return read_state(Path(workdir))["promoted_round"]


def load_round(cfg, workdir: Path, k: int, device: str, *, relevance: bool = True) -> LlmRound:
    """Round ``k``'s Novelty LLM (and Relevance LLM) of a workdir, as the cycle loads them."""
    if relevance:
        m = load_models(cfg, workdir, k, k, device)
        novelty, rel, tok, cal = m.novelty, m.relevance, m.tokenizer, m.calibration
    else:
        from peft import PeftModel

        tok = load_tokenizer(tokenizer_path(workdir), cfg)
        base = load_causal_lm(base_model_path(cfg, workdir), cfg, pad_token_id=tok.pad_token_id)
        novelty = PeftModel.from_pretrained(base, str(novelty_adapter(workdir, k))).to(device).eval()
        rel, cal = None, None
    portraits = load_dsie(latest_dsie_dir(workdir, k)).portraits
    return LlmRound(cfg=cfg, workdir=Path(workdir), round=k, novelty=novelty, tokenizer=tok, relevance=rel,
                    portraits=portraits, calibration=cal)


def keys_for(llm: LlmRound, state, users: Sequence[str]):
    """Each user's key (CSID, canonical C'_short) in ``state``, as serving computes it with this workdir's DSIE and
    data settings (tau, short_k). Returns ``(keys, unique)``: one :class:`coea.inference.Key` per user and the
    sorted unique keys."""
    seqs = build_sequences(state, llm.cfg.data)
    csids = assign_csids(load_dsie(latest_dsie_dir(llm.workdir, llm.round)), seqs)
    by_user = user_keys(seqs, csids)
    keys = [by_user.get(u, Key(DEFAULT_CSID, ())) for u in users]
    unique = sorted({(k.csid, k.recent) for k in keys})
    return keys, [Key(c, r) for c, r in unique]


def _portrait(llm: LlmRound, csid: str) -> str:
    return llm.portraits.get(csid) or llm.portraits.get(DEFAULT_CSID, "")


@dataclass
class DualScores:
    """Per unique key: the Novelty candidates, their Relevance scores, and every category's Relevance score."""

    candidates: list[list[str]]
    scores: list[list[float]]
    all_scores: np.ndarray  # (K, C)


def dual_scores(llm: LlmRound, keys: Sequence, categories: Sequence[str]) -> DualScores:
    """``propose_and_score`` for every key (the cycle's candidates stage) plus the Relevance score of every
    category, which orders the categories that are not candidates. Every score is the round's calibrated
    probability (``llm.calibration``, exactly what the cycle serves and tau_align applies to)."""
    rows = propose_and_score(llm.cfg, _models(llm), list(keys), llm.portraits, list(categories))
    texts = [relevance_prompt(llm.cfg.prompts, _portrait(llm, k.csid), k.recent, c) for k in keys for c in categories]
    flat = score(llm.relevance, llm.tokenizer, texts, batch_size=max(128, llm.cfg.novelty.inference_batch_size),
                 calibration=llm.calibration)
    return DualScores(candidates=[list(r["candidates"]) for r in rows], scores=[list(r["scores"]) for r in rows],
                      all_scores=np.asarray(flat, dtype=np.float64).reshape(len(keys), len(categories)))


def _models(llm: LlmRound):
    return Models(novelty=llm.novelty, relevance=llm.relevance, tokenizer=llm.tokenizer, calibration=llm.calibration)


def dual_ranking(ds: DualScores, i: int, categories: Sequence[str], tau: float) -> list[str]:
    """Key i's ranking: C_align (the candidates scoring > tau, what the KV value holds) by score, then every other
    category -- the candidates the filter dropped included -- by its Relevance score."""
    cands = list(zip(ds.candidates[i], ds.scores[i]))
    aligned = [c for c, s in sorted(cands, key=lambda t: -t[1]) if s > tau]
    kept = set(aligned)
    rest = [categories[j] for j in np.argsort(-ds.all_scores[i], kind="stable") if categories[j] not in kept]
    return aligned + rest


def novelty_logprobs(llm: LlmRound, keys: Sequence, categories: Sequence[str], *, portrait: bool) -> np.ndarray:
    """(K, C) Novelty log-probability of every category for each key's inference prompt (portrait or empty)."""
    prompts = [novelty_infer_prompt(llm.cfg.prompts, _portrait(llm, k.csid) if portrait else "", k.recent)
               for k in keys]
    lp = category_logprobs(llm.novelty, llm.tokenizer, prompts, list(categories),
                           batch_size=llm.cfg.novelty.inference_batch_size, append_eos=llm.cfg.novelty.completion_eos)
    return lp.numpy().astype(np.float64)


def novelty_ranking(logprobs: np.ndarray, i: int, recent: Sequence[str], categories: Sequence[str]) -> list[str]:
    """Key i's categories by log-probability, its recent categories (never proposed by the Novelty LLM) last."""
    order = [categories[j] for j in np.argsort(-logprobs[i], kind="stable")]
    recent = set(recent)
    return [c for c in order if c not in recent] + [c for c in order if c in recent]


def kerec_graph(llm: LlmRound, categories: Sequence[str], edges: int) -> np.ndarray:
    """(C, C) complementary graph W: W[a, b] = P(b | recent = {a}) from the Novelty LLM over b != a, the top
    ``edges`` per row kept and renormalised to sum 1."""
    lp = novelty_logprobs(llm, [Key(DEFAULT_CSID, (c,)) for c in categories], categories, portrait=False)
    np.fill_diagonal(lp, -np.inf)
    p = np.exp(lp - lp.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    if 0 < edges < len(categories):
        cut = np.sort(p, axis=1)[:, -edges][:, None]
        p = np.where(p >= cut, p, 0.0)
        p /= np.maximum(p.sum(1, keepdims=True), 1e-12)
    return p


def kerec_ranking(graph: np.ndarray, user_clicks: Sequence[Counter], categories: Sequence[str],
                  beta: float) -> list[list[str]]:
    """Per user: (1 - beta) f_u + beta f_u W, f_u = the user's click share per category; ties by name."""
    f = np.array([[u.get(c, 0) for c in categories] for u in user_clicks], float).reshape(-1, len(categories))
    f /= np.maximum(f.sum(1, keepdims=True), 1.0)
    return _rank((1.0 - beta) * f + beta * f @ graph, categories)

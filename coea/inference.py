"""A round's models loaded for inference, and the key table they produce (candidates, scores, C_align).

Used by the cycle's candidates stage and its workers, by validation and by offline evaluation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coea.backbones import load_causal_lm, load_relevance_model, load_tokenizer
from coea.candidates import propose
from coea.config import Config
from coea.prompts import novelty_infer_prompt, relevance_prompt
from coea.relevance import load_calibration, score
from coea.rounds import base_model_path, novelty_adapter, relevance_model_dir, tokenizer_path
from storage.keys import DEFAULT_CSID

log = logging.getLogger("coea.inference")


@dataclass
class Models:
    """The Novelty LLM (base + adapter) and the Relevance LLM of one round, loaded for inference.

    ``calibration`` is the Relevance round's Platt scaling: every score this module produces is
    ``calibration.probability(reward)``, and tau_align applies to it.
    """

    novelty: Any
    relevance: Any
    tokenizer: Any
    calibration: Any = None  # coea.relevance.Calibration


def load_models(cfg: Config, workdir: Path, novelty_round: int, relevance_round: int, device: str, *,
                backbone_round: int | None = None) -> Models:
    """Round ``novelty_round``'s Novelty adapter and round ``relevance_round``'s Relevance LLM (+ calibration).

    Both sit on the base model and tokenizer of ``backbone_round`` (default: the newest in the workdir, which
    encodes every category name seen so far; older adapters load on it because growth only appends tokens).
    """
    from peft import PeftModel

    tok = load_tokenizer(tokenizer_path(workdir, backbone_round), cfg)
    base_path = base_model_path(cfg, workdir, backbone_round)
    base = load_causal_lm(base_path, cfg, pad_token_id=tok.pad_token_id)
    novelty = PeftModel.from_pretrained(base, str(novelty_adapter(workdir, novelty_round))).to(device).eval()
    rel_dir = relevance_model_dir(workdir, relevance_round)
    relevance = load_relevance_model(cfg, rel_dir, base_model=base_path, tokenizer=tok).to(device).eval()
    return Models(novelty=novelty, relevance=relevance, tokenizer=tok, calibration=load_calibration(rel_dir))


# ------------------------------------------------------------------------------------------------------ keys


@dataclass
class Key:
    csid: str
    recent: tuple[str, ...]  # canonical C'_short


def user_keys(seqs, csids: dict[str, str]) -> dict[str, Key]:
    return {u: Key(csids.get(u, DEFAULT_CSID), tuple(c)) for u, c in zip(seqs.user_ids, seqs.c_short)}


def propose_and_score(cfg: Config, models: Models, keys: list[Key], portraits: dict[str, str],
                      categories: list[str]) -> list[dict[str, Any]]:
    """Novelty candidates for every key, calibrated Relevance scores for each, C_align = scores > tau_align.

    Scores are ``models.calibration``'s probabilities (coea.relevance.score); C_align is ordered by score. With
    ``relevance.filter: false`` C_align is every candidate in the Novelty LLM's order (scores kept alongside).
    """
    def portrait(csid: str) -> str:
        return portraits.get(csid) or portraits.get(DEFAULT_CSID, "")

    prompts = [novelty_infer_prompt(cfg.prompts, portrait(k.csid), k.recent) for k in keys]
    result = propose(models.novelty, models.tokenizer, prompts, categories, recent=[set(k.recent) for k in keys],
                     config=cfg.novelty, seed=cfg.run.seed)
    candidates = result.candidates
    if result.dropped:
        log.warning("candidates: %d constrained outputs dropped (no allowed token; failing closed)", result.dropped)
    flat = [(i, c) for i, cands in enumerate(candidates) for c in cands]
    rel_prompts = [relevance_prompt(cfg.prompts, portrait(keys[i].csid), keys[i].recent, c) for i, c in flat]
    scores = score(models.relevance, models.tokenizer, rel_prompts, batch_size=cfg.novelty.inference_batch_size,
                   calibration=models.calibration) if flat else np.zeros(0)
    rows = [{"csid": k.csid, "recent": list(k.recent), "candidates": list(c), "scores": []} for k, c in
            zip(keys, candidates)]
    for (i, _), s in zip(flat, scores):
        rows[i]["scores"].append(float(s))
    tau = cfg.relevance.tau_align
    for row in rows:
        pairs = list(zip(row["candidates"], row["scores"]))
        # relevance.filter off (CoEA w/o R-LLM): every candidate, in the Novelty LLM's order
        kept = sorted(((c, s) for c, s in pairs if s > tau), key=lambda t: -t[1]) if cfg.relevance.filter else pairs
        row["aligned"] = [c for c, _ in kept]
        row["aligned_scores"] = [s for _, s in kept]
    return rows

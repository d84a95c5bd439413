"""Relevance LLM inference: normalised scores s_i in (0, 1) and C_align (Eq. 11-14).

A score is sigmoid(r(x)) of the reward model's logit for the text ``relevance_prompt(...) + EOS``, tokenised
exactly as trl's RewardTrainer tokenises it in training (:func:`encode`: the EOS string appended, the
tokenizer's own special tokens -- e.g. a Llama BOS -- added). Batches are right-padded (real tokens keep
positions 0..n-1 and the classifier reads the last non-pad token), so a text's score does not depend on what else
is in its batch or on the padding side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from coea.console import iterate


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of Relevance texts as RewardTrainer builds them: ``text + eos`` with default special tokens."""
    eos = tokenizer.eos_token or ""
    return [list(tokenizer(t if t.endswith(eos) else t + eos)["input_ids"]) for t in texts]


@torch.no_grad()
def score(model, tokenizer, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Normalised Relevance scores in (0, 1), one per text."""
    if not texts:
        return np.zeros(0, dtype=np.float32)
    device = next(model.parameters()).device
    ids = encode(tokenizer, texts)
    order = np.argsort([len(x) for x in ids], kind="stable")  # batch by length: less padding
    out = np.zeros(len(texts), dtype=np.float32)
    pad = model.config.pad_token_id
    was_training = model.training
    model.eval()
    for start in iterate(range(0, len(order), batch_size), "Relevance scores", unit="batches"):
        rows = order[start:start + batch_size]
        width = max(len(ids[r]) for r in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, :len(ids[r])] = torch.tensor(ids[r])
            mask[j, :len(ids[r])] = 1
        # The classifier reads the last non-pad token (right padding keeps positions exact).
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits  # (B, 1)
        out[rows] = torch.sigmoid(logits.float().squeeze(-1)).cpu().numpy()
    model.train(was_training)
    return out


def align(candidates: Sequence[str], scores: Sequence[float], tau_align: float) -> list[tuple[str, float]]:
    """C_align: candidates with s_i > tau_align, highest score first (ties keep the Novelty order)."""
    kept = [(c, float(s)) for c, s in zip(candidates, scores) if s > tau_align]
    return sorted(kept, key=lambda t: -t[1])


def pairwise_accuracy(model, tokenizer, pairs: Sequence[dict], batch_size: int = 32) -> float:
    """Share of (chosen, rejected) pairs where the chosen text scores higher (held-out Bradley-Terry accuracy)."""
    if not pairs:
        return float("nan")
    chosen = score(model, tokenizer, [p["prompt"] + p["chosen"] for p in pairs], batch_size)
    rejected = score(model, tokenizer, [p["prompt"] + p["rejected"] for p in pairs], batch_size)
    return float((chosen > rejected).mean())

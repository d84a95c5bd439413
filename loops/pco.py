"""Periodic Collaborative Optimization's sample (Eq. 15): records of D_k -> (P_j, c_pos,j, c_neg,j). docs/dpo.md.

    D_k      the behaviour data the cycle holds at the start of cycle k: every click of the history it keeps plus
             the round's window, validation users excluded. One record = one click, with the user's state at
             that click: the group (CSID) the user is in this round and C'_short(t), the canonical set of the last
             ``data.short_k`` categories clicked before it -- exactly the key inference renders for that state.
    sample   N = floor(pco.sample_fraction * |D_k|) records, uniformly without replacement (Eq. 15).
    P_j      P_infer-nov of the record's key. The records of the history carry the states the cycle already
             inferred at; the window's records carry the states made by the positive clicks that arrived since
             cycle k-1, so the prompt set is the union of both (the reading of "P_infer-nov U the incremental
             positive categories from the (k-1)-th cycle" stated in docs/dpo.md).
    pairs    c_pos / c_neg = the Novelty LLM's candidates for P_j with the highest / lowest score from the round's
             own Relevance LLM (the one this round keeps, loops/relevance_update.py), never a stale table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from coea.inference import Key
from coea.prompts import completion_text, novelty_infer_prompt, recent_at
from storage.keys import DEFAULT_CSID


@dataclass(frozen=True)
class Record:
    """One record of D_k: user ``user_id``'s click at ``timestamp`` and the key of the state before it."""

    user_id: str
    timestamp: int
    key: Key
    in_window: bool  # True: one of the round's new clicks (the increment since cycle k-1)
    seen: frozenset[str] = frozenset()  # categories the user clicked before this click (novelty.exclude: history)


def dk_records(clicks: dict[str, list[tuple[int, str]]], history: dict[str, list[tuple[int, str]]] | None,
               csids: dict[str, str], users: list[str], short_k: int, start: int | None,
               known: dict[str, set[str]] | None = None) -> list[Record]:
    """Every record of D_k for ``users`` (chronological per user, users in the given order).

    Args:
        clicks: each user's clicks ``(timestamp, category)`` before the round's end that the cycle's data holds.
        history: clicks before ``start`` the cycle carries in its state (a live log holds only these, not the raw
            events); merged in where ``clicks`` does not already reach back to them.
        csids: each user's CSID this round (``DEFAULT_CSID`` for one without).
        users: the training users (validation users are never passed in).
        short_k: ``data.short_k``, the size of C'_short.
        start: the round's window start (None: every click is new).
        known: every category each user clicked before ``start`` (the carried state's; merged into ``seen``).
    """
    out = []
    for u in users:
        seq = list(clicks.get(u, []))
        first = seq[0][0] if seq else None
        earlier = [(ts, c) for ts, c in (history or {}).get(u, []) if first is None or ts < first]
        seq = earlier + seq
        cats = [c for _, c in seq]
        csid = csids.get(u, DEFAULT_CSID)
        seen = frozenset((known or {}).get(u, ()))
        for t, (ts, _) in enumerate(seq):
            if t:
                seen = seen | {cats[t - 1]} if cats[t - 1] not in seen else seen
            out.append(Record(u, int(ts), Key(csid, recent_at(cats, t, short_k)),
                              in_window=start is None or ts >= start, seen=seen))
    return out


def sample_size(n_records: int, fraction: float) -> int:
    """Eq. 15: N = floor(fraction * |D_k|) (0 for a D_k too small to hold one record at this fraction)."""
    return min(n_records, math.floor(fraction * n_records + 1e-9))


def sample_records(records: list[Record], fraction: float, seed: int) -> list[Record]:
    """A uniform sample of :func:`sample_size` records without replacement, in D_k's order."""
    n = sample_size(len(records), fraction)
    if n == 0:
        return []
    idx = np.random.default_rng(seed).choice(len(records), size=n, replace=False)
    return [records[i] for i in sorted(idx)]


def preference_pairs(cfg, scored: dict[tuple[str, tuple[str, ...]], dict], records: list[Record],
                     portraits: dict[str, str]) -> list[dict]:
    """Eq. 15: one pair per sampled record whose key has candidates with different scores.

    ``scored`` maps ``(csid, recent)`` to a row of :func:`coea.inference.propose_and_score` (``candidates``,
    ``scores``) produced with the round's Relevance LLM. Chosen / rejected = the candidate with the highest /
    lowest score; a key whose candidates all score alike (or that has fewer than two) gives no pair. With
    ``novelty.exclude: history`` the categories the user clicked before the record are left out first.
    """
    history = cfg.novelty.exclude == "history"
    pairs = []
    for r in records:
        row = scored.get((r.key.csid, tuple(r.key.recent)))
        if row is None:
            continue
        if history:
            kept = [(c, s) for c, s in zip(row["candidates"], row["scores"]) if c not in r.seen]
            row = {"candidates": [c for c, _ in kept], "scores": [s for _, s in kept]}
        if len(row["candidates"]) < 2:
            continue
        scores = np.asarray(row["scores"], dtype=np.float64)
        hi, lo = int(np.argmax(scores)), int(np.argmin(scores))
        if scores[hi] == scores[lo]:
            continue  # no preference to learn from
        portrait = portraits.get(r.key.csid) or portraits.get(DEFAULT_CSID, "")
        pairs.append({"prompt": novelty_infer_prompt(cfg.prompts, portrait, r.key.recent),
                      "chosen": completion_text(row["candidates"][hi]),
                      "rejected": completion_text(row["candidates"][lo]), "user_id": r.user_id,
                      "csid": r.key.csid, "recent": list(r.key.recent),
                      "timestamp": r.timestamp, "in_window": r.in_window,
                      "chosen_score": float(scores[hi]), "rejected_score": float(scores[lo])})
    return pairs

"""Offline metrics of Appendix A.4, as pure functions over hand-checkable inputs (docs/metrics.md).

Per user: a ranked list of categories and three sets --
    pref     C_u^pref: the user's preferred categories (categories of I_long, the long-term history)
    hist     C_u^hist: what "new" is relative to (categories of the short-term window, C'_short)
    clicked  categories the user clicks in the evaluation window
plus the catalogue size |C| and the long-tail set (bottom 20% of categories by clicks).

    C-H@K   = 1[ top-K ∩ pref ≠ ∅ ]
    C-N@K   = DCG@K / IDCG@K, rel(c) = 1[c ∈ clicked], DCG = Σ_i rel_i / log2(i + 1), IDCG over min(K, |clicked|)
    NCP@K   = |{c ∈ top-K : c ∉ hist}| / |C|                              (Eq. 20)
    CLTP@K  = |{c ∈ top-K : c ∈ tail}| / |C|                              (Eq. 21)
    NCP-norm@K, CLTP-norm@K: the same counts divided by K

Lists are de-duplicated keeping the first occurrence; K larger than the list uses the list as it is. Empty pref
gives C-H = 0; empty clicked gives C-N = 0 (the user still counts in the mean).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def _dedupe(ranked: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    return [c for c in ranked if not (c in seen or seen.add(c))]


def category_hit(ranked: Sequence[str], pref: set[str], ks: Sequence[int]) -> dict[str, float]:
    r = _dedupe(ranked)
    return {f"C-H@{k}": float(bool(set(r[:k]) & pref)) for k in ks}


def category_ndcg(ranked: Sequence[str], clicked: set[str], ks: Sequence[int]) -> dict[str, float]:
    r = _dedupe(ranked)
    out = {}
    for k in ks:
        dcg = sum(1.0 / math.log2(i + 2) for i, c in enumerate(r[:k]) if c in clicked)
        idcg = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(clicked))))
        out[f"C-N@{k}"] = dcg / idcg if idcg else 0.0
    return out


def novel_category_proportion(ranked: Sequence[str], hist: set[str], n_categories: int,
                              ks: Sequence[int]) -> dict[str, float]:
    r = _dedupe(ranked)
    out = {}
    for k in ks:
        n = sum(1 for c in r[:k] if c not in hist)
        out[f"NCP@{k}"] = n / n_categories
        out[f"NCP-norm@{k}"] = n / k
    return out


def long_tail_proportion(ranked: Sequence[str], tail: set[str], n_categories: int,
                         ks: Sequence[int]) -> dict[str, float]:
    r = _dedupe(ranked)
    out = {}
    for k in ks:
        n = sum(1 for c in r[:k] if c in tail)
        out[f"CLTP@{k}"] = n / n_categories
        out[f"CLTP-norm@{k}"] = n / k
    return out


def long_tail_categories(click_counts: Mapping[str, int], fraction: float = 0.2) -> set[str]:
    """Bottom ``fraction`` of categories by clicks: the ceil(fraction * |C|) least-clicked.

    Ties at the boundary are broken by name (ascending), so the set is deterministic.
    """
    if not click_counts:
        return set()
    n = math.ceil(fraction * len(click_counts))
    order = sorted(click_counts, key=lambda c: (click_counts[c], c))
    return set(order[:n])


def user_metrics(ranked: Sequence[str], truth: Mapping[str, set[str]], *, n_categories: int, tail: set[str],
                 ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """All metrics for one user; ``truth`` has ``pref``, ``hist`` and ``clicked`` sets."""
    return {**category_hit(ranked, set(truth["pref"]), ks), **category_ndcg(ranked, set(truth["clicked"]), ks),
            **novel_category_proportion(ranked, set(truth["hist"]), n_categories, ks),
            **long_tail_proportion(ranked, tail, n_categories, ks)}


def per_user(recs: Sequence[Sequence[str]], truth: Sequence[Mapping[str, set[str]]], *, n_categories: int,
             tail: set[str], ks: Sequence[int] = (1, 5, 10)) -> dict[str, np.ndarray]:
    """Per-user metric arrays (for std over seeds or significance tests)."""
    if len(recs) != len(truth):
        raise ValueError(f"{len(recs)} recommendation lists for {len(truth)} users")
    rows = [user_metrics(r, t, n_categories=n_categories, tail=tail, ks=ks) for r, t in zip(recs, truth)]
    if not rows:
        return {}
    return {name: np.array([row[name] for row in rows]) for name in rows[0]}


def evaluate_users(recs: Sequence[Sequence[str]], truth: Sequence[Mapping[str, set[str]]], *, n_categories: int,
                   tail: set[str], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Mean of every metric over users."""
    return {name: float(v.mean()) for name, v in per_user(recs, truth, n_categories=n_categories, tail=tail,
                                                            ks=ks).items()}

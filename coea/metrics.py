"""Offline metrics of Appendix A.4, as pure functions over hand-checkable inputs (docs/metrics.md).

Per user: a ranked list of categories and three sets --
    pref     C_u^pref: the user's preferred categories (categories of I_long, the tau-filtered long-term history)
    hist     C_u^hist: what "new" is relative to (categories of the short-term window, C'_short)
    clicked  categories the user clicks in the evaluation window
plus the catalogue size |C| and the long-tail set (bottom 20% of categories by clicks, `long_tail_categories`).

    C-H@K   = 1[ top-K ∩ pref ≠ ∅ ]
    C-N@K   = DCG@K / IDCG@K, rel(c) = 1[c ∈ clicked], DCG = Σ_{i=1..K} rel_i / log2(i + 1),
              IDCG over min(K, |clicked|) ideal positions
    NCP@K   = |{c ∈ top-K : c ∉ hist}| / |C|                              (Eq. 20)
    CLTP@K  = |{c ∈ top-K : c ∈ tail}| / |C|                              (Eq. 21)
    NCP-norm@K, CLTP-norm@K: the same counts divided by K

Conventions (each tested in tests/test_metrics.py):
- The list order is the ranking; ties were broken by whoever made the list.
- Lists are de-duplicated keeping the first occurrence (a repeat is not a second hit or a second new category).
- K larger than the list uses the list as it is: C-N's IDCG still runs over min(K, |clicked|) positions and the
  -norm variants still divide by K, so a short list is not rewarded for being short.
- Empty pref gives C-H = 0; empty clicked gives C-N = 0 and the user still counts in the mean, unless
  ``exclude_no_clicks=True`` (then C-N averages over users with clicks only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

TRUTH_KEYS = ("pref", "hist", "clicked")


def _dedupe(ranked: Iterable[str]) -> list[str]:
    """``ranked`` without repeats, first occurrence kept: [A, B, A, C] -> [A, B, C]."""
    seen: set[str] = set()
    return [c for c in ranked if not (c in seen or seen.add(c))]


def _check_ks(ks: Sequence[int]) -> None:
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")


def _check_catalogue(n_categories: int) -> None:
    if n_categories < 1:
        raise ValueError(f"n_categories (|C|) must be at least 1, got {n_categories}")


def category_hit(ranked: Sequence[str], pref: Iterable[str], ks: Sequence[int]) -> dict[str, float]:
    """C-H@K: 1 if any of the top K categories is one of the user's preferred categories C_u^pref.

    Args:
        ranked: the user's recommended categories, best first.
        pref: C_u^pref; empty gives 0 for every K.
        ks: cut-offs.

    Returns:
        ``{"C-H@k": 0.0 or 1.0}`` for every k.
    """
    _check_ks(ks)
    r, pref = _dedupe(ranked), set(pref)
    return {f"C-H@{k}": float(any(c in pref for c in r[:k])) for k in ks}


def category_ndcg(ranked: Sequence[str], clicked: Iterable[str], ks: Sequence[int]) -> dict[str, float]:
    """C-N@K: NDCG over categories with binary relevance rel(c) = 1[the user clicks category c in the window].

    DCG@K = Σ_{i=1..min(K, |list|)} rel_i / log2(i + 1); IDCG@K = Σ_{i=1..min(K, |clicked|)} 1 / log2(i + 1).

    Args:
        ranked: the user's recommended categories, best first.
        clicked: categories clicked in the evaluation window; empty gives 0 for every K.
        ks: cut-offs.

    Returns:
        ``{"C-N@k": value in [0, 1]}`` for every k.
    """
    _check_ks(ks)
    r, clicked = _dedupe(ranked), set(clicked)
    out = {}
    for k in ks:
        dcg = sum(1.0 / math.log2(i + 2) for i, c in enumerate(r[:k]) if c in clicked)  # i is 0-based
        idcg = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(clicked))))
        out[f"C-N@{k}"] = dcg / idcg if idcg else 0.0
    return out


def novel_category_proportion(ranked: Sequence[str], hist: Iterable[str], n_categories: int,
                              ks: Sequence[int]) -> dict[str, float]:
    """NCP@K (Eq. 20): categories in the top K that are new to the user (not in C_u^hist), divided by |C|.

    Args:
        ranked: the user's recommended categories, best first.
        hist: C_u^hist, what "new" is relative to.
        n_categories: |C|, the catalogue size.
        ks: cut-offs.

    Returns:
        ``{"NCP@k": count / |C|, "NCP-norm@k": count / k}`` for every k.
    """
    _check_ks(ks)
    _check_catalogue(n_categories)
    r, hist = _dedupe(ranked), set(hist)
    out = {}
    for k in ks:
        n = sum(1 for c in r[:k] if c not in hist)
        out[f"NCP@{k}"] = n / n_categories
        out[f"NCP-norm@{k}"] = n / k
    return out


def long_tail_proportion(ranked: Sequence[str], tail: Iterable[str], n_categories: int,
                         ks: Sequence[int]) -> dict[str, float]:
    """CLTP@K (Eq. 21): long-tail categories in the top K, divided by |C|.

    Args:
        ranked: the user's recommended categories, best first.
        tail: the long-tail set, usually from :func:`long_tail_categories`.
        n_categories: |C|, the catalogue size.
        ks: cut-offs.

    Returns:
        ``{"CLTP@k": count / |C|, "CLTP-norm@k": count / k}`` for every k.
    """
    _check_ks(ks)
    _check_catalogue(n_categories)
    r, tail = _dedupe(ranked), set(tail)
    out = {}
    for k in ks:
        n = sum(1 for c in r[:k] if c in tail)
        out[f"CLTP@{k}"] = n / n_categories
        out[f"CLTP-norm@{k}"] = n / k
    return out


def long_tail_categories(click_counts: Mapping[str, int], fraction: float = 0.2) -> set[str]:
    """The bottom ``fraction`` of categories by clicks: exactly the ceil(fraction * |C|) least-clicked.

    ``click_counts`` must cover the whole catalogue, zero-click categories included (they are the tail's first
    members). Ties at the boundary are broken by name, ascending, so the set is deterministic and its size is
    exactly ceil(fraction * |C|) -- it does not grow to swallow every tied category. E.g. counts
    {A: 10, B: 1, C: 1, D: 5, E: 7}, fraction 0.2 -> ceil(1.0) = 1 -> {B} (B and C tie; B sorts first).

    Args:
        click_counts: category -> number of clicks (in the window that defines popularity).
        fraction: share of the catalogue in the tail, in [0, 1]; any fraction > 0 gives at least one category.

    Returns:
        The long-tail category names.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if not click_counts:
        return set()
    n = math.ceil(round(fraction * len(click_counts), 9))  # round: 0.2 * 5 must be 1, not 1.0000000000000002
    order = sorted(click_counts, key=lambda c: (click_counts[c], c))
    return set(order[:n])


def user_metrics(ranked: Sequence[str], truth: Mapping[str, Iterable[str]], *, n_categories: int,
                 tail: Iterable[str], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Every metric for one user.

    Args:
        ranked: the user's recommended categories, best first.
        truth: ``{"pref": C_u^pref, "hist": C_u^hist, "clicked": clicked}``; any iterables (lists from JSON work).
        n_categories: |C|.
        tail: the long-tail set.
        ks: cut-offs.

    Returns:
        ``{"C-H@k", "C-N@k", "NCP@k", "NCP-norm@k", "CLTP@k", "CLTP-norm@k"}`` for every k.
    """
    missing = [key for key in TRUTH_KEYS if key not in truth]
    if missing:
        raise ValueError(f"truth row lacks {missing}; it needs {list(TRUTH_KEYS)}")
    return {**category_hit(ranked, truth["pref"], ks), **category_ndcg(ranked, truth["clicked"], ks),
            **novel_category_proportion(ranked, truth["hist"], n_categories, ks),
            **long_tail_proportion(ranked, tail, n_categories, ks)}


def per_user(recs: Sequence[Sequence[str]], truth: Sequence[Mapping[str, Iterable[str]]], *, n_categories: int,
             tail: Iterable[str], ks: Sequence[int] = (1, 5, 10),
             exclude_no_clicks: bool = False) -> dict[str, np.ndarray]:
    """Per-user metric arrays, aligned with ``recs`` (for std over seeds or paired tests).

    Args:
        recs: one ranked category list per user.
        truth: one truth row per user, same order (see :func:`user_metrics`).
        n_categories: |C|.
        tail: the long-tail set.
        ks: cut-offs.
        exclude_no_clicks: C-N@k is NaN (not 0) for users with an empty ``clicked`` set.

    Returns:
        metric name -> (U,) float array; ``{}`` when there are no users.
    """
    if len(recs) != len(truth):
        raise ValueError(f"{len(recs)} recommendation lists for {len(truth)} users")
    tail = set(tail)
    rows = []
    for r, t in zip(recs, truth):
        row = user_metrics(r, t, n_categories=n_categories, tail=tail, ks=ks)
        if exclude_no_clicks and not set(t["clicked"]):
            row.update({f"C-N@{k}": math.nan for k in ks})
        rows.append(row)
    if not rows:
        return {}
    return {name: np.array([row[name] for row in rows], dtype=float) for name in rows[0]}


def evaluate_users(recs: Sequence[Sequence[str]], truth: Sequence[Mapping[str, Iterable[str]]], *,
                   n_categories: int, tail: Iterable[str], ks: Sequence[int] = (1, 5, 10),
                   exclude_no_clicks: bool = False) -> dict[str, float]:
    """Mean of every metric over users (arguments as :func:`per_user`).

    With ``exclude_no_clicks`` C-N@k is the mean over users who clicked something; 0.0 if nobody did.
    """
    arrays = per_user(recs, truth, n_categories=n_categories, tail=tail, ks=ks, exclude_no_clicks=exclude_no_clicks)
    out = {}
    for name, v in arrays.items():
        kept = v[~np.isnan(v)]
        out[name] = float(kept.mean()) if kept.size else 0.0
    return out

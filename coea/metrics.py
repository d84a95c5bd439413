"""Offline metrics of Appendix A.4, as pure functions over hand-checkable inputs (docs/metrics.md).

Per user: a ranked list of categories and three sets (a fourth, optional) --
    pref     C_u^pref: the user's preferred categories (categories of I_long, the tau-filtered long-term history)
    hist     C_u^hist: what "new" is relative to -- A.4: every category the user clicked before the cut-off
    clicked  categories the user clicks in the evaluation window
    recent   (optional) categories of a recent window (C'_short): only for the NCP-recent variant
plus the catalogue size |C| and the long-tail set (bottom 20% of categories by clicks, `long_tail_categories`).

    C-H@K   = |top-K ∩ pref| / K                                          (Eq. 18: hit_u / K)
    C-N@K   = DCG@K / IDCG@K, rel(c) = 1[c ∈ clicked], DCG = Σ_{i=1..K} rel_i / log2(i + 1),
              IDCG over min(K, |clicked|) ideal positions                  (Eq. 19)
    NCP@K   = |{c ∈ top-K : c ∉ hist}| / |C|                              (Eq. 20)
    CLTP@K  = |{c ∈ top-K : c ∈ tail}| / |C|                              (Eq. 21)
Variants under their own names (not the paper's definitions):
    C-H-any@K        1[ top-K ∩ pref ≠ ∅ ] (the "any hit" indicator of evaluation v1)
    NCP-recent@K     NCP against ``recent`` instead of the whole history (v1's "hist")
    NCP-norm@K, NCP-recent-norm@K, CLTP-norm@K: the same counts divided by K instead of |C|
Test-based metrics under their own names (``per_user(..., test_based=True)``; they look at the held-out window,
which A.4's C-H never does):
    C-H-test@K  = |top-K ∩ clicked| / K                      (C-H against the window's clicked categories)
    C-N-new@K   = C-N with rel(c) = 1[c ∈ clicked \ hist]     (NDCG on the categories that are new to the user)
    NA@K        = 1[ (top-K \ hist) ∩ (clicked \ hist) ≠ ∅ ]  (novelty adoption; NaN -- left out of the mean --
                                                              for a user who clicks no new category)

Conventions (each tested in tests/test_metrics.py):
- The list order is the ranking; ties were broken by whoever made the list.
- Lists are de-duplicated keeping the first occurrence (a repeat is not a second hit or a second new category).
- K larger than the list uses the list as it is: C-N's IDCG still runs over min(K, |clicked|) positions and the
  -norm variants still divide by K, so a short list is not rewarded for being short.
- Empty pref gives C-H = 0; C-H divides by K even when the list is shorter; empty clicked gives C-N = 0 and the
  user still counts in the mean, unless ``exclude_no_clicks=True`` (then C-N averages over users with clicks).
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
    """C-H@K (App. A.4, Eq. 18): hit_u / K, hit_u = how many of the top K categories are in C_u^pref.

    K is the divisor even when the list is shorter than K (a short list is not rewarded for being short).

    Args:
        ranked: the user's recommended categories, best first.
        pref: C_u^pref; empty gives 0 for every K.
        ks: cut-offs.

    Returns:
        ``{"C-H@k": value in [0, 1]}`` for every k.
    """
    _check_ks(ks)
    r, pref = _dedupe(ranked), set(pref)
    return {f"C-H@{k}": sum(1 for c in r[:k] if c in pref) / k for k in ks}


def category_hit_any(ranked: Sequence[str], pref: Iterable[str], ks: Sequence[int]) -> dict[str, float]:
    """C-H-any@K (a variant, not Eq. 18): 1 if any of the top K categories is in C_u^pref, else 0.

    Equal to C-H@1 at K = 1; evaluation v1 reported this indicator under the name C-H.
    """
    _check_ks(ks)
    r, pref = _dedupe(ranked), set(pref)
    return {f"C-H-any@{k}": float(any(c in pref for c in r[:k])) for k in ks}


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
                              ks: Sequence[int], *, name: str = "NCP") -> dict[str, float]:
    """NCP@K (Eq. 20): categories in the top K that are new to the user (not in C_u^hist), divided by |C|.

    Args:
        ranked: the user's recommended categories, best first.
        hist: C_u^hist, what "new" is relative to (A.4: every category the user clicked before the cut-off).
        n_categories: |C|, the catalogue size.
        ks: cut-offs.
        name: metric name; ``"NCP-recent"`` when ``hist`` is a recent window (the variant).

    Returns:
        ``{"<name>@k": count / |C|, "<name>-norm@k": count / k}`` for every k.
    """
    _check_ks(ks)
    _check_catalogue(n_categories)
    r, hist = _dedupe(ranked), set(hist)
    out = {}
    for k in ks:
        n = sum(1 for c in r[:k] if c not in hist)
        out[f"{name}@{k}"] = n / n_categories
        out[f"{name}-norm@{k}"] = n / k
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


def test_category_hit(ranked: Sequence[str], clicked: Iterable[str], ks: Sequence[int]) -> dict[str, float]:
    """C-H-test@K (test-based, not Eq. 18): |top-K ∩ clicked| / K, clicked = categories clicked in the window.

    Eq. 18 with C_u^pref replaced by the held-out window's categories; K is the divisor, as in Eq. 18.
    E.g. [B, A, C] with clicked {A, C}: C-H-test@1 = 0, @2 = 1/2, @3 = 2/3.
    """
    _check_ks(ks)
    r, clicked = _dedupe(ranked), set(clicked)
    return {f"C-H-test@{k}": sum(1 for c in r[:k] if c in clicked) / k for k in ks}


def new_category_ndcg(ranked: Sequence[str], clicked: Iterable[str], hist: Iterable[str],
                      ks: Sequence[int]) -> dict[str, float]:
    """C-N-new@K: C-N (Eq. 19's NDCG) with relevance 1[c ∈ clicked \ hist], the new categories the user clicks.

    A known category earns nothing here even when clicked. E.g. [A, X, Y] with hist {A}, clicked {A, Y}: the only
    relevant category is Y at rank 3, so C-N-new@3 = (1 / log2 4) / (1 / log2 2) = 0.5; empty clicked \ hist -> 0.
    """
    new = set(clicked) - set(hist)
    return {name.replace("C-N@", "C-N-new@"): v for name, v in category_ndcg(ranked, new, ks).items()}


def novelty_adoption(ranked: Sequence[str], clicked: Iterable[str], hist: Iterable[str],
                     ks: Sequence[int]) -> dict[str, float]:
    """NA@K, novelty adoption: 1 if a new category in the top K (not in hist) is one the user newly clicks in the
    window (in clicked \ hist), else 0; NaN when the user clicks no new category (the metric is the hit rate
    among users who adopt a new category, so the others are left out of its mean).

    E.g. [A, X, Y] with hist {A}: clicked {Y} -> NA@2 = 0, NA@3 = 1; clicked {A} -> NaN at every K.
    """
    _check_ks(ks)
    hist = set(hist)
    new = set(clicked) - hist
    r = _dedupe(ranked)
    if not new:
        return {f"NA@{k}": math.nan for k in ks}
    return {f"NA@{k}": float(any(c in new for c in r[:k])) for k in ks}  # c in new implies c not in hist


def kept_candidates(scores: Sequence[float], tau: float) -> int:
    """How many candidates a Relevance filter keeps: |{s_i > tau}| (Eq. 14's C_align), e.g. ([0.9, 0.4, 0.6],
    0.5) -> 2. Reported per user beside the lists: a threshold that keeps nothing serves no exploration."""
    return int(sum(1 for s in scores if s > tau))


def test_based_metrics(ranked: Sequence[str], truth: Mapping[str, Iterable[str]],
                       ks: Sequence[int]) -> dict[str, float]:
    """C-H-test@k, C-N-new@k and NA@k for one user (``truth`` needs ``hist`` and ``clicked``)."""
    return {**test_category_hit(ranked, truth["clicked"], ks),
            **new_category_ndcg(ranked, truth["clicked"], truth["hist"], ks),
            **novelty_adoption(ranked, truth["clicked"], truth["hist"], ks)}


def user_metrics(ranked: Sequence[str], truth: Mapping[str, Iterable[str]], *, n_categories: int,
                 tail: Iterable[str], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Every metric for one user.

    Args:
        ranked: the user's recommended categories, best first.
        truth: ``{"pref": C_u^pref, "hist": C_u^hist, "clicked": clicked}`` and optionally ``"recent"`` (adds the
            NCP-recent variant); any iterables (lists from JSON work).
        n_categories: |C|.
        tail: the long-tail set.
        ks: cut-offs.

    Returns:
        ``{"C-H@k", "C-H-any@k", "C-N@k", "NCP@k", "NCP-norm@k", "CLTP@k", "CLTP-norm@k"}`` for every k, plus
        ``"NCP-recent@k", "NCP-recent-norm@k"`` when the row has ``recent``.
    """
    missing = [key for key in TRUTH_KEYS if key not in truth]
    if missing:
        raise ValueError(f"truth row lacks {missing}; it needs {list(TRUTH_KEYS)}")
    out = {**category_hit(ranked, truth["pref"], ks), **category_hit_any(ranked, truth["pref"], ks),
           **category_ndcg(ranked, truth["clicked"], ks),
           **novel_category_proportion(ranked, truth["hist"], n_categories, ks),
           **long_tail_proportion(ranked, tail, n_categories, ks)}
    if "recent" in truth:
        out.update(novel_category_proportion(ranked, truth["recent"], n_categories, ks, name="NCP-recent"))
    return out


def per_user(recs: Sequence[Sequence[str]], truth: Sequence[Mapping[str, Iterable[str]]], *, n_categories: int,
             tail: Iterable[str], ks: Sequence[int] = (1, 5, 10),
             exclude_no_clicks: bool = False, test_based: bool = False) -> dict[str, np.ndarray]:
    """Per-user metric arrays, aligned with ``recs`` (for std over seeds or paired tests).

    Args:
        recs: one ranked category list per user.
        truth: one truth row per user, same order (see :func:`user_metrics`).
        n_categories: |C|.
        tail: the long-tail set.
        ks: cut-offs.
        exclude_no_clicks: C-N@k is NaN (not 0) for users with an empty ``clicked`` set.
        test_based: add :func:`test_based_metrics` (C-H-test, C-N-new, NA; NA is NaN for users without a new
            clicked category).

    Returns:
        metric name -> (U,) float array; ``{}`` when there are no users.
    """
    if len(recs) != len(truth):
        raise ValueError(f"{len(recs)} recommendation lists for {len(truth)} users")
    tail = set(tail)
    rows = []
    for r, t in zip(recs, truth):
        row = user_metrics(r, t, n_categories=n_categories, tail=tail, ks=ks)
        if test_based:
            row.update(test_based_metrics(r, t, ks))
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


# ------------------------------------------------------------------------------------------------ uncertainty


def bootstrap_indices(n_users: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n_users) user indices drawn with replacement: one shared set of resamples for every method and
    metric, so that differences are paired (the same resampled users on both sides)."""
    if n_users < 1 or n_boot < 1:
        raise ValueError(f"need n_users >= 1 and n_boot >= 1, got {n_users}, {n_boot}")
    return np.random.default_rng(seed).integers(0, n_users, size=(n_boot, n_users))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, idx: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` over users and its percentile bootstrap interval.

    Args:
        a, b: (U,) per-user values of two methods on the same users, in the same order (NaN = not defined for
            that user, e.g. C-N with ``exclude_no_clicks``; such users are dropped from both sides).
        idx: (B, U) resampled user indices from :func:`bootstrap_indices`.
        confidence: coverage of the interval.

    Returns:
        ``{"delta", "lo", "hi"}``: the observed mean difference and the (1-confidence)/2, (1+confidence)/2
        percentiles of the resampled mean differences. E.g. a = [1, 0], b = [0, 0]: delta = 0.5; every resample
        is one of {0, 0.5, 1}.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)  # (U,)
    if d.shape != (idx.shape[1],):
        raise ValueError(f"per-user arrays of shape {d.shape} for resamples over {idx.shape[1]} users")
    ok = ~np.isnan(d)
    if not ok.any():
        return {"delta": math.nan, "lo": math.nan, "hi": math.nan}
    samples = np.where(ok[idx], d[idx], 0.0).sum(1) / np.maximum(ok[idx].sum(1), 1)  # (B,)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [tail, 1.0 - tail])
    return {"delta": float(d[ok].mean()), "lo": float(lo), "hi": float(hi)}


def hierarchical_indices(n_seeds: int, n_users: int, n_boot: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two-level resamples: (n_boot, n_seeds) seed indices and (n_boot, n_users) user indices, each drawn with
    replacement. Resample b takes the seeds ``seeds[b]`` and, inside every one of them, the users ``users[b]``:
    seeds (training randomness) and users (the sample of people) both vary, as a replication would vary them."""
    if n_seeds < 1 or n_users < 1 or n_boot < 1:
        raise ValueError(f"need n_seeds, n_users, n_boot >= 1, got {n_seeds}, {n_users}, {n_boot}")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_seeds, size=(n_boot, n_seeds)), rng.integers(0, n_users, size=(n_boot, n_users))


def hierarchical_bootstrap(a: np.ndarray, b: np.ndarray, seeds: np.ndarray, users: np.ndarray,
                           confidence: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` over seeds and users with a percentile interval from resampling both (paired: the same
    resampled seeds and users on both sides).

    Args:
        a, b: (S, U) per-seed, per-user values of two methods (row s = seed s, the same users in the same order;
            NaN = undefined for that user, dropped from both sides, as in :func:`paired_bootstrap`).
        seeds, users: (B, S) and (B, U) indices from :func:`hierarchical_indices`.
        confidence: coverage of the interval.

    Returns:
        ``{"delta", "lo", "hi"}``. With one seed it is :func:`paired_bootstrap` on that seed. E.g. a = [[1, 1],
        [0, 0]], b = 0 (two seeds that disagree completely): delta = 0.5, and resamples that draw seed 0 twice
        give 1, so the interval spans the seed variance that a users-only bootstrap of the seed mean ([0.5, 0.5]
        per user) would hide.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)  # (S, U)
    if d.ndim != 2 or d.shape != (seeds.shape[1], users.shape[1]):
        raise ValueError(f"per-seed per-user arrays of shape {d.shape} for resamples over "
                         f"{seeds.shape[1]} seeds x {users.shape[1]} users")
    ok = ~np.isnan(d)
    if not ok.any():
        return {"delta": math.nan, "lo": math.nan, "hi": math.nan}
    samples = hierarchical_means(d, seeds, users)  # (B,)
    samples = samples[~np.isnan(samples)]
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [tail, 1.0 - tail])
    return {"delta": float(d[ok].mean()), "lo": float(lo), "hi": float(hi)}


def hierarchical_means(x: np.ndarray, seeds: np.ndarray, users: np.ndarray) -> np.ndarray:
    """(B,) the mean of ``x`` (S, U) over each resample's seeds and users (NaN entries left out; NaN when a
    resample holds no defined entry). E.g. x = [[1, 3]], seeds [[0]], users [[1, 1]] -> [3.0]."""
    x = np.asarray(x, dtype=float)
    picked = x[seeds[:, :, None], users[:, None, :]]  # (B, S, U)
    ok = ~np.isnan(picked)
    n = ok.sum((1, 2))
    total = np.where(ok, picked, 0.0).sum((1, 2))
    return np.where(n > 0, total / np.maximum(n, 1), math.nan)

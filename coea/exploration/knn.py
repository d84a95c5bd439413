"""Collaborative exploration baselines over unexplored categories, written once for the offline evaluation
(coea/evaluate) and the closed-loop simulation (coea/simulate/policies.py): pure numpy over click-count matrices.

Inputs: ``targets`` (U, C) the click counts of the users to serve per category, ``pool`` (N, C) the click counts
of every user the method may learn from (the targets included; a target is matched to its own pool row by
``self_rows`` and never counts as its own neighbour).

    user_knn  (Sarwar et al. 2001, user-based CF on categories)
              sim(u, v) = cosine of the two users' category click-count vectors; N_k(u) = the k most similar
              pool users with sim > 0 (u itself excluded); score(u, c) = Σ_{v ∈ N_k(u)} sim(u, v) · 1[v clicked c]
    item_knn  (Sarwar et al. 2001 / Deshpande & Karypis 2004, item-based CF with categories as items)
              co-occurrence cosine S[a, b] = |users who clicked a and b| / sqrt(|clicked a| · |clicked b|), a != b,
              each row cut to its k largest entries (k = 0: all); score(u, c) = Σ_{a clicked by u} S[a, c]

:func:`unexplored_first` turns scores into each user's ranking: the categories the user never clicked by score,
then the clicked ones by score; ties by a given prior order (popularity), so the head of the list is the
exploration and a full ranking remains for the evaluation's list policies.
"""

from __future__ import annotations

import numpy as np


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def user_knn_scores(targets: np.ndarray, pool: np.ndarray, k: int, self_rows: np.ndarray | None = None, *,
                    chunk: int = 1024) -> np.ndarray:
    """(U, C) user-kNN scores (module docstring).

    Args:
        targets: (U, C) click counts of the users to score.
        pool: (N, C) click counts of the users to learn from.
        k: neighbours per user (>= 1).
        self_rows: (U,) row of each target in ``pool`` (-1: not in the pool), excluded from its neighbours.
        chunk: targets scored at a time (bounds the (chunk, N) similarity block).

    Example: targets [[1, 0, 0]], pool [[1, 0, 0], [2, 1, 0], [0, 0, 3]], self_rows [0], k = 1: sims to the pool
    are (self), 2/sqrt(5), 0 -> the one neighbour is row 1, which clicked categories 0 and 1 -> [0.894, 0.894, 0].
    """
    if k < 1:
        raise ValueError(f"user_knn: k must be >= 1, got {k}")
    t, p = _unit_rows(np.asarray(targets, float)), _unit_rows(np.asarray(pool, float))
    clicked = (np.asarray(pool) > 0).astype(float)  # (N, C)
    rows = np.full(len(t), -1) if self_rows is None else np.asarray(self_rows)
    k = min(k, len(p))
    out = np.zeros((len(t), clicked.shape[1]))
    for s in range(0, len(t), chunk):  # (chunk, N) similarities at a time: memory stays O(chunk * N)
        sim = t[s:s + chunk] @ p.T  # (B, N)
        has = rows[s:s + chunk] >= 0
        sim[np.flatnonzero(has), rows[s:s + chunk][has]] = -np.inf
        top = (np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1]
               else np.tile(np.arange(sim.shape[1]), (len(sim), 1)))  # (B, k)
        weight = np.take_along_axis(sim, top, axis=1)
        weight = np.where(weight > 0, weight, 0.0)  # unrelated users (and the user itself) carry no vote
        out[s:s + chunk] = np.einsum("uk,ukc->uc", weight, clicked[top])
    return out


def cooccurrence(pool: np.ndarray, k: int = 0) -> np.ndarray:
    """(C, C) category co-occurrence cosine over the pool's users, zero diagonal, each row's ``k`` largest kept.

    Example: pool [[1, 1, 0], [1, 0, 0], [0, 1, 1]]: clicked-by counts (2, 2, 1), co-clicks 0-1: 1, 1-2: 1 ->
    S[0, 1] = 1/2, S[1, 2] = 1/sqrt(2), S[0, 2] = 0.
    """
    b = (np.asarray(pool) > 0).astype(float)  # (N, C)
    co = b.T @ b  # (C, C)
    n = np.sqrt(np.diag(co))
    s = np.divide(co, np.outer(n, n), out=np.zeros_like(co), where=np.outer(n, n) > 0)
    np.fill_diagonal(s, 0.0)
    if 0 < k < s.shape[1]:
        rank = np.argsort(np.argsort(-s, axis=1, kind="stable"), axis=1, kind="stable")  # ties: first columns win
        s = np.where(rank < k, s, 0.0)
    return s


def item_knn_scores(targets: np.ndarray, pool: np.ndarray, k: int = 0) -> np.ndarray:
    """(U, C) item-kNN scores: Σ over the user's clicked categories of their co-occurrence rows (module
    docstring); ``k`` neighbours kept per category (0 = all)."""
    return (np.asarray(targets) > 0).astype(float) @ cooccurrence(pool, k)


def unexplored_first(scores: np.ndarray, seen: np.ndarray, prior_rank: np.ndarray) -> np.ndarray:
    """(U, C) category indices per user: never-clicked categories by decreasing score, then the clicked ones by
    decreasing score; ties by ``prior_rank`` (C,) (0 = first, e.g. the most popular).

    Example: scores [[0.5, 0.9, 0.5]], seen [[False, True, False]], prior_rank [1, 2, 0] -> [2, 0, 1].
    """
    scores, seen = np.asarray(scores, float), np.asarray(seen, bool)
    prior = np.broadcast_to(np.asarray(prior_rank), scores.shape)
    return np.stack([np.lexsort((prior[u], -scores[u], seen[u])) for u in range(len(scores))]) if len(scores) else \
        np.zeros((0, scores.shape[1]), dtype=np.int64)


def knn_ranking(method: str, targets: np.ndarray, pool: np.ndarray, k: int, prior_rank: np.ndarray,
                self_rows: np.ndarray | None = None) -> np.ndarray:
    """(U, C) each target's ranking (:func:`unexplored_first`) by ``method`` ``"user_knn"`` or ``"item_knn"``."""
    if method == "user_knn":
        scores = user_knn_scores(targets, pool, k, self_rows)
    elif method == "item_knn":
        scores = item_knn_scores(targets, pool, k)
    else:
        raise ValueError(f"not a kNN method: {method!r} (known: user_knn, item_knn)")
    return unexplored_first(scores, np.asarray(targets) > 0, prior_rank)

"""Judge figures as pure functions over hand-checkable values (docs/judge.md, "Metrics").

Per method (a list of up to K categories per user, each judged 1-5 or unparseable = None):

- ``serendipity_precision@K`` = (# items scored >= 4 in the top K) / K;
- ``serendipity_nDCG@K`` = DCG of the binary "scored >= 4" relevances over the top K, divided by the DCG of a
  list of K serendipitous items (so it rewards both how many and how high);
- ``avg_score`` = the mean parsed score of the user's items (NaN for a user with none);

each a mean over users with a percentile bootstrap interval over users (:func:`coea.metrics.bootstrap_indices`;
:func:`coea.metrics.paired_bootstrap` against zeros is the interval of the mean). An unparseable score counts as
not serendipitous and is left out of the average; it is counted in ``unparseable``.

Calibration against people (labels 1-5): MAE, exact and 3-class accuracy (1-2 low, 3 neutral, 4-5 high), the 5x5
and 3x3 confusion matrices (rows = label, columns = judge), and between templates the exact and 3-class agreement,
the mean absolute difference and Cohen's kappa.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from coea.judge_prompts import SERENDIPITOUS
from coea.metrics import bootstrap_indices, paired_bootstrap

Score = int | None


def user_values(scores: Sequence[Score], k: int) -> dict[str, float]:
    """One user's precision, nDCG and average score over the top ``k`` of a judged list.

    E.g. scores [5, 2, 4] at k = 3: precision 2/3; DCG = 1/log2(2) + 1/log2(4) = 1.5, ideal 1 + 1/log2(3) +
    1/log2(4) = 2.1309, nDCG 0.7039; average score 11/3.
    """
    top = list(scores)[:k]
    rel = [1.0 if s is not None and s >= SERENDIPITOUS else 0.0 for s in top]
    dcg = sum(r / math.log2(i + 2) for i, r in enumerate(rel))
    ideal = sum(1.0 / math.log2(i + 2) for i in range(k))
    parsed = [s for s in top if s is not None]
    return {"precision": sum(rel) / k, "ndcg": dcg / ideal,
            "avg_score": float(np.mean(parsed)) if parsed else math.nan}


def interval(values: np.ndarray, n_boot: int, seed: int, confidence: float) -> dict[str, float]:
    """Mean of ``values`` and its percentile bootstrap interval over users; NaN users (no parsed score) are left
    out before resampling, so no resample is empty. All NaN: NaN everywhere."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if not len(values):
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan}
    idx = bootstrap_indices(len(values), n_boot, seed)
    got = paired_bootstrap(values, np.zeros_like(values), idx, confidence)
    return {"mean": got["delta"], "lo": got["lo"], "hi": got["hi"]}


def method_table(lists: Mapping[str, Mapping[str, Sequence[str]]], scores: Mapping[tuple[str, str], Score], *,
                 k: int, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, dict]:
    """method -> {users, items, unparseable, precision@K, nDCG@K, avg_score (each {mean, lo, hi})}.

    Args:
        lists: method -> user -> ranked categories.
        scores: (user, category) -> judged score (None = unparseable).
        k: the cut-off (a shorter list counts its missing slots as not serendipitous).
        n_boot, seed, confidence: the bootstrap over users (:func:`interval`); methods with the same users draw
            the same resamples.
    """
    out: dict[str, dict] = {}
    for method, by_user in sorted(lists.items()):
        users = sorted(by_user)
        if not users:
            continue
        rows = [user_values([scores.get((u, c)) for c in by_user[u][:k]], k) for u in users]
        items = [(u, c) for u in users for c in by_user[u][:k]]
        out[method] = {
            "users": len(users), "items": len(items),
            "unparseable": sum(1 for key in items if scores.get(key) is None),
            f"precision@{k}": interval(np.array([r["precision"] for r in rows]), n_boot, seed, confidence),
            f"nDCG@{k}": interval(np.array([r["ndcg"] for r in rows]), n_boot, seed, confidence),
            "avg_score": interval(np.array([r["avg_score"] for r in rows]), n_boot, seed, confidence),
        }
    return out


def paired_table(lists: Mapping[str, Mapping[str, Sequence[str]]], scores: Mapping[tuple[str, str], Score], *,
                 k: int, reference: str, n_boot: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> dict[str, dict]:
    """method -> metric -> ``{delta, lo, hi}``: ``reference`` minus the method on the users both list, a paired
    percentile bootstrap over users (:func:`coea.metrics.paired_bootstrap`, the resamples shared by both sides; a
    user with no parsed score on either side is left out of ``avg_score``).

    E.g. reference precision [1, 0.5] and method [0.5, 0.5] over two users: delta 0.25, every resample one of
    {0, 0.25, 0.5}.
    """
    ref = lists[reference]
    out: dict[str, dict] = {}
    for method, by_user in sorted(lists.items()):
        users = sorted(set(ref) & set(by_user))
        if method == reference or not users:
            continue
        idx = bootstrap_indices(len(users), n_boot, seed)
        a = [user_values([scores.get((u, c)) for c in ref[u][:k]], k) for u in users]
        b = [user_values([scores.get((u, c)) for c in by_user[u][:k]], k) for u in users]
        out[method] = {name: paired_bootstrap(np.array([r[key] for r in a]), np.array([r[key] for r in b]), idx,
                                              confidence)
                       for name, key in ((f"precision@{k}", "precision"), (f"nDCG@{k}", "ndcg"),
                                         ("avg_score", "avg_score"))}
        out[method]["users"] = len(users)
    return out


def three_class(score: int) -> int:
    """1-2 -> 0 (low), 3 -> 1 (neutral), 4-5 -> 2 (high)."""
    return 0 if score <= 2 else (1 if score == 3 else 2)


def calibration(labels: Sequence[int], judged: Sequence[Score]) -> dict:
    """The judge against people on the same items (module docstring); unparseable judgements are counted and left
    out of every figure.

    E.g. labels [5, 4, 1, 3] and judged [4, 2, 1, None]: 3 compared; MAE (1 + 2 + 0) / 3 = 1.0; exact 1/3;
    3-class 2/3 (5->4 high/high, 4->2 high/low, 1->1 low/low).
    """
    pairs = [(int(a), int(b)) for a, b in zip(labels, judged, strict=True) if b is not None]
    conf5 = np.zeros((5, 5), dtype=int)
    conf3 = np.zeros((3, 3), dtype=int)
    for a, b in pairs:
        conf5[a - 1, b - 1] += 1
        conf3[three_class(a), three_class(b)] += 1
    n = len(pairs)
    return {"n": len(labels), "compared": n, "unparseable": len(labels) - n,
            "mae": float(np.mean([abs(a - b) for a, b in pairs])) if n else math.nan,
            "accuracy": float(np.trace(conf5) / n) if n else math.nan,
            "accuracy_3class": float(np.trace(conf3) / n) if n else math.nan,
            "confusion": conf5.tolist(), "confusion_3class": conf3.tolist()}


def cohen_kappa(a: Sequence[int], b: Sequence[int], classes: int = 5) -> float:
    """Cohen's kappa of two raters over scores 1..classes: (p_o - p_e) / (1 - p_e); 1.0 when both are constant and
    equal, NaN with no items."""
    if not a:
        return math.nan
    m = np.zeros((classes, classes))
    for x, y in zip(a, b, strict=True):
        m[x - 1, y - 1] += 1
    m /= m.sum()
    p_o, p_e = float(np.trace(m)), float(m.sum(1) @ m.sum(0))
    return 1.0 if p_e == 1.0 else (p_o - p_e) / (1.0 - p_e)


def agreement(judged: Mapping[str, Sequence[Score]]) -> dict[str, dict]:
    """Every pair of templates on the items both parsed: ``"base~cot" -> {n, exact, three_class, mean_abs_diff,
    kappa}``."""
    names = list(judged)
    out = {}
    for i, s in enumerate(names):
        for t in names[i + 1:]:
            pairs = [(x, y) for x, y in zip(judged[s], judged[t], strict=True) if x is not None and y is not None]
            a, b = [x for x, _ in pairs], [y for _, y in pairs]
            n = len(pairs)
            out[f"{s}~{t}"] = {
                "n": n,
                "exact": float(np.mean([x == y for x, y in pairs])) if n else math.nan,
                "three_class": float(np.mean([three_class(x) == three_class(y) for x, y in pairs])) if n else math.nan,
                "mean_abs_diff": float(np.mean([abs(x - y) for x, y in pairs])) if n else math.nan,
                "kappa": cohen_kappa(a, b),
            }
    return out

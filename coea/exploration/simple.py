"""Non-LLM exploration baselines that need no training, and the list policies that turn a ranking into a list.

Every method ranks the whole catalogue for each user (best first); a *list policy* then builds the final list:

    own      the method's ranking, cut to the list length ("each method ranks its own list")
    budget   exactly b novel categories (not in C_u^hist) among the first k positions -- the method's best b novel
             and best k - b known ones, in the method's own order -- then the rest of its ranking (the novelty
             budget of the frontiers, docs/evaluation.md)
    slots    v1's policy: the method's first novel categories at fixed 1-based positions of a shared exploitation
             ranking (:func:`place_in_slots`)

    random   a seeded uniform permutation of the catalogue
    popular  categories by clicks in the state (ties by name)
    ucb      global UCB1 over categories (Auer et al. 2002): clicks_c / n_c + c * sqrt(ln N / n_c), a pull = an
             exposure or click of one of the category's items, never-shown categories first

``random_unexplored``, ``by_score_unexplored`` and ``ucb_scores`` keep evaluation v1's interface (novel categories
only); the closed-loop simulation uses them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------- list policies


def own_list(ranking: Sequence[str], length: int) -> list[str]:
    """The method's own ranking, de-duplicated, first ``length`` entries."""
    return list(dict.fromkeys(ranking))[:length]


def budget_list(ranking: Sequence[str], hist: set[str], budget: int, k: int, length: int) -> list[str]:
    """``budget`` novel categories (not in ``hist``) among the first ``k`` positions, the method's order kept.

    The first k positions hold the method's best ``budget`` novel and best ``k - budget`` known categories (when one
    kind runs out the other fills in), ordered as the method ranks them; positions k+1.. continue with the rest of
    the ranking. ``budget`` is clipped to [0, k].

    >>> budget_list(["a", "x", "b", "y", "c"], {"a", "b", "c"}, 1, 3, 5)
    ['a', 'x', 'b', 'y', 'c']
    >>> budget_list(["a", "x", "b", "y", "c"], {"a", "b", "c"}, 0, 3, 5)
    ['a', 'b', 'c', 'x', 'y']
    >>> budget_list(["a", "x", "b", "y", "c"], {"a", "b", "c"}, 3, 3, 5)
    ['a', 'x', 'y', 'b', 'c']
    """
    ranking = list(dict.fromkeys(ranking))
    budget = max(0, min(int(budget), k))
    novel = [c for c in ranking if c not in hist]
    known = [c for c in ranking if c in hist]
    n_novel = min(budget, len(novel))
    n_known = min(k - n_novel, len(known))
    n_novel = min(len(novel), k - n_known)  # known ran out: more novel ones fill the head
    head = set(novel[:n_novel]) | set(known[:n_known])
    return ([c for c in ranking if c in head] + [c for c in ranking if c not in head])[:length]


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


def slot_list(base: Sequence[str], ranking: Sequence[str], hist: set[str], slots: Sequence[int],
              length: int) -> list[str]:
    """v1's slot policy on a full ranking: its first novel categories into ``slots`` of ``base``."""
    return place_in_slots(base, [c for c in ranking if c not in hist], slots, length)


# --------------------------------------------------------------------------------------------- full rankings


def by_score(score: Mapping[str, float], categories: Sequence[str]) -> list[str]:
    """Categories by decreasing ``score`` (missing = -inf), ties by name."""
    return sorted(categories, key=lambda c: (-score.get(c, -math.inf), c))


def random_ranking(n_users: int, categories: Sequence[str], seed: int) -> list[list[str]]:
    """A seeded uniform permutation of the catalogue per user."""
    rng = np.random.default_rng(seed)
    cats = list(categories)
    return [[cats[i] for i in rng.permutation(len(cats))] for _ in range(n_users)]


def popular_ranking(n_users: int, clicks: Mapping[str, int], categories: Sequence[str]) -> list[list[str]]:
    """Most clicked first (ties by name); the same ranking for every user."""
    order = by_score({c: float(clicks.get(c, 0)) for c in categories}, categories)
    return [list(order) for _ in range(n_users)]


def ucb_ranking(n_users: int, clicks: Mapping[str, int], shows: Mapping[str, int], categories: Sequence[str],
                c: float) -> list[list[str]]:
    """Global UCB1 order (:func:`ucb_scores`); the same ranking for every user."""
    scores = ucb_scores({k: clicks.get(k, 0) for k in categories}, {k: shows.get(k, 0) for k in categories}, c)
    order = by_score(scores, categories)
    return [list(order) for _ in range(n_users)]


# -------------------------------------------------------------------------------- v1 interface (novel only)


def random_unexplored(hist: Sequence[set[str]], categories: Sequence[str], n: int, seed: int) -> list[list[str]]:
    """Per user, ``n`` uniformly random categories outside its hist."""
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

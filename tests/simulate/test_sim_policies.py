"""The non-LLM arms on hand-made logs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from coea.simulate.policies import (
    Catalogue, ExploitationPolicy, Policy, PopularUnexploredPolicy, RandomUnexploredPolicy, UCBUnexploredPolicy,
    make_policy,
)

CATS = ["a", "b", "c", "d", "e"]


def catalogue() -> Catalogue:
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(5)], "category": CATS, "price": [1.0] * 5})
    return Catalogue(CATS, items, np.array([0.1, 0.4, 0.2, 0.2, 0.1]))  # prior order: b, c, d, a, e


def events(rows):
    """rows: (user, category index, click, slot)."""
    return pd.DataFrame({"user_id": [r[0] for r in rows], "item_id": [f"i{r[1]}" for r in rows],
                         "timestamp": range(len(rows)), "event": ["click" if r[2] else "exposure" for r in rows],
                         "rating": np.nan, "slot": [r[3] for r in rows]})


WARM = events([("u0", 0, 1, -1), ("u0", 0, 1, -1), ("u0", 3, 1, -1), ("u1", 4, 1, -1), ("u1", 2, 0, -1)])


def test_every_arm_is_a_policy_and_round_trips_its_state():
    for name in ("exploitation", "random", "popular", "ucb", "user_knn", "item_knn", "thompson", "linucb"):
        p = make_policy(name, catalogue(), ["u0", "u1"], 0, WARM)
        assert isinstance(p, Policy) and p.name == name
        q = make_policy(name, catalogue(), ["u0", "u1"], 0, None)
        q.load_state_dict(p.state_dict())
        assert q.fill(3, ["u0", "u1"], [[], []], 2) == p.fill(3, ["u0", "u1"], [[], []], 2)
    with pytest.raises(ValueError, match="not a non-LLM arm"):
        make_policy("coea", catalogue(), ["u0"], 0, None)


def test_exploitation_serves_the_most_clicked_then_the_popular():
    p = ExploitationPolicy(catalogue(), ["u0", "u1"], 0, WARM)
    # u0: a (2 clicks), d (1); u1: e (1) then the most clicked overall: a (2), then d/e (1, ties by prior: d)
    assert p.fill(0, ["u0", "u1"], [[], []], 2) == [["a", "d"], ["e", "a"]]
    p.observe(1, None, events([("u1", 1, 1, 0), ("u1", 1, 1, 0)]))
    assert p.fill(1, ["u1"], [[]], 2) == [["b", "e"]]


def test_random_unexplored_never_serves_a_clicked_category_and_is_keyed_by_day():
    p = RandomUnexploredPolicy(catalogue(), ["u0", "u1"], 5, WARM)
    for day in range(20):
        lists = p.fill(day, ["u0", "u1"], [[], []], 2)
        assert not {"a", "d"} & set(lists[0]) and "e" not in lists[1]
        assert len(set(lists[0])) == 2
    assert p.fill(3, ["u0"], [[]], 3) == p.fill(3, ["u0"], [[]], 3)
    assert any(p.fill(d, ["u0"], [[]], 2) != p.fill(0, ["u0"], [[]], 2) for d in range(1, 10))


def test_popular_unexplored_by_clicks_in_the_log_ties_by_prior():
    p = PopularUnexploredPolicy(catalogue(), ["u0", "u1"], 0, WARM)
    # clicks overall: a 2, d 1, e 1, b 0, c 0 -> order a, d, e, b, c (ties d/e by prior d; b/c by prior b)
    assert p.fill(0, ["u0", "u1"], [[], []], 2) == [["e", "b"], ["a", "d"]]


def test_ucb_tries_unserved_first_then_follows_ucb1():
    p = UCBUnexploredPolicy(catalogue(), ["u0", "u1"], 0, WARM, c=1.0)
    first = p.fill(0, ["u0"], [[]], 3)[0]
    assert not {"a", "d"} & set(first)  # never a clicked category, all untried
    # served-slot feedback: b 4 pulls 3 clicks, c 4 pulls 0, e 2 pulls 1; a, d untried -> inf
    p.observe(0, None, events([("u1", 1, 1, 0)] * 3 + [("u1", 1, 0, 0)] + [("u0", 2, 0, 1)] * 4
                              + [("u0", 4, 1, 0), ("u0", 4, 0, 0)]))
    s = p.scores()
    n = 10
    assert s[1] == pytest.approx(3 / 4 + math.sqrt(math.log(n) / 4))
    assert s[2] == pytest.approx(0 + math.sqrt(math.log(n) / 4))
    assert s[4] == pytest.approx(1 / 2 + math.sqrt(math.log(n) / 2))
    assert np.isinf(s[0]) and np.isinf(s[3])
    # u1 clicked b and e now: untried a, d first (prior order d, a), then c
    assert p.fill(1, ["u1"], [[]], 3) == [["d", "a", "c"]]


def test_knn_arms_serve_what_similar_users_clicked_with_the_evaluations_code():
    """u0 clicked a (2) and d; u2 clicked a and c; u1 only e. user-kNN: u0's nearest user with a shared category is
    u2 (cosine 2 / sqrt 10), which explored c -> c first, then the popularity prior among the rest (b). item-kNN: c
    co-occurs with u0's a (cosine 1 / sqrt 2) -> c first too. Both never serve u0's own a or d; both call
    coea.exploration.knn.knn_ranking, the function behind the evaluation's rows."""
    import coea.simulate.policies as policies
    from coea.exploration import knn

    warm = pd.concat([WARM, events([("u2", 0, 1, -1), ("u2", 2, 1, -1)])], ignore_index=True)
    assert policies.knn_ranking is knn.knn_ranking
    for name, k in (("user_knn", 1), ("item_knn", 0)):
        p = make_policy(name, catalogue(), ["u0", "u1", "u2"], 0, warm, user_knn_k=k, item_knn_k=k)
        got = p.fill(0, ["u0"], [[]], 2)
        assert got == [["c", "b"]], name
        assert not {"a", "d"} & set(p.fill(0, ["u0"], [[]], 3)[0])


def featured_catalogue() -> Catalogue:
    users = pd.DataFrame({"user_id": ["u0", "u1", "u2", "u3"], "feature_0": ["x", "x", "y", "y"]})
    cat = catalogue()
    return Catalogue(cat.categories, cat.items, cat.popularity, users)


# group x (u0, u1): u1 clicks b 9 times in 10 exposures, never c; group y (u2, u3): u3 the other way round
GROUPED = events([("u1", 1, i < 9, -1) for i in range(10)] + [("u1", 2, 0, -1)] * 10
                 + [("u3", 2, i < 9, -1) for i in range(10)] + [("u3", 1, 0, -1)] * 10)


def test_thompson_and_linucb_learn_per_group_from_the_user_features():
    users = ["u0", "u1", "u2", "u3"]
    for name in ("thompson", "linucb"):
        p = make_policy(name, featured_catalogue(), users, 0, GROUPED)
        x, y = p.fill(1, ["u0", "u2"], [[], []], 5)  # every category, best first
        assert x.index("b") < x.index("c") and y.index("c") < y.index("b"), name  # what the group-mate liked
        assert "b" not in p.fill(1, ["u1"], [[]], 4)[0]  # u1 clicked b: never served back to it


def test_linucb_scores_by_hand_with_the_bias_feature_only():
    """No user features: x = [1], A_c = 1 + n_c, b_c = k_c -> score = k_c / (1 + n_c) + alpha / sqrt(1 + n_c).
    WARM: a n=2 k=2 -> 2/3 + 0.5/sqrt(3) = 0.9553; b n=0 -> 0.5; c n=1 k=0 -> 0.3536; d, e n=1 k=1 -> 0.8536."""
    p = make_policy("linucb", catalogue(), ["u0", "u1"], 0, WARM, linucb_alpha=0.5)
    assert p.scores(np.array([0])) == pytest.approx(np.array([[0.9553, 0.5, 0.3536, 0.8536, 0.8536]]), abs=1e-4)
    assert p.fill(1, ["u1"], [[]], 2) == [["a", "d"]]  # u1 clicked e: a, then d (tied with e, never clicked)

"""Exploration methods: v1 helpers (never return hist categories; UCB bonus; slots), the list policies (own ranking,
novelty budget), the bandits (HUCB, pHUCB, NLB) and LLM-KERec's ranking on hand-checked inputs."""

from __future__ import annotations

import math

import pytest

import numpy as np

from coea.exploration import (
    budget_list,
    by_score_unexplored,
    own_list,
    parse_slots,
    place_in_slots,
    popular_ranking,
    random_ranking,
    random_unexplored,
    slot_list,
    ucb_ranking,
    ucb_scores,
)
from coea.exploration.bandits import (
    category_tree,
    fit_neural_linear,
    hucb_scores,
    logged_feedback,
    phucb_scores,
)
from coea.exploration.llm import dual_ranking, kerec_ranking, novelty_ranking, DualScores

CATS = [f"c{i}" for i in range(8)]
HIST = [{"c0", "c1"}, set(), {"c2", "c3", "c4", "c5", "c6", "c7"}, set(CATS)]


def test_random_and_popular_never_return_hist():
    for lists in (random_unexplored(HIST, CATS, 3, seed=1),
                  by_score_unexplored(HIST, {c: i for i, c in enumerate(CATS)}, 3)):
        for novel, hist in zip(lists, HIST):
            assert not set(novel) & hist
            assert len(novel) == min(3, len(CATS) - len(hist)) == len(set(novel))


def test_random_is_seeded():
    assert random_unexplored(HIST, CATS, 3, seed=1) == random_unexplored(HIST, CATS, 3, seed=1)


def test_popular_orders_by_clicks():
    assert by_score_unexplored([{"c7"}], {c: i for i, c in enumerate(CATS)}, 2) == [["c6", "c5"]]


def test_ucb_bonus():
    # equal rates: the less-shown category gets the larger bonus; unseen categories come first
    s = ucb_scores({"a": 5, "b": 50, "c": 0}, {"a": 10, "b": 100, "c": 0}, c=1.0)
    assert s["c"] == math.inf
    assert s["a"] > s["b"]
    n = 110
    assert s["a"] == pytest.approx(0.5 + math.sqrt(math.log(n) / 10))
    # c = 0 is pure exploitation of the click rate
    s0 = ucb_scores({"a": 1, "b": 30}, {"a": 10, "b": 40}, c=0.0)
    assert s0 == {"a": 0.1, "b": 0.75}
    # the bonus can overturn a better rate when the rate estimate is thin
    s2 = ucb_scores({"a": 1, "b": 30}, {"a": 2, "b": 40}, c=2.0)
    assert s2["a"] > s2["b"]
    assert by_score_unexplored([{"a"}], s2, 1) == [["b"]]


def test_slot_policy():
    base = ["a", "b", "c", "d", "e", "f"]
    assert place_in_slots(base, ["x", "y"], [2, 4], 6) == ["a", "x", "b", "y", "c", "d"]
    # a novel category already in the base moves to its slot, no duplicates
    assert place_in_slots(base, ["e", "x"], [2, 4], 6) == ["a", "e", "b", "x", "c", "d"]
    # fewer novel categories than slots: spare slots keep the base ranking
    assert place_in_slots(base, ["x"], [2, 4], 6) == ["a", "x", "b", "c", "d", "e"]
    assert place_in_slots(base, [], [2, 4], 6) == base
    # the list is as long as the catalogue allows
    assert place_in_slots(["a", "b"], ["x"], [1, 3], 10) == ["x", "a", "b"]
    assert parse_slots("4, 2", 10) == [2, 4]
    with pytest.raises(ValueError):
        parse_slots("0,11", 10)


def test_budget_policy():
    """ranking [a, x, b, y, c], hist {a, b, c} (x, y novel), k = 3.

    b = 0: the 3 best known (a, b, c) head the list, then x, y. b = 1: best novel x and best two known a, b, in the
    method's order: a, x, b. b = 2: a, x, y. b = 3 asks for 3 novel but only 2 exist: known a fills in -> a, x, y.
    Negative or too large budgets clip to [0, k]. A user who knows everything gets the ranking as it is.
    """
    r, h = ["a", "x", "b", "y", "c"], {"a", "b", "c"}
    assert budget_list(r, h, 0, 3, 5) == ["a", "b", "c", "x", "y"]
    assert budget_list(r, h, 1, 3, 5) == ["a", "x", "b", "y", "c"]
    assert budget_list(r, h, 2, 3, 5)[:3] == ["a", "x", "y"]
    assert budget_list(r, h, 3, 3, 5)[:3] == ["a", "x", "y"]
    assert budget_list(r, h, 9, 3, 4) == budget_list(r, h, 3, 3, 4)
    assert budget_list(r, h, -1, 3, 5)[:3] == ["a", "b", "c"]
    assert budget_list(r, set(r), 2, 3, 5) == r
    for b in range(4):  # exactly min(b, novel available) novel categories in the head, no duplicates
        got = budget_list(r, h, b, 3, 5)
        assert len(got) == len(set(got)) == 5 and sum(c not in h for c in got[:3]) == min(b, 2)


def test_own_and_slot_lists():
    assert own_list(["a", "a", "b", "c"], 2) == ["a", "b"]
    # slots: the method's novel categories (in its order) into slots 2, 4 of the base ranking
    assert slot_list(["a", "b", "c", "d"], ["c", "y", "x", "a"], {"a", "b", "c", "d"}, [2, 4], 4) == [
        "a", "y", "b", "x"]


def test_full_rankings_are_permutations():
    cats = ["c0", "c1", "c2", "c3"]
    for ranks in (random_ranking(3, cats, 0), popular_ranking(3, {"c2": 5, "c1": 5}, cats),
                  ucb_ranking(3, {"c1": 1}, {"c1": 4, "c2": 2}, cats, 1.0)):
        assert all(sorted(r) == cats for r in ranks)
    assert popular_ranking(1, {"c2": 5, "c1": 5}, cats) == [["c1", "c2", "c0", "c3"]]  # ties by name
    assert ucb_ranking(1, {"c1": 1}, {"c1": 4, "c2": 2}, cats, 1.0)[0][:2] == ["c0", "c3"]  # never shown first


def test_hucb_hand_computed():
    """Two clusters {0, 1} and {2}; clicks [1, 3, 2], pulls [4, 6, 2] (N = 12), c = 1.

    cluster 0: n = 10, k = 4 -> 0.4 + sqrt(ln 12 / 10); cluster 1: n = 2, k = 2 -> 1 + sqrt(ln 12 / 2).
    leaf 0 within cluster 0: 1/4 + sqrt(ln 10 / 4); leaf 2 within cluster 1: 2/2 + sqrt(ln 2 / 2).
    A category never pulled scores +inf.
    """
    cluster = np.array([0, 0, 1])
    s = hucb_scores(np.array([1, 3, 2]), np.array([4, 6, 2]), cluster, 1.0)
    L = math.log
    assert s[0] == pytest.approx(0.4 + math.sqrt(L(12) / 10) + 0.25 + math.sqrt(L(10) / 4))
    assert s[2] == pytest.approx(1 + math.sqrt(L(12) / 2) + 1 + math.sqrt(L(2) / 2))
    assert hucb_scores(np.array([1, 0, 2]), np.array([4, 0, 2]), cluster, 1.0)[1] == math.inf
    # c = 0: pure rates, cluster rate + leaf rate
    assert hucb_scores(np.array([1, 3, 2]), np.array([4, 6, 2]), cluster, 0.0).tolist() == pytest.approx(
        [0.4 + 0.25, 0.4 + 0.5, 1 + 1])


def test_phucb_personalised_and_shrunk():
    """One user, one cluster, clicks [2, 0], pulls [2, 2]; global clicks [10, 10], pulls [100, 20]; c = 0, m = 2.

    global rates p = [0.1, 0.5], cluster rate 20 / 120. User cluster rate (2 + 2/6) / (4 + 2) = 0.3889.
    leaf 0: (2 + 2 * 0.1) / (2 + 2) = 0.55; leaf 1: (0 + 2 * 0.5) / (2 + 2) = 0.25.
    With m = 0 the user's own rates (1, 0) apply; a larger m pulls both towards the global rates.
    """
    s = phucb_scores(np.array([[2, 0]]), np.array([[2, 2]]), np.array([10, 10]), np.array([100, 20]),
                     np.array([0, 0]), 0.0, 2.0)
    cl = (2 + 2 * (20 / 120)) / 6
    assert s[0].tolist() == pytest.approx([cl + 0.55, cl + 0.25])
    own = phucb_scores(np.array([[2, 0]]), np.array([[2, 2]]), np.array([10, 10]), np.array([100, 20]),
                       np.array([0, 0]), 0.0, 0.0)
    assert own[0].tolist() == pytest.approx([0.5 + 1.0, 0.5 + 0.0])
    # the bonus favours the arm the user pulled less
    b = phucb_scores(np.array([[0, 0]]), np.array([[5, 0]]), np.array([1, 1]), np.array([10, 10]),
                     np.array([0, 0]), 1.0, 1.0)
    assert b[0, 1] > b[0, 0]


def test_category_tree_groups_coclicked_categories():
    """Users 0-1 click categories 0 and 1, users 2-3 click 2 and 3: two clusters {0, 1}, {2, 3}."""
    profiles = np.array([[3, 2, 0, 0], [1, 4, 0, 0], [0, 0, 2, 2], [0, 0, 5, 1]])
    t = category_tree(profiles, 2, seed=0)
    assert t[0] == t[1] != t[2] == t[3]
    assert category_tree(profiles, 1, seed=0).tolist() == [0, 0, 0, 0]


def test_neural_linear_learns_click_rates():
    """Logged feedback where category 0 is always clicked and category 1 never: NLB scores 0 above 1 (alpha 0),
    and a category nobody was shown gets the largest uncertainty bonus."""
    import pandas as pd

    rows = [(f"u{u}", "i0", "click") for u in range(20) for _ in range(3)]
    rows += [(f"u{u}", "i1", "exposure") for u in range(20) for _ in range(3)]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "event"])
    cats = ["A", "B", "C"]
    logged = logged_feedback(events, cats, {"i0": "A", "i1": "B", "i2": "C"})
    assert logged.user_clicks[:, 0].sum() == 60 and logged.user_shows[:, 1].sum() == 60
    model = fit_neural_linear(logged, 3, hidden=8, epochs=20, ridge=1.0, seed=0)
    mean = model.scores(logged.user_clicks[:2], logged.user_shows[:2], 0.0)
    assert (mean[:, 0] > mean[:, 1]).all()
    std = model.scores(logged.user_clicks[:2], logged.user_shows[:2], 1.0) - mean
    assert (std[:, 2] > std[:, 0]).all() and (std[:, 2] > std[:, 1]).all()


def test_llm_rankings_from_scores():
    """dual_ranking: C_align (score > tau) by score, then everything else (dropped candidates too) by Relevance score.
    novelty_ranking: by log-probability with the recent categories last. kerec: (1 - beta) f + beta f W."""
    cats = ["A", "B", "C", "D"]
    ds = DualScores(candidates=[["B", "C"]], scores=[[0.4, 0.9]], all_scores=np.array([[0.8, 0.4, 0.9, 0.1]]))
    assert dual_ranking(ds, 0, cats, 0.5) == ["C", "A", "B", "D"]  # C aligned; B dropped, ranked with the rest
    assert dual_ranking(ds, 0, cats, 0.95) == ["C", "A", "B", "D"]  # none aligned: the Relevance order
    assert dual_ranking(ds, 0, cats, 0.0) == ["C", "B", "A", "D"]  # both aligned
    ds2 = DualScores(candidates=[["B", "D"]], scores=[[0.6, 0.7]], all_scores=np.array([[0.9, 0.6, 0.8, 0.7]]))
    assert dual_ranking(ds2, 0, cats, 0.5) == ["D", "B", "A", "C"]
    lp = np.array([[-1.0, -3.0, -0.5, -2.0]])
    assert novelty_ranking(lp, 0, ("C",), cats) == ["A", "D", "B", "C"]
    graph = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]], float)
    # user clicked A three times, B once: f = [.75, .25, 0, 0]; f W = [0, .75, .25, 0]
    from collections import Counter

    assert kerec_ranking(graph, [Counter({"A": 3, "B": 1})], cats, 1.0) == [["B", "C", "A", "D"]]
    assert kerec_ranking(graph, [Counter({"A": 3, "B": 1})], cats, 0.0)[0][:2] == ["A", "B"]

"""Exploration methods never return hist categories; UCB bonus behaviour; slot policy placement."""

from __future__ import annotations

import math

import pytest

from coea.exploration import (
    by_score_unexplored,
    llm_unexplored,
    parse_slots,
    place_in_slots,
    random_unexplored,
    ucb_scores,
)

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


class _FakeNovelty:
    """Stands in for a Novelty LLM: rank_categories is patched to score categories by their index."""

    model = tokenizer = None


def test_llm_unexplored_never_returns_hist(monkeypatch):
    import coea.candidates

    def fake_rank(model, tok, prompts, categories, *, exclude, top_m, batch_size):
        return [[(c, -i) for i, c in enumerate(categories) if c not in ex][:top_m] for ex in exclude]

    monkeypatch.setattr(coea.candidates, "rank_categories", fake_rank)
    prompts = ["p1", "p2", "p1", "p3"]
    hist = [{"c0"}, {"c0", "c1"}, {"c2"}, set()]
    out = llm_unexplored(_FakeNovelty(), prompts, CATS, hist, 2)
    for novel, h in zip(out, hist):
        assert not set(novel) & h and len(novel) == 2
    assert out[3] == ["c0", "c1"]

"""Metric functions on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from coea.metrics import (
    category_hit, category_ndcg, evaluate_users, long_tail_categories, long_tail_proportion,
    novel_category_proportion,
)


def test_category_hit():
    # top-1 = [B] misses pref {A}; top-5 contains A.
    assert category_hit(["B", "A", "C"], {"A"}, (1, 5)) == {"C-H@1": 0.0, "C-H@5": 1.0}
    assert category_hit(["B"], set(), (1,)) == {"C-H@1": 0.0}  # empty pref


def test_category_ndcg_hand_computed():
    # ranked [A, B, C], clicked {B, C}: DCG@5 = 1/log2(3) + 1/log2(4) = 0.6309 + 0.5 = 1.1309
    # IDCG@5 over min(5, 2) = 2 positions: 1 + 0.6309 = 1.6309 -> 0.6934
    got = category_ndcg(["A", "B", "C"], {"B", "C"}, (1, 5))
    assert got["C-N@1"] == 0.0
    assert got["C-N@5"] == pytest.approx((1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3)))
    assert category_ndcg(["A"], set(), (5,)) == {"C-N@5": 0.0}  # empty clicked


def test_k_larger_than_list_and_duplicates():
    # duplicates dropped (keep first): [A, B]; K = 10 uses both; hist {A} -> 1 new of |C| = 4
    got = novel_category_proportion(["A", "A", "B"], {"A"}, 4, (10,))
    assert got == {"NCP@10": 0.25, "NCP-norm@10": 0.1}


def test_long_tail_and_ties():
    counts = {"A": 10, "B": 1, "C": 1, "D": 5, "E": 7}
    # ceil(0.2 * 5) = 1 category; B and C tie at 1 click -> name order picks B
    assert long_tail_categories(counts) == {"B"}
    assert long_tail_categories(counts, 0.4) == {"B", "C"}
    assert long_tail_proportion(["C", "B", "A"], {"B", "C"}, 5, (1, 5)) == {
        "CLTP@1": 0.2, "CLTP-norm@1": 1.0, "CLTP@5": 0.4, "CLTP-norm@5": 0.4}


def test_evaluate_users_means():
    recs = [["A", "B"], ["C"]]
    truth = [{"pref": {"A"}, "hist": {"A"}, "clicked": {"B"}}, {"pref": set(), "hist": set(), "clicked": set()}]
    m = evaluate_users(recs, truth, n_categories=4, tail=set(), ks=(1,))
    # user 1: C-H@1 = 1, NCP@1 = 0 (A in hist); user 2: C-H@1 = 0, NCP@1 = 1/4
    assert m["C-H@1"] == 0.5 and m["NCP@1"] == pytest.approx(0.125)
    with pytest.raises(ValueError):
        evaluate_users(recs, truth[:1], n_categories=4, tail=set())

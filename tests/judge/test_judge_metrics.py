"""Per-method aggregation, its bootstrap intervals and the calibration figures on hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coea.judge.metrics import agreement, calibration, cohen_kappa, interval, method_table, three_class, user_values


def test_user_values_by_hand():
    v = user_values([5, 2, 4], 3)
    ideal = 1 + 1 / math.log2(3) + 0.5  # 2.1309
    assert v["precision"] == pytest.approx(2 / 3)
    assert v["ndcg"] == pytest.approx(1.5 / ideal)  # 0.7039
    assert v["avg_score"] == pytest.approx(11 / 3)
    # a short list: missing slots are not serendipitous; an unparseable score neither, and it leaves the average
    v = user_values([4, None], 3)
    assert v["precision"] == pytest.approx(1 / 3) and v["avg_score"] == 4.0
    assert math.isnan(user_values([None], 1)["avg_score"])


def test_method_table_aggregates_per_method_with_intervals():
    lists = {"m": {"u1": ["a", "b"], "u2": ["c"]}, "n": {"u1": ["b"], "u2": ["a"]}}
    scores = {("u1", "a"): 4, ("u1", "b"): None, ("u2", "c"): 1, ("u2", "a"): 5}
    t = method_table(lists, scores, k=2, n_boot=500, seed=0)
    m = t["m"]
    assert (m["users"], m["items"], m["unparseable"]) == (2, 3, 1)
    assert m["precision@2"]["mean"] == pytest.approx(0.25)  # u1 1/2, u2 0
    assert m["nDCG@2"]["mean"] == pytest.approx((1 / (1 + 1 / math.log2(3))) / 2)  # u1 0.6131, u2 0
    assert m["avg_score"]["mean"] == pytest.approx(2.5)  # u1 4 (b unparseable), u2 1
    # two users: every resample mean is one of {0, 0.25, 0.5}
    assert 0.0 <= m["precision@2"]["lo"] <= 0.25 <= m["precision@2"]["hi"] <= 0.5
    assert m["avg_score"]["lo"] >= 1.0 and m["avg_score"]["hi"] <= 4.0
    n = t["n"]
    assert n["precision@2"]["mean"] == pytest.approx(0.25) and n["unparseable"] == 1
    assert n["avg_score"]["mean"] == 5.0 and n["avg_score"]["lo"] == n["avg_score"]["hi"] == 5.0  # u1 has none


def test_interval_constant_and_empty():
    got = interval(np.array([0.5, 0.5, 0.5]), 100, 0, 0.95)
    assert got == {"mean": 0.5, "lo": 0.5, "hi": 0.5}
    assert all(math.isnan(v) for v in interval(np.array([math.nan]), 100, 0, 0.95).values())


def test_calibration_by_hand():
    c = calibration([5, 4, 1, 3], [4, 2, 1, None])
    assert (c["n"], c["compared"], c["unparseable"]) == (4, 3, 1)
    assert c["mae"] == pytest.approx(1.0)  # (1 + 2 + 0) / 3
    assert c["accuracy"] == pytest.approx(1 / 3)
    assert c["accuracy_3class"] == pytest.approx(2 / 3)  # high/high, high/low, low/low
    conf = np.array(c["confusion"])
    assert conf.sum() == 3 and conf[4, 3] == conf[3, 1] == conf[0, 0] == 1
    assert c["confusion_3class"] == [[1, 0, 0], [0, 0, 0], [1, 0, 1]]
    assert [three_class(s) for s in range(1, 6)] == [0, 0, 1, 2, 2]


def test_agreement_and_kappa_by_hand():
    # a = [1,1,2,2], b = [1,2,2,2]: p_o = 3/4; p_e = 0.5 * 0.25 + 0.5 * 0.75 = 0.5; kappa = 0.25 / 0.5
    assert cohen_kappa([1, 1, 2, 2], [1, 2, 2, 2]) == pytest.approx(0.5)
    assert cohen_kappa([3, 3], [3, 3]) == 1.0
    got = agreement({"base": [1, 1, 2, 2, None], "cot": [1, 2, 2, 2, 3], "ltm": [5, 5, 5, 5, 5]})
    assert set(got) == {"base~cot", "base~ltm", "cot~ltm"}
    a = got["base~cot"]
    assert a["n"] == 4 and a["exact"] == 0.75 and a["three_class"] == 1.0 and a["mean_abs_diff"] == 0.25
    assert a["kappa"] == pytest.approx(0.5)
    assert got["cot~ltm"]["exact"] == 0.0 and got["cot~ltm"]["mean_abs_diff"] == pytest.approx(15 / 5)  # 4+3+3+3+2


def test_paired_table_reference_minus_each_method():
    from coea.judge.metrics import paired_table

    lists = {"coea": {"u1": ["a", "b"], "u2": ["c", "d"]}, "pop": {"u1": ["a", "x"], "u2": ["c", "d"]}}
    scores = {("u1", "a"): 5, ("u1", "b"): 4, ("u2", "c"): 4, ("u2", "d"): 1, ("u1", "x"): 2}
    got = paired_table(lists, scores, k=2, reference="coea", n_boot=400, seed=0)
    assert set(got) == {"pop"} and got["pop"]["users"] == 2
    p = got["pop"]["precision@2"]  # coea [1, 0.5], pop [0.5, 0.5]: per-user differences [0.5, 0]
    assert p["delta"] == pytest.approx(0.25) and 0.0 <= p["lo"] <= 0.25 <= p["hi"] <= 0.5
    assert got["pop"]["avg_score"]["delta"] == pytest.approx(0.5)  # (u1 4.5 - 3.5 + u2 2.5 - 2.5) / 2

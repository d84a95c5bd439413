"""Metric functions (App. A.4) on hand-computed cases: ties, empty sets, K larger than the list, duplicates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coea.metrics import (
    bootstrap_indices,
    category_hit,
    category_hit_any,
    category_ndcg,
    evaluate_users,
    long_tail_categories,
    long_tail_proportion,
    novel_category_proportion,
    paired_bootstrap,
    per_user,
    user_metrics,
)

L2_3 = 1 / math.log2(3)  # 0.6309, the discount at rank 2


def test_category_hit():
    """Eq. 18: C-H@K = hit_u / K, hit_u = |top-K ∩ pref|.

    ranked [B, A, C], pref {A}: top-1 = {B} -> 0/1 = 0; top-2 holds A -> 1/2; top-5 (the list has 3) -> 1/5.
    ranked [A, B, C], pref {A, C}: @1 -> 1/1; @2 -> 1/2; @3 -> 2/3; @10 -> 2/10 (divided by K, not by the list).
    Empty pref -> 0 at every K, even for a long list; an empty list -> 0.
    """
    assert category_hit(["B", "A", "C"], {"A"}, (1, 2, 5)) == {"C-H@1": 0.0, "C-H@2": 0.5, "C-H@5": 0.2}
    got = category_hit(["A", "B", "C"], {"A", "C"}, (1, 2, 3, 10))
    assert got == {"C-H@1": 1.0, "C-H@2": 0.5, "C-H@3": pytest.approx(2 / 3), "C-H@10": 0.2}
    assert category_hit(["B", "A", "C"], set(), (1, 10)) == {"C-H@1": 0.0, "C-H@10": 0.0}
    assert category_hit([], {"A"}, (1,)) == {"C-H@1": 0.0}  # empty list


def test_category_hit_any_variant():
    """C-H-any@K = 1[top-K ∩ pref ≠ ∅] (v1's indicator), kept under its own name.

    ranked [B, A, C], pref {A}: @1 -> 0, @2 and @5 -> 1 (where C-H is 1/2 and 1/5). At K = 1 both agree.
    """
    assert category_hit_any(["B", "A", "C"], {"A"}, (1, 2, 5)) == {"C-H-any@1": 0.0, "C-H-any@2": 1.0,
                                                                   "C-H-any@5": 1.0}
    assert category_hit_any(["A"], {"A"}, (1,))["C-H-any@1"] == category_hit(["A"], {"A"}, (1,))["C-H@1"] == 1.0
    assert category_hit_any(["A"], set(), (3,)) == {"C-H-any@3": 0.0}


def test_category_ndcg_hand_computed():
    """ranked [A, B, C], clicked {B, C}.

    C-N@1: DCG = 0 (A not clicked) -> 0.
    C-N@2: DCG = 1/log2(3) = 0.6309; IDCG over min(2, 2) = 2 positions = 1 + 0.6309 = 1.6309 -> 0.3869.
    C-N@5: DCG = 1/log2(3) + 1/log2(4) = 0.6309 + 0.5 = 1.1309; IDCG over min(5, 2) = 2 -> 1.1309 / 1.6309 = 0.6934.
    """
    got = category_ndcg(["A", "B", "C"], {"B", "C"}, (1, 2, 5))
    assert got["C-N@1"] == 0.0
    assert got["C-N@2"] == pytest.approx(L2_3 / (1 + L2_3))
    assert got["C-N@5"] == pytest.approx((L2_3 + 0.5) / (1 + L2_3))
    assert got["C-N@5"] == pytest.approx(0.69342, abs=1e-5)


def test_ndcg_perfect_and_empty_clicked():
    """ranked [B, C, A], clicked {B, C}: both clicked categories first -> DCG = IDCG -> 1 at K = 2 and 5.

    clicked {} -> IDCG = 0 -> C-N = 0 by convention (not NaN, not an error).
    """
    assert category_ndcg(["B", "C", "A"], {"B", "C"}, (2, 5)) == {"C-N@2": 1.0, "C-N@5": 1.0}
    assert category_ndcg(["A"], set(), (5,)) == {"C-N@5": 0.0}


def test_ties_keep_the_callers_order():
    """Two categories a model scored equally come in the order the caller chose; the metric does not re-sort.

    clicked {B}: [A, B] puts B at rank 2 -> C-N@2 = (1/log2(3)) / 1 = 0.6309; [B, A] -> 1.0.
    """
    assert category_ndcg(["A", "B"], {"B"}, (2,))["C-N@2"] == pytest.approx(L2_3)
    assert category_ndcg(["B", "A"], {"B"}, (2,))["C-N@2"] == 1.0


def test_k_larger_than_the_list():
    """ranked [A, B] (2 categories), K = 10, |C| = 4.

    NCP with hist {A}: 1 new (B) -> NCP@10 = 1/4 = 0.25, NCP-norm@10 = 1/10 = 0.1 (divided by K, not by the list).
    C-N with clicked {B, C, D}: DCG = 1/log2(3) = 0.6309 (B at rank 2); IDCG over min(10, 3) = 3 ideal positions
        = 1 + 0.6309 + 0.5 = 2.1309 -> 0.2961. A short list cannot find C and D, so it is not rewarded for being short.
    C-H with pref {B}: one hit in the top 10 -> 1/10 (the divisor is K, not the list length).
    """
    assert novel_category_proportion(["A", "B"], {"A"}, 4, (10,)) == {"NCP@10": 0.25, "NCP-norm@10": 0.1}
    assert category_ndcg(["A", "B"], {"B", "C", "D"}, (10,))["C-N@10"] == pytest.approx(L2_3 / (1 + L2_3 + 0.5))
    assert category_hit(["A", "B"], {"B"}, (10,)) == {"C-H@10": 0.1}


def test_duplicates_are_dropped_keeping_the_first():
    """ranked [A, A, B] is read as [A, B].

    NCP@2 with hist {} counts A and B: 2 / |C| = 2/4 = 0.5 (not A twice). C-N@2 with clicked {A}: DCG = 1 (A at
    rank 1 only, no second credit), IDCG = 1 -> 1.0. C-H@2 with pref {B}: B is at rank 2 after dedupe -> 1/2;
    [A, A] with pref {A}: one hit, not two -> 1/2.
    """
    assert novel_category_proportion(["A", "A", "B"], set(), 4, (2,)) == {"NCP@2": 0.5, "NCP-norm@2": 1.0}
    assert category_ndcg(["A", "A", "B"], {"A"}, (2,)) == {"C-N@2": 1.0}
    assert category_hit(["A", "A", "B"], {"B"}, (2,)) == {"C-H@2": 0.5}
    assert category_hit(["A", "A"], {"A"}, (2,)) == {"C-H@2": 0.5}


def test_long_tail_proportion():
    """ranked [C, B, A], tail {B, C}, |C| = 5.

    K = 1: C is tail -> CLTP@1 = 1/5 = 0.2, CLTP-norm@1 = 1/1 = 1.0.
    K = 5: C, B are tail (list has 3) -> CLTP@5 = 2/5 = 0.4, CLTP-norm@5 = 2/5 = 0.4.
    """
    assert long_tail_proportion(["C", "B", "A"], {"B", "C"}, 5, (1, 5)) == {
        "CLTP@1": 0.2, "CLTP-norm@1": 1.0, "CLTP@5": 0.4, "CLTP-norm@5": 0.4}
    assert long_tail_proportion(["C"], set(), 5, (1,)) == {"CLTP@1": 0.0, "CLTP-norm@1": 0.0}  # empty tail


def test_long_tail_categories_ties_and_sizes():
    """counts {A: 10, B: 1, C: 1, D: 5, E: 7}, |C| = 5.

    fraction 0.2 -> ceil(1.0) = 1 category: B and C tie at 1 click; the name order picks B (exact size, no growth).
    fraction 0.4 -> 2: {B, C}. fraction 0.5 -> ceil(2.5) = 3: {B, C, D}. fraction 0 -> {}; 1 -> all.
    Zero-click categories are the first tail members: {X: 0, Y: 3} at 0.2 -> ceil(0.4) = 1 -> {X}.
    Float care: 0.28 * 25 = 7.000000000000001 in floating point, yet 25 categories at 0.28 have a tail of 7, not 8.
    """
    counts = {"A": 10, "B": 1, "C": 1, "D": 5, "E": 7}
    assert long_tail_categories(counts) == {"B"}
    assert long_tail_categories(counts, 0.4) == {"B", "C"}
    assert long_tail_categories(counts, 0.5) == {"B", "C", "D"}
    assert long_tail_categories(counts, 0.0) == set()
    assert long_tail_categories(counts, 1.0) == set(counts)
    assert long_tail_categories({"X": 0, "Y": 3}) == {"X"}
    assert len(long_tail_categories({f"c{i:02d}": i for i in range(25)}, 0.28)) == 7
    assert long_tail_categories({}) == set()
    with pytest.raises(ValueError):
        long_tail_categories(counts, 1.5)


def test_user_metrics_names_and_lists_from_json():
    """Truth sets may arrive as JSON lists; every metric is present for every K.

    ranked [B, A], pref [A], hist [A], clicked [B], tail [B], |C| = 4, K = 1:
    C-H@1 = C-H-any@1 = 0 (B not preferred), C-N@1 = 1 (B clicked at rank 1; IDCG over min(1, 1) = 1),
    NCP@1 = 1/4 (B not in hist), NCP-norm@1 = 1, CLTP@1 = 1/4, CLTP-norm@1 = 1.
    With recent [B] as well: NCP-recent@1 = 0 (B is recent), NCP-recent-norm@1 = 0; NCP itself is unchanged.
    """
    got = user_metrics(["B", "A"], {"pref": ["A"], "hist": ["A"], "clicked": ["B"]}, n_categories=4, tail=["B"],
                       ks=(1,))
    assert got == {"C-H@1": 0.0, "C-H-any@1": 0.0, "C-N@1": 1.0, "NCP@1": 0.25, "NCP-norm@1": 1.0,
                   "CLTP@1": 0.25, "CLTP-norm@1": 1.0}
    got = user_metrics(["B", "A"], {"pref": ["A"], "hist": ["A"], "clicked": ["B"], "recent": ["B"]},
                       n_categories=4, tail=["B"], ks=(1,))
    assert got["NCP-recent@1"] == 0.0 and got["NCP-recent-norm@1"] == 0.0 and got["NCP@1"] == 0.25
    with pytest.raises(ValueError, match="clicked"):
        user_metrics(["A"], {"pref": [], "hist": []}, n_categories=4, tail=[])


def test_evaluate_users_means_and_empty_sets():
    """Two users, |C| = 4, no tail, K = 1.

    user 1: ranked [A, B], pref {A}, hist {A}, clicked {B} -> C-H@1 = 1, NCP@1 = 0 (A in hist), C-N@1 = 0.
    user 2: ranked [C], every set empty -> C-H@1 = 0 (empty pref), NCP@1 = 1/4, C-N@1 = 0 (empty clicked).
    means: C-H@1 = 0.5, NCP@1 = 0.125, C-N@1 = 0.
    """
    recs = [["A", "B"], ["C"]]
    truth = [{"pref": {"A"}, "hist": {"A"}, "clicked": {"B"}}, {"pref": set(), "hist": set(), "clicked": set()}]
    m = evaluate_users(recs, truth, n_categories=4, tail=set(), ks=(1,))
    assert m["C-H@1"] == 0.5 and m["NCP@1"] == pytest.approx(0.125) and m["C-N@1"] == 0.0
    assert evaluate_users([], [], n_categories=4, tail=set()) == {}
    with pytest.raises(ValueError):
        evaluate_users(recs, truth[:1], n_categories=4, tail=set())


def test_exclude_users_without_clicks_from_cn():
    """user 1: ranked [B], clicked {B} -> C-N@1 = 1; user 2: clicked {} -> 0 (counted) or NaN (excluded).

    default: C-N@1 = (1 + 0) / 2 = 0.5. exclude_no_clicks: mean over user 1 only = 1.0; the other metrics are
    unchanged (C-H@1 = (1 + 0) / 2 with pref {B} and {} ). Nobody clicked at all -> 0.0.
    """
    recs = [["B"], ["B"]]
    truth = [{"pref": {"B"}, "hist": set(), "clicked": {"B"}}, {"pref": set(), "hist": set(), "clicked": set()}]
    kw = {"n_categories": 4, "tail": set(), "ks": (1,)}
    assert evaluate_users(recs, truth, **kw)["C-N@1"] == 0.5
    excluded = evaluate_users(recs, truth, exclude_no_clicks=True, **kw)
    assert excluded["C-N@1"] == 1.0 and excluded["C-H@1"] == 0.5
    assert evaluate_users(recs[1:], truth[1:], exclude_no_clicks=True, **kw)["C-N@1"] == 0.0
    arrays = per_user(recs, truth, exclude_no_clicks=True, **kw)
    assert arrays["C-N@1"][0] == 1.0 and np.isnan(arrays["C-N@1"][1])


def test_per_user_arrays_align_with_users():
    """per_user keeps the user order; its mean is evaluate_users. C-H@1: user 1 hits (A), user 2 misses -> [1, 0]."""
    recs = [["A"], ["B"]]
    truth = [{"pref": {"A"}, "hist": set(), "clicked": set()}, {"pref": {"A"}, "hist": set(), "clicked": set()}]
    arrays = per_user(recs, truth, n_categories=2, tail={"B"}, ks=(1,))
    np.testing.assert_array_equal(arrays["C-H@1"], [1.0, 0.0])
    np.testing.assert_array_equal(arrays["CLTP@1"], [0.0, 0.5])
    means = evaluate_users(recs, truth, n_categories=2, tail={"B"}, ks=(1,))
    assert means == {name: float(v.mean()) for name, v in arrays.items()}


@pytest.mark.parametrize("bad", [{"ks": (0,)}, {"ks": ()}, {"ks": (1.5,)}, {"n_categories": 0}])
def test_bad_arguments_are_errors(bad):
    kw = {"n_categories": 4, "tail": set(), "ks": (1,)} | bad
    with pytest.raises(ValueError):
        evaluate_users([["A"]], [{"pref": set(), "hist": set(), "clicked": set()}], **kw)


def test_hist_is_the_whole_history_and_empty_sets():
    """A.4: C_u^hist = every category clicked before the cut-off. ranked [A, B, C, D], |C| = 8, K = 4.

    hist {A, B, C} (the whole history) -> 1 new (D) -> NCP@4 = 1/8; recent {C} (a window) -> 3 new ->
    NCP-recent@4 = 3/8. Empty hist -> all 4 new -> 4/8. Empty list -> 0 everywhere.
    """
    truth = {"pref": {"A"}, "hist": {"A", "B", "C"}, "clicked": set(), "recent": {"C"}}
    got = user_metrics(["A", "B", "C", "D"], truth, n_categories=8, tail=set(), ks=(4,))
    assert got["NCP@4"] == 1 / 8 and got["NCP-recent@4"] == 3 / 8 and got["C-H@4"] == 1 / 4
    assert novel_category_proportion(["A", "B", "C", "D"], set(), 8, (4,))["NCP@4"] == 0.5
    empty = user_metrics([], truth, n_categories=8, tail={"A"}, ks=(4,))
    assert all(v == 0.0 for v in empty.values())


def test_paired_bootstrap_hand_checked():
    """a = [1, 0, 1, 0], b = [0, 0, 0, 0]: delta = 0.5; every resample's mean difference is k/4, k in 0..4.

    Identical arrays -> delta 0 and a [0, 0] interval. A constant shift a = b + 0.25 -> [0.25, 0.25].
    NaN users are dropped from both sides: a = [1, nan], b = [0, 0] -> delta 1.
    """
    idx = bootstrap_indices(4, 2000, seed=0)
    got = paired_bootstrap(np.array([1, 0, 1, 0]), np.zeros(4), idx)
    assert got["delta"] == 0.5 and 0.0 <= got["lo"] < 0.5 < got["hi"] <= 1.0
    assert {got["lo"] * 4, got["hi"] * 4} <= {0.0, 1.0, 2.0, 3.0, 4.0}
    b = np.array([0.1, 0.4, 0.2, 0.9])
    assert paired_bootstrap(b, b, idx) == {"delta": 0.0, "lo": 0.0, "hi": 0.0}
    shifted = paired_bootstrap(b + 0.25, b, idx)
    assert shifted["lo"] == pytest.approx(0.25) and shifted["hi"] == pytest.approx(0.25)
    assert paired_bootstrap(np.array([1.0, np.nan]), np.zeros(2), bootstrap_indices(2, 100))["delta"] == 1.0
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(3), np.zeros(3), idx)


# ------------------------------------------------------------------------------------------ test-based metrics


def test_test_category_hit_counts_the_windows_categories():
    """[B, A, C] with clicked {A, C}: @1 = 0/1, @2 = 1/2 (A), @3 = 2/3 (A, C), @5 = 2/5 (K divides)."""
    from coea.metrics import test_category_hit

    got = test_category_hit(["B", "A", "C"], {"A", "C"}, (1, 2, 3, 5))
    assert got == {"C-H-test@1": 0.0, "C-H-test@2": 0.5, "C-H-test@3": pytest.approx(2 / 3), "C-H-test@5": 0.4}
    assert test_category_hit(["A", "A"], {"A"}, (2,)) == {"C-H-test@2": 0.5}  # a repeat is not a second hit


def test_new_category_ndcg_counts_only_new_clicked_categories():
    """[A, X, Y], hist {A}, clicked {A, Y}: relevant = {Y} at rank 3 -> (1/log2 4) / (1/log2 2) = 0.5 at K = 3;
    at K = 2 nothing relevant is listed -> 0. Clicked only known categories -> 0."""
    from coea.metrics import new_category_ndcg

    assert new_category_ndcg(["A", "X", "Y"], {"A", "Y"}, {"A"}, (2, 3)) == {"C-N-new@2": 0.0, "C-N-new@3": 0.5}
    assert new_category_ndcg(["A", "X"], {"A"}, {"A"}, (2,)) == {"C-N-new@2": 0.0}


def test_novelty_adoption_is_a_hit_rate_among_adopters():
    """[A, X, Y], hist {A}: clicked {Y} -> NA@2 = 0, NA@3 = 1; clicked {A} (nothing new) -> NaN; a known clicked
    category in the list is not an adoption."""
    from coea.metrics import novelty_adoption

    assert novelty_adoption(["A", "X", "Y"], {"Y"}, {"A"}, (2, 3)) == {"NA@2": 0.0, "NA@3": 1.0}
    assert all(np.isnan(v) for v in novelty_adoption(["A", "X"], {"A"}, {"A"}, (1, 2)).values())
    assert novelty_adoption(["A", "X"], {"A", "Z"}, {"A"}, (2,)) == {"NA@2": 0.0}


def test_per_user_test_based_means_skip_users_without_a_new_category():
    """Two users, hist {A}: user 1 clicks Y (new) and is listed [Y] -> NA@1 1; user 2 clicks A only -> NaN. The mean
    NA@1 is 1.0 (over the one adopter), C-H-test@1 is (1 + 0) / 2 with user 2 listed [B]."""
    from coea.metrics import evaluate_users

    truth = [{"pref": [], "hist": ["A"], "clicked": ["Y"]}, {"pref": [], "hist": ["A"], "clicked": ["A"]}]
    arrays = per_user([["Y"], ["B"]], truth, n_categories=4, tail=[], ks=(1,), test_based=True)
    assert arrays["NA@1"][0] == 1.0 and np.isnan(arrays["NA@1"][1])
    assert list(arrays["C-H-test@1"]) == [1.0, 0.0]
    assert "NA@1" not in per_user([["Y"]], truth[:1], n_categories=4, tail=[], ks=(1,))  # opt-in
    assert evaluate_users([["Y"], ["B"]], truth, n_categories=4, tail=[], ks=(1,))["C-N@1"] == 0.5


def test_kept_candidates_counts_scores_above_tau():
    from coea.metrics import kept_candidates

    assert kept_candidates([0.9, 0.4, 0.6], 0.5) == 2
    assert kept_candidates([0.5], 0.5) == 0  # strictly above, as Eq. 14's filter
    assert kept_candidates([], 0.1) == 0


def test_hierarchical_bootstrap_spans_seed_variance():
    """a = [[1, 1], [0, 0]] (seed 0 all hits, seed 1 none), b = 0: delta 0.5. Each resample's mean is the share of
    seed-0 draws among its two seeds: 0, 0.5 or 1 -- the interval reaches 0 and 1 with enough resamples, where a
    users-only bootstrap of the per-user seed mean (every user 0.5) is the point [0.5, 0.5]."""
    from coea.metrics import hierarchical_bootstrap, hierarchical_indices

    a, b = np.array([[1.0, 1.0], [0.0, 0.0]]), np.zeros((2, 2))
    seeds, users = hierarchical_indices(2, 2, 400, seed=0)
    got = hierarchical_bootstrap(a, b, seeds, users, confidence=0.9)
    assert got["delta"] == 0.5 and got["lo"] == 0.0 and got["hi"] == 1.0
    flat = paired_bootstrap(a.mean(0), b.mean(0), bootstrap_indices(2, 400), confidence=0.9)
    assert flat["lo"] == flat["hi"] == 0.5
    one = hierarchical_bootstrap(a[:1], b[:1], *hierarchical_indices(1, 2, 50))
    assert one == {"delta": 1.0, "lo": 1.0, "hi": 1.0}
    nan = np.array([[np.nan, 1.0]])  # an undefined user is dropped from both sides
    assert hierarchical_bootstrap(nan, np.zeros((1, 2)), *hierarchical_indices(1, 2, 50))["delta"] == 1.0
    with pytest.raises(ValueError):
        hierarchical_bootstrap(a, b, *hierarchical_indices(3, 2, 10))

"""user-kNN and item-kNN over unexplored categories (coea/exploration/knn.py), on hand-computed matrices; the same
functions serve the evaluation rows and the simulation arms."""

from __future__ import annotations

import numpy as np
import pytest

from coea.exploration.knn import cooccurrence, item_knn_scores, knn_ranking, unexplored_first, user_knn_scores


def test_user_knn_votes_of_the_nearest_users_without_the_user_itself():
    """targets [[1, 0, 0]]; pool: the user itself, [2, 1, 0] (cos 2/sqrt 5), [0, 0, 3] (cos 0). k = 1 -> the one
    neighbour is row 1, which clicked categories 0 and 1. k = 2 adds row 2 with weight 0 (unrelated: no vote)."""
    pool = np.array([[1, 0, 0], [2, 1, 0], [0, 0, 3]])
    got = user_knn_scores(pool[:1], pool, 1, self_rows=np.array([0]))
    assert got == pytest.approx(np.array([[2 / 5 ** 0.5, 2 / 5 ** 0.5, 0.0]]))
    assert user_knn_scores(pool[:1], pool, 2, self_rows=np.array([0])) == pytest.approx(got)
    own = user_knn_scores(pool[:1], pool, 1)  # not excluded: the user is its own nearest neighbour (cos 1)
    assert own == pytest.approx(np.array([[1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError):
        user_knn_scores(pool, pool, 0)


def test_cooccurrence_cosine_and_its_neighbour_cut():
    """pool [[1, 1, 0], [1, 0, 0], [0, 1, 1]]: clicked-by (2, 2, 1); co-clicks 0-1: 1, 1-2: 1, 0-2: 0 ->
    S[0, 1] = 1/2, S[1, 2] = 1/sqrt 2. k = 1 keeps row 1's larger entry only (column 2)."""
    pool = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1]])
    s = cooccurrence(pool)
    r = 1 / 2 ** 0.5
    assert s == pytest.approx(np.array([[0, 0.5, 0], [0.5, 0, r], [0, r, 0]]))
    assert cooccurrence(pool, 1)[1] == pytest.approx([0, 0, r])
    # a user who clicked category 0 only: scores = row 0 of S
    assert item_knn_scores(np.array([[3, 0, 0]]), pool) == pytest.approx(np.array([[0, 0.5, 0]]))


def test_unexplored_first_puts_never_clicked_categories_first_ties_by_prior():
    """scores [0.5, 0.9, 0.5], category 1 clicked, prior ranks [1, 2, 0]: unexplored 0 and 2 tie on 0.5 -> 2 (prior
    0) then 0; the clicked category 1 last despite its top score."""
    got = unexplored_first(np.array([[0.5, 0.9, 0.5]]), np.array([[False, True, False]]), np.array([1, 2, 0]))
    assert got.tolist() == [[2, 0, 1]]


def test_knn_ranking_recommends_what_similar_users_explored():
    """Users 0 and 1 share A and B; user 1 also clicked C, user 2 only D. user-kNN and item-kNN both put C first
    for user 0 (the co-clicked, unexplored category), then D; its own A and B come last."""
    pool = np.array([[2, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 4]])
    prior = np.array([3, 2, 1, 0])  # D is the most popular: C must win on its score, not on a tie
    for method, k in (("user_knn", 1), ("item_knn", 0)):
        got = knn_ranking(method, pool[:1], pool, k, prior, self_rows=np.array([0]))
        assert got[0].tolist()[:2] == [2, 3] and set(got[0, 2:]) == {0, 1}, method
    with pytest.raises(ValueError):
        knn_ranking("nope", pool, pool, 1, prior)


def test_user_knn_in_chunks_equals_one_block():
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 3, size=(40, 6))
    rows = np.arange(0, 40, 3)
    whole = user_knn_scores(pool[rows], pool, 5, rows)
    assert user_knn_scores(pool[rows], pool, 5, rows, chunk=4) == pytest.approx(whole)

"""CSID grouping: the M_N cap, the merge rule, assignment of new users."""

from __future__ import annotations

import numpy as np

from quantizer import CsidMap, build_csid_map, format_csid
from storage.keys import csid_to_str


def test_format_matches_storage_contract():
    assert format_csid((3, 14, 0, 7)) == csid_to_str((3, 14, 0, 7)) == "3-14-0-7"


def test_no_merge_when_under_cap():
    idx = np.array([[0, 1], [0, 1], [2, 0]])
    emb = np.eye(3)
    m = build_csid_map(idx, emb, max_groups=5)
    assert m.survivors == [(0, 1), (2, 0)] and m.sizes == [2, 1]
    assert m.assign(idx) == ["0-1", "0-1", "2-0"]


def test_cap_merges_smallest_into_nearest_centroid():
    # group sizes: (0,0):3 near +x, (1,0):2 near +x, (2,0):4 near +y, (3,0):1 near +y
    idx = np.array([[0, 0]] * 3 + [[1, 0]] * 2 + [[2, 0]] * 4 + [[3, 0]])
    emb = np.array([[1, 0.1]] * 3 + [[1, 0.2]] * 2 + [[0.1, 1]] * 4 + [[0.2, 1]])
    m = build_csid_map(idx, emb, max_groups=2)
    assert len(m.survivors) == 2
    # (3,0) (size 1) merges into (2,0); then (1,0) (size 2) merges into (0,0)
    assert m.merge == {(0, 0): (0, 0), (1, 0): (0, 0), (2, 0): (2, 0), (3, 0): (2, 0)}
    assert m.sizes == [5, 5]
    assert m.assign(idx) == ["0-0"] * 5 + ["2-0"] * 5


def test_cap_respected_and_deterministic_on_random_data():
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 6, size=(300, 3))
    emb = rng.normal(size=(300, 8))
    a = build_csid_map(idx, emb, max_groups=7, min_group_size=5)
    b = build_csid_map(idx.copy(), emb.copy(), max_groups=7, min_group_size=5)
    assert len({tuple(r) for r in idx}) > 7
    assert len(a.survivors) <= 7 and min(a.sizes) >= 5 and sum(a.sizes) == 300
    assert a.merge == b.merge and a.survivors == b.survivors
    assert len(set(a.assign(idx))) == len(a.survivors)


def test_min_group_size_merges_small_groups():
    idx = np.array([[0]] * 5 + [[1]] * 5 + [[2]])
    emb = np.array([[1.0, 0]] * 5 + [[0, 1.0]] * 5 + [[0.1, 1.0]])
    m = build_csid_map(idx, emb, max_groups=10, min_group_size=2)
    assert m.survivors == [(0,), (1,)] and m.merge[(2,)] == (1,)


def test_assign_unseen_tuples_and_json_round_trip(tmp_path):
    idx = np.array([[0, 0], [0, 0], [5, 5], [5, 5]])
    emb = np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])
    m = build_csid_map(idx, emb, max_groups=4)
    new = np.array([[9, 9], [5, 1]])
    assert m.assign(new, embeddings=np.array([[0.1, 1.0], [1.0, 0.0]])) == ["5-5", "0-0"]  # nearest centroid
    assert m.assign(new) == ["0-0", "5-5"]  # no embedding: longest code prefix, then larger/smaller tuple
    m.save(tmp_path / "map.json")
    again = CsidMap.load(tmp_path / "map.json")
    assert again.merge == m.merge and again.assign(new) == m.assign(new)
    np.testing.assert_allclose(again.centroids, m.centroids)

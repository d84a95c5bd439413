"""Relevance pairs (the negatives rule) and the one pairwise data path."""

from __future__ import annotations

import pytest

from coea.config import load_config
from loops.pairs import preference_dataset
from loops.reward import DAY, relevance_pairs

CATS = ["A", "B", "C", "D", "E", "F"]


def _candidate(text: str) -> str:
    return text.rsplit("Candidate category: ", 1)[1]


def test_negatives_are_exposed_unclicked_else_sampled_from_unclicked():
    cfg = load_config(None, [])
    clicks = {"u1": [(10, "A"), (20, "B"), (30, "C")],          # one pair at t=2 (positive C), day 0
              "u2": [(10, "A"), (20, "B"), (DAY + 5, "D")]}     # positive D on day 1, no exposures
    exposures = {"u1": [(15, "E"), (25, "C")]}                   # E exposed and not clicked that day
    pairs = relevance_pairs(cfg, clicks, exposures, {"u1": "P1", "u2": "P2"}, CATS, ["u1", "u2"], seed=0)
    by_user = {p["user_id"]: p for p in pairs}
    assert len(pairs) == 2
    assert _candidate(by_user["u1"]["chosen"]) == "C" and _candidate(by_user["u1"]["rejected"]) == "E"
    assert "Recent categories: A, B" in by_user["u1"]["chosen"]
    assert _candidate(by_user["u2"]["chosen"]) == "D"
    assert _candidate(by_user["u2"]["rejected"]) in set(CATS) - {"D"}  # sampled: not clicked on day 1


def test_negatives_per_positive_draws_distinct_negatives():
    cfg = load_config(None, ["relevance.negatives_per_positive=3"])
    clicks = {"u": [(1, "A"), (2, "B"), (3, "C")]}
    pairs = relevance_pairs(cfg, clicks, {}, {}, CATS, ["u"], seed=0)
    rejected = [_candidate(p["rejected"]) for p in pairs]
    assert len(rejected) == 3 and len(set(rejected)) == 3 and not set(rejected) & {"A", "B", "C"}


def test_preference_dataset_has_trl_columns_only():
    ds = preference_dataset([{"prompt": "p", "chosen": "a", "rejected": "b", "user_id": "u"},
                             {"chosen": "c", "rejected": "d"}])
    assert ds.column_names == ["prompt", "chosen", "rejected"] and ds[1]["prompt"] == ""
    with pytest.raises(ValueError):
        preference_dataset([])

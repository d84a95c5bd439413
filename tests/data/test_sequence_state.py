"""The sequence state carried from round to round gives exactly the Sequences of a full rebuild."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from coea.config import DataConfig
from coea.data.clean import _complete_users, clean_interactions
from coea.data.schema import Interactions
from coea.data.sequences import build_sequences
from coea.data.state import SequenceState
from coea.data.vocab import Vocabulary

FIELDS = ("user_ids", "item_vocab", "long_items", "short_categories", "c_short", "feature_cardinalities",
          "feature_names", "item_categories", "cutoff")


def _full_rebuild(consumed: list[pd.DataFrame], users: pd.DataFrame, vocab: Vocabulary, data: DataConfig, end: int):
    events = pd.concat(consumed, ignore_index=True).sort_values(["timestamp", "user_id", "item_id"],
                                                                kind="mergesort").reset_index(drop=True)
    inter = Interactions(events=events, items=vocab.items_frame(), users=_complete_users(users, events["user_id"]),
                         categories=vocab.active_categories())
    return build_sequences(inter, data, cutoff=end, vocab=vocab)


def _assert_same(got, ref):
    for f in FIELDS:
        assert getattr(got, f) == getattr(ref, f), f
    assert np.array_equal(got.features, ref.features)


def test_an_earlier_click_joins_i_long_when_its_category_reaches_tau():
    """tau = 3 at category level. Round 1: a clicks A@1, B@2, A@3 (A twice: nothing kept). Round 2: A@5 makes A
    three clicks: A@1 and A@3 join I_long in their places; B stays out. max_long_len = 2 keeps the last two."""
    data = DataConfig(tau=3, long_filter="category", short_k=2, max_long_len=2)
    items = pd.DataFrame({"item_id": ["x", "y", "z"], "category": ["A", "B", "A"], "title": ""})
    vocab = Vocabulary.empty()
    vocab.extend(items, None, 0)
    state = SequenceState.empty(data)
    ev = lambda rows: pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event"])  # noqa: E731
    state.apply(ev([("a", "x", 1, "click"), ("a", "y", 2, "click"), ("a", "z", 3, "click")]), vocab, 4)
    users = pd.DataFrame({"user_id": ["a"]})
    s1 = state.to_sequences(vocab, users, 4)
    assert s1.long_items == [[]] and s1.short_categories == [["B", "A"]]
    state.apply(ev([("a", "x", 5, "click")]), vocab, 6)
    s2 = state.to_sequences(vocab, users, 6)
    assert [[vocab.item_ids[j - 1] for j in s2.long_items[0]]] == [["z", "x"]]  # x@1 z@3 x@5 kept, last two
    assert s2.short_categories == [["A", "A"]]
    # x@1 and y@2 have two kept clicks after them: they can never be among the newest two kept clicks again, and
    # they are not in the two-click tail, so the state drops them
    assert sorted(state.clicks["ts"].tolist()) == [3, 5]


@pytest.mark.parametrize("long_filter", ["item", "category"])
@pytest.mark.parametrize("seed", range(12))
def test_incremental_equals_full_rebuild(seed, long_filter, tmp_path):
    """Six rounds on random data: the catalogue grows (new items and categories appear in the middle of the id
    order), items leave it, new users and new feature values arrive, round 2 is empty, 15% of each round's
    events are late (timestamps before the round's start). After every round the state (saved and reloaded)
    equals a full rebuild over everything consumed so far, with the same vocabulary."""
    rng = np.random.default_rng(seed)
    data = DataConfig(tau=1 + seed % 3, long_filter=long_filter, short_k=1 + seed % 3, max_long_len=2 + seed % 4)
    catalogue = pd.DataFrame({"item_id": [f"i{rng.integers(1000):03d}-{j}" for j in range(30)],
                              "category": [f"C{rng.integers(7)}" for _ in range(30)], "title": ""})
    state, vocab, consumed = SequenceState.empty(data), Vocabulary.empty(), []
    for r in range(6):
        start, end = r * 100, (r + 1) * 100
        items = catalogue.iloc[:10 + 4 * r]
        if r == 4:
            items = items.iloc[3:]  # three items leave the catalogue; their history stays
        users = pd.DataFrame({"user_id": [f"u{j}" for j in range(5 + r)],
                              "f": [f"v{rng.integers(3 + r)}" for _ in range(5 + r)]})
        n = 0 if r == 2 else int(rng.integers(1, 60))
        ts = rng.integers(start, end, n)
        late = rng.random(n) < 0.15
        ts[late] = rng.integers(0, max(start, 1), int(late.sum()))
        known = vocab.items_frame()["item_id"].tolist() + items["item_id"].tolist()
        events = pd.DataFrame({"user_id": [f"u{rng.integers(8 + r)}" for _ in range(n)],
                               "item_id": [known[i] for i in rng.integers(0, len(known), n)],
                               "timestamp": ts, "event": np.where(rng.random(n) < 0.8, "click", "exposure")})
        vocab.extend(items, users, r)
        inter = clean_interactions(events, vocab.items_frame()[["item_id", "category", "title"]], None)
        state.apply(inter.events, vocab, end)
        state.save(tmp_path / f"s{r}")
        state = SequenceState.load(tmp_path / f"s{r}")
        consumed.append(inter.events)
        _assert_same(state.to_sequences(vocab, users, end), _full_rebuild(consumed, users, vocab, data, end))
        # App. A.4's C_u^hist: every category the user clicked in everything consumed so far
        every = pd.concat(consumed, ignore_index=True)
        every = every[(every["event"] == "click") & every["item_id"].isin(vocab.item_ids)]
        cat_of = dict(zip(vocab.item_ids, vocab.item_categories))
        expected: dict[str, set[str]] = {}
        for u, i in zip(every["user_id"], every["item_id"]):
            expected.setdefault(u, set()).add(cat_of[i])
        assert state.clicked_categories(vocab) == expected


def test_state_refuses_events_at_or_after_its_cutoff():
    data = DataConfig(tau=1, short_k=2)
    vocab = Vocabulary.empty()
    vocab.extend(pd.DataFrame({"item_id": ["x"], "category": ["A"], "title": ""}), None, 0)
    with pytest.raises(ValueError, match="cut-off"):
        SequenceState.empty(data).apply(pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "timestamp": [10],
                                                      "event": ["click"]}), vocab, 10)

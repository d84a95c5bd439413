"""Per-user sequences at a cut-off: I_long (Eq. 3), I_short / S_short, C'_short and sparse features S_u.

The rules (docs/data.md, "Sequences"); ``spark_jobs/build_sequences.py`` implements the same ones at scale:

- Only ``"click"`` events with ``timestamp < cutoff`` on items with a category count. Within a user, clicks are
  in (timestamp, item_id) order -- the global (timestamp, user_id, item_id) event order.
- I_long (Eq. 3): a click is kept when its frequency reaches ``data.tau``. ``data.long_filter = "item"`` counts
  the user's clicks on that item (Eq. 3 literally); ``"category"`` counts the user's clicks on that item's
  category (for data where a user meets an item once, like MovieLens). Frequencies are counted on the clicks
  before the cut-off. Chronological; the most recent ``data.max_long_len`` kept; repeated clicks stay repeated.
- I_short / S_short: the categories of the user's last ``data.short_k`` clicks, chronological, unfiltered.
- C'_short = ``storage.keys.canonical_recent(S_short)``: unique, non-empty, code-point order.
- Features: one integer code per sparse feature; 0 = unknown (``"unk"``, empty, or a user missing from the users
  table), 1.. = the feature's other values in sorted order (so codes do not depend on the cut-off), or, given a
  vocabulary (coea/data/vocab.py), its append-only codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from coea.data.schema import UNKNOWN_FEATURE, Interactions, Sequences
from storage.keys import canonical_recent

if TYPE_CHECKING:
    from coea.config import DataConfig
    from coea.data.vocab import Vocabulary


def build_sequences(inter: Interactions, data: DataConfig, cutoff: int | None = None, *,
                    vocab: Vocabulary | None = None) -> Sequences:
    """Build every user's sequences from the clicks before ``cutoff`` (see the module docstring).

    This is the full rebuild; the cycle carries :class:`coea.data.state.SequenceState` from round to round
    instead, and its tests check that both give the same Sequences.

    Args:
        inter: a cleaned data set.
        data: the ``data`` config section (``tau``, ``long_filter``, ``short_k``, ``max_long_len``).
        cutoff: use events with ``timestamp < cutoff``; ``None`` uses all (recorded as max timestamp + 1).
        vocab: stable vocabularies (coea/data/vocab.py): item indices, item categories and feature codes come
            from it. ``None``: items in ``inter.items`` order, their categories there, features sorted.

    Returns:
        Sequences for every user in ``inter.users`` (in its order) then any other event user (sorted); a user
        with no click before the cut-off has empty lists (cold start).
    """
    events = inter.events
    if cutoff is None:
        cutoff = int(events["timestamp"].max()) + 1 if len(events) else 0
    user_ids = _all_users(inter)
    n_users = len(user_ids)
    if vocab is not None:
        item_vocab, item_categories = list(vocab.item_ids), list(vocab.item_categories)
        category_of = vocab.category_of()
    else:
        item_vocab = inter.items["item_id"].astype(str).tolist()
        item_categories = inter.items["category"].astype(str).tolist()
        category_of = None

    clicks = _events_in(inter, "click", None, cutoff, category_of=category_of)  # (n,) chronological, "category"
    user_code = pd.Index(user_ids).get_indexer(clicks["user_id"])  # (n,)
    item_code = (vocab.item_index(clicks["item_id"].tolist()) if vocab is not None
                 else pd.Index(item_vocab).get_indexer(clicks["item_id"]) + 1)  # (n,) 1-based, 0 = padding
    level = item_code if data.long_filter == "item" else pd.factorize(clicks["category"])[0]
    freq = _pair_counts(user_code, level)  # (n,) the user's clicks at the filter level (Eq. 3)

    # Group by user keeping the chronological order inside each user.
    order = np.argsort(user_code, kind="stable")
    user_code, item_code, freq = user_code[order], item_code[order], freq[order]
    category = clicks["category"].to_numpy(dtype=object)[order]

    kept = freq >= data.tau
    long_mask = kept & (_rank_from_end(user_code, kept) < data.max_long_len)
    short_mask = _rank_from_end(user_code, np.ones_like(kept)) < data.short_k
    long_items = [a.tolist() for a in _split(item_code[long_mask], user_code[long_mask], n_users)]
    short_categories = [a.tolist() for a in _split(category[short_mask], user_code[short_mask], n_users)]
    features, cardinalities, names = (vocab.feature_codes(inter.users, user_ids) if vocab is not None
                                      else _feature_codes(inter.users, user_ids))
    return Sequences(
        user_ids=user_ids,
        item_vocab=item_vocab,
        long_items=long_items,
        short_categories=short_categories,
        c_short=[canonical_recent(s) for s in short_categories],
        features=features,
        feature_cardinalities=cardinalities,
        cutoff=int(cutoff),
        feature_names=names,
        item_categories=item_categories,
    )


def click_categories_by_user(inter: Interactions, start: int | None = None,
                             end: int | None = None) -> dict[str, list[tuple[int, str]]]:
    """Each user's clicks in ``[start, end)`` as chronological ``(timestamp, category)``.

    Users without a click in the window are absent. ``None`` leaves that side of the window open.
    """
    return _by_user(_events_in(inter, "click", start, end))


def exposures_by_user(inter: Interactions, start: int | None = None,
                      end: int | None = None) -> dict[str, list[tuple[int, str]]]:
    """Each user's exposures (shown, not clicked) in ``[start, end)`` as chronological ``(timestamp, category)``."""
    return _by_user(_events_in(inter, "exposure", start, end))


# ------------------------------------------------------------------------------------------------- helpers


def _all_users(inter: Interactions) -> list[str]:
    listed = inter.users["user_id"].astype(str).tolist()
    extra = set(inter.events["user_id"].astype(str).unique()) - set(listed)
    return listed + sorted(extra)


def _events_in(inter: Interactions, kind: str, start: int | None, end: int | None, *,
               category_of: dict[str, str] | None = None) -> pd.DataFrame:
    """Events of one kind in ``[start, end)`` whose item has a category, in (timestamp, user_id, item_id) order.

    ``category_of`` (item -> category) replaces ``inter.item_category`` (the vocabulary's fixed categories)."""
    ev = inter.events
    mask = (ev["event"] == kind).to_numpy().copy()
    if start is not None:
        mask &= (ev["timestamp"] >= start).to_numpy()
    if end is not None:
        mask &= (ev["timestamp"] < end).to_numpy()
    out = ev.loc[mask, ["user_id", "item_id", "timestamp"]].copy()
    out["user_id"] = out["user_id"].astype(str)
    out["item_id"] = out["item_id"].astype(str)
    out["category"] = out["item_id"].map(category_of if category_of is not None else inter.item_category)
    out = out[out["category"].notna()]
    return out.sort_values(["timestamp", "user_id", "item_id"], kind="mergesort").reset_index(drop=True)


def _by_user(events: pd.DataFrame) -> dict[str, list[tuple[int, str]]]:
    users, user_code = np.unique(events["user_id"].to_numpy(dtype=object), return_inverse=True)
    order = np.argsort(user_code, kind="stable")
    ts = _split(events["timestamp"].to_numpy()[order], user_code[order], len(users))
    cats = _split(events["category"].to_numpy(dtype=object)[order], user_code[order], len(users))
    return {str(u): list(zip(t.tolist(), c.tolist())) for u, t, c in zip(users, ts, cats)}


def _pair_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each position, how many positions share its (a, b) pair."""
    if not len(a):
        return np.zeros(0, dtype=np.int64)
    pair = a.astype(np.int64) * (int(b.max()) + 1) + b.astype(np.int64)
    _, inverse, counts = np.unique(pair, return_inverse=True, return_counts=True)
    return counts[inverse]


def _rank_from_end(group: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """For each position (``group`` sorted), how many later positions of its group have ``mask`` set."""
    rank = np.full(len(group), np.iinfo(np.int64).max, dtype=np.int64)
    if mask.any():
        sel = pd.Series(group[mask])
        rank[mask] = sel.groupby(sel).cumcount(ascending=False).to_numpy()
    return rank


def _split(values: np.ndarray, group: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """Split ``values`` (sorted by ``group``) into one array per group id 0..n_groups-1 (empty when absent)."""
    sizes = np.bincount(group, minlength=n_groups) if len(group) else np.zeros(n_groups, dtype=np.int64)
    return np.split(values, np.cumsum(sizes)[:-1])


def _feature_codes(users: pd.DataFrame, user_ids: list[str]) -> tuple[np.ndarray, list[int], list[str]]:
    """(N, F) int64 codes, (F,) cardinalities including 0 = unknown, (F,) column names."""
    names = [str(c) for c in users.columns if c != "user_id"]
    table = users.assign(user_id=users["user_id"].astype(str)).drop_duplicates("user_id").set_index("user_id")
    table = table.reindex(user_ids)
    codes = np.zeros((len(user_ids), len(names)), dtype=np.int64)
    cardinalities = []
    for j, name in enumerate(names):
        col = table[name].astype(object)
        known = col.notna().to_numpy().copy()
        known[known] = ~col[known].astype(str).str.strip().isin(["", UNKNOWN_FEATURE]).to_numpy()
        vocab = sorted(set(col[known].astype(str)))
        codes[known, j] = pd.Index(vocab).get_indexer(col[known].astype(str)) + 1
        cardinalities.append(len(vocab) + 1)
    return codes, cardinalities, names

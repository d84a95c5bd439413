"""Sequence state carried from round to round, so a round reads only its new events (docs/data.md).

:func:`coea.data.sequences.build_sequences` rebuilds every user's sequences from the whole history. The state
keeps exactly what that rebuild needs from the past, per user, and nothing else:

- ``counts``: the user's number of clicks at each tau-filter level (an item, or a category), over every click
  consumed so far. Eq. 3 counts frequencies over all clicks before the cut-off, so an earlier click joins I_long
  when its level reaches ``data.tau`` later; the counts are what decide it.
- ``clicks``: the retained clicks ``(user, timestamp, item)``: every click with fewer than ``max_long_len`` kept
  clicks after it (in the user's (timestamp, item_id) order), plus the user's last ``tail_len`` clicks. A click
  with ``max_long_len`` kept clicks after it can never be among the newest ``max_long_len`` kept clicks again
  (the kept set only grows: counts never fall), whatever arrives later -- late events included -- so dropping
  it loses nothing. What remains per user is I_long, the short tail, and the not-yet-kept clicks newer than
  I_long's oldest item.
- ``users``: every user with a consumed event (exposures too: they get a cold-start row, as in a rebuild);
  ``category_clicks``: clicks per category over everything consumed (the long-tail popularity).

Applying a round's events and then :meth:`SequenceState.to_sequences` gives the same Sequences as
``build_sequences`` over all events consumed so far with the same vocabulary (tests/data/test_sequence_state.py checks it
over several rounds with new users, new items, an empty day and late events). The one difference is by design:
duplicates are removed within what one round reads, not against earlier rounds (a rebuild would drop a repeat
of a consumed event that a later file carries again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from coea.data.schema import Sequences
from storage.keys import canonical_recent

if TYPE_CHECKING:
    from coea.data.vocab import Vocabulary

CLICKS_FILE, COUNTS_FILE, USERS_FILE, META_FILE = "clicks.parquet", "counts.parquet", "users.parquet", "state.json"
HISTORY_CLICKS = 2  # S_short(t-2:t-1): the Relevance pairs' earliest clicks need the two clicks before a window


@dataclass
class SequenceState:
    """Per-user state (module docstring). Build with :meth:`empty`, then :meth:`apply` each round's events."""

    tau: int
    long_filter: str
    short_k: int
    max_long_len: int
    clicks: pd.DataFrame = field(default_factory=lambda: _empty_clicks())  # user, ts, item, in_long, in_tail
    counts: pd.DataFrame = field(default_factory=lambda: _empty_counts())  # user, level, n
    users: set[str] = field(default_factory=set)
    category_clicks: dict[str, int] = field(default_factory=dict)
    cutoff: int | None = None  # every consumed event has timestamp < cutoff (the last round's end)

    @classmethod
    def empty(cls, data) -> SequenceState:
        """A state with nothing consumed, for the ``data`` config section's tau / filter / window sizes."""
        return cls(tau=int(data.tau), long_filter=str(data.long_filter), short_k=int(data.short_k),
                   max_long_len=int(data.max_long_len))

    @property
    def tail_len(self) -> int:
        return max(self.short_k, HISTORY_CLICKS)

    def matches(self, data) -> bool:
        """True when this state was built with ``data``'s tau, filter level and window sizes."""
        return (self.tau, self.long_filter, self.short_k, self.max_long_len) == (
            int(data.tau), str(data.long_filter), int(data.short_k), int(data.max_long_len))

    # ------------------------------------------------------------------------------------------------- apply

    def apply(self, events: pd.DataFrame, vocab: Vocabulary, cutoff: int) -> None:
        """Consume cleaned events (user_id, item_id, timestamp, event; any order; timestamps < ``cutoff``).

        Only clicks on vocabulary items change the sequences; every event's user is remembered.
        """
        if len(events) and int(events["timestamp"].max()) >= cutoff:
            raise ValueError(f"state: an event at or after the cut-off {cutoff} cannot be consumed")
        self.cutoff = int(cutoff) if self.cutoff is None else max(self.cutoff, int(cutoff))
        self.users.update(events["user_id"].astype(str).unique().tolist())
        ev = events[events["event"] == "click"]
        item = vocab.item_index(ev["item_id"].tolist())  # (n,) 1-based
        known = item > 0
        new = pd.DataFrame({"user": ev["user_id"].astype(str).to_numpy()[known],
                            "ts": ev["timestamp"].to_numpy(dtype=np.int64)[known], "item": item[known]})
        if not len(new):
            return
        cats = np.asarray(vocab.item_categories, dtype=object)[new["item"].to_numpy() - 1]
        for c, n in pd.Series(cats).value_counts().items():
            self.category_clicks[str(c)] = self.category_clicks.get(str(c), 0) + int(n)

        level_of = self._level_table(vocab)  # (V + 1,) level code of each item index
        new_counts = pd.DataFrame({"user": new["user"], "level": level_of[new["item"].to_numpy()]}) \
            .value_counts(["user", "level"]).rename("n").reset_index()
        touched = set(new["user"])
        mask_c = self.counts["user"].isin(touched).to_numpy()
        counts = pd.concat([self.counts[mask_c], new_counts], ignore_index=True) \
            .groupby(["user", "level"], as_index=False, sort=False)["n"].sum()
        self.counts = pd.concat([self.counts[~mask_c], counts], ignore_index=True)

        mask = self.clicks["user"].isin(touched).to_numpy()
        rows = pd.concat([self.clicks.loc[mask, ["user", "ts", "item"]], new], ignore_index=True)
        self.clicks = pd.concat([self.clicks[~mask], self._retain(rows, counts, vocab, level_of)],
                                ignore_index=True)

    def _level_table(self, vocab: Vocabulary) -> np.ndarray:
        if self.long_filter == "item":
            return np.arange(len(vocab) + 1, dtype=np.int64)
        code = {c: j for j, c in enumerate(vocab.categories)}
        return np.array([-1] + [code[c] for c in vocab.item_categories], dtype=np.int64)

    def _retain(self, rows: pd.DataFrame, counts: pd.DataFrame, vocab: Vocabulary,
                level_of: np.ndarray) -> pd.DataFrame:
        """The retained clicks of the touched users, flagged (module docstring)."""
        rank = _item_rank(vocab)  # (V + 1,) position of each item index in item-id string order
        rows = rows.assign(_rank=rank[rows["item"].to_numpy()])
        rows = rows.sort_values(["user", "ts", "_rank"], kind="mergesort").reset_index(drop=True)
        n = pd.MultiIndex.from_frame(counts[["user", "level"]])
        key = pd.MultiIndex.from_arrays([rows["user"].to_numpy(), level_of[rows["item"].to_numpy()]])
        kept = counts["n"].to_numpy()[n.get_indexer(key)] >= self.tau  # (n,)
        grp = rows.groupby("user", sort=False)
        kept_s = pd.Series(kept.astype(np.int64))
        kept_after = kept_s.groupby(rows["user"]).transform("sum").to_numpy() - \
            kept_s.groupby(rows["user"]).cumsum().to_numpy()  # kept clicks strictly after each click
        from_end = grp.cumcount(ascending=False).to_numpy()  # clicks after each click
        in_long = kept & (kept_after < self.max_long_len)
        in_tail = from_end < self.tail_len
        keep = (kept_after < self.max_long_len) | in_tail
        out = rows.loc[keep, ["user", "ts", "item"]].reset_index(drop=True)
        out["in_long"], out["in_tail"] = in_long[keep], in_tail[keep]
        return out

    # ----------------------------------------------------------------------------------------------- outputs

    def to_sequences(self, vocab: Vocabulary, users: pd.DataFrame, cutoff: int | None = None) -> Sequences:
        """Sequences at the state's cut-off for every user of ``users`` (the current users table) or the state.

        Same rows, order and codes as ``build_sequences(all consumed events, cutoff, vocab=vocab)``.
        """
        table_users = users["user_id"].astype(str).tolist()
        user_ids = sorted(set(table_users) | self.users)
        row = pd.Index(user_ids)
        clicks = self._ordered(vocab)
        code = row.get_indexer(clicks["user"])  # (n,)
        cats = np.asarray(vocab.item_categories, dtype=object)
        long_rows = clicks[clicks["in_long"].to_numpy()]
        long_items = _split_lists(long_rows["item"].to_numpy(), code[clicks["in_long"].to_numpy()], len(user_ids))
        tail = clicks["in_tail"].to_numpy()
        tail_code = code[tail]
        tail_cat = cats[clicks["item"].to_numpy()[tail] - 1]
        # the tail holds tail_len >= short_k clicks: S_short is its last short_k
        from_end = pd.Series(tail_code).groupby(tail_code).cumcount(ascending=False).to_numpy()
        sel = from_end < self.short_k
        short = _split_lists(tail_cat[sel], tail_code[sel], len(user_ids))
        features, cardinalities, names = vocab.feature_codes(users, user_ids)
        return Sequences(user_ids=user_ids, item_vocab=list(vocab.item_ids), long_items=long_items,
                         short_categories=short, c_short=[canonical_recent(s) for s in short], features=features,
                         feature_cardinalities=cardinalities,
                         cutoff=int(cutoff if cutoff is not None else (self.cutoff or 0)), feature_names=names,
                         item_categories=list(vocab.item_categories))

    def history(self, vocab: Vocabulary) -> dict[str, list[tuple[int, str]]]:
        """Each user's last ``tail_len`` consumed clicks as chronological ``(timestamp, category)``."""
        clicks = self._ordered(vocab)
        tail = clicks[clicks["in_tail"].to_numpy()]
        cats = np.asarray(vocab.item_categories, dtype=object)[tail["item"].to_numpy() - 1]
        out: dict[str, list[tuple[int, str]]] = {}
        for u, ts, c in zip(tail["user"].tolist(), tail["ts"].tolist(), cats.tolist()):
            out.setdefault(u, []).append((int(ts), c))
        return out

    def clicked_categories(self, vocab: Vocabulary) -> dict[str, set[str]]:
        """Each user's set of categories clicked in everything consumed (App. A.4's C_u^hist at the state's cut-off).

        From the tau counts, which cover every consumed click: their level is the category (``long_filter:
        category``) or the item, mapped to its category.
        """
        if not len(self.counts):
            return {}
        level = self.counts["level"].to_numpy(dtype=np.int64)
        if self.long_filter == "item":
            cats = np.asarray(vocab.item_categories, dtype=object)[level - 1]
        else:
            cats = np.asarray(vocab.categories, dtype=object)[level]
        out: dict[str, set[str]] = {}
        for u, c in zip(self.counts["user"].tolist(), cats.tolist()):
            out.setdefault(u, set()).add(str(c))
        return out

    def _ordered(self, vocab: Vocabulary) -> pd.DataFrame:
        rank = _item_rank(vocab)
        c = self.clicks
        return c.assign(_rank=rank[c["item"].to_numpy()]).sort_values(["user", "ts", "_rank"], kind="mergesort") \
            .reset_index(drop=True)

    # --------------------------------------------------------------------------------------------------- disk

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.clicks.to_parquet(d / CLICKS_FILE, index=False)
        self.counts.to_parquet(d / COUNTS_FILE, index=False)
        pd.DataFrame({"user_id": sorted(self.users)}, dtype=object).to_parquet(d / USERS_FILE, index=False)
        (d / META_FILE).write_text(json.dumps({
            "tau": self.tau, "long_filter": self.long_filter, "short_k": self.short_k,
            "max_long_len": self.max_long_len, "cutoff": self.cutoff, "category_clicks": self.category_clicks,
            "retained_clicks": len(self.clicks), "count_rows": len(self.counts), "users": len(self.users)},
            ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> SequenceState:
        d = Path(directory)
        meta = json.loads((d / META_FILE).read_text())
        clicks = pd.read_parquet(d / CLICKS_FILE)
        clicks = clicks.astype({"user": object, "ts": "int64", "item": "int64", "in_long": bool, "in_tail": bool})
        counts = pd.read_parquet(d / COUNTS_FILE).astype({"user": object, "level": "int64", "n": "int64"})
        users = set(pd.read_parquet(d / USERS_FILE)["user_id"].astype(str))
        return cls(tau=meta["tau"], long_filter=meta["long_filter"], short_k=meta["short_k"],
                   max_long_len=meta["max_long_len"], clicks=clicks, counts=counts, users=users,
                   category_clicks={k: int(v) for k, v in meta["category_clicks"].items()}, cutoff=meta["cutoff"])


def _empty_clicks() -> pd.DataFrame:
    return pd.DataFrame({"user": pd.Series(dtype=object), "ts": pd.Series(dtype="int64"),
                         "item": pd.Series(dtype="int64"), "in_long": pd.Series(dtype=bool),
                         "in_tail": pd.Series(dtype=bool)})


def _empty_counts() -> pd.DataFrame:
    return pd.DataFrame({"user": pd.Series(dtype=object), "level": pd.Series(dtype="int64"),
                         "n": pd.Series(dtype="int64")})


def _item_rank(vocab: Vocabulary) -> np.ndarray:
    """(V + 1,) rank of each item index in item-id string order (index 0, padding, ranks first)."""
    ids = np.asarray(vocab.item_ids, dtype=object)
    rank = np.empty(len(ids) + 1, dtype=np.int64)
    rank[0] = -1
    rank[1:][np.argsort(ids, kind="stable")] = np.arange(len(ids))
    return rank


def _split_lists(values: np.ndarray, group: np.ndarray, n_groups: int) -> list[list]:
    """``values`` grouped by ``group`` (0..n_groups-1, order kept within a group) -> one list per group."""
    order = np.argsort(group, kind="stable")
    values, group = values[order], group[order]
    sizes = np.bincount(group, minlength=n_groups) if len(group) else np.zeros(n_groups, dtype=np.int64)
    return [a.tolist() for a in np.split(values, np.cumsum(sizes)[:-1])]

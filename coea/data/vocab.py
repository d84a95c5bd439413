"""Stable vocabularies of items, categories and sparse-feature values: append-only, saved with every round.

Ids never shift (docs/data.md, "Vocabularies"):

- **Items**: item index ``j`` (1-based; 0 is padding) is ``item_ids[j - 1]``. Round 0 numbers the catalogue in
  item-id order (exactly today's ``build_sequences`` order); each later round appends the items it sees for the
  first time, in item-id order. An item keeps the category it had when it entered the vocabulary: a later
  items.parquet row with another category is noted (``category_changed``, kept) and ignored, so an item's
  category, its embedding row and every sequence that holds it stay put. Items that leave items.parquet stay in
  the vocabulary (``active = False``): their history keeps meaning, events that still arrive for them are
  accepted, and they are no longer candidates' context for the active catalogue.
- **Categories**: every category name ever seen, in order of first appearance (sorted within a round).
  ``Interactions.categories`` is separate: the categories of the *active* items, sorted (what may be proposed).
- **Sparse features**: per feature column (columns append-only too), code ``c >= 1`` is ``values[c - 1]``;
  0 = unknown (``"unk"``, empty, or a user absent from the users table). Round 0 numbers the values in sorted
  order (today's codes), later rounds append new values sorted. A saved encoder built with fewer values maps
  the new codes to unknown (``coea.encoder.UserEncoder.sparse_token``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from coea.data.schema import UNKNOWN_FEATURE

ITEMS_FILE, VOCAB_FILE = "items.parquet", "vocab.json"


@dataclass
class VocabUpdate:
    """What one :meth:`Vocabulary.extend` changed (written to the round's window.json)."""

    new_items: list[str] = field(default_factory=list)
    new_categories: list[str] = field(default_factory=list)
    new_feature_values: dict[str, list[str]] = field(default_factory=dict)
    new_features: list[str] = field(default_factory=list)
    recategorised: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["item_id", "category", "new_category"]))
    removed_items: int = 0  # vocabulary items absent from this round's items table
    removed_categories: list[str] = field(default_factory=list)  # active before, no active item now

    def summary(self) -> dict:
        return {"new_items": len(self.new_items), "new_categories": list(self.new_categories),
                "new_features": list(self.new_features),
                "new_feature_values": {k: len(v) for k, v in self.new_feature_values.items() if v},
                "recategorised_items": int(len(self.recategorised)), "removed_items": int(self.removed_items),
                "removed_categories": list(self.removed_categories)}


@dataclass
class Vocabulary:
    """Append-only vocabularies (module docstring). Build with :meth:`empty` then :meth:`extend`."""

    item_ids: list[str] = field(default_factory=list)
    item_categories: list[str] = field(default_factory=list)  # (V,) fixed at first sight
    item_rounds: list[int] = field(default_factory=list)  # (V,) round that added the item
    item_titles: list[str] = field(default_factory=list)  # (V,) latest title (informational, may change)
    active: list[bool] = field(default_factory=list)  # (V,) in the latest items table
    categories: list[str] = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)
    feature_values: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {item: j + 1 for j, item in enumerate(self.item_ids)}

    @classmethod
    def empty(cls) -> Vocabulary:
        return cls()

    def copy(self) -> Vocabulary:
        return Vocabulary(item_ids=list(self.item_ids), item_categories=list(self.item_categories),
                          item_rounds=list(self.item_rounds), item_titles=list(self.item_titles),
                          active=list(self.active), categories=list(self.categories),
                          feature_names=list(self.feature_names),
                          feature_values={k: list(v) for k, v in self.feature_values.items()})

    # ------------------------------------------------------------------------------------------------- growth

    def extend(self, items: pd.DataFrame, users: pd.DataFrame | None, round_: int) -> VocabUpdate:
        """Append what ``items`` (cleaned: item_id, category, title) and ``users`` (cleaned) add; mark activity.

        Returns what changed. Existing ids, categories and codes are never modified.
        """
        upd = VocabUpdate()
        ids = items["item_id"].astype(str).to_numpy()
        cats = items["category"].astype(str).to_numpy()
        titles = items["title"].astype(str).to_numpy() if "title" in items else np.full(len(ids), "", dtype=object)
        before_active = set(self.active_categories())
        known = np.array([i in self._index for i in ids], dtype=bool)

        # Existing items: category fixed; title follows the table; activity from presence.
        pos = np.array([self._index[i] - 1 for i in ids[known]], dtype=np.int64)
        old_cat = np.asarray(self.item_categories, dtype=object)[pos] if len(pos) else np.zeros(0, dtype=object)
        changed = old_cat != cats[known]
        upd.recategorised = pd.DataFrame({"item_id": ids[known][changed], "category": old_cat[changed],
                                          "new_category": cats[known][changed]})
        for p, t in zip(pos, titles[known]):
            self.item_titles[p] = str(t)
        present = np.zeros(len(self.item_ids), dtype=bool)
        present[pos] = True
        upd.removed_items = int((~present).sum())

        # New items in item-id order.
        order = np.argsort(ids[~known], kind="stable")
        for i, c, t in zip(ids[~known][order], cats[~known][order], titles[~known][order]):
            self._index[str(i)] = len(self.item_ids) + 1
            self.item_ids.append(str(i))
            self.item_categories.append(str(c))
            self.item_rounds.append(int(round_))
            self.item_titles.append(str(t))
            upd.new_items.append(str(i))
        self.active = present.tolist() + [True] * len(upd.new_items)

        seen = set(self.categories)
        upd.new_categories = sorted({c for c in self.item_categories[len(present):] if c not in seen})
        self.categories.extend(upd.new_categories)
        upd.removed_categories = sorted(before_active - set(self.active_categories()))

        if users is not None:
            for name in [str(c) for c in users.columns if c != "user_id"]:
                if name not in self.feature_values:
                    self.feature_names.append(name)
                    self.feature_values[name] = []
                    upd.new_features.append(name)
                col = users[name].astype(object)
                vals = col[col.notna()].astype(str).str.strip()
                vals = set(vals[~vals.isin(["", UNKNOWN_FEATURE])])
                new = sorted(vals - set(self.feature_values[name]))
                self.feature_values[name].extend(new)
                upd.new_feature_values[name] = new
        return upd

    # --------------------------------------------------------------------------------------------------- lookups

    def __len__(self) -> int:
        return len(self.item_ids)

    def item_index(self, item_ids) -> np.ndarray:
        """1-based indices of ``item_ids`` (0 for an id the vocabulary does not hold)."""
        get = self._index.get
        return np.fromiter((get(str(i), 0) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def category_of(self) -> dict[str, str]:
        return dict(zip(self.item_ids, self.item_categories))

    def active_categories(self) -> list[str]:
        return sorted({c for c, a in zip(self.item_categories, self.active) if a})

    def items_frame(self) -> pd.DataFrame:
        """Every vocabulary item: item_id, category (fixed), title, active; in index order."""
        return pd.DataFrame({"item_id": pd.Series(self.item_ids, dtype=object),
                             "category": pd.Series(self.item_categories, dtype=object),
                             "title": pd.Series(self.item_titles, dtype=object),
                             "active": pd.Series(self.active, dtype=bool)})

    def feature_codes(self, users: pd.DataFrame, user_ids: list[str]) -> tuple[np.ndarray, list[int], list[str]]:
        """(N, F) int64 codes of ``user_ids`` from ``users`` (0 = unknown), (F,) cardinalities incl. 0, names."""
        names = list(self.feature_names)
        table = users.assign(user_id=users["user_id"].astype(str)).drop_duplicates("user_id").set_index("user_id")
        table = table.reindex(user_ids)
        codes = np.zeros((len(user_ids), len(names)), dtype=np.int64)
        for j, name in enumerate(names):
            if name not in table:
                continue
            col = table[name].astype(object)
            known = col.notna().to_numpy().copy()
            known[known] = ~col[known].astype(str).str.strip().isin(["", UNKNOWN_FEATURE]).to_numpy()
            index = pd.Index(self.feature_values[name])
            got = index.get_indexer(col[known].astype(str).str.strip()) + 1  # values not in the vocab -> 0
            codes[known, j] = got
        return codes, [len(self.feature_values[n]) + 1 for n in names], names

    # --------------------------------------------------------------------------------------------------- disk

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"item_id": pd.Series(self.item_ids, dtype=object),
                      "category": pd.Series(self.item_categories, dtype=object),
                      "first_round": pd.Series(self.item_rounds, dtype="int64"),
                      "title": pd.Series(self.item_titles, dtype=object),
                      "active": pd.Series(self.active, dtype=bool)}).to_parquet(d / ITEMS_FILE, index=False)
        (d / VOCAB_FILE).write_text(json.dumps({"categories": self.categories, "feature_names": self.feature_names,
                                                "feature_values": self.feature_values}, ensure_ascii=False,
                                               indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Vocabulary:
        d = Path(directory)
        items = pd.read_parquet(d / ITEMS_FILE)
        meta = json.loads((d / VOCAB_FILE).read_text())
        return cls(item_ids=items["item_id"].astype(str).tolist(), item_categories=items["category"].astype(str).tolist(),
                   item_rounds=items["first_round"].astype(int).tolist(), item_titles=items["title"].astype(str).tolist(),
                   active=items["active"].astype(bool).tolist(), categories=list(meta["categories"]),
                   feature_names=list(meta["feature_names"]),
                   feature_values={k: list(v) for k, v in meta["feature_values"].items()})

"""In-memory data contracts. Column names here are the documented schema (docs/data.md).

Events (Parquet ``events.parquet`` or any loader's output), one row per interaction:
    user_id: str, item_id: str, timestamp: int64 (unix seconds), event: "click" | "exposure",
    rating: float64 (optional, NaN when absent)
Items (``items.parquet``): item_id: str, category: str, title: str (optional)
Users (``users.parquet``): user_id: str, then one string column per sparse feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from coea.errors import DataError, LiveDataError, LogGapError  # noqa: F401  (defined with the exit codes; re-exported)

EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "event", "rating")
ITEM_COLUMNS = ("item_id", "category", "title")
EVENT_KINDS = ("click", "exposure")
UNKNOWN_FEATURE = "unk"  # value of a sparse feature that is missing (and of every feature of an unlisted user)

# Reasons a row can be rejected (docs/data.md). Rows noted with a reason in KEPT_REASONS stay in the data.
REJECT_REASONS = (
    "malformed_row",           # event line/row: wrong field count, unparseable id / timestamp / rating, wrong type
    "bad_event_kind",          # event kind other than EVENT_KINDS
    "unknown_item",            # event on an item missing from the items table or rejected there
    "duplicate_event",         # exact duplicate of an earlier event row (all of EVENT_COLUMNS equal)
    "malformed_item",          # items table row that cannot be parsed
    "duplicate_item",          # second row for an item id (the first is kept)
    "item_without_category",   # item with no category (MovieLens: only the "unknown" genre)
    "malformed_user",          # users table row that cannot be parsed
    "duplicate_user",          # second row for a user id (the first is kept)
    "future_timestamp",        # live log: event timestamp at or after the round's watermark in a file it consumes
)
KEPT_REASONS = (
    "out_of_order_timestamp",  # timestamp earlier than the previous line of the same user: kept, events are sorted
    "category_changed",        # items row whose category differs from the item's vocabulary category: first kept
)


@dataclass
class RejectReport:
    """Counts of rejected input rows by reason, and the rejected rows themselves (for the rejects file)."""

    counts: dict[str, int] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # each: {"source": ..., "reason": ..., "row": str}
    kept: dict[str, int] = field(default_factory=dict)  # rows noted but kept (KEPT_REASONS); not in ``counts``
    max_rows_per_reason: int = 0  # cap on ``rows`` stored per reason (0 = all); counts stay exact
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)  # dropped rows per source file and reason

    def add(self, source: str, reason: str, row: object, *, line: int | None = None, kept: bool = False) -> None:
        """Count one row under ``reason`` and keep it for the rejects file (up to ``max_rows_per_reason``).

        ``kept=True`` notes a row that stays in the data (e.g. an out-of-order timestamp): it is counted in
        ``kept`` instead of ``counts``, so ``total`` is exactly the number of rows dropped.
        """
        tally = self.kept if kept else self.counts
        n = tally.get(reason, 0)
        tally[reason] = n + 1
        if self.max_rows_per_reason and n >= self.max_rows_per_reason:
            return
        entry = {"source": source, "reason": reason, "row": str(row)[:500]}
        if line is not None:
            entry["line"] = int(line)
        if kept:
            entry["kept"] = True
        self.rows.append(entry)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Interactions:
    """A cleaned data set.

    Attributes:
        events: columns EVENT_COLUMNS, sorted by (timestamp, user_id, item_id); only valid rows.
        items: columns ITEM_COLUMNS, one row per item that has a category.
        users: user_id + sparse feature columns (str); every user in ``events`` has a row (missing -> "unk").
        categories: sorted catalogue category names.
        rejects: what was rejected while loading, and why.
        ground_truth: synthetic world only: user_id, latent_group (int), latent_interests (list[str]).
    """

    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    categories: list[str]
    rejects: RejectReport = field(default_factory=RejectReport)
    ground_truth: pd.DataFrame | None = None

    @property
    def item_category(self) -> dict[str, str]:
        """item_id -> category, built once per ``items`` table (O(items)) and cached, so callers may read it per
        item. Assigning a new ``items`` frame rebuilds it on the next read; edit a copy of ``items`` rather than
        the frame in place, and treat the returned dict as read-only (it is shared)."""
        cached = self.__dict__.get("_item_category")
        if cached is None or cached[0] is not self.items:
            cached = (self.items, dict(zip(self.items["item_id"], self.items["category"])))
            self.__dict__["_item_category"] = cached
        return cached[1]


@dataclass
class Sequences:
    """Per-user sequences at a cut-off time; row i of every field is user ``user_ids[i]``.

    Attributes:
        user_ids: (N,) user ids.
        item_vocab: item ids; item index j (1-based, 0 = padding) is item_vocab[j - 1].
        long_items: (N,) lists of item indices, I_long after the tau filter, chronological, most recent
            ``max_long_len`` kept. May be empty (cold-start user).
        short_categories: (N,) lists of category names of the last K clicks, chronological (S_short).
        c_short: (N,) canonical C'_short (storage.keys.canonical_recent of short_categories).
        features: (N, F) int64 codes of the sparse features, 0 = unknown.
        feature_cardinalities: (F,) number of codes per feature including 0.
        cutoff: events with timestamp < cutoff were used (``None`` asked: max timestamp + 1).
        feature_names: (F,) the users-table column behind each feature.
        item_categories: (V,) category of each ``item_vocab`` entry (empty when not known).
    """

    user_ids: list[str]
    item_vocab: list[str]
    long_items: list[list[int]]
    short_categories: list[list[str]]
    c_short: list[tuple[str, ...]]
    features: np.ndarray
    feature_cardinalities: list[int]
    cutoff: int
    feature_names: list[str] = field(default_factory=list)  # (F,) users-table column of each feature
    item_categories: list[str] = field(default_factory=list)  # (V,) category of each item_vocab entry

"""The one cleaning path every data source hands its raw tables to, and the reject report it writes.

Every source (MovieLens 100K / 1M, Parquet logs, the synthetic world) hands raw tables to
:func:`clean_interactions`, the one cleaning path: malformed rows, unknown items, items without a category,
duplicates and out-of-order timestamps are counted in a :class:`~coea.data.schema.RejectReport` (with the
offending rows, for the rejects file), never fatal. Only a missing file or a file of the wrong format raises
:class:`~coea.data.schema.DataError`. The rules are documented in docs/data.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from coea.data.schema import (
    EVENT_COLUMNS, EVENT_KINDS, ITEM_COLUMNS, UNKNOWN_FEATURE, DataError, Interactions, RejectReport,
)

log = logging.getLogger("coea.data")

# Private bookkeeping columns a loader may attach to its raw tables: the file the row came from, its 1-based
# line (or row) number, and the raw text of the line (what the rejects file shows).
SOURCE, LINE, RAW = "_source", "_line", "_raw"
_PRIVATE = (SOURCE, LINE, RAW)


def write_rejects(rejects: RejectReport, path: str | Path) -> dict[str, Any]:
    """Write the rejects file and its counts; return the counts.

    ``path`` (JSONL) gets one object per stored row: ``{"source", "line", "reason", "row", "kept"}`` (``line`` is
    null when unknown; ``kept`` is true for noted rows that stayed in the data). ``<path>.counts.json`` (e.g.
    ``rejects.jsonl.counts.json``) gets ``{"counts", "kept", "total", "rows_written", "rows_capped"}``:
    ``counts`` and ``kept`` by reason are exact even when ``rows`` was capped by ``data.max_reject_rows``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in rejects.rows:
            fh.write(json.dumps({"source": r["source"], "line": r.get("line"), "reason": r["reason"],
                                 "row": r["row"], "kept": bool(r.get("kept", False))}, ensure_ascii=False) + "\n")
    n_noted = rejects.total + sum(rejects.kept.values())
    summary = {
        "counts": dict(sorted(rejects.counts.items())),
        "kept": dict(sorted(rejects.kept.items())),
        "total": rejects.total,
        "rows_written": len(rejects.rows),
        "rows_capped": n_noted - len(rejects.rows),
    }
    path.with_name(path.name + ".counts.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ------------------------------------------------------------------------------------------------ raw files


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: file not found ({what})")
    return path


def read_delimited(path: Path, sep: str, n_fields: int, *, encoding: str, rejects: RejectReport,
                   reason: str) -> pd.DataFrame:
    """Split a delimited text file into ``n_fields`` string columns (0..n-1) plus the private columns.

    Lines with another field count are rejected under ``reason``; blank lines are skipped. A non-empty file
    where no line has the right field count is the wrong format: :class:`DataError`.
    """
    try:
        text = path.read_bytes().decode(encoding)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    # Split on "\n" only (str.splitlines would also break on \x0b, \x0c, \x1c.. inside a field); drop a CR of CRLF.
    lines = pd.Series([ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")], dtype=object)
    line_no = np.arange(1, len(lines) + 1)
    keep = lines.str.strip() != ""
    lines, line_no = lines[keep], line_no[keep.to_numpy()]
    parts = lines.str.split(sep, regex=False)
    good = (parts.str.len() == n_fields).to_numpy()
    raw = pd.DataFrame({SOURCE: path.name, LINE: line_no, RAW: lines.to_numpy()})
    if len(lines) and not good.any():
        raise DataError(f"{path}: wrong format, no line has {n_fields} fields separated by {sep!r}")
    note(rejects, raw[~good], reason)
    table = pd.DataFrame(parts[good].tolist(), columns=range(n_fields), dtype=object)
    if not len(table):
        table = pd.DataFrame({i: pd.Series(dtype=object) for i in range(n_fields)})
    for col in _PRIVATE:
        table[col] = raw.loc[good, col].to_numpy()
    return table


def note(rejects: RejectReport, rows: pd.DataFrame, reason: str, *, kept: bool = False) -> None:
    """Count every row of ``rows`` under ``reason``; store them (up to the report's cap) for the rejects file."""
    if not len(rows):
        return
    if not kept and SOURCE in rows:  # per file: what the live reject threshold judges (coea/round_data.py)
        for src, n in rows[SOURCE].value_counts(sort=False).items():
            per = rejects.by_source.setdefault(str(src), {})
            per[reason] = per.get(reason, 0) + int(n)
    cap = rejects.max_rows_per_reason
    tally = rejects.kept if kept else rejects.counts
    room = len(rows) if not cap else max(0, min(len(rows), cap - tally.get(reason, 0)))
    shown = rows.iloc[:room]
    data_cols = [c for c in shown.columns if c not in _PRIVATE]
    texts = shown[RAW].tolist() if RAW in shown else [
        json.dumps(rec, ensure_ascii=False, default=str) for rec in shown[data_cols].to_dict("records")]
    sources = shown[SOURCE].tolist() if SOURCE in shown else ["?"] * room
    lines = shown[LINE].tolist() if LINE in shown else [None] * room
    for src, line, text in zip(sources, lines, texts):
        rejects.add(src, reason, text, line=line, kept=kept)
    if len(rows) > room:
        tally[reason] = tally.get(reason, 0) + len(rows) - room


# ---------------------------------------------------------------------------------------------- value parsing


def clean_ids(values: pd.Series, pattern: str | None = None) -> pd.Series:
    """Ids as stripped strings; integers and integer-valued floats become their decimal form.

    Anything else (null, empty, non-integer float, bool, a container, no match of ``pattern``) becomes NA.
    """
    values = values.reset_index(drop=True)
    if pd.api.types.is_bool_dtype(values.dtype):
        return pd.Series(pd.NA, index=values.index, dtype=object)
    if pd.api.types.is_integer_dtype(values.dtype):
        out = values.astype("Int64").astype(object).map(lambda v: None if v is pd.NA else str(v))
    elif pd.api.types.is_float_dtype(values.dtype):
        ok = np.isfinite(values) & (values == np.round(values))
        out = pd.Series(None, index=values.index, dtype=object)
        out[ok] = values[ok].astype("int64").astype(str).to_numpy()
    elif pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        out = clean_strings(values)
    else:
        out = values.map(_one_id)
    out = out.astype(object)
    out[out.isna()] = None
    if pattern is not None:
        ok = out.notna()
        ok[ok] = out[ok].astype(str).str.fullmatch(pattern).to_numpy()
        out[~ok] = None
    return out


def clean_strings(values: pd.Series) -> pd.Series:
    """Stripped strings as an object Series; null, empty and non-string values become None."""
    values = values.reset_index(drop=True)
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        values = values.map(lambda v: v if isinstance(v, str) else None)
    out = values.astype(object)
    isna = out.isna().to_numpy()
    out[~isna] = out[~isna].astype(str).str.strip().to_numpy()
    out[isna | (out == "").to_numpy()] = None
    return out


def _one_id(v: Any) -> str | None:
    if isinstance(v, str):
        v = v.strip()
        return v or None
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v).is_integer():
        return str(int(v))
    return None


def to_numbers(values: pd.Series) -> pd.Series:
    """Float64 values; anything unparseable becomes NaN (check against ``values.isna()`` to tell them apart)."""
    values = values.reset_index(drop=True)
    if pd.api.types.is_bool_dtype(values.dtype):
        return pd.Series(np.nan, index=values.index)
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.astype("float64")
    try:
        return pd.to_numeric(values, errors="coerce").astype("float64")
    except (TypeError, ValueError):  # containers and other oddities mixed in an object column
        return values.map(_one_number).astype("float64")


def _one_number(v: Any) -> float:
    if isinstance(v, (bool, np.bool_)):
        return np.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return np.nan


def to_seconds(values: pd.Series) -> pd.Series:
    """Unix seconds as float64 (NaN when unparseable, negative, non-integer or not finite)."""
    values = values.reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        if getattr(values.dt, "tz", None) is not None:
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
        secs = (values - pd.Timestamp(0)) / pd.Timedelta(seconds=1)
        return secs.astype("float64").where(lambda s: s >= 0)
    secs = to_numbers(values)
    ok = np.isfinite(secs) & (secs >= 0) & (secs == np.round(secs))
    return secs.where(ok)


# ------------------------------------------------------------------------------------------------ cleaning


def clean_interactions(events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None, *,
                       rejects: RejectReport | None = None, click_min_rating: float | None = None,
                       id_pattern: str | None = None, source: str = "events") -> Interactions:
    """The one cleaning path every source goes through (docs/data.md, "Cleaning").

    Args:
        events: raw events in file order: ``user_id``, ``item_id``, ``timestamp``, ``event`` (unless
            ``click_min_rating`` is given), ``rating`` (optional); values of any type. Optional private columns
            ``_source``, ``_line``, ``_raw`` locate a row for the rejects file.
        items: raw items: ``item_id``, ``category``, ``title`` (optional), same private columns.
        users: raw users: ``user_id`` then one column per sparse feature; ``None`` = no users table.
        rejects: report to add to (it may already hold rows a reader rejected); a new one when ``None``.
        click_min_rating: rating-derived events (MovieLens): ``rating >= click_min_rating`` -> ``"click"``,
            lower -> ``"exposure"``; a row without a parseable rating is malformed.
        id_pattern: a regex every id must fully match (MovieLens: digits); ``None`` accepts any non-empty id.
        source: name used for rows without a ``_source`` column.

    Returns:
        Interactions with events sorted by (timestamp, user_id, item_id), items and users sorted by id, every
        event user in ``users`` (missing features ``"unk"``).
    """
    rejects = rejects if rejects is not None else RejectReport()
    items_out = _clean_items(items, rejects, id_pattern, source)
    users_in = _clean_users(users, rejects, id_pattern, source)

    ev = events.reset_index(drop=True)
    if SOURCE not in ev:
        ev = ev.assign(**{SOURCE: source, LINE: np.arange(1, len(ev) + 1)})
    uid = clean_ids(ev["user_id"], id_pattern)
    iid = clean_ids(ev["item_id"], id_pattern)
    ts = to_seconds(ev["timestamp"])
    has_rating = "rating" in ev
    rating = to_numbers(ev["rating"]) if has_rating else pd.Series(np.nan, index=ev.index)
    bad_rating = rating.isna() & ev["rating"].notna().to_numpy() if has_rating else pd.Series(False, index=ev.index)
    if click_min_rating is not None:
        bad_rating |= rating.isna()
        kind = pd.Series(np.where(rating >= click_min_rating, "click", "exposure"), dtype=object)
    else:
        kind = clean_strings(ev["event"])

    malformed = (uid.isna() | iid.isna() | ts.isna() | bad_rating).to_numpy()
    note(rejects, ev[malformed], "malformed_row")
    bad_kind = ~malformed & ~kind.isin(EVENT_KINDS).to_numpy()
    note(rejects, ev[bad_kind], "bad_event_kind")
    alive = ~malformed & ~bad_kind
    unknown = alive & ~iid.isin(set(items_out["item_id"])).to_numpy()
    note(rejects, ev[unknown], "unknown_item")
    alive &= ~unknown

    out = pd.DataFrame({"user_id": uid, "item_id": iid, "timestamp": ts, "event": kind, "rating": rating})[alive]
    dup = out.duplicated(keep="first").to_numpy()
    note(rejects, ev[alive][dup], "duplicate_event")
    keep_rows = ev[alive][~dup]
    out = out[~dup]
    out["timestamp"] = out["timestamp"].astype("int64")
    # Out-of-order: a timestamp before the previous line of the same user (file order). Kept (events are sorted
    # below, and MovieLens files are not chronological per user), but noted so a broken log is visible.
    prev = out.groupby("user_id", sort=False)["timestamp"].shift(1)
    backwards = (out["timestamp"] < prev).to_numpy()
    note(rejects, keep_rows[backwards], "out_of_order_timestamp", kept=True)

    for col in ("user_id", "item_id", "event"):
        out[col] = out[col].astype(str)
    out = out.sort_values(["timestamp", "user_id", "item_id"], kind="mergesort").reset_index(drop=True)
    out = out[list(EVENT_COLUMNS)]

    users_out = _complete_users(users_in, out["user_id"])
    categories = sorted(set(items_out["category"]))
    return Interactions(events=out, items=items_out, users=users_out, categories=categories, rejects=rejects)


def _clean_items(items: pd.DataFrame, rejects: RejectReport, id_pattern: str | None, source: str) -> pd.DataFrame:
    it = items.reset_index(drop=True)
    if SOURCE not in it:
        it = it.assign(**{SOURCE: source, LINE: np.arange(1, len(it) + 1)})
    iid = clean_ids(it["item_id"], id_pattern)
    bad = iid.isna().to_numpy()
    note(rejects, it[bad], "malformed_item")
    dup = ~bad & iid.duplicated(keep="first").to_numpy() & iid.notna().to_numpy()
    note(rejects, it[dup], "duplicate_item")
    category = clean_strings(it["category"])
    no_cat = ~bad & ~dup & (category.isna() | (category == "")).to_numpy()
    note(rejects, it[no_cat], "item_without_category")
    keep = ~bad & ~dup & ~no_cat
    title = it["title"] if "title" in it else pd.Series("", index=it.index)
    title = title.map(lambda v: v if isinstance(v, str) else "")
    out = pd.DataFrame({"item_id": iid[keep].astype(str), "category": category[keep].astype(str),
                        "title": title[keep].astype(str)})
    return out.sort_values("item_id", kind="mergesort").reset_index(drop=True)[list(ITEM_COLUMNS)]


def _clean_users(users: pd.DataFrame | None, rejects: RejectReport, id_pattern: str | None,
                 source: str) -> pd.DataFrame:
    if users is None:
        return pd.DataFrame({"user_id": pd.Series(dtype=str)})
    us = users.reset_index(drop=True)
    if SOURCE not in us:
        us = us.assign(**{SOURCE: source, LINE: np.arange(1, len(us) + 1)})
    uid = clean_ids(us["user_id"], id_pattern)
    bad = uid.isna().to_numpy()
    note(rejects, us[bad], "malformed_user")
    dup = ~bad & uid.duplicated(keep="first").to_numpy()
    note(rejects, us[dup], "duplicate_user")
    keep = ~bad & ~dup
    out = pd.DataFrame({"user_id": uid[keep].astype(str)})
    for col in us.columns:
        if col == "user_id" or col in _PRIVATE:
            continue
        vals = us.loc[keep, col].map(_feature_value)
        out[str(col)] = vals.to_numpy()
    return out


def _feature_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return UNKNOWN_FEATURE
    text = str(v).strip()
    return text or UNKNOWN_FEATURE


def _complete_users(users: pd.DataFrame, event_users: pd.Series) -> pd.DataFrame:
    """Add a row of ``"unk"`` features for every event user missing from the users table; sort by id."""
    missing = sorted(set(event_users.unique()) - set(users["user_id"]))
    if missing:
        extra = pd.DataFrame({c: (missing if c == "user_id" else UNKNOWN_FEATURE) for c in users.columns})
        users = pd.concat([users, extra], ignore_index=True)
    users = users.astype(str)
    return users.sort_values("user_id", kind="mergesort").reset_index(drop=True)

"""What serving reads, and the operator's hand on it: promotion, rollback, the users table and ``coea lookup``.

    promote            the KV pointer, then the ``current`` link (the cycle's last step; docs/cycle.md)
    rollback           serve an earlier, still-kept round again (``coea rollback``)
    write_users_table  user -> (CSID, C'_short) at the round's cut-off, which ``lookup`` reads
    lookup             the KV value serving would return for a user, or for a CSID and recent categories

The KV tables themselves are storage/ (docs/storage.md); loops/cycle.py calls :func:`promote` and
:func:`write_users_table`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from coea.errors import WorkdirError
from coea.rounds import latest_dsie_dir
from coea.workdir import fault_point, read_json, write_json
from loops.retention import rollback_offers
from loops.state import promote_link, read_state, workdir_lock, write_state
from storage.keys import DEFAULT_CSID, canonical_recent
from storage.kv import KVReader, KVStore

if TYPE_CHECKING:  # an annotation only: coea.inference loads torch, and `coea lookup` needs none
    from coea.inference import Key

log = logging.getLogger("coea.cycle")  # the cycle's logger, as before the move


def promote(workdir: Path, k: int) -> None:
    """KV pointer first (what serving reads), then the ``current`` link (state.json follows in the caller).

    Old rounds expire afterwards, whole, in :func:`loops.retention.apply_retention`.
    """
    store = KVStore(workdir)
    fault_point("promote:before_kv")
    store.promote(k)
    fault_point("promote:before_link")
    promote_link(workdir, k)


def rollback(workdir: Path, to: int) -> int | None:
    """Serve round ``to`` again (KV version, ``current`` link, state.json); returns the round served before.

    Only what :func:`loops.retention.rollback_offers` lists: a kept round that was promoted once. The next cycle
    then starts its models from round ``to``. Raises :class:`coea.errors.WorkdirError` (exit 2) otherwise.
    """
    with workdir_lock(workdir):
        state = read_state(workdir)
        before = state["promoted_round"]
        if to == before:
            raise WorkdirError(f"round {to} is already the promoted round")
        offers = rollback_offers(workdir)
        if to not in offers:
            entry = next((r for r in state["rounds"] if r["round"] == to), None)
            why = ("it does not exist" if entry is None else "it was expired by retention (cycle.keep_rounds)"
                   if entry.get("expired") else "round 0 has no KV table" if to == 0 else
                   f"it was never promoted (status {entry['status']})" if entry["status"] != "promoted" else
                   "its files are not all on disk")
            raise WorkdirError(f"cannot roll back to round {to}: {why}; rounds on offer: "
                               f"{', '.join(map(str, offers)) or 'none'}")
        KVStore(workdir).rollback(to)
        promote_link(workdir, to)
        state = read_state(workdir)
        state["promoted_round"] = to
        state.setdefault("rollbacks", []).append({"from": before, "to": to,
                                                  "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        write_state(workdir, state)
    log.warning("rollback: round %d is served again (was round %s); the next cycle starts from it", to, before)
    return before


LOOKUP_FOUND = ("found", "empty")  # statuses of a key that is in the promoted table; the others are unknown_*


def lookup(workdir: Path, *, user: str | None = None, csid: str | None = None,
           recent: list[str] | None = None) -> dict[str, Any]:
    """What serving returns for a user or a (CSID, recent categories) pair, and whether the promoted round knows it.

    Returns:
        ``{"round", "status", "csid", "recent", "categories", "fallback"}`` (plus ``"user"`` for a user lookup
        and ``"unknown"``, the unknown names, for ``unknown_category``). ``categories`` is what serving returns
        (``[{"category", "score"}]``, C_align order; for a user of a round run with ``novelty.exclude: history``,
        without the categories the user clicked); ``status`` says what that answer means:

        - ``found``: the key is in the promoted KV table and has aligned categories.
        - ``empty``: the key is in the table and its C_align is empty -- a real answer: no candidate scored above
          ``relevance.tau_align``.
        - ``unknown_user``: the user is not in the promoted round's users table; ``categories`` is what serving
          falls back to for such a user (the default CSID with no recent categories; ``fallback`` is true).
        - ``unknown_csid``: not a group of the promoted round (nor ``default``).
        - ``unknown_category``: a recent category is not in the promoted round's catalogue (``unknown`` lists them).
        - ``unknown_key``: CSID and categories are known, but no user had that combination at the round's cut-off,
          so the table has no entry and serving gets nothing.

        ``coea lookup`` exits 0 for found / empty and 6 for every unknown_* status (README, Commands).
    """
    current = Path(workdir) / "current"
    answer: dict[str, Any] = {}
    status = None
    clicked: set[str] = set()
    if user is not None:
        answer["user"] = str(user)
        known = _user_state(workdir, user)
        csid, recent, clicked = known if known is not None else (DEFAULT_CSID, [], set())
        status = None if known is not None else "unknown_user"
    assert csid is not None
    recent = list(canonical_recent(recent or []))
    if status is None and user is None:
        if csid not in _known_csids(current):
            status = "unknown_csid"
        else:
            catalogue = _catalogue(current)
            unknown = [c for c in recent if catalogue is not None and c not in catalogue]
            if unknown:
                status, answer["unknown"] = "unknown_category", unknown
    with KVReader(workdir) as reader:
        value = reader.get_value(csid, recent)
        categories = [] if value is None else value.as_list()
        if clicked:  # novelty.exclude: history: the user's clicked categories leave the key's list
            categories = [e for e in categories if e["category"] not in clicked]
        if status is None:
            status = "unknown_key" if value is None else ("found" if categories else "empty")
        return {"round": reader.round, "status": status, **answer, "csid": csid, "recent": recent,
                "fallback": csid == DEFAULT_CSID, "categories": categories}


def write_users_table(rp: Path, keys_by_user: dict[str, Key], categories: list[str] | None = None,
                      history: dict[str, set[str]] | None = None) -> None:
    """``rounds/NNN/users.parquet``: user_id, csid, recent (C'_short) -- what ``coea lookup --user`` reads.

    With ``history`` (``novelty.exclude: history``) also each user's clicked categories, which ``coea lookup
    --user`` then leaves out of the key's list.

    With ``categories`` also ``rounds/NNN/categories.json``, the round's catalogue, which ``coea lookup`` uses to
    tell a made-up category from a real one.
    """
    table = pd.DataFrame({"user_id": list(keys_by_user), "csid": [k.csid for k in keys_by_user.values()],
                          "recent": [list(k.recent) for k in keys_by_user.values()]})
    if history is not None:
        table["history"] = [sorted(history.get(u, ())) for u in keys_by_user]
    tmp = rp / ".users.parquet.tmp"
    table.to_parquet(tmp, index=False)
    tmp.replace(rp / "users.parquet")
    if categories is not None:
        write_json(rp / "categories.json", sorted(categories))


def _user_state(workdir: Path, user: str) -> tuple[str, list[str], set[str]] | None:
    """A user's CSID, C'_short and clicked categories (empty unless ``novelty.exclude: history`` wrote them) at the
    promoted round; None for a user the round does not know."""
    path = Path(workdir) / "current" / "users.parquet"
    if path.exists():
        users = pd.read_parquet(path)
        hit = users[users["user_id"] == str(user)]
        if len(hit):
            row = hit.iloc[0]
            history = set(row["history"]) if "history" in hit.columns else set()
            return str(row["csid"]), list(row["recent"]), history
    return None


def _known_csids(current: Path) -> set[str]:
    """Groups of the promoted round: its users' CSIDs, the DSIE groups it used, and the default CSID."""
    known = {DEFAULT_CSID}
    if (current / "users.parquet").exists():
        known |= set(pd.read_parquet(current / "users.parquet", columns=["csid"])["csid"].astype(str))
    try:
        k = int(current.resolve().name)
        groups = latest_dsie_dir(current.parent, k) / "groups.jsonl"
        known |= {json.loads(line)["csid"] for line in groups.read_text().splitlines() if line.strip()}
    except (ValueError, FileNotFoundError, KeyError):
        pass
    return known


def _catalogue(current: Path) -> set[str] | None:
    """The promoted round's categories (``categories.json``; older rounds: every name in its candidates table)."""
    if (current / "categories.json").exists():
        return set(read_json(current / "categories.json"))
    path = current / "candidates" / "candidates.parquet"
    if not path.exists():
        return None
    table = pd.read_parquet(path, columns=["recent", "candidates"])
    return {c for col in ("recent", "candidates") for cats in table[col] for c in cats}

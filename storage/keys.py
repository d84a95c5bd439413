"""The KV key contract shared by the cycle, serving and the Spark jobs.

A key is a deterministic function of exactly what the Novelty prompt used: the group CSID and the canonical
form of the user's recent category set C'_short.

Canonicalisation of C'_short: de-duplicate, drop empty names, sort by Unicode code point (Python ``sorted`` on
``str``). The set is order-free on purpose: two users of one group with the same recent categories in a different
order share one key, so inference cost scales with keys, not users.

Byte layout (readable from any language)::

    key   = UTF-8( csid + "|" + short_hash )
    csid  = code indices joined by "-", e.g. "3-14-0-7"; cold-start users use DEFAULT_CSID
    short_hash = hex( BLAKE2b-64( UTF-8( "\\x1f".join(canonical C'_short) ) ) )   # 16 lowercase hex chars
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

DEFAULT_CSID = "default"
CATEGORY_SEPARATOR = "\x1f"


def csid_to_str(codes: Sequence[int]) -> str:
    return "-".join(str(int(c)) for c in codes)


def canonical_recent(categories: Iterable[str]) -> tuple[str, ...]:
    """Canonical C'_short: unique, non-empty category names in code-point order."""
    return tuple(sorted({c for c in categories if c}))


def short_hash(categories: Iterable[str]) -> str:
    canon = canonical_recent(categories)
    return hashlib.blake2b(CATEGORY_SEPARATOR.join(canon).encode("utf-8"), digest_size=8).hexdigest()


def kv_key(csid: str, categories: Iterable[str]) -> bytes:
    """The KV key for a group CSID string and a user's recent categories (any order, duplicates allowed)."""
    if "|" in csid:
        raise ValueError(f"csid must not contain '|': {csid!r}")
    return f"{csid}|{short_hash(categories)}".encode("utf-8")

"""CSID assignment: RQ-VAE code tuples -> at most M_N groups (DSIE, paper Sec. 3.2).

Every distinct code tuple (i_1..i_l) starts as its own group. Groups are then merged, one at a time, while
there are more than ``max_groups`` of them or some group has fewer than ``min_group_size`` members:

    1. pick the smallest group (ties: the lexicographically smallest code tuple);
    2. merge it into the group whose centroid (mean u_long of its members) has the highest cosine similarity
       with the picked group's centroid (ties: the smaller code tuple);
    3. the merged group keeps the *surviving* group's code tuple; its centroid becomes the size-weighted mean.

The rule is a pure function of (indices, embeddings), so it is deterministic. Its result, :class:`CsidMap`,
records where every seen code tuple ended up, and assigns new users at later rounds with the same map:

    * a seen code tuple -> its surviving group;
    * an unseen tuple, given the user's u_long -> the surviving group whose centroid is most cosine-similar;
    * an unseen tuple without u_long -> the surviving group sharing the longest code prefix (ties: the larger
      group, then the smaller tuple).

CSID strings are the code indices joined by "-" (identical to ``storage.keys.csid_to_str``; re-implemented here
because quantizer/ imports nothing from the rest of the project).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Code = tuple[int, ...]


def format_csid(codes: Code) -> str:
    """Canonical CSID string of a code tuple, e.g. (3, 14, 0) -> "3-14-0" (same as storage.keys.csid_to_str)."""
    return "-".join(str(int(c)) for c in codes)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class CsidMap:
    """Result of :func:`build_csid_map`.

    Attributes:
        survivors: (G,) code tuples of the surviving groups, sorted.
        sizes: (G,) members per surviving group at build time.
        centroids: (G, d) mean u_long of each surviving group's members.
        merge: every code tuple seen at build time -> the surviving code tuple it was merged into (or itself).
    """

    survivors: list[Code]
    sizes: list[int]
    centroids: np.ndarray
    merge: dict[Code, Code]

    @property
    def csids(self) -> list[str]:
        return [format_csid(s) for s in self.survivors]

    def assign(self, indices: np.ndarray, embeddings: np.ndarray | None = None) -> list[str]:
        """CSID strings for code rows ``indices`` (B, l); ``embeddings`` (B, d) u_long resolve unseen tuples."""
        indices = np.asarray(indices)
        out: list[str] = []
        unit_centroids = _unit(self.centroids)  # (G, d)
        for row, codes in enumerate(map(tuple, indices.tolist())):
            if codes in self.merge:
                out.append(format_csid(self.merge[codes]))
            elif embeddings is not None:
                sims = unit_centroids @ _unit(np.asarray(embeddings[row], dtype=np.float64))  # (G,)
                out.append(format_csid(self.survivors[int(np.argmax(sims))]))
            else:
                out.append(format_csid(self._nearest_by_prefix(codes)))
        return out

    def _nearest_by_prefix(self, codes: Code) -> Code:
        def prefix(s: Code) -> int:
            n = 0
            while n < min(len(s), len(codes)) and s[n] == codes[n]:
                n += 1
            return n

        order = sorted(range(len(self.survivors)),
                       key=lambda g: (-prefix(self.survivors[g]), -self.sizes[g], self.survivors[g]))
        return self.survivors[order[0]]

    def to_json(self) -> dict:
        return {
            "survivors": [list(s) for s in self.survivors],
            "sizes": list(self.sizes),
            "centroids": self.centroids.tolist(),
            "merge": [[list(k), list(v)] for k, v in sorted(self.merge.items())],
        }

    @classmethod
    def from_json(cls, obj: dict) -> CsidMap:
        return cls(
            survivors=[tuple(s) for s in obj["survivors"]],
            sizes=list(obj["sizes"]),
            centroids=np.asarray(obj["centroids"], dtype=np.float64),
            merge={tuple(k): tuple(v) for k, v in obj["merge"]},
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | Path) -> CsidMap:
        return cls.from_json(json.loads(Path(path).read_text()))


def build_csid_map(
    indices: np.ndarray, embeddings: np.ndarray, *, max_groups: int, min_group_size: int = 1
) -> CsidMap:
    """Group users by code tuple and merge groups down to ``max_groups`` (rule in the module docstring).

    Args:
        indices: (N, l) RQ-VAE code indices of the (warm) users.
        embeddings: (N, d) their u_long.
        max_groups: M_N, the cap on surviving groups (>= 1).
        min_group_size: groups smaller than this are merged too (unless only one group is left).
    """
    indices = np.asarray(indices)
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if len(indices) == 0:
        return CsidMap([], [], np.zeros((0, embeddings.shape[-1])), {})
    codes = [tuple(int(c) for c in row) for row in indices.tolist()]
    keys = sorted(set(codes))
    pos = {k: g for g, k in enumerate(keys)}
    member = np.array([pos[c] for c in codes])  # (N,)
    sizes = np.bincount(member, minlength=len(keys)).astype(np.int64)  # (G,)
    sums = np.zeros((len(keys), embeddings.shape[1]))
    np.add.at(sums, member, embeddings)  # (G, d)
    alive = np.ones(len(keys), dtype=bool)
    parent = list(range(len(keys)))

    def too_many_or_small() -> bool:
        n_alive = int(alive.sum())
        return n_alive > 1 and (n_alive > max_groups or int(sizes[alive].min()) < min_group_size)

    while too_many_or_small():
        live = np.flatnonzero(alive)  # sorted, so ties pick the smaller code tuple
        src = int(live[np.argmin(sizes[live])])
        others = live[live != src]
        unit = _unit(sums[others] / sizes[others, None])  # (G-1, d)
        sims = unit @ _unit(sums[src] / sizes[src])  # (G-1,)
        dst = int(others[np.argmax(sims)])
        sums[dst] += sums[src]
        sizes[dst] += sizes[src]
        alive[src] = False
        parent[src] = dst

    def root(g: int) -> int:
        while parent[g] != g:
            g = parent[g]
        return g

    live = np.flatnonzero(alive)
    return CsidMap(
        survivors=[keys[g] for g in live],
        sizes=[int(sizes[g]) for g in live],
        centroids=sums[live] / sizes[live, None],
        merge={keys[g]: keys[root(g)] for g in range(len(keys))},
    )

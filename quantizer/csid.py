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

import heapq
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

    The rule is sequential (each merge moves one centroid), and this runs it exactly, in O(G log G) for the
    picking plus a pruned nearest-centroid search per merge, instead of rescanning every group per merge
    (O(G^2 d), minutes at the ~10^5 code tuples a 64^4 codebook realises on a million users; docs/scale.md):

    * the smallest group comes from a heap of (size, index) with lazy deletion: a group's entry is stale once it
      died or grew, and a grown group is pushed again, so the pop order is the rule's (smallest, then smaller
      tuple: indices are in sorted tuple order);
    * the most similar centroid is searched cell by cell. Cells are a few rounds of spherical k-means over the
      starting unit centroids (they only affect speed). A cell keeps its centre ``c`` and an upper bound ``theta``
      on the angle between ``c`` and any member's unit centroid (raised when a member's centroid moves), so no
      member of a cell at angle ``alpha`` from the query can have a cosine above ``cos(max(0, alpha - theta))``.
      The cell with the highest bound is scanned first; then every cell whose bound (plus a margin far above
      rounding error) reaches the best cosine found is scanned in one product, so the argmax, ties to the smaller
      tuple included, is the one a full scan finds. The cosines themselves are computed as the full scan computes them.

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
    uniq, member = np.unique(indices.astype(np.int64).reshape(len(indices), -1), axis=0, return_inverse=True)
    keys: list[Code] = [tuple(row) for row in uniq.tolist()]  # sorted, as sorted(set(tuples))
    member = member.reshape(-1)  # (N,)
    n_groups = len(keys)
    sizes = np.bincount(member, minlength=n_groups).astype(np.int64)  # (G,)
    sums = np.zeros((n_groups, embeddings.shape[1]))
    np.add.at(sums, member, embeddings)  # (G, d) in row order, as before
    alive = np.ones(n_groups, dtype=bool)
    n_alive = n_groups
    merged: list[tuple[int, int]] = []  # (src, dst) in merge order

    heap = [(int(sizes[g]), g) for g in range(n_groups)]
    heapq.heapify(heap)

    def smallest() -> int:
        while True:
            size, g = heap[0]
            if alive[g] and size == sizes[g]:
                return g
            heapq.heappop(heap)

    search: _CentroidSearch | None = None
    while n_alive > 1:
        src = smallest()
        if not (n_alive > max_groups or int(sizes[src]) < min_group_size):
            break
        if search is None:
            search = _CentroidSearch(sums, sizes)
        heapq.heappop(heap)
        alive[src] = False
        search.remove(src)
        dst = search.nearest(src)
        sums[dst] += sums[src]
        sizes[dst] += sizes[src]
        search.moved(dst)
        heapq.heappush(heap, (int(sizes[dst]), dst))
        merged.append((src, dst))
        n_alive -= 1

    root = np.arange(n_groups)
    for src, dst in reversed(merged):  # dst's own fate is already resolved: it can only have died later
        root[src] = root[dst]
    live = np.flatnonzero(alive)
    return CsidMap(
        survivors=[keys[g] for g in live],
        sizes=[int(sizes[g]) for g in live],
        centroids=sums[live] / sizes[live, None],
        merge={keys[g]: keys[root[g]] for g in range(n_groups)},
    )


_BOUND_MARGIN = 1e-6  # cosine slack of the cell bounds: far above the ~1e-8 error of arccos near 1


class _CentroidSearch:
    """Exact most-cosine-similar alive centroid, pruned by cells (see :func:`build_csid_map`).

    ``unit[g]`` is ``_unit(sums[g] / sizes[g])``, refreshed when g's centroid moves, so a cosine is computed from
    the same unit vectors a full rescan computes.
    """

    def __init__(self, sums: np.ndarray, sizes: np.ndarray, *, iterations: int = 4) -> None:
        self.sums, self.sizes = sums, sizes
        self.unit = _unit(sums / sizes[:, None])  # (G, d)
        n = len(sizes)
        k = max(1, min(n, int(np.sqrt(n))))
        centers = self.unit[np.linspace(0, n - 1, k).astype(np.int64)]  # (K, d) deterministic start
        for _ in range(iterations):  # spherical k-means: cells only steer the search, any cells are exact
            cell = np.argmax(self.unit @ centers.T, axis=1) if n * k <= 4e6 else self._assign_blocked(centers)
            sums_k = np.zeros_like(centers)
            np.add.at(sums_k, cell, self.unit)
            empty = ~sums_k.any(axis=1)
            centers = np.where(empty[:, None], centers, _unit(sums_k))
        self.cell = np.argmax(self.unit @ centers.T, axis=1) if n * k <= 4e6 else self._assign_blocked(centers)
        self.centers = centers
        order = np.argsort(self.cell, kind="stable")
        bounds = np.searchsorted(self.cell[order], np.arange(k + 1))
        self.members = [order[bounds[c]:bounds[c + 1]] for c in range(k)]  # ascending group index per cell
        self.dead = np.zeros(k, dtype=np.int64)
        self.alive = np.ones(n, dtype=bool)
        cos = np.clip(np.einsum("gd,gd->g", self.unit, centers[self.cell]), -1.0, 1.0)
        self.theta = np.zeros(k)
        np.maximum.at(self.theta, self.cell, np.arccos(cos))

    def _assign_blocked(self, centers: np.ndarray, block: int = 4_096) -> np.ndarray:
        return np.concatenate([np.argmax(self.unit[a:a + block] @ centers.T, axis=1)
                               for a in range(0, len(self.unit), block)])

    def remove(self, g: int) -> None:
        self.alive[g] = False
        c = self.cell[g]
        self.dead[c] += 1
        if self.dead[c] * 2 > len(self.members[c]):  # compact: keep scans proportional to the alive members
            self.members[c] = self.members[c][self.alive[self.members[c]]]
            self.dead[c] = 0

    def moved(self, g: int) -> None:
        self.unit[g] = _unit(self.sums[g:g + 1] / self.sizes[g:g + 1, None])[0]
        c = self.cell[g]
        angle = float(np.arccos(np.clip(self.unit[g] @ self.centers[c], -1.0, 1.0)))
        self.theta[c] = max(self.theta[c], angle)

    def nearest(self, src: int) -> int:
        """The alive group (src already removed) whose unit centroid has the highest cosine with src's;
        ties: the smaller index."""
        q = _unit(self.sums[src] / self.sizes[src])  # (d,) as the full scan computes it
        alpha = np.arccos(np.clip(self.centers @ q, -1.0, 1.0))  # (K,)
        bound = np.cos(np.maximum(0.0, alpha - self.theta)) + _BOUND_MARGIN  # (K,)
        best_sim, best = -np.inf, -1
        # the cell with the highest bound first; then, in one product, every other cell whose bound reaches the
        # best cosine found (a cell below it cannot hold a better or an equal, smaller-index, group)
        order = np.argsort(-bound, kind="stable")
        for c in order:
            rows = self._alive_members(int(c))
            if len(rows):
                best_sim, best = self._best(rows, q)
                first = int(c)
                break
        cand = np.flatnonzero(bound >= best_sim)
        cand = cand[cand != first]
        if len(cand):
            rows = np.concatenate([self.members[int(c)] for c in cand])
            rows = rows[self.alive[rows]]
            if len(rows):
                sim, g = self._best(np.sort(rows), q)
                if sim > best_sim or (sim == best_sim and g < best):
                    best_sim, best = sim, g
        return best

    def _alive_members(self, c: int) -> np.ndarray:
        rows = self.members[c]
        return rows[self.alive[rows]]

    def _best(self, rows: np.ndarray, q: np.ndarray) -> tuple[float, int]:
        """(highest cosine, its group) among ``rows`` (ascending), ties to the first (the smaller index)."""
        sims = self.unit[rows] @ q  # (n,)
        j = int(np.argmax(sims))
        return float(sims[j]), int(rows[j])

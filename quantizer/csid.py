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


MERGE_SEARCHES = ("exact", "prefix")


def build_csid_map(
    indices: np.ndarray, embeddings: np.ndarray, *, max_groups: int, min_group_size: int = 1,
    search: str = "exact",
) -> CsidMap:
    """Group users by code tuple and merge groups down to ``max_groups`` (rule in the module docstring).

    ``search`` says where step 2 looks for the most similar group:

    * ``"exact"`` (the paper's rule): every alive group. Theta(G^2 d), see below.
    * ``"prefix"``: the alive groups that share the longest code prefix with the picked group (the deepest
      RQ-VAE cell that still holds another group: siblings first, then cousins, ..., every group only when no
      other group shares even the first code). The RQ-VAE's own codes act as the index, like an IVF coarse
      quantiser: residual levels refine, so a tuple's most similar groups are mostly its siblings. Each search
      costs the size of one cell, at most ``codebook_size`` groups at the deepest level, so the rule is about
      linear in G; it is an approximation of "exact" (agreement measured in docs/scale.md).

    The rule is sequential and its nearest-centroid step is a search over every alive group, so it is
    Theta(G^2 d) in the number G of realised code tuples whatever the implementation (in the standardised u_long
    space no index prunes: a cell index with exact angular bounds still scanned ~90% of the centroids per merge
    on real DSIE output; docs/scale.md). What this implementation removes is the rest of the old loop's cost:

    * the smallest group comes from a heap of (size, index) with lazy deletion (a group's entry is stale once it
      died or grew; a grown group is pushed again), so the pop order is the rule's (smallest, then the smaller
      tuple: indices are in sorted tuple order) at O(log G) instead of a scan;
    * unit centroids are cached and refreshed only for the group that grew, instead of recomputing all of them;
    * cosines are computed for a batch of upcoming picks at once (one matrix product, BLAS-3), and a cached
      column is corrected for the centroids that moved since it was computed, so each pick sees exactly the
      current centroids. The argmax, ties to the smaller tuple, is the full scan's.

    Args:
        indices: (N, l) RQ-VAE code indices of the (warm) users.
        embeddings: (N, d) their u_long.
        max_groups: M_N, the cap on surviving groups (>= 1).
        min_group_size: groups smaller than this are merged too (unless only one group is left).
    """
    if search not in MERGE_SEARCHES:
        raise ValueError(f"search must be one of {MERGE_SEARCHES}, got {search!r}")
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

    def valid(entry: tuple[int, int]) -> bool:
        return bool(alive[entry[1]]) and entry[0] == sizes[entry[1]]

    def smallest() -> int:
        while not valid(heap[0]):
            heapq.heappop(heap)
        return heap[0][1]

    columns: _CosineColumns | None = None
    cells: _PrefixCells | None = None
    while n_alive > 1:
        src = smallest()
        if not (n_alive > max_groups or int(sizes[src]) < min_group_size):
            break
        if search == "prefix":
            if cells is None:
                cells = _PrefixCells(uniq, sums, sizes)
            index = cells
        else:
            if columns is None:
                columns = _CosineColumns(sums, sizes)
            if not columns.has(src):  # cosines for src and the next picks in line, in one product
                upcoming = [e[1] for e in heapq.nsmallest(columns.batch * 2, heap) if valid(e)][: columns.batch]
                columns.compute([src] + [g for g in upcoming if g != src], alive)
            index = columns
        heapq.heappop(heap)
        alive[src] = False
        dst = index.nearest(src, alive)
        sums[dst] += sums[src]
        sizes[dst] += sizes[src]
        index.moved(dst)
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


class _CosineColumns:
    """Cosines of picked groups' centroids with every alive group's, computed a batch at a time and kept exact.

    ``unit[g]`` is ``_unit(sums[g] / sizes[g])`` (as a full rescan computes it), refreshed when g grows. A batch
    is one product over the groups alive at that time (``rows``, ascending, so the first maximum is the smaller
    tuple); a row computed at merge ``t`` is corrected, when used, for every group that moved after ``t``.
    """

    def __init__(self, sums: np.ndarray, sizes: np.ndarray) -> None:
        self.sums, self.sizes = sums, sizes
        self.unit = _unit(sums / sizes[:, None])  # (G, d)
        self.batch = int(min(256, max(8, 2 ** 25 // max(len(sizes), 1))))  # rows per product (<= 256 MiB)
        self.rows = np.arange(len(sizes))  # (G_t,) the alive groups of the last product
        self.block = np.zeros((0, 0))  # (B, G_t)
        self.slot: dict[int, int] = {}  # group -> its row of block
        self.t = 0  # merges done when block was computed
        self.moves: list[int] = []  # the group that moved at each merge
        self.last_move: dict[int, int] = {}  # group -> the merge at which it last moved

    def has(self, g: int) -> bool:
        return g in self.slot and self.last_move.get(g, -1) < self.t

    def compute(self, groups: list[int], alive: np.ndarray) -> None:
        self.rows = np.flatnonzero(alive)
        self.block = self.unit[groups] @ self.unit[self.rows].T  # (B, G_t), rows contiguous
        self.slot = {g: j for j, g in enumerate(groups)}
        self.t = len(self.moves)

    def nearest(self, src: int, alive: np.ndarray) -> int:
        """The alive group (src already dead) with the highest cosine to src's centroid; ties: smaller index."""
        sims = np.where(alive[self.rows], self.block[self.slot.pop(src)], -np.inf)  # (G_t,)
        moved = sorted({g for g in self.moves[self.t:] if alive[g]})
        if moved:
            q = _unit(self.sums[src] / self.sizes[src])  # (d,) src's centroid has not moved since t
            sims[np.searchsorted(self.rows, moved)] = self.unit[moved] @ q  # moved groups were alive at t
        return int(self.rows[int(np.argmax(sims))])

    def moved(self, g: int) -> None:
        self.unit[g] = _unit(self.sums[g:g + 1] / self.sizes[g:g + 1, None])[0]
        self.last_move[g] = len(self.moves)
        self.moves.append(g)


class _PrefixCells:
    """The alive groups of every code-prefix cell, for ``search="prefix"``.

    ``cells[L]`` maps a length-L prefix (L = l-1 .. 1) to the set of alive groups whose tuple starts with it. A
    search for a dead ``src`` takes the deepest cell of src's prefixes that still holds a group, and the highest
    cosine there (ties: the smaller index, i.e. the smaller tuple); with no cell left, every alive group. Each
    level-L cell triggers at most one fall-through to level L-1 (the last group of a cell merges away), so the
    scans are dominated by the deepest cells (at most ``codebook_size`` groups each).
    """

    def __init__(self, uniq: np.ndarray, sums: np.ndarray, sizes: np.ndarray) -> None:
        self.sums, self.sizes = sums, sizes
        self.unit = _unit(sums / sizes[:, None])  # (G, d)
        self.prefixes: list[list[tuple[int, ...]]] = []  # per level L (deepest first): each group's prefix
        self.cells: list[dict[tuple[int, ...], set[int]]] = []
        rows = [tuple(r) for r in uniq.tolist()]
        for depth in range(uniq.shape[1] - 1, 0, -1):
            pref = [r[:depth] for r in rows]
            cell: dict[tuple[int, ...], set[int]] = {}
            for g, p in enumerate(pref):
                cell.setdefault(p, set()).add(g)
            self.prefixes.append(pref)
            self.cells.append(cell)

    def nearest(self, src: int, alive: np.ndarray) -> int:
        """The most cosine-similar alive group in src's deepest non-empty prefix cell (src already dead)."""
        cands = None
        for pref, cell in zip(self.prefixes, self.cells):
            members = cell[pref[src]]
            members.discard(src)  # src leaves every cell it was in
            if cands is None and members:
                cands = np.fromiter(sorted(members), dtype=np.int64, count=len(members))
        if cands is None:  # no group shares even the first code: every alive group
            cands = np.flatnonzero(alive)
        return int(cands[int(np.argmax(self.unit[cands] @ self.unit[src]))])

    def moved(self, g: int) -> None:
        self.unit[g] = _unit(self.sums[g:g + 1] / self.sizes[g:g + 1, None])[0]

"""``days.jsonl``, the simulation's per-day log: written by the run (coea/simulate/run.py), read by the report.

Below both, so that the report reads what the run writes without importing the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

DAYS_FILE = "days.jsonl"


def jsonable(v):
    """``v`` as plain JSON: numpy scalars to int / float, a non-finite float to null."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if not np.isfinite(v) else float(v)
    return v


class DaysLog:
    """``days.jsonl``: appended after every (seed, arm, day); on resume de-duplicated and trimmed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: dropped, its day is redone
                continue
        return out

    def clean(self, done: dict[tuple[int, str, int], int]) -> None:
        """Keep the last row per (seed, arm, train seed, day), only for days a run finished (``done``: last day
        index per (seed, arm, train seed))."""
        keep: dict[tuple, dict] = {}
        for r in self.rows():
            t = r.get("train_seed", 0)
            key = (r["seed"], r["arm"], t, r["day"])
            if r["day"] <= done.get((r["seed"], r["arm"], t), -1):
                keep[key] = r
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as f:
            for key in sorted(keep):
                f.write(json.dumps(keep[key]) + "\n")
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({k: jsonable(v) for k, v in row.items()}) + "\n")
            f.flush()
            os.fsync(f.fileno())

"""What ``coea judge`` judges: users, their histories and each method's top-K categories (docs/judge.md, "Inputs").

- :func:`workdir_lists`: a workdir's promoted round, as serving answers it -- a seeded sample of the round's users
  (``current/users.parquet``), each user's clicked categories before the round's cut-off (the history), and the
  categories ``coea lookup`` returns for them (method ``coea-round-K``).
- :func:`evaluation_lists`: a ``coea evaluate`` output directory -- every method's final list
  (``recommendations.jsonl``, one evaluation seed) and each user's training history (``ground_truth.jsonl``).
- :func:`label_cases`: a calibration labels file (user, item, 1-5 label, the user's history).

Malformed lines are never dropped silently: they are counted, kept in the result's ``rejected`` list (with the
reason) and written by the caller to ``rejected.jsonl``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from coea.data.sequences import click_categories_by_user
from coea.evaluate.split import workdir_config
from coea.rounds import load_data, read_state, round_cutoff
from loops.serving import lookup


@dataclass
class JudgeInput:
    """Lists to judge.

    Attributes:
        lists: method -> user -> ranked categories (top K).
        history: user -> the history the judge sees (oldest first).
        source: what was read (``workdir`` / ``evaluation`` / ``labels``) and where.
        labels: (user, item) -> the person's 1-5 label (calibration only).
        rejected: malformed input rows with the reason (``{"line", "reason", "text"}``).
        notes: anything worth a line in the report (e.g. users served nothing).
    """

    lists: dict[str, dict[str, list[str]]]
    history: dict[str, list[str]]
    source: dict[str, Any]
    labels: dict[tuple[str, str], int] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def sample_users(users: list[str], max_users: int | None, seed: int) -> list[str]:
    """A seeded sample of ``max_users`` users (all when None), sorted: the same seed judges the same users."""
    users = sorted(set(users))
    if max_users is None or max_users >= len(users):
        return users
    pick = np.random.default_rng(seed).permutation(len(users))[:max_users]
    return sorted(users[i] for i in pick)


def recent_history(categories: list[str], length: int) -> list[str]:
    """The last ``length`` distinct categories of a chronological click list, oldest first."""
    seen: list[str] = []
    for c in reversed(categories):
        if c not in seen:
            seen.append(c)
        if len(seen) == length:
            break
    return seen[::-1]


def workdir_lists(workdir: str | Path, *, k: int, max_users: int | None, seed: int,
                  history_len: int) -> JudgeInput:
    """The promoted round's served categories for a sample of its users (module docstring)."""
    workdir = Path(workdir)
    round_k = read_state(workdir).get("promoted_round") if (workdir / "state.json").exists() else None
    if round_k is None:
        raise FileNotFoundError(f"{workdir}: no promoted round (run `coea cycle` first)")
    users_path = workdir / "current" / "users.parquet"
    if not users_path.exists():
        raise FileNotFoundError(f"{users_path}: the promoted round has no users table")
    cfg = workdir_config(workdir, round_k)
    clicks = click_categories_by_user(load_data(cfg), end=round_cutoff(workdir, round_k))
    users = sample_users(pd.read_parquet(users_path, columns=["user_id"])["user_id"].astype(str).tolist(),
                         max_users, seed)
    method = f"coea-round-{round_k}"
    lists: dict[str, list[str]] = {}
    empty = 0
    for u in users:
        served = [c["category"] for c in lookup(workdir, user=u)["categories"]][:k]
        empty += not served
        lists[u] = served
    history = {u: recent_history([c for _, c in clicks.get(u, [])], history_len) for u in users}
    notes = [f"{empty} of {len(users)} users are served no category (an empty C_align): precision and nDCG 0"] \
        if empty else []
    return JudgeInput({method: lists}, history, {"kind": "workdir", "path": str(workdir), "round": round_k},
                      notes=notes)


def _jsonl(path: Path, rejected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            rejected.append({"file": path.name, "line": n, "reason": f"not JSON ({exc.msg})", "text": line[:200]})
            continue
        if not isinstance(row, dict):
            rejected.append({"file": path.name, "line": n, "reason": "not an object", "text": line[:200]})
            continue
        rows.append({**row, "_line": n})
    return rows


def evaluation_lists(out_dir: str | Path, *, k: int, max_users: int | None, seed: int, history_len: int,
                     methods: list[str] | None = None, eval_seed: int | None = None) -> JudgeInput:
    """Every method's lists from a ``coea evaluate`` output directory (module docstring).

    The history is the user's training categories (``hist``), the recent ones (``recent``) last, at most
    ``history_len`` of them. ``eval_seed`` picks the evaluation seed (default: the first in meta.json).
    """
    out_dir = Path(out_dir)
    for name in ("recommendations.jsonl", "ground_truth.jsonl", "meta.json"):
        if not (out_dir / name).exists():
            raise FileNotFoundError(f"{out_dir / name}: not a `coea evaluate` output directory")
    meta = json.loads((out_dir / "meta.json").read_text())
    seeds = [int(s) for s in meta.get("seeds", [0])]
    eval_seed = seeds[0] if eval_seed is None else eval_seed
    if eval_seed not in seeds:
        raise ValueError(f"--eval-seed {eval_seed}: the evaluation ran seeds {seeds}")
    rejected: list[dict[str, Any]] = []
    history: dict[str, list[str]] = {}
    for row in _jsonl(out_dir / "ground_truth.jsonl", rejected):
        if not isinstance(row.get("user"), str) or not isinstance(row.get("hist"), list):
            rejected.append({"file": "ground_truth.jsonl", "line": row["_line"], "reason": "no user / hist"})
            continue
        recent = [c for c in row.get("recent", []) if c in row["hist"]]
        ordered = [c for c in row["hist"] if c not in recent] + recent
        history[row["user"]] = ordered[-history_len:] if history_len else []
    users = set(sample_users(list(history), max_users, seed))
    lists: dict[str, dict[str, list[str]]] = {}
    for row in _jsonl(out_dir / "recommendations.jsonl", rejected):
        if not isinstance(row.get("ranked"), list) or "method" not in row or "user" not in row:
            rejected.append({"file": "recommendations.jsonl", "line": row["_line"], "reason": "no user/method/ranked"})
            continue
        if row.get("seed", eval_seed) != eval_seed or row["user"] not in users:
            continue
        if methods and row["method"] not in methods:
            continue
        lists.setdefault(str(row["method"]), {})[row["user"]] = [str(c) for c in row["ranked"][:k]]
    missing = sorted(set(methods or []) - set(lists))
    if missing:
        raise ValueError(f"--methods: {', '.join(missing)} not in {out_dir / 'recommendations.jsonl'} "
                         f"(there: {', '.join(sorted(lists)) or 'none'})")
    return JudgeInput(lists, {u: history[u] for u in sorted(users)},
                      {"kind": "evaluation", "path": str(out_dir), "eval_seed": eval_seed}, rejected=rejected)


def label_cases(path: str | Path, *, max_users: int | None, seed: int, history_len: int) -> JudgeInput:
    """Calibration rows: ``{"user", "item", "label": 1-5, "history": [...]}`` per line (docs/judge.md).

    A user's history may be given on any one of its rows (the first one given wins). Rows with a label outside
    1-5, no user or no item are rejected with the reason; a user with no history anywhere is judged with none.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--labels {path}: file not found")
    rejected: list[dict[str, Any]] = []
    rows = _jsonl(path, rejected)
    history: dict[str, list[str]] = {}
    labels: dict[tuple[str, str], int] = {}
    for row in rows:
        label = row.get("label")
        if not row.get("user") or not row.get("item") or isinstance(label, bool) or label not in (1, 2, 3, 4, 5):
            rejected.append({"file": path.name, "line": row["_line"], "reason": "need user, item, label 1-5",
                             "text": json.dumps({k: v for k, v in row.items() if k != "_line"})[:200]})
            continue
        user, item = str(row["user"]), str(row["item"])
        if isinstance(row.get("history"), list) and user not in history:
            history[user] = [str(c) for c in row["history"]][-history_len:]
        labels[(user, item)] = int(label)
    users = set(sample_users([u for u, _ in labels], max_users, seed))
    labels = {key: v for key, v in labels.items() if key[0] in users}
    lists: dict[str, list[str]] = {}
    for u, item in labels:
        lists.setdefault(u, []).append(item)
    return JudgeInput({"labels": lists}, {u: history.get(u, []) for u in sorted(users)},
                      {"kind": "labels", "path": str(path)}, labels=labels, rejected=rejected)

"""The evaluation protocol's data side: the split, each phase's state and truth, the training view, the leak check.

    split    every event of the data set is train, valid or test (``eval.split``):
             user    per user, the last ``eval.test_clicks`` clicks (and every event from the first of them on) are
                     test, the ``eval.valid_clicks`` clicks before them valid, the rest train; a user needs
                     ``test_clicks + valid_clicks + min_train_clicks`` clicks (BERT4Rec-style, Sun et al. 2019)
             global  one timeline cut: train < t_valid <= valid < t_test <= test (evaluation v1)
    phase    "valid" (state = train events, truth = valid clicks) chooses hyper-parameters; "test" (state = train +
             valid events, truth = test clicks) is reported. A method sees only the phase's state.
    view     the train events alone as a Parquet data set (docs/data.md layout): CoEA workdirs that the evaluation
             can read are trained on it (``coea evaluate --write-train-view DIR``)
    leak     a workdir's models are refused when the events they trained on include one of the phase's truth
             events (or, for "valid", any later one)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from coea.config import Config, ConfigError, load_config
from coea.data.loaders import load_interactions
from coea.data.parquet import write_parquet
from coea.data.sequences import build_sequences
from coea.metrics import long_tail_categories
from coea.rounds import cutoff, round_cutoff
from coea.workdir import write_json

log = logging.getLogger("coea.evaluate")

TRAIN, VALID, TEST = 0, 1, 2
PHASES = {"valid": VALID, "test": TEST}
VIEW_META = "split.json"


class LeakError(ConfigError):
    """A workdir's models saw events the evaluation uses as truth; one line naming the workdir (the CLI exits 2:
    the workdir does not fit this evaluation's split)."""


@dataclasses.dataclass
class Split:
    """Which part every event is in, aligned with ``inter.events`` rows.

    part: (E,) int8, TRAIN / VALID / TEST. users: phase name -> users evaluated in that phase (sorted).
    info: the split's settings and figures (meta.json).
    """

    kind: str
    part: np.ndarray
    users: dict[str, list[str]]
    info: dict[str, Any]


def make_split(cfg: Config, inter) -> Split:
    """The split ``eval.split`` names (module docstring)."""
    ev = cfg.eval
    if ev.split == "user":
        return user_split(inter, test_clicks=ev.test_clicks, valid_clicks=ev.valid_clicks,
                          min_train_clicks=ev.min_train_clicks)
    return global_split(inter, valid_fraction=ev.valid_fraction or cfg.data.bootstrap_fraction,
                        test_fraction=ev.test_fraction)


def user_split(inter, *, test_clicks: int, valid_clicks: int, min_train_clicks: int) -> Split:
    """Per-user chronological split: each eligible user's last clicks are test, the ones before them valid.

    Order within a user is the data set's event order (timestamp, then item id). An event belongs to the test part
    when fewer than ``test_clicks`` of the user's clicks come after it -- the last ``test_clicks`` clicks and every
    exposure from the first of them on -- and to the valid part when fewer than ``test_clicks + valid_clicks`` do.
    Users with fewer than ``test_clicks + valid_clicks + min_train_clicks`` clicks are not evaluated; all of their
    events are train (they still shape popularity, groups and the LLMs).

    Example: one user's events c1 c2 e3 c4 c5 c6 (c = click, e = exposure), test 1, valid 2, min train 1.
    Clicks after each event: 4 3 3 2 1 0 -> c6 is test (0 < 1), c4 and c5 valid (< 3), c1 c2 e3 train.
    """
    events = inter.events
    users = events["user_id"].astype(str).to_numpy()
    click = (events["event"] == "click").to_numpy()
    frame = pd.DataFrame({"u": users, "c": click.astype(np.int64)})
    after = frame.iloc[::-1].groupby("u", sort=False)["c"].cumsum().iloc[::-1].to_numpy() - frame["c"].to_numpy()
    n_clicks = frame.groupby("u", sort=False)["c"].transform("sum").to_numpy()
    need = test_clicks + valid_clicks + min_train_clicks
    eligible = n_clicks >= need
    part = np.full(len(events), TRAIN, dtype=np.int8)
    part[eligible & (after < test_clicks + valid_clicks)] = VALID
    part[eligible & (after < test_clicks)] = TEST
    chosen = sorted(set(users[eligible]))
    info = {"kind": "user", "test_clicks": test_clicks, "valid_clicks": valid_clicks,
            "min_train_clicks": min_train_clicks, "users": len(chosen),
            "users_with_clicks": int(len(set(users[click]))),
            "events": {name: int((part == p).sum()) for name, p in (("train", TRAIN), ("valid", VALID),
                                                                    ("test", TEST))}}
    return Split("user", part, {"valid": chosen, "test": chosen}, info)


def global_split(inter, *, valid_fraction: float, test_fraction: float) -> Split:
    """One timeline cut: t_valid = start + valid_fraction * span, t_test = start + test_fraction * span.

    Phase users: a click before the phase's window and one in it.
    """
    ts = inter.events["timestamp"].to_numpy()
    start, end = int(ts.min()), int(ts.max()) + 1
    t_valid = start + int(valid_fraction * (end - start))
    t_test = start + int(test_fraction * (end - start))
    if not start < t_valid < t_test < end:
        raise ValueError(f"eval: need 0 < valid_fraction ({valid_fraction}) < test_fraction ({test_fraction}) < 1")
    part = np.where(ts < t_valid, TRAIN, np.where(ts < t_test, VALID, TEST)).astype(np.int8)
    users = inter.events["user_id"].astype(str).to_numpy()
    click = (inter.events["event"] == "click").to_numpy()
    phase_users = {}
    for name, p in PHASES.items():
        before = set(users[click & (part < p)])
        inside = set(users[click & (part == p)])
        phase_users[name] = sorted(before & inside)
    info = {"kind": "global", "start": start, "valid": t_valid, "test": t_test, "end": end,
            "users": len(phase_users["test"]), "valid_users": len(phase_users["valid"]),
            "events": {name: int((part == p).sum()) for name, p in (("train", TRAIN), ("valid", VALID),
                                                                    ("test", TEST))}}
    return Split("global", part, phase_users, info)


def subset(inter, mask: np.ndarray):
    """``inter`` with only the events where ``mask`` is true (items, users and categories unchanged)."""
    return dataclasses.replace(inter, events=inter.events[mask].reset_index(drop=True))


# ------------------------------------------------------------------------------------------------------ phases


@dataclasses.dataclass
class Phase:
    """One evaluation phase: what every method may see (``state``) and the truth of its users.

    users / pref / hist / recent / clicked are parallel lists (one entry per evaluated user):
        pref     C_u^pref: categories of the user's I_long in the state (tau-filtered, Eq. 3)
        hist     C_u^hist (A.4): every category the user clicked in the state
        recent   categories of the user's last ``eval.hist_k`` (0 = data.short_k) clicks: the NCP-recent variant
        clicked  categories the user clicks in the phase's part
    tail: bottom ``eval.tail_fraction`` of categories by clicks in the state. clicks / shows: clicks and
    exposures + clicks per category in the state (what the bandits learn from).
    """

    name: str
    state: Any
    seqs: Any
    users: list[str]
    pref: list[set[str]]
    hist: list[set[str]]
    recent: list[set[str]]
    clicked: list[set[str]]
    tail: set[str]
    categories: list[str]
    clicks: dict[str, int]
    shows: dict[str, int]
    user_clicks: list[Counter]
    user_shows: list[Counter]

    def rows(self) -> list[dict[str, set[str]]]:
        return [{"pref": p, "hist": h, "clicked": c, "recent": r}
                for p, h, c, r in zip(self.pref, self.hist, self.clicked, self.recent)]


def build_phase(cfg: Config, inter, split: Split, name: str, max_users: int = 0) -> Phase:
    """State, truth and category counts of phase ``name`` ("valid" or "test")."""
    p = PHASES[name]
    state = subset(inter, split.part < p)
    truth_events = inter.events[(split.part == p) & (inter.events["event"] == "click").to_numpy()]
    seqs = build_sequences(state, cfg.data)
    hist_k = cfg.eval.hist_k or cfg.data.short_k
    recent_seqs = seqs if hist_k == cfg.data.short_k else build_sequences(
        state, dataclasses.replace(cfg.data, short_k=hist_k))
    users = list(split.users[name])
    if max_users and len(users) > max_users:
        rng = np.random.default_rng(cfg.run.seed)
        users = sorted(rng.choice(users, max_users, replace=False).tolist())
    row = {u: i for i, u in enumerate(seqs.user_ids)}
    category_of = inter.item_category
    item_cat = {j + 1: category_of.get(v) for j, v in enumerate(seqs.item_vocab)}

    ev = state.events
    cats = ev["item_id"].astype(str).map(category_of)
    is_click = (ev["event"] == "click").to_numpy()
    uid = ev["user_id"].astype(str).to_numpy()
    clicks = Counter(cats[is_click])
    shows = Counter(cats)
    per_click: dict[str, Counter] = {}
    per_show: dict[str, Counter] = {}
    for u, c, k in zip(uid, cats, is_click):
        per_show.setdefault(u, Counter())[c] += 1
        if k:
            per_click.setdefault(u, Counter())[c] += 1
    truth_cats = truth_events["item_id"].astype(str).map(category_of)
    clicked: dict[str, set[str]] = {}
    for u, c in zip(truth_events["user_id"].astype(str), truth_cats):
        clicked.setdefault(u, set()).add(c)
    counts = {c: int(clicks.get(c, 0)) for c in inter.categories}
    return Phase(
        name=name, state=state, seqs=seqs, users=users,
        pref=[{item_cat[j] for j in seqs.long_items[row[u]]} if u in row else set() for u in users],
        hist=[set(per_click.get(u, {})) for u in users],
        recent=[set(recent_seqs.c_short[row[u]]) if u in row else set() for u in users],
        clicked=[clicked.get(u, set()) for u in users],
        tail=long_tail_categories(counts, cfg.eval.tail_fraction),
        categories=list(inter.categories), clicks=counts,
        shows={c: int(shows.get(c, 0)) for c in inter.categories},
        user_clicks=[per_click.get(u, Counter()) for u in users],
        user_shows=[per_show.get(u, Counter()) for u in users],
    )


# ------------------------------------------------------------------------------------------------- training view


def split_fingerprint(inter, split: Split) -> str:
    """A hash of which events are held out (valid or test): two views agree iff they hold out the same events."""
    held = inter.events.loc[split.part > TRAIN, ["user_id", "item_id", "timestamp", "event"]].astype(str)
    blob = "\n".join(held.agg("|".join, axis=1)).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_train_view(cfg: Config, out: str | Path) -> dict[str, Any]:
    """The split's train events as a Parquet data set (``events.parquet``, ``items.parquet``, ``users.parquet``).

    Train CoEA on it (``--set data.source=parquet --set data.path=OUT``) to get a workdir whose models never saw a
    valid or test event; ``OUT/split.json`` records the split and its fingerprint.
    """
    inter = load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)
    split = make_split(cfg, inter)
    out = Path(out)
    write_parquet(subset(inter, split.part == TRAIN), out)
    meta = {"split": split.info, "fingerprint": split_fingerprint(inter, split), "source": cfg.data.source,
            "path": cfg.data.path, "train_events": int((split.part == TRAIN).sum())}
    write_json(out / VIEW_META, meta)
    log.info("evaluate: wrote the train view (%d of %d events) to %s", meta["train_events"], len(inter.events), out)
    return {"out": str(out), **meta}


# ------------------------------------------------------------------------------------------------------ leak check


def workdir_config(workdir: Path, k: int | None = None) -> Config:
    """The config a workdir's round ``k`` ran with (its data stage's config.yaml, else the newest saved one).

    Its ``eval`` section is dropped (the evaluation's own applies), so a workdir trained before an evaluation
    setting was added or renamed still loads.
    """
    import tempfile

    import yaml

    workdir = Path(workdir)
    path = workdir / "rounds" / f"{k:03d}" / "data" / "config.yaml" if k is not None else None
    if path is None or not path.exists():
        saved = sorted(workdir.glob("rounds/*/*/config.yaml"))
        if not saved:
            raise FileNotFoundError(f"{workdir}: no saved config.yaml under rounds/ (not a coea workdir?)")
        path = saved[-1]
    raw = yaml.safe_load(path.read_text()) or {}
    raw.pop("eval", None)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(raw, f)
    try:
        return load_config(f.name)
    finally:
        Path(f.name).unlink()


def assert_unseen(inter, split: Split, phase: str, workdir: Path, k: int, cache: dict | None = None) -> dict[str, Any]:
    """Refuse (:class:`LeakError`) a workdir whose round-``k`` models trained on a held-out event of ``phase``.

    Round k's models trained on the events of the workdir's own data set with timestamp < its cut-off (the end of
    its data window, ``rounds/NNN/data/window.json``; else :func:`coea.rounds.cutoff`). Held out for "test": the
    test part; for "valid": the valid and test parts. Events are matched on (user, item, timestamp, kind).

    Returns:
        ``{"workdir", "round", "cutoff", "seen_events", "held_out_seen": 0}``.
    """
    wcfg = workdir_config(workdir, k)
    key = (wcfg.data.source, wcfg.data.path, json.dumps(dataclasses.asdict(wcfg.synthetic), sort_keys=True),
           wcfg.run.seed if wcfg.data.source == "synthetic" else 0)
    cache = {} if cache is None else cache
    if key not in cache:
        cache[key] = load_interactions(wcfg.data, wcfg.synthetic, wcfg.run.seed)
    winter = cache[key]
    cut = round_cutoff(workdir, k)
    if cut is None:
        cut = cutoff(wcfg, winter, k)
    cols = ["user_id", "item_id", "timestamp", "event"]
    seen = winter.events.loc[winter.events["timestamp"] < cut, cols]
    held = inter.events.loc[split.part >= PHASES[phase], cols]
    both = seen.astype(str).merge(held.astype(str).drop_duplicates(), on=cols, how="inner")
    if len(both):
        when = pd.Timestamp(int(cut), unit="s").strftime("%Y-%m-%d %H:%M")
        raise LeakError(
            f"eval: {workdir} round {k} (cut-off {when} UTC) trained on {len(both)} of the {phase} phase's held-out "
            f"events; train the workdir on the split's training view (coea evaluate --write-train-view DIR, "
            f"docs/evaluation.md) or roll back to a round whose cut-off precedes them")
    return {"workdir": str(workdir), "round": k, "cutoff": int(cut), "seen_events": int(len(seen)),
            "held_out_seen": 0}

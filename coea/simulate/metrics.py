"""Per-day metrics of one arm (docs/simulate.md, "Metrics"). Pure functions over hand-checkable arrays, and
:class:`ArmMetrics`, the running state that turns each day's outcome into one ``days.jsonl`` row.

Notation: day d, users u, categories c; a click event e has user u_e, category c_e, price v_e, day d_e.
F_u(c) is the first day u clicked c (warm-up included; never = none).

    discovery_rate(d)   = |{(u, l) : latent interest l of u discovered by the end of d}| / (U * L)
                          the serendipity ground truth
    GTV(d)              = sum over day d's clicks of v_e                          (App. A.4 Eq. 22 analogue:
                          a click is an order of the item at its price)
    NIEP_W(d)           = |{e : d_e in [d-W+1, d], F_u(c_e) >= d-W+1}| / |{e : d_e in [d-W+1, d]}|
                          W = 7: 7D-NIEP (Eq. 23), over items: the share of the window's clicked items whose
                          category the user had never clicked before the window (new-interest clicks)
    slot CTR(d)         = clicks on served slots / served slots
    novel slot CTR(d)   = the same over served slots whose category the user never clicked before d
    tail coverage(d)    = |{c in T : c served to someone on d}| / |T|, T = the bottom ``tail_fraction`` of
                          categories by the popularity prior (the same set for every arm)
    a4/<metric>         = coea.metrics.evaluate_users on the day's served lists (users with a session that day):
                          pref = categories clicked >= ``pref_min_clicks`` times before d, hist = clicked before
                          d, clicked = clicked on d, tail = T, K in (1, slots)
"""

from __future__ import annotations

from collections import deque

import numpy as np

from coea.config import SimConfig
from coea.metrics import evaluate_users
from coea.simulate.world import DayOutcome, WorldState

NEVER = -1


# ------------------------------------------------------------------------------------------ pure functions


def discovery_rate(discovered: np.ndarray) -> float:
    """Share of all users' latent interests discovered: mean of the (U, L) bool matrix (NaN when L = 0).

    >>> discovery_rate(np.array([[True, False], [False, False]]))
    0.25
    """
    return float(discovered.mean()) if discovered.size else float("nan")


def gtv(price: np.ndarray, click: np.ndarray) -> float:
    """Value of the clicked items: sum of ``price`` where ``click`` (Eq. 22 analogue).

    >>> gtv(np.array([10.0, 5.0, 2.0]), np.array([True, False, True]))
    12.0
    """
    return float(np.asarray(price, float)[np.asarray(click, bool)].sum())


def niep(first_click_day: np.ndarray, users: np.ndarray, categories: np.ndarray, window_start: int) -> float:
    """NIEP over a window's clicked items: the share whose category the user first clicked inside the window.

    Args:
        first_click_day: (U, C) first day each user clicked each category (:data:`NEVER` = never); must already
            include the window's clicks.
        users, categories: (N,) the window's click events.
        window_start: first day of the window (d - W + 1).

    Returns:
        In [0, 1]; NaN without clicks. E.g. first days [[0, 5]], clicks (0, 0), (0, 1), (0, 1), window from day 3:
        category 1 is new in the window, category 0 is not -> 2 / 3.
    """
    if not len(users):
        return float("nan")
    first = first_click_day[np.asarray(users), np.asarray(categories)]
    return float((first >= window_start).mean())


def ctr(click: np.ndarray) -> float:
    """Mean of ``click`` (NaN when empty)."""
    return float(np.mean(click)) if len(click) else float("nan")


def tail_coverage(served: np.ndarray, tail: np.ndarray) -> float:
    """Share of the long-tail categories served to at least one user.

    Args:
        served: (U, K) served category ids (any shape of ids works).
        tail: (C,) bool, the long tail.

    >>> tail_coverage(np.array([[0, 1], [1, 3]]), np.array([False, True, True, True]))
    0.6666666666666666
    """
    if not tail.any():
        return float("nan")
    hit = np.zeros(len(tail), dtype=bool)
    hit[np.unique(np.asarray(served).ravel())] = True
    return float((hit & tail).sum() / tail.sum())


# ----------------------------------------------------------------------------------------------------- state


class ArmMetrics:
    """Running metric state of one arm: first click days, click counts, the NIEP window, cumulative sums.

    :meth:`absorb` takes an organic-only (warm-up) day without a row; :meth:`update` an A/B day and returns its
    row. Both mutate the state; :meth:`state_dict` / :meth:`load_state_dict` make it resumable.
    """

    def __init__(self, cfg: SimConfig, categories: list[str], tail: np.ndarray, latent: np.ndarray,
                 latent_kind: np.ndarray | None = None) -> None:
        """``tail``: (C,) bool long tail; ``latent``: (U, C) bool, the users' latent interests (ground truth,
        for the share of served slots that hit one); ``latent_kind``: (U, L) the kind of each latent interest
        (0 collaborative, 1 knowledge; world v2): with knowledge interests the row also reports
        ``discovery_rate_collab`` and ``discovery_rate_knowledge``."""
        kinds = None if latent_kind is None else np.asarray(latent_kind)
        self.latent_kind = kinds if kinds is not None and (kinds == 1).any() else None  # (U, L) or None
        self.cfg = cfg
        self.categories = list(categories)
        self.tail = np.asarray(tail, dtype=bool)
        self.latent = np.asarray(latent, dtype=bool)
        U, C = cfg.n_users, len(categories)
        self.first_click_day = np.full((U, C), NEVER, dtype=np.int64)  # (U, C)
        self.click_count = np.zeros((U, C), dtype=np.int64)  # (U, C)
        self.window: deque = deque(maxlen=cfg.niep_window)  # per day: (users, categories) of its clicks
        self.cum = {"gtv": 0.0, "clicks": 0, "slot_n": 0, "slot_clicks": 0, "novel_n": 0, "novel_clicks": 0}

    def _add_clicks(self, day: int, out: DayOutcome) -> tuple[np.ndarray, np.ndarray]:
        u, c = out.user[out.click], out.category[out.click]
        first = self.first_click_day[u, c]
        new = first == NEVER
        self.first_click_day[u[new], c[new]] = day  # several clicks of one pair today: all write the same day
        np.add.at(self.click_count, (u, c), 1)
        self.window.append((u.copy(), c.copy()))
        return u, c

    def absorb(self, day: int, out: DayOutcome) -> None:
        """Take in a warm-up day (no row)."""
        self._add_clicks(day, out)

    def update(self, day: int, out: DayOutcome, state: WorldState, served: np.ndarray) -> dict:
        """Take in A/B day ``day`` (its outcome, the world state after it, the (U, K) served ids); its row."""
        cfg = self.cfg
        hist_before = self.first_click_day >= 0  # (U, C) clicked before today
        pref_before = self.click_count >= cfg.pref_min_clicks
        is_slot = out.slot >= 0
        novel_slot = is_slot & ~hist_before[out.user, out.category]
        latent_slot = is_slot & self.latent[out.user, out.category]

        u, c = self._add_clicks(day, out)
        wu = np.concatenate([w[0] for w in self.window])
        wc = np.concatenate([w[1] for w in self.window])
        start = day - cfg.niep_window + 1

        day_gtv = gtv(out.price, out.click)
        self.cum["gtv"] += day_gtv
        self.cum["clicks"] += int(out.click.sum())
        self.cum["slot_n"] += int(is_slot.sum())
        self.cum["slot_clicks"] += int((is_slot & out.click).sum())
        self.cum["novel_n"] += int(novel_slot.sum())
        self.cum["novel_clicks"] += int((novel_slot & out.click).sum())

        row = {
            "discovery_rate": discovery_rate(state.discovered),
            **({} if self.latent_kind is None else {
                "discovery_rate_collab": discovery_rate(state.discovered[self.latent_kind == 0]),
                "discovery_rate_knowledge": discovery_rate(state.discovered[self.latent_kind == 1])}),
            "discoveries": int(len(out.new_discoveries)),
            "gtv": day_gtv,
            "gtv_cum": self.cum["gtv"],
            "clicks": int(out.click.sum()),
            f"niep_{cfg.niep_window}d": niep(self.first_click_day, wu, wc, start),
            "slot_ctr": ctr(out.click[is_slot]),
            "slot_ctr_cum": _ratio(self.cum["slot_clicks"], self.cum["slot_n"]),
            "novel_slot_ctr": ctr(out.click[novel_slot]),
            "novel_slot_ctr_cum": _ratio(self.cum["novel_clicks"], self.cum["novel_n"]),
            "novel_slot_share": ctr(novel_slot[is_slot]),
            "latent_slot_share": ctr(latent_slot[is_slot]),
            "tail_coverage": tail_coverage(served, self.tail),
            "tail_slot_share": ctr(self.tail[out.category[is_slot]]),
        }
        row.update(self.served_list_metrics(served, np.unique(out.user), hist_before, pref_before, u, c))
        return row

    def served_list_metrics(self, served: np.ndarray, active: np.ndarray, hist: np.ndarray, pref: np.ndarray,
                            click_users: np.ndarray, click_cats: np.ndarray) -> dict:
        """App. A.4 metrics of the day's served lists over the users who had a session (prefix ``a4/``)."""
        if not len(active):
            return {}
        names = self.categories
        clicked: dict[int, set[str]] = {}
        for uu, cc in zip(click_users.tolist(), click_cats.tolist()):
            clicked.setdefault(uu, set()).add(names[cc])
        tail = {names[i] for i in np.flatnonzero(self.tail)}
        recs, truth = [], []
        for uu in active.tolist():
            recs.append([names[c] for c in served[uu]])
            truth.append({"pref": {names[i] for i in np.flatnonzero(pref[uu])},
                          "hist": {names[i] for i in np.flatnonzero(hist[uu])},
                          "clicked": clicked.get(uu, set())})
        ks = sorted({1, int(served.shape[1])})
        means = evaluate_users(recs, truth, n_categories=len(names), tail=tail, ks=ks)
        keep = ("C-H@", "C-N@", "NCP@", "NCP-norm@", "CLTP@", "CLTP-norm@")
        return {f"a4/{k}": v for k, v in means.items() if k.startswith(keep)}

    def state_dict(self) -> dict:
        return {"first_click_day": self.first_click_day.copy(), "click_count": self.click_count.copy(),
                "window": [(u.copy(), c.copy()) for u, c in self.window], "cum": dict(self.cum)}

    def load_state_dict(self, d: dict) -> None:
        self.first_click_day = np.asarray(d["first_click_day"], dtype=np.int64).copy()
        self.click_count = np.asarray(d["click_count"], dtype=np.int64).copy()
        self.window = deque([(np.asarray(u), np.asarray(c)) for u, c in d["window"]], maxlen=self.cfg.niep_window)
        self.cum = dict(d["cum"])


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


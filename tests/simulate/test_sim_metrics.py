"""Simulation metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from coea.config import load_config
from coea.simulate.metrics import ArmMetrics, ctr, discovery_rate, gtv, niep, tail_coverage
from coea.simulate.world import DayOutcome, WorldState


def test_pure_functions_by_hand():
    assert discovery_rate(np.array([[True, False], [False, False]])) == 0.25
    assert math.isnan(discovery_rate(np.zeros((3, 0), dtype=bool)))
    assert gtv(np.array([10.0, 5.0, 2.0]), np.array([True, False, True])) == 12.0
    # first click days [[0, 5]]; window from day 3; clicks (0,0), (0,1), (0,1): category 1 is new -> 2/3
    first = np.array([[0, 5]])
    assert niep(first, np.array([0, 0, 0]), np.array([0, 1, 1]), 3) == pytest.approx(2 / 3)
    assert niep(first, np.array([0]), np.array([1]), 6) == 0.0  # first clicked before the window
    assert math.isnan(niep(first, np.array([], int), np.array([], int), 3))
    assert ctr(np.array([True, False, False, True])) == 0.5 and math.isnan(ctr(np.array([])))
    assert tail_coverage(np.array([[0, 1], [1, 3]]), np.array([False, True, True, True])) == pytest.approx(2 / 3)


def _outcome(rows):
    """rows: (user, category, slot, click, price); items = category ids, events in the given order."""
    u, c, s, k, p = (np.array(x) for x in zip(*rows))
    events = pd.DataFrame({"user_id": [f"u{i}" for i in u], "item_id": [f"i{i}" for i in c],
                           "timestamp": np.arange(len(u)), "event": np.where(k, "click", "exposure"),
                           "rating": np.nan, "slot": s})
    return DayOutcome(events, u.astype(np.int64), c.astype(np.int64), c.astype(np.int64), s.astype(np.int64),
                      k.astype(bool), p.astype(float), np.zeros((0, 2), dtype=np.int64))


def test_arm_metrics_one_day_by_hand():
    """2 users, 4 categories (tail = {3}), latent: user 0 -> 2, user 1 -> 3.

    Warm-up day 0: user 0 clicks 0 twice, user 1 clicks 1.
    A/B day 1: served [[0, 2], [3, 1]]; events (u, c, slot, click, price):
        (0, 0, 0, 1, 10) (0, 2, 1, 1, 4) (0, 0, -1, 0, 10)  (1, 3, 0, 0, 7) (1, 1, 1, 1, 5)
    slot CTR = 3/4; novel slots = (0, 2), (1, 3) -> novel CTR 1/2, share 2/4; latent slots (0,2), (1,3) -> 2/4;
    GTV = 10 + 4 + 5 = 19; window [day 1 - 6, 1] holds every click: (0,0)x2 d0, (1,1) d0, (0,0) d1, (0,2) d1,
    (1,1) d1 -> all first clicked inside the window -> NIEP 1.0; with a 1-day window: new ones = (0, 2) -> 1/3.
    tail coverage = 1 (category 3 served). A.4: user 0 pref {0} (2 clicks), hist {0}: list [0, 2] -> C-H@2 1/2,
    NCP@2 = 1/4; user 1 pref {} hist {1}: list [3, 1] -> C-H@2 0, NCP@2 1/4 -> means 1/4 and 1/4.
    """
    for window, want_niep in ((7, 1.0), (1, 1 / 3)):
        cfg = load_config(None, ["sim.n_users=2", "sim.n_categories=4", "sim.core_per_user=1", "sim.latent_per_user=1",
                                 "sim.slots=2", f"sim.niep_window={window}"]).sim
        latent = np.zeros((2, 4), dtype=bool)
        latent[0, 2] = latent[1, 3] = True
        m = ArmMetrics(cfg, ["a", "b", "c", "d"], np.array([False, False, False, True]), latent)
        m.absorb(0, _outcome([(0, 0, -1, 1, 10), (0, 0, -1, 1, 10), (1, 1, -1, 1, 5)]))
        state = WorldState(np.array([[True], [False]]), np.array([[1], [-1]]))
        out = _outcome([(0, 0, 0, 1, 10), (0, 2, 1, 1, 4), (0, 0, -1, 0, 10), (1, 3, 0, 0, 7), (1, 1, 1, 1, 5)])
        row = m.update(1, out, state, np.array([[0, 2], [3, 1]]))
        assert row["slot_ctr"] == 0.75 and row["novel_slot_ctr"] == 0.5 and row["novel_slot_share"] == 0.5
        assert row["latent_slot_share"] == 0.5 and row["gtv"] == 19.0 and row["gtv_cum"] == 19.0
        assert row["discovery_rate"] == 0.5 and row["clicks"] == 3
        assert row[f"niep_{window}d"] == pytest.approx(want_niep)
        assert row["tail_coverage"] == 1.0 and row["tail_slot_share"] == 0.25
        assert row["a4/C-H@2"] == pytest.approx(0.25) and row["a4/NCP@2"] == pytest.approx(0.25)
        # the state round-trips and accumulates
        again = ArmMetrics(cfg, ["a", "b", "c", "d"], np.array([False, False, False, True]), latent)
        again.load_state_dict(m.state_dict())
        row2 = again.update(2, _outcome([(0, 1, 0, 1, 3)]), state, np.array([[1, 2], [0, 2]]))
        assert row2["gtv_cum"] == 22.0 and row2["slot_ctr_cum"] == pytest.approx(4 / 5)

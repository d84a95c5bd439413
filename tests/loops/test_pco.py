"""Eq. 15's sample of D_k, its preference pairs, the Relevance replay buffer and the guardrail's paired rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coea.config import load_config
from coea.relevance import heldout_report
from loops.guardrail import hits_at_1, judge, paired_stats, sign_test_p
from loops.pco import dk_records, preference_pairs, sample_records, sample_size
from loops.relevance_update import replay_buffer


def _clicks(n_users: int, per_user: int, start: int = 0) -> dict[str, list[tuple[int, str]]]:
    return {f"u{i}": [(start + 10 * t, "ABCDEF"[(i + t) % 6]) for t in range(per_user)] for i in range(n_users)}


def test_sample_size_is_floor_of_the_fraction_of_records():
    # D_k: 7 users x 30 clicks in the window + 3 users' carried history of 2 clicks each = 216 records
    clicks = _clicks(7, 30, start=1000)
    history = {f"u{i}": [(10, "A"), (20, "B")] for i in range(3)}
    records = dk_records(clicks, history, {}, sorted(clicks), short_k=2, start=1000)
    assert len(records) == 7 * 30 + 3 * 2
    assert sum(not r.in_window for r in records) == 6
    assert [sample_size(len(records), f) for f in (0.01, 0.05, 0.1, 1.0)] == [2, 10, 21, 216]
    assert sample_size(99, 0.01) == 0  # floor, as in Eq. 15: a D_k of 99 records gives no pair at 1%
    sample = sample_records(records, 0.1, seed=3)
    assert len(sample) == 21 and len({(r.user_id, r.timestamp) for r in sample}) == 21
    assert sample == sample_records(records, 0.1, seed=3)
    assert sample_records([], 0.5, seed=0) == []


def test_a_record_is_a_click_with_the_state_before_it():
    clicks = {"u": [(100, "C"), (110, "D")]}
    history = {"u": [(10, "A"), (20, "B"), (100, "C")]}  # the carried state overlaps the window: no double count
    records = dk_records(clicks, history, {"u": "1-2"}, ["u"], short_k=2, start=100)
    assert [(r.timestamp, r.key.recent, r.in_window) for r in records] == [
        (10, (), False), (20, ("A",), False), (100, ("A", "B"), True), (110, ("B", "C"), True)]
    assert all(r.key.csid == "1-2" for r in records)
    assert {r.user_id for r in dk_records(clicks, None, {}, [], short_k=2, start=100)} == set()  # users only


def test_sample_is_uniform_over_records():
    clicks = {"heavy": [(t, "A") for t in range(900)], "light": [(t, "B") for t in range(100)]}
    records = dk_records(clicks, None, {}, ["heavy", "light"], short_k=2, start=0)
    users = [r.user_id for s in range(20) for r in sample_records(records, 0.05, seed=s)]
    assert 0.85 < users.count("heavy") / len(users) < 0.95  # records, not users, are the unit: ~90% heavy


def test_pairs_take_the_highest_and_lowest_score_of_the_given_table():
    cfg = load_config(None, [])
    records = dk_records({"u": [(1, "A"), (2, "B"), (3, "C")]}, None, {"u": "g"}, ["u"], short_k=2, start=0)
    scored = {("g", ("A", "B")): {"candidates": ["D", "E", "F"], "scores": [0.2, 0.9, 0.1]},
              ("g", ("A",)): {"candidates": ["D", "E"], "scores": [0.5, 0.5]}}  # a tie: nothing to learn
    pairs = preference_pairs(cfg, scored, records, {"g": "portrait"})
    assert len(pairs) == 1
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == (" E", " F")
    assert (pairs[0]["chosen_score"], pairs[0]["rejected_score"]) == (0.9, 0.1)
    assert "portrait" in pairs[0]["prompt"] and "A, B" in pairs[0]["prompt"]
    # another round's scores for the same key give that round's pair
    scored[("g", ("A", "B"))]["scores"] = [0.95, 0.3, 0.4]
    assert preference_pairs(cfg, scored, records, {"g": "portrait"})[0]["chosen"] == " D"


def test_replay_buffer_stays_bounded_and_keeps_some_of_every_recent_round():
    buffer: list[dict] = []
    for k in range(12):
        new = [{"round": k, "i": i} for i in range(300)]
        buffer = replay_buffer(buffer, new, cap=500, seed=k)
        assert len(buffer) == min(500, 300 * (k + 1))
    rounds = {p["round"] for p in buffer}
    assert 11 in rounds and 10 in rounds and len(rounds) >= 3
    assert replay_buffer(buffer, [{"x": 1}], cap=0, seed=0) == []


def test_heldout_report_against_the_trivial_scorers():
    pairs = [  # (pos, neg, both new to the user?, the user's click shares)
        {"pos": "A", "neg": "B", "pos_new": False, "neg_new": False, "pos_share": 0.5, "neg_share": 0.0,
         "user_id": "u", "click": 0},
        {"pos": "C", "neg": "B", "pos_new": True, "neg_new": True, "pos_share": 0.0, "neg_share": 0.0,
         "user_id": "u", "click": 1},
        {"pos": "B", "neg": "A", "pos_new": True, "neg_new": True, "pos_share": 0.0, "neg_share": 0.0,
         "user_id": "v", "click": 2},
    ]
    popularity = {"A": 10, "B": 5, "C": 1}
    report = heldout_report(pairs, np.array([1.0, 2.0, -1.0]), np.array([0.0, 0.0, 0.0]), None, popularity)
    assert report["heldout_pairs"] == 3 and report["heldout_pairs_new"] == 2
    assert report["accuracy"] == pytest.approx(2 / 3) and report["accuracy_new"] == 0.5
    assert report["popularity_accuracy"] == pytest.approx(1 / 3)  # A>B right, C<B wrong, B<A wrong
    assert report["share_accuracy"] == pytest.approx((1 + 0.5 + 0.5) / 3)  # ties count one half
    assert report["share_accuracy_new"] == 0.5
    assert report["beats_trivial"] == 0  # 2/3 only equals the click-share scorer: not better
    assert 0 <= report["ece_applied"] <= 1


def test_guardrail_passes_an_unchanged_model_and_refuses_a_planted_regression():
    rng = np.random.default_rng(0)
    base = rng.random(40) < 0.5
    truth = [{"pref": {"A"}} for _ in base]
    base_recs = [["A", "B"] if b else ["B", "A"] for b in base]
    same = paired_stats(hits_at_1(base_recs, truth), hits_at_1(base_recs, truth))
    assert same["guardrail/delta"] == 0 and same["guardrail/wins"] == same["guardrail/losses"] == 0
    metrics = dict(same)
    assert judge(metrics, None, 0, margin=0.05, alpha=0.05, min_users=5) == (True, "")
    assert metrics["guardrail/judged"] == 1
    # planted: half of the users the promoted model served a hit now get a miss
    worse = [["B"] if b and i % 2 == 0 else r for i, (b, r) in enumerate(zip(base, base_recs))]
    metrics = paired_stats(hits_at_1(worse, truth), hits_at_1(base_recs, truth))
    ok, reason = judge(metrics, None, 3, margin=0.05, alpha=0.05, min_users=5)
    assert not ok and "round 3" in reason and metrics["guardrail/p_value"] < 0.05
    # one lost hit in 40 users: a drop below the margin is not a regression
    one = [["B"] if i == int(np.argmax(base)) else r for i, r in enumerate(base_recs)]
    assert judge(paired_stats(hits_at_1(one, truth), hits_at_1(base_recs, truth)), None, 0, margin=0.05,
                 alpha=0.05, min_users=5)[0]
    # too few users to judge: promoted, and the metrics say it was not judged
    few = paired_stats([0, 0], [1, 1])
    assert judge(few, None, 0, margin=0.05, alpha=0.05, min_users=5)[0] and few["guardrail/judged"] == 0


def test_paired_stats_and_the_sign_test_by_hand():
    s = paired_stats([1, 1, 0, 0], [1, 1, 1, 1])
    assert s["guardrail/delta"] == -0.5 and (s["guardrail/wins"], s["guardrail/losses"]) == (0, 2)
    assert s["guardrail/p_value"] == 0.25 and s["val/base_C-H@1"] == 1.0
    assert sign_test_p(0, 3) == 0.125 and sign_test_p(1, 5) == 7 / 64 and sign_test_p(0, 0) == 1.0


def test_guardrail_refuses_at_most_alpha_of_rounds_as_good_as_the_promoted_one():
    """Exact: with every discordant user equally likely to win or lose, P(refuse) < alpha for any count."""
    from math import comb

    for n in range(1, 40):
        refuse = sum(comb(n, w) for w in range(n + 1) if sign_test_p(w, n - w) < 0.05) / 2 ** n
        assert refuse < 0.05


def test_steps_per_round_sets_the_dpo_steps(tmp_path):
    from loops.dpo import _args_from_pco

    cfg = load_config(None, ["pco.steps_per_round=5"]).pco
    assert _args_from_pco(cfg, tmp_path, seed=0, deepspeed="", max_steps=-1).max_steps == 5
    assert _args_from_pco(cfg, tmp_path, seed=0, deepspeed="", max_steps=7).max_steps == 7  # an explicit cap wins
    every = load_config(None, []).pco
    assert _args_from_pco(every, tmp_path, seed=0, deepspeed="", max_steps=-1).max_steps == -1  # epochs decide


def test_new_to_user_probes_pair_a_clicked_new_category_with_an_unclicked_new_one():
    from loops.reward import relevance_pairs

    cfg = load_config(None, [])
    cats = ["A", "B", "C", "D", "E", "F"]
    clicks = {"u": [(1, "A"), (2, "B"), (3, "A"), (4, "C")]}  # only C (t=3) is new at a position t >= 2
    probes = relevance_pairs(cfg, clicks, {}, {}, cats, ["u"], seed=0, known={"u": {"D"}}, new_only=True)
    assert [p["pos"] for p in probes] == ["C"]
    assert probes[0]["neg"] in {"E", "F"} and probes[0]["pos_new"] and probes[0]["neg_new"]
    report = heldout_report([], np.zeros(0), np.zeros(0), None, {"C": 1, "E": 9, "F": 9},
                            new=(probes, np.array([1.0]), np.array([0.0])))
    assert report["heldout_pairs_new"] == 1 and report["accuracy_new"] == 1.0
    assert report["popularity_accuracy_new"] == 0.0 and report["share_accuracy_new"] == 0.5


def test_exclude_history_drops_what_the_user_clicked_before_the_record():
    records = dk_records({"u": [(1, "A"), (2, "D"), (3, "B"), (4, "C")]}, None, {"u": "g"}, ["u"], short_k=2,
                         start=0, known={"u": {"E"}})
    assert [sorted(r.seen) for r in records] == [["E"], ["A", "E"], ["A", "D", "E"], ["A", "B", "D", "E"]]
    last = records[-1:]  # state (B, D), before the click on C
    scored = {("g", ("B", "D")): {"candidates": ["A", "E", "F", "C"], "scores": [0.9, 0.8, 0.5, 0.1]}}
    short = preference_pairs(load_config(None, []), scored, last, {})
    assert (short[0]["chosen"], short[0]["rejected"]) == (" A", " C")
    history = preference_pairs(load_config(None, ["novelty.exclude=history"]), scored, last, {})
    assert (history[0]["chosen"], history[0]["rejected"]) == (" F", " C")  # A and E were clicked before

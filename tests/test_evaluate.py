"""Evaluation v2 on the tiny demo world: the split and its training view, the leak refusal, every row from real
(tiny) workdirs trained on the view, each method's own list, tuning on validation, files that recompute to
results.json, and the Table-2 markdown (no "± 0.0000" with one seed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coea.evaluate import (
    LABELS,
    LeakError,
    assert_unseen,
    improvement,
    make_split,
    recompute_from_files,
    run_evaluate,
    table_markdown,
    variant_workdir,
    write_train_view,
)
from coea.evaluate.markdown import results_markdown
from coea.evaluate.report import at_matched, frontier_area, table_lists
from coea.evaluate.split import TEST, TRAIN, VALID, build_phase, global_split, user_split
from coea.exploration import own_list

FAST = ["eval.epochs=2", "eval.d_model=16", "eval.n_layers=1", "eval.max_seq_len=20", "eval.test_clicks=2",
        "eval.valid_clicks=2", "eval.bootstrap=200", "eval.ucb_c=0.5,2", "eval.phucb_c=0.5", "eval.phucb_prior=1",
        "eval.nlb_alpha=0,1", "eval.nlb_epochs=1", "eval.tau_align=0.3,0.5", "eval.kerec_beta=0.5,1",
        "eval.popularity_floor=warn", "eval.user_knn_k=5", "eval.item_knn_k=0"]


@pytest.fixture(scope="module")
def cfg(tiny_cfg):
    from coea.config import load_config
    from tests.conftest import REPO, TINY

    return load_config(REPO / "configs" / "demo.yaml", TINY + FAST)


@pytest.fixture(scope="module")
def inter(cfg):
    from coea.data.loaders import load_interactions

    return load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)


@pytest.fixture(scope="module")
def root(cfg, tmp_path_factory):
    """A benchmark root: the train view, and seed 0's coea and wo_long workdirs trained on it (one round each)."""
    from benchmarks.table2 import VARIANTS
    from coea.config import load_config
    from loops.cycle import run_cycle
    from tests.conftest import REPO, TINY

    root = tmp_path_factory.mktemp("bench")
    write_train_view(cfg, root / "view")
    for variant in ("coea", "wo_long"):
        vcfg = load_config(REPO / "configs" / "demo.yaml", TINY + FAST + [
            "data.source=parquet", f"data.path={root / 'view'}", *VARIANTS[variant]])
        assert run_cycle(vcfg, root / "seed0" / variant).promoted
    return root


@pytest.fixture(scope="module")
def evaluated(cfg, root, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return run_evaluate(cfg, root, out), out


# ------------------------------------------------------------------------------------------------------- split


def test_user_split_holds_out_each_users_last_clicks(cfg, inter):
    """Every evaluated user has exactly test_clicks test clicks and valid_clicks valid clicks, after all of their
    train events; users with too few clicks are all train."""
    split = make_split(cfg, inter)
    ev = inter.events.assign(part=split.part)
    assert split.kind == "user" and split.users["test"] == split.users["valid"] and split.users["test"]
    for u, g in ev.groupby(ev["user_id"].astype(str)):
        clicks = g[g["event"] == "click"]
        if u in set(split.users["test"]):
            assert (clicks["part"] == TEST).sum() == 2 and (clicks["part"] == VALID).sum() == 2
            assert (g["part"].to_numpy()[:-1] <= g["part"].to_numpy()[1:]).all()  # train, then valid, then test
        else:
            assert (g["part"] == TRAIN).all() and len(clicks) < 2 + 2 + cfg.eval.min_train_clicks


def test_user_split_hand_checked():
    """Events of one user c1 c2 e3 c4 c5 c6 (c = click), test 1, valid 2, min train 1 -> c1 c2 e3 train, c4 c5 valid,
    c6 test; a second user with 3 clicks (< 1 + 2 + 1) stays train. Global cut at 0.5 and 0.8 of [0, 9):
    t_valid = 4, t_test = 7 -> timestamps 0-3 train, 4-6 valid, 7-8 test."""
    import pandas as pd

    from coea.data.schema import Interactions

    events = pd.DataFrame({"user_id": ["a"] * 6 + ["b"] * 3, "item_id": list("123456789"),
                           "timestamp": list(range(9)), "event": ["click", "click", "exposure", "click", "click",
                                                                  "click", "click", "click", "click"],
                           "rating": [float("nan")] * 9})
    inter = Interactions(events=events, items=pd.DataFrame(), users=pd.DataFrame(), categories=[])
    split = user_split(inter, test_clicks=1, valid_clicks=2, min_train_clicks=1)
    assert split.part.tolist() == [TRAIN, TRAIN, TRAIN, VALID, VALID, TEST, TRAIN, TRAIN, TRAIN]
    assert split.users["test"] == ["a"]
    g = global_split(inter, valid_fraction=0.5, test_fraction=0.8)
    assert g.part.tolist() == [TRAIN] * 4 + [VALID] * 3 + [TEST] * 2 and g.info["valid"] < g.info["test"]


def test_phases_see_only_their_state(cfg, inter):
    """valid: state = train events; test: state = train + valid. hist = every category clicked in the state."""
    split = make_split(cfg, inter)
    valid, test = build_phase(cfg, inter, split, "valid"), build_phase(cfg, inter, split, "test")
    assert len(valid.state.events) == int((split.part == TRAIN).sum())
    assert len(test.state.events) == int((split.part < TEST).sum())
    i = 0
    u = test.users[i]
    ev = test.state.events
    clicks = ev[(ev["user_id"].astype(str) == u) & (ev["event"] == "click")]
    assert test.hist[i] == set(clicks["item_id"].astype(str).map(inter.item_category))
    assert valid.hist[i] <= test.hist[i] and test.clicked[i]


def test_train_view_round_trip(cfg, inter, root):
    """The view holds exactly the train events; split.json records the split."""
    from coea.data.parquet import load_parquet

    view = load_parquet(root / "view")
    split = make_split(cfg, inter)
    assert len(view.events) == int((split.part == TRAIN).sum())
    meta = json.loads((root / "view" / "split.json").read_text())
    assert meta["split"]["kind"] == "user" and meta["train_events"] == len(view.events)


def test_leak_check_refuses_models_that_saw_held_out_events(cfg, inter, tmp_path):
    """A workdir trained on the full data up to a late cut-off saw test events: refused. Its early round (cut-off
    before every held-out event) passes; so does the real workdir trained on the view."""
    split = make_split(cfg, inter)
    wd = tmp_path / "full"
    (wd / "rounds" / "000" / "data").mkdir(parents=True)
    cfg.save(wd / "rounds" / "000" / "data" / "config.yaml")
    end = int(inter.events["timestamp"].max()) + 1
    (wd / "rounds" / "000" / "data" / "window.json").write_text(json.dumps({"start": None, "end": end}))
    with pytest.raises(LeakError, match="held-out"):
        assert_unseen(inter, split, "test", wd, 0)
    first_held_out = int(inter.events["timestamp"][split.part > TRAIN].min())
    (wd / "rounds" / "000" / "data" / "window.json").write_text(json.dumps({"start": None, "end": first_held_out}))
    assert assert_unseen(inter, split, "valid", wd, 0)["held_out_seen"] == 0


def test_leak_check_global_split_cut_off(cfg, inter, tmp_path):
    """Global split: a round whose cut-off is t_test saw no test event (passes the test phase, fails the valid
    phase: it saw validation events); one second later it saw the first test events (refused)."""
    import dataclasses

    gcfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, split="global", test_fraction=0.8))
    split = make_split(gcfg, inter)
    t_test = split.info["test"]
    wd = tmp_path / "w"
    (wd / "rounds" / "002" / "data").mkdir(parents=True)
    gcfg.save(wd / "rounds" / "002" / "data" / "config.yaml")
    window = wd / "rounds" / "002" / "data" / "window.json"
    window.write_text(json.dumps({"start": 0, "end": t_test}))
    assert assert_unseen(inter, split, "test", wd, 2)["cutoff"] == t_test
    with pytest.raises(LeakError):
        assert_unseen(inter, split, "valid", wd, 2)
    later = int(inter.events["timestamp"][inter.events["timestamp"] >= t_test].min()) + 1
    window.write_text(json.dumps({"start": 0, "end": later}))
    with pytest.raises(LeakError, match="round 2"):
        assert_unseen(inter, split, "test", wd, 2)


def test_cli_writes_the_train_view(tmp_path):
    from coea.cli import main
    from tests.conftest import REPO, TINY

    args = ["evaluate", "--config", str(REPO / "configs" / "demo.yaml"), *[x for o in TINY for x in ("--set", o)]]
    assert main([*args, "--write-train-view", str(tmp_path / "view")]) == 0
    assert (tmp_path / "view" / "events.parquet").exists() and (tmp_path / "view" / "split.json").exists()
    assert main(args) == 2  # neither --workdir/--out nor --write-train-view: a usage error, one line


def test_run_evaluate_refuses_a_leaky_workdir(cfg, tmp_path):
    """run_evaluate raises LeakError (the CLI exits 2) when CoEA's workdir trained on the full data set."""
    from loops.cycle import run_cycle

    wd = tmp_path / "full"
    run_cycle(cfg, wd)
    from coea.config import load_config
    from tests.conftest import REPO, TINY

    only = load_config(REPO / "configs" / "demo.yaml", TINY + FAST + [
        "eval.exploitation=sasrec", "eval.exploration=coea", "eval.ablations="])
    with pytest.raises(LeakError):
        run_evaluate(only, wd, tmp_path / "out")


# ----------------------------------------------------------------------------------------------------- results


def test_files_recompute_to_results(evaluated):
    summary, out = evaluated
    results = json.loads((out / "results.json").read_text())
    assert recompute_from_files(out) == results
    assert summary["results"] == results["table"]
    for name in ("results.md", "recommendations.jsonl", "rankings.jsonl", "ground_truth.jsonl", "meta.json",
                 "frontier.png"):
        assert (out / name).exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["ks"] == [1, 5, 10] and meta["n_categories"] == 8 and meta["seeds"] == [0]
    assert set(results["table"]["sasrec"]["C-H@1"]) == {"mean", "std", "seeds"}


def test_rerun_resumes_from_the_cache(evaluated, cfg, root):
    """A second run over the same out directory reads every method from out/cache and writes the same results."""
    import time

    summary, out = evaluated
    assert (out / "cache" / "seed0" / "coea.json").exists() and (out / "cache" / "seed0" / "sasrec.json").exists()
    before = json.loads((out / "results.json").read_text())
    t = time.perf_counter()
    again = run_evaluate(cfg, root, out)
    assert again["results"] == summary["results"] and json.loads((out / "results.json").read_text()) == before
    assert time.perf_counter() - t < summary["time_s"]


def test_every_row_and_each_method_ranks_its_own_list(evaluated, cfg):
    summary, out = evaluated
    table = summary["results"]
    for m in ("two_tower", "gru4rec", "sasrec", "bert4rec", "random", "popular", "ucb", "hucb", "phucb", "nlb",
              "google_v1", "google_v2", "llm_kerec", "coea", "wo_long", "wo_rllm"):
        assert m in table, m
    assert set(summary["skipped"]) == {"wo_short", "wo_kl"}  # no such workdirs here
    cats = json.loads((out / "meta.json").read_text())["categories"]
    rankings = {(r["user"], r["method"]): r["ranking"] for r in map(json.loads, (out / "rankings.jsonl").open())}
    for r in map(json.loads, (out / "recommendations.jsonl").open()):
        full = rankings[(r["user"], r["method"])]
        assert sorted(full) == sorted(cats)  # every method ranks the whole catalogue
        assert r["ranked"] == own_list(full, 10)  # and the table's list is its own ranking


def test_settings_are_chosen_on_validation(evaluated):
    """Each tuned method's choice is the argmax of its validation areas, over the configured grid; the leak checks
    of the LLM rows passed for both phases."""
    _, out = evaluated
    meta = json.loads((out / "meta.json").read_text())
    assert meta["chosen"]["ucb"]["0"]["c"] in (0.5, 2.0)
    assert meta["chosen"]["coea@tuned"]["0"]["tau_align"] in (0.3, 0.5)
    assert meta["chosen"]["coea"]["0"]["point"] == "production"  # the workdir's own tau_align, as served
    for method, per_seed in meta["validation_area"].items():
        if method in ("coea", "coea@matched_ncp"):  # operating points not chosen by the objective's argmax
            continue
        areas = per_seed["0"]
        chosen = {k: v for k, v in meta["chosen"][method]["0"].items() if k != "point"}
        assert json.loads(max(areas, key=areas.get)) == chosen
    coea = meta["sources"]["coea/seed0"]
    assert set(coea["checks"]) == {"valid", "test"} and coea["checks"]["test"]["held_out_seen"] == 0
    assert meta["sources"]["google_v1/seed0"]["round"] == 0


def test_results_md_layout_and_one_seed(evaluated):
    """Table 2 columns, the interval and frontier tables, the targets; one seed prints means, not ± 0.0000."""
    _, out = evaluated
    md = (out / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Group"))
    for fam in ("C-H", "C-N", "NCP", "CLTP"):
        for k in (1, 5, 10):
            assert f"| {fam}@{k} " in header
    for m in ("two_tower", "sasrec", "random", "hucb", "nlb", "google_v1", "google_v2", "llm_kerec", "wo_rllm"):
        assert f"| {LABELS[m]} |" in md
    assert "| **CoEA** |" in md and "| Improv. |" in md and "Frontier summary" in md
    assert "paired hierarchical bootstrap" in md
    assert "Test-based metrics" in md and "| user-kNN |" in md and "| CoEA (tau tuned) |" in md
    assert "Targets" in md
    assert "± 0.0000" not in md and "1 seed" in md
    table = md.split("\n\n")[1]
    n_cols = header.count("|")
    assert all(line.count("|") == n_cols for line in table.splitlines() if line.startswith("|"))


def test_two_seeds_print_the_spread():
    res = {"coea": {"C-H@1": {"mean": 0.5, "std": 0.1, "seeds": 2}},
           "sasrec": {"C-H@1": {"mean": 0.4, "std": 0.0, "seeds": 2}}}
    md = table_markdown(res, {"sasrec": "exploitation", "coea": "exploration"}, [1])
    assert "0.5000 ± 0.1000" in md and "0.4000 ± 0.0000" in md
    one = {m: {"C-H@1": {**v["C-H@1"], "seeds": 1}} for m, v in res.items()}
    assert "±" not in table_markdown(one, {"sasrec": "exploitation", "coea": "exploration"}, [1])


def test_slot_policy_option_keeps_the_base_ranking(evaluated):
    """policy: slots (v1) puts each method's novel categories at 2 and 4 of the base model's ranking."""
    from coea.evaluate.report import read_files

    _, out = evaluated
    rankings, truth, meta = read_files(out)
    meta = {**meta, "policy": "slots", "slots": [2, 4], "base_model": "sasrec"}
    hist = [t["hist"] for t in truth]
    lists = table_lists(rankings, hist, meta)
    for (method, seed), ls in lists.items():
        if meta["groups"][method] == "exploitation":
            continue
        for lst, base, h in zip(ls, rankings[("sasrec", seed)], hist):
            placed = [lst[i] for i in (1, 3) if i < len(lst) and lst[i] not in h]
            assert [c for c in lst if c not in placed] == [c for c in base if c not in placed][:len(lst) - len(placed)]


def test_evaluate_round_scores_one_rounds_models(cfg, inter, root):
    """Figure 4's per-round figure: round k's LLMs on the test phase, Table 2's own lists, A.4 means."""
    from coea.evaluate.run import evaluate_round

    split = make_split(cfg, inter)
    phase = build_phase(cfg, inter, split, "test")
    r0 = evaluate_round(cfg, inter, split, phase, root / "seed0" / "coea", 0)
    r1 = evaluate_round(cfg, inter, split, phase, root / "seed0" / "coea", 1)
    assert r0["round"] == 0 and r1["round"] == 1 and r1["users"] == len(phase.users)
    for r in (r0, r1):
        assert 0 <= r["NCP@5"] <= 5 / 8 and 0 <= r["C-H@1"] <= 1 and r["keys"] >= 1


def test_coea_scores_are_the_served_calibrated_probabilities(cfg, inter, root):
    """The evaluation loads the round's Platt calibration exactly as serving does (coea.inference.load_models) and
    every score it ranks by is that calibrated probability: the candidates' scores equal propose_and_score's with
    the serving models, and every category's score is calibration.probability(reward logit)."""
    from coea.evaluate.split import workdir_config
    from coea.exploration.llm import _portrait, dual_scores, keys_for, load_round
    from coea.inference import load_models, propose_and_score
    from coea.prompts import relevance_prompt
    from coea.relevance import Calibration, reward_logits

    wd = root / "seed0" / "coea"
    k = 1
    wcfg = workdir_config(wd, k)
    llm = load_round(wcfg, wd, k, "cpu")
    served = load_models(wcfg, wd, k, k, "cpu")
    assert llm.calibration == served.calibration  # loaded from the same calibration.json
    # a tiny round may carry the identity; a fitted one must reach every score the same way
    llm.calibration = served.calibration = Calibration(a=2.5, b=-1.0, source="test")
    phase = build_phase(cfg, inter, make_split(cfg, inter), "test")
    _, unique = keys_for(llm, phase.state, phase.users[:5])
    ds = dual_scores(llm, unique, phase.categories)
    rows = propose_and_score(wcfg, served, list(unique), llm.portraits, list(phase.categories))
    for i, r in enumerate(rows):
        assert ds.candidates[i] == list(r["candidates"])
        assert ds.scores[i] == pytest.approx(list(r["scores"]), abs=1e-6)
    key = unique[0]
    texts = [relevance_prompt(wcfg.prompts, _portrait(llm, key.csid), key.recent, c) for c in phase.categories]
    expect = served.calibration.probability(reward_logits(served.relevance, served.tokenizer, texts))
    assert ds.all_scores[0] == pytest.approx(expect, abs=1e-5)


def test_frontier_area_and_matched_ncp():
    """Frontier (NCP, C-N): (0, 0.6), (0.1, 0.5), (0.2, 0.2).

    area = [0.1 * (0.6 + 0.5) / 2 + 0.1 * (0.5 + 0.2) / 2] / 0.2 = (0.055 + 0.035) / 0.2 = 0.45.
    C-N at NCP 0.15 = halfway between 0.5 and 0.2 = 0.35; outside [0, 0.2] -> NaN. Unsorted input is sorted.
    """
    ncp, cn = np.array([0.2, 0.0, 0.1]), np.array([0.2, 0.6, 0.5])
    assert frontier_area(ncp, cn) == pytest.approx(0.45)
    assert at_matched(ncp, cn, 0.15) == pytest.approx(0.35)
    assert np.isnan(at_matched(ncp, cn, 0.3))
    assert frontier_area(np.array([0.1]), np.array([0.4])) == pytest.approx(0.4)


def test_improvement_against_best_baseline():
    res = {"coea": {"NCP@5": {"mean": 0.3, "std": 0}}, "random": {"NCP@5": {"mean": 0.2, "std": 0}},
           "sasrec": {"NCP@5": {"mean": 0.1, "std": 0}}, "wo_kl": {"NCP@5": {"mean": 0.9, "std": 0}}}
    groups = {"sasrec": "exploitation", "random": "exploration", "coea": "exploration", "wo_kl": "ablation"}
    assert improvement(res, groups)["NCP@5"] == pytest.approx(50.0)
    md = table_markdown(res, groups, [5])
    assert "+50.00%" in md and md.index("SASRec") < md.index("Random") < md.index("w/o KL")


def test_results_markdown_without_coea_rows(evaluated):
    """A table without CoEA (e.g. a baselines-only run) still renders: no intervals, no targets."""
    from coea.evaluate.report import compute_results, read_files

    _, out = evaluated
    rankings, truth, meta = read_files(out)
    keep = {k: v for k, v in rankings.items() if k[0] in ("sasrec", "popular")}
    meta = {**meta, "groups": {"sasrec": "exploitation", "popular": "exploration"}, "chosen": {}}
    md = results_markdown(compute_results(keep, truth, meta), meta)
    assert "| Most popular |" in md and "Targets" not in md


def test_variant_workdir_layouts(cfg, tmp_path):
    root = tmp_path / "bench"
    for seed, variant in ((0, "coea"), (0, "wo_kl")):
        d = root / f"seed{seed}" / variant
        d.mkdir(parents=True)
        (d / "state.json").write_text(json.dumps({"promoted_round": 1, "rounds": []}))
    assert variant_workdir(cfg, root, 0, "wo_kl") == root / "seed0" / "wo_kl"
    assert variant_workdir(cfg, root, 1, "coea") is None
    single = tmp_path / "w"
    sib = tmp_path / "w-wo_long"
    for d in (single, sib):
        d.mkdir()
        (d / "state.json").write_text(json.dumps({"promoted_round": 2, "rounds": []}))
    assert variant_workdir(cfg, single, 5, "coea") == single
    assert variant_workdir(cfg, single, 5, "wo_long") == sib

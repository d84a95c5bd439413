"""run_evaluate on the tiny demo world: result files recompute to results.json; Table-2 markdown layout;
CoEA rows from a real (tiny) cycle workdir."""

from __future__ import annotations

import json

import pytest

from coea.evaluate import (
    LABELS,
    improvement,
    recompute_from_files,
    run_evaluate,
    table_markdown,
    temporal_split,
    variant_workdir,
)

FAST = ["eval.epochs=2", "eval.d_model=16", "eval.n_layers=1", "eval.max_seq_len=20", "eval.test_fraction=0.8",
        "eval.seeds=0,1"]


@pytest.fixture(scope="module")
def cfg(tiny_cfg):
    from coea.config import load_config
    from tests.conftest import REPO, TINY

    return load_config(REPO / "configs" / "demo.yaml", TINY + FAST)


@pytest.fixture(scope="module")
def workdir(cfg, tmp_path_factory):
    from loops.cycle import run_cycle

    wd = tmp_path_factory.mktemp("wd") / "coea"
    assert run_cycle(cfg, wd).promoted
    return wd


@pytest.fixture(scope="module")
def evaluated(cfg, workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return run_evaluate(cfg, workdir, out), out


def test_split_is_global_and_ordered(cfg):
    from coea.data.loaders import load_interactions

    inter = load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)
    s = temporal_split(cfg, inter)
    assert s.start < s.valid < s.test < s.end


def test_files_recompute_to_results(evaluated):
    summary, out = evaluated
    results = json.loads((out / "results.json").read_text())
    assert recompute_from_files(out) == results
    assert summary["results"] == results
    for name in ("results.md", "recommendations.jsonl", "ground_truth.jsonl", "meta.json"):
        assert (out / name).exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["ks"] == [1, 5, 10] and meta["n_categories"] == 8 and meta["seeds"] == [0, 1]
    assert set(results["sasrec"]["C-H@1"]) == {"mean", "std"}


def test_every_row_present_and_exploration_keeps_base_ranking(evaluated, cfg):
    summary, out = evaluated
    results = summary["results"]
    for m in ("two_tower", "gru4rec", "sasrec", "bert4rec", "random", "popular", "ucb", "google_v1", "coea",
              "wo_rllm"):
        assert m in results, m
    assert set(summary["skipped"]) == {"wo_long", "wo_short", "wo_kl"}  # no such workdirs here
    truth = {json.loads(line)["user"]: json.loads(line) for line in (out / "ground_truth.jsonl").open()}
    recs = [json.loads(line) for line in (out / "recommendations.jsonl").open()]
    base = {(r["user"], r["seed"]): r["ranked"] for r in recs if r["method"] == "sasrec"}
    for r in recs:
        if r["method"] in ("random", "popular", "ucb", "google_v1", "coea", "wo_rllm"):
            ranked, b = r["ranked"], base[(r["user"], r["seed"])]
            assert len(ranked) == len(set(ranked))
            # outside slots 2 and 4 the list is the base ranking minus the placed categories, in order
            placed = [ranked[i] for i in (1, 3) if i < len(ranked)]
            assert [c for i, c in enumerate(ranked) if i not in (1, 3)] == [c for c in b if c not in placed][:8]
            if r["method"] in ("random", "popular", "ucb"):  # always have a novel category to place
                assert not set(placed) & set(truth[r["user"]]["hist"])


def test_table2_markdown(evaluated):
    _, out = evaluated
    md = (out / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Group"))
    for fam in ("C-H", "C-N", "NCP", "CLTP"):
        for k in (1, 5, 10):
            assert f"| {fam}@{k} " in header
    for m in ("two_tower", "sasrec", "random", "ucb", "google_v1", "coea", "wo_rllm"):
        assert f"| {LABELS[m]} |" in md or f"| **{LABELS[m]}** |" in md
    assert "| Improv. |" in md
    n_cols = header.count("|")
    assert all(line.count("|") == n_cols for line in md.splitlines() if line.startswith("|"))


def test_improvement_against_best_baseline():
    res = {"coea": {"NCP@5": {"mean": 0.3, "std": 0}}, "random": {"NCP@5": {"mean": 0.2, "std": 0}},
           "sasrec": {"NCP@5": {"mean": 0.1, "std": 0}}, "wo_kl": {"NCP@5": {"mean": 0.9, "std": 0}}}
    groups = {"sasrec": "exploitation", "random": "exploration", "coea": "exploration", "wo_kl": "ablation"}
    assert improvement(res, groups)["NCP@5"] == pytest.approx(50.0)
    md = table_markdown(res, groups, [5])
    assert "+50.00%" in md and md.index("SASRec") < md.index("Random") < md.index("w/o KL")


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

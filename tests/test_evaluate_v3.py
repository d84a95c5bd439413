"""Evaluation v3 without trained workdirs: item data in linear time (the item -> category map is built once per
items table, not once per item: the old property rebuilt a dict of every item on every read, O(items^2) in
item_data), and the kNN rows ranked from the phase's state with the shared implementation."""

from __future__ import annotations

import pandas as pd
import pytest

import coea.data.schema as schema
from coea.data.schema import Interactions
from coea.evaluate.run import item_data
from coea.evaluate.split import make_split


def _inter(items: pd.DataFrame) -> Interactions:
    return Interactions(events=pd.DataFrame(columns=["user_id", "item_id", "timestamp", "event", "rating"]),
                        items=items, users=pd.DataFrame({"user_id": []}), categories=sorted(set(items["category"])))


def test_item_category_is_built_once_and_follows_a_new_items_table():
    inter = _inter(pd.DataFrame({"item_id": ["1", "2"], "category": ["A", "B"], "title": ["", ""]}))
    first = inter.item_category
    assert first == {"1": "A", "2": "B"}
    assert inter.item_category is first  # cached: the old property returned a fresh dict on every read
    inter.items = pd.DataFrame({"item_id": ["1", "3"], "category": ["A", "C"], "title": ["", ""]})
    assert inter.item_category == {"1": "A", "3": "C"}  # a new table is a new map


def test_item_data_reads_the_item_map_a_bounded_number_of_times(monkeypatch):
    """item_data over a 400-item catalogue builds the dict of every item (the zip over the items table in
    coea/data/schema.py) a few times at most, not once per item as before (400+ builds)."""
    from coea.config import load_config
    from coea.data.loaders import load_interactions
    from tests.conftest import REPO

    cfg = load_config(REPO / "configs" / "demo.yaml", [
        "synthetic.n_users=60", "synthetic.n_categories=8", "synthetic.items_per_category=50",
        "synthetic.n_days=10", "eval.test_clicks=1", "eval.valid_clicks=1"])
    inter = load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)
    split = make_split(cfg, inter)
    builds = []
    real_zip = zip

    def counting_zip(*args):
        if len(args) == 2 and all(isinstance(a, pd.Series) for a in args) and args[0].name == "item_id":
            builds.append(1)
        return real_zip(*args)

    monkeypatch.setattr(schema, "zip", counting_zip, raising=False)
    data, _ = item_data(cfg, inter, split)
    assert data.n_items == 400 and len(data.item_category) == 401
    assert 1 <= len(builds) <= 3, f"{len(builds)} builds of the item -> category dict for 400 items"


def test_knn_rows_rank_unexplored_categories_from_the_phase_state(tmp_path):
    """user-kNN / item-kNN at the valid phase: one ranking per grid value, each a permutation of the catalogue whose
    head is the user's unexplored categories (exactly the categories outside C_u^hist come first)."""
    from coea.config import load_config
    from coea.data.loaders import load_interactions
    from coea.evaluate.methods import Methods
    from coea.evaluate.split import build_phase
    from tests.conftest import REPO, TINY

    cfg = load_config(REPO / "configs" / "demo.yaml", TINY + ["eval.test_clicks=2", "eval.valid_clicks=2",
                                                              "eval.user_knn_k=1,5", "eval.item_knn_k=0"])
    inter = load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)
    split = make_split(cfg, inter)
    phases = {n: build_phase(cfg, inter, split, n) for n in ("valid", "test")}
    methods = Methods(cfg, tmp_path, 0, inter, split, phases, "cpu", {})
    p = phases["valid"]
    for method, n_grid in (("user_knn", 2), ("item_knn", 1)):
        got = methods.candidates(method, "valid")
        assert len(got) == n_grid
        for ranking in got.values():
            assert len(ranking) == len(p.users)
            for r, h in zip(ranking, p.hist):
                assert sorted(r) == sorted(p.categories)
                assert set(r[: len(p.categories) - len(h)]) == set(p.categories) - h


def _meta(seeds, groups):
    return {"ks": [1, 2], "seeds": seeds, "n_categories": 4, "categories": ["A", "B", "X", "Y"], "tail": ["Y"],
            "groups": groups, "policy": "own", "slots": [], "list_length": 4, "base_model": "sasrec", "budget_k": 2,
            "matched_budget": 1, "bootstrap": 300, "bootstrap_seed": 0, "confidence": 0.9, "hist_k": 3,
            "kept": {"coea": {"0": [2, 0], "1": [1, 0]}}}


def test_results_carry_test_based_metrics_hierarchical_intervals_and_v3_targets():
    """Two users with history {A, B}; user 0 clicks Y (new) in the test part, user 1 clicks A. CoEA lists Y first
    for user 0 and A for user 1 on both seeds; popular lists A, B, X, Y for both. NA@1: CoEA 1.0 (user 0 adopts Y
    and it is CoEA's first item), popular 0.0 (A is not new); C-H-test@1: CoEA (1 + 1) / 2 = 1, popular 1/2. The
    intervals have the seeds' spread (identical seeds -> a point interval) and kept candidates pool seeds."""
    from coea.evaluate.markdown import results_markdown
    from coea.evaluate.report import compute_results

    truth = [{"pref": {"A"}, "hist": {"A", "B"}, "clicked": {"Y"}, "recent": {"A"}},
             {"pref": {"A"}, "hist": {"A", "B"}, "clicked": {"A"}, "recent": {"A"}}]
    coea = [["Y", "A", "X", "B"], ["A", "X", "B", "Y"]]
    pop = [["A", "B", "X", "Y"], ["A", "B", "X", "Y"]]
    rankings = {(m, s): r for s in (0, 1) for m, r in (("coea", coea), ("popular", pop), ("coea@tuned", pop))}
    meta = _meta([0, 1], {"popular": "exploration", "coea": "exploration", "coea@tuned": "operating_point"})
    res = compute_results(rankings, truth, meta)
    t = res["table"]
    assert t["coea"]["NA@1"]["mean"] == 1.0 and t["popular"]["NA@1"]["mean"] == 0.0
    assert t["coea"]["C-H-test@1"]["mean"] == 1.0 and t["popular"]["C-H-test@1"]["mean"] == 0.5
    iv = res["intervals"]["popular"]["NA@1"]
    assert iv == {"delta": 1.0, "lo": 1.0, "hi": 1.0}  # one adopter, the same on both seeds
    assert res["kept_candidates"]["coea"] == {"mean": 0.75, "median": 0.5, "zero_share": 0.5}
    prod = res["targets_v3"]["production"]["NA@2"]
    assert prod["best"] == "popular" and prod["met"] is True and prod["lo"] == 1.0  # Y in CoEA's top 2 only
    assert "matched_cn" in res["targets_v3"]
    assert "coea@tuned" not in res["summary"]["methods"]  # operating points are rows, not frontiers
    # equal novelty (budget 1 of 2): CoEA's top 2 = Y (new), A; popular's = A, X: only CoEA's new one is adopted
    eq = res["summary"]["at_matched_budget"]
    assert eq["budget"] == 1 and eq["intervals"]["popular"]["NA@2"]["delta"] == 1.0
    md = results_markdown(res, {**meta, "split": {"kind": "user", "test_clicks": 1}, "users": 2, "chosen": {}})
    assert "Test-based metrics" in md and "CoEA (tau tuned)" in md and "issue 25" in md


def test_hierarchical_intervals_widen_with_seed_disagreement():
    """CoEA hits on seed 0 and misses on seed 1 (C-H-test@1 per seed 1.0 and 0.0); popular hits user 0 only (0.5 on
    both seeds). Per-user differences: seed 0 [0, 1], seed 1 [-1, 0]; delta 0. A users-only bootstrap of the seed
    means ([-0.5, 0.5] per user) can only reach -0.5 .. 0.5; resampling the seeds too reaches further."""
    from coea.evaluate.report import compute_results

    truth = [{"pref": set(), "hist": {"A"}, "clicked": {"X"}, "recent": set()},
             {"pref": set(), "hist": {"A"}, "clicked": {"X"}, "recent": set()}]
    rankings = {("coea", 0): [["X", "A"], ["X", "A"]], ("coea", 1): [["Y", "X"], ["Y", "X"]],
                ("popular", 0): [["X", "A"], ["A", "X"]], ("popular", 1): [["X", "A"], ["A", "X"]]}
    meta = _meta([0, 1], {"popular": "exploration", "coea": "exploration"})
    iv = compute_results(rankings, truth, meta)["intervals"]["popular"]["C-H-test@1"]
    assert iv["delta"] == 0.0 and iv["lo"] < -0.5 and iv["hi"] > 0.5


def test_markdown_prints_a_dash_for_a_metric_no_user_defines():
    """NA@K is undefined when no test user adopts a new category: its mean is None after clean(), and the table
    prints '–' instead of failing."""
    from coea.evaluate.markdown import table_markdown

    md = table_markdown({"coea": {"NA@1": {"mean": None, "std": None, "seeds": 2}}}, {"coea": "exploration"}, [1],
                        families=("NA",), improv=False)
    assert "| exploration | **CoEA** | – |" in md


def test_knn_grids_are_validated():
    """k = 0 neighbours for user-kNN, or a fractional k, is a config error naming the field (the CLI exits 2)."""
    from coea.config import ConfigError, load_config
    from tests.conftest import REPO

    for bad in ("eval.user_knn_k=0,5", "eval.item_knn_k=2.5", "eval.user_knn_k=x"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(REPO / "configs" / "demo.yaml", [bad])
    assert load_config(REPO / "configs" / "demo.yaml", ["eval.item_knn_k=0"]).eval.item_knn_k == "0"


def test_matched_cn_target_interpolates_coeas_frontier_at_the_baselines_cn():
    """hist {A, B} for both users; user 0 clicks A and X, user 1 clicks A. CoEA ranks X, A, B, Y: its budget
    frontier at K = 1 is b = 0 -> [A ...]: C-N@1 (1 + 1) / 2 = 1.0, NCP@1 0; b = 1 -> [X ...]: C-N@1 (1 + 0) / 2 =
    0.5, NCP@1 1/4. Popular lists A for user 0 and B for user 1: C-N@1 0.5, NCP@1 0. CoEA's NCP@1 at C-N@1 = 0.5
    is 0.25, so the delta is +0.25."""
    from coea.evaluate.report import compute_results

    truth = [{"pref": {"A"}, "hist": {"A", "B"}, "clicked": {"A", "X"}, "recent": set()},
             {"pref": {"A"}, "hist": {"A", "B"}, "clicked": {"A"}, "recent": set()}]
    rankings = {("coea", 0): [["X", "A", "B", "Y"]] * 2,
                ("popular", 0): [["A", "B", "X", "Y"], ["B", "A", "X", "Y"]]}
    meta = {**_meta([0], {"popular": "exploration", "coea": "exploration"}), "ks": [1], "budget_k": 1, "kept": {}}
    v3 = compute_results(rankings, truth, meta)["targets_v3"]
    got = v3["matched_cn"]["NCP@1"]
    assert v3["matched_cn_each"]["popular"]["NCP@1"] == got
    assert got["baseline"] == "popular" and got["matched_cn"] == 0.5 and got["baseline_value"] == 0.0
    assert got["coea"] == pytest.approx(0.25) and got["delta"] == pytest.approx(0.25)

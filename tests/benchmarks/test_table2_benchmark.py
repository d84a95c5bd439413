"""benchmarks/table2.py on a Parquet data source (``data.source: parquet``): ``--train-only`` then
``--evaluate-only --out O``, as issue 25 keeps working for other data sets; a tiny world, real subprocesses
(``--runslow``: about a minute)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY


@pytest.mark.slow
def test_train_only_then_evaluate_only_on_parquet(tmp_path):
    from coea.config import load_config
    from coea.data.loaders import load_interactions
    from coea.data.parquet import write_parquet

    cfg = load_config(REPO / "configs" / "demo.yaml", TINY)
    write_parquet(load_interactions(cfg.data, cfg.synthetic, cfg.run.seed), tmp_path / "data")
    sets = [*TINY, "data.source=parquet", f"data.path={tmp_path / 'data'}", "eval.test_clicks=2",
            "eval.valid_clicks=2", "eval.epochs=2", "eval.popularity_floor=warn", "eval.exploitation=sasrec",
            "eval.exploration=popular,user_knn,coea", "eval.ablations=", "eval.bootstrap=50", "eval.tau_align=0.3,0.5"]
    base = [sys.executable, "benchmarks/table2.py", "--config", "configs/demo.yaml", "--root", str(tmp_path / "root"),
            "--seeds", "0", "--variants", "coea", "--rounds", "1", *[x for s in sets for x in ("--set", s)]]
    for extra in (["--train-only"], ["--evaluate-only", "--out", str(tmp_path / "out" / "t2")]):
        proc = subprocess.run([*base, *extra], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "t2.json").read_text())
    table = report["results"]["table"]
    assert {"coea", "coea@tuned", "coea@matched_ncp", "popular", "user_knn", "sasrec"} <= set(table)
    assert "NA@5" in table["coea"] and report["results"]["targets_v3"]["production"]
    assert len(report["git"]["commit"]) == 40 and report["fits"]["sasrec/seed0"]["loss"]

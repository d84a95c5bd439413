"""`coea simulate`: a tiny run through the CLI, and configuration errors exit 2 with one line."""

from __future__ import annotations

import json

from coea.cli import main

TINY = ["--set", "sim.n_users=20", "--set", "sim.n_categories=12", "--set", "sim.n_groups=2", "--set",
        "sim.core_per_user=2", "--set", "sim.latent_per_user=2", "--set", "sim.days=2", "--set", "sim.warmup_days=2",
        "--set", "sim.seeds=0", "--set", "tracking.backend=none"]


def test_simulate_runs_and_prints_its_result(tmp_path, capsys):
    out = tmp_path / "sim"
    rc = main(["simulate", "--config", "configs/sim.yaml", "--out", str(out), "--arms", "exploitation,ucb", *TINY])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["complete"] and result["days_done"] == 2 and result["arms"] == ["exploitation", "ucb"]
    assert (out / "results.md").exists() and len((out / "days.jsonl").read_text().splitlines()) == 4
    rc = main(["simulate", "--config", "configs/sim.yaml", "--out", str(out / "val"), "--arms", "random",
               "--validation", "--max-days", "1", *TINY])
    assert rc == 0 and json.loads(capsys.readouterr().out)["seeds"] == [100]


def test_config_errors_exit_2_with_one_line(tmp_path, capsys):
    for extra, needle in ((["--set", "sim.arms=nope"], "sim.arms"), (["--set", "sim.seeds=100"], "validation_seed"),
                          (["--arms", "bogus"], "unknown arm"), (["--max-days", "0"], "--max-days")):
        rc = main(["simulate", "--config", "configs/sim.yaml", "--out", str(tmp_path / "x"), *extra])
        err = capsys.readouterr().err
        line = [x for x in err.splitlines() if x.startswith("coea:")]
        assert rc == 2 and len(line) == 1 and needle in line[0], err

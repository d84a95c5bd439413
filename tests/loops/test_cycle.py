"""The main job end to end on a tiny synthetic world: bootstrap + two cycles, lookup, rollback, guardrail, lock.

One session-scoped workdir keeps this affordable on 2 cores; the tests read it in order.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from coea.errors import LockHeldError
from coea.rounds import cutoff, is_validation_user
from loops.cycle import guardrail, run_cycle
from loops.serving import lookup, rollback
from loops.state import read_state, workdir_lock

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cfg(tiny_cfg):
    return tiny_cfg


@pytest.fixture(scope="module")
def two_cycles(cfg, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cycle")
    first = run_cycle(cfg, workdir)
    second = run_cycle(cfg, workdir)
    return workdir, first, second


def test_two_cycles_promote_rounds_1_and_2(two_cycles):
    workdir, first, second = two_cycles
    assert (first.round, second.round) == (1, 2)
    assert first.promoted
    state = read_state(workdir)
    assert [r["round"] for r in state["rounds"]] == [0, 1, 2]
    assert (workdir / "current").resolve().name == f"{state['promoted_round']:03d}"
    for k in (1, 2):
        metrics = json.loads((workdir / "rounds" / f"{k:03d}" / "metrics.json").read_text())
        assert metrics["keys/count"] <= metrics["keys/users"]
        assert "pco/kl" in metrics or "pco/dpo_loss" in metrics
        assert (workdir / "rounds" / f"{k:03d}" / "metrics.png").stat().st_size > 0


def test_lookup_returns_valid_categories(two_cycles, cfg):
    from coea.data.loaders import load_interactions

    workdir, _, _ = two_cycles
    catalogue = set(load_interactions(cfg.data, cfg.synthetic, cfg.run.seed).categories)
    users = __import__("pandas").read_parquet(workdir / "current" / "users.parquet")
    answers = [lookup(workdir, user=u) for u in users["user_id"][:20]]
    assert all(set(e["category"] for e in a["categories"]) <= catalogue for a in answers)
    assert any(a["categories"] for a in answers)
    for a in answers:
        assert not set(e["category"] for e in a["categories"]) & set(a["recent"])  # recent excluded by default
    unknown = lookup(workdir, user="nobody-ever")
    assert unknown["fallback"] and isinstance(unknown["categories"], list)
    assert lookup(workdir, csid="no-such-group", recent=["A"])["categories"] == []


def test_cli_lookup_and_status(two_cycles):
    workdir, _, _ = two_cycles
    user = str(__import__("pandas").read_parquet(workdir / "current" / "users.parquet")["user_id"].iloc[0])
    out = subprocess.run([sys.executable, "-m", "coea.cli", "lookup", "--workdir", str(workdir), "--user", user],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] in ("found", "empty")
    out = subprocess.run([sys.executable, "-m", "coea.cli", "lookup", "--workdir", str(workdir), "--user", "u001"],
                         capture_output=True, text=True, cwd=REPO)  # the tiny world's users are u00..u79
    assert out.returncode == 6 and json.loads(out.stdout)["status"] == "unknown_user"
    out = subprocess.run([sys.executable, "-m", "coea.cli", "status", "--workdir", str(workdir), "--json"],
                         capture_output=True, text=True, cwd=REPO)
    assert json.loads(out.stdout)["promoted_round"] in (1, 2)


def test_rerun_after_crash_in_a_stage_finishes(cfg, two_cycles, monkeypatch):
    workdir, _, second = two_cycles
    monkeypatch.setenv("COEA_FAULT", "pco:before_commit")
    with pytest.raises(Exception, match="injected fault"):
        run_cycle(cfg, workdir)
    promoted = read_state(workdir)["promoted_round"]
    assert read_state(workdir)["rounds"][-1]["status"] == "failed"
    monkeypatch.delenv("COEA_FAULT")
    third = run_cycle(cfg, workdir)
    assert third.round == 3 and (third.promoted or read_state(workdir)["promoted_round"] == promoted)


def test_rollback(two_cycles):
    workdir, _, _ = two_cycles
    rollback(workdir, 1)
    assert read_state(workdir)["promoted_round"] == 1
    assert lookup(workdir, csid="default", recent=[])["round"] == 1


def test_lock_blocks_a_second_cycle(cfg, tmp_path):
    with workdir_lock(tmp_path):
        with pytest.raises(LockHeldError):
            run_cycle(cfg, tmp_path)


def test_guardrail_refuses_a_drop(cfg, tmp_path):
    from loops.state import record_round

    (tmp_path / "rounds" / "001").mkdir(parents=True)
    record_round(tmp_path, 1, "promoted", metrics={"val/C-H@1": 0.6})
    drop = 0.6 - cfg.cycle.guardrail_margin - 0.01
    ok, reason = guardrail(cfg, tmp_path, {"val/C-H@1": drop, "val/users": 100})
    assert not ok and "C-H@1" in reason
    assert guardrail(cfg, tmp_path, {"val/C-H@1": 0.59, "val/users": 100})[0]
    assert guardrail(cfg, tmp_path, {"val/C-H@1": drop, "val/users": 3})[0]  # too few users to judge


def test_validation_split_is_stable_and_about_ten_percent():
    users = [str(i) for i in range(5000)]
    share = sum(map(is_validation_user, users)) / len(users)
    assert 0.08 < share < 0.12 and is_validation_user("42") == is_validation_user("42")


def test_replay_cutoffs_advance(cfg):
    from coea.data.loaders import load_interactions

    inter = load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)
    c = [cutoff(cfg, inter, k) for k in range(4)]
    assert c == sorted(c) and c[1] - c[0] == int(cfg.cycle.replay_days * 86400)


def test_pco_samples_eq15_records_scored_by_the_rounds_own_relevance_llm(two_cycles, cfg):
    """N = floor(f * |D_k|) records of training users; chosen / rejected carry round k's own Relevance scores."""
    from coea.dsie import load_dsie
    from coea.inference import load_models
    from coea.prompts import relevance_prompt
    from coea.relevance import score
    from coea.rounds import latest_dsie_dir

    workdir, _, _ = two_cycles
    for k in (1, 2):
        rp = workdir / "rounds" / f"{k:03d}"
        metrics = json.loads((rp / "metrics.json").read_text())
        assert metrics["pco/sampled_records"] == int(cfg.pco.sample_fraction * metrics["pco/dk_records"])
        assert metrics["pco/dk_records"] > metrics["keys/users"]  # records are clicks, not users
        pairs = json.loads((rp / "pco" / "pairs.json").read_text())
        assert 0 < len(pairs) <= metrics["pco/sampled_records"] and metrics["pco/pairs"] == len(pairs)
        assert not any(is_validation_user(p["user_id"]) for p in pairs)
        models = load_models(cfg, workdir, metrics["cycle/base_round"], k, "cpu")
        portraits = load_dsie(latest_dsie_dir(workdir, k)).portraits
        texts = [relevance_prompt(cfg.prompts, portraits.get(p["csid"]) or portraits["default"], p["recent"],
                                  p["chosen"].strip()) for p in pairs[:8]]
        again = score(models.relevance, models.tokenizer, texts, calibration=models.calibration)
        assert again == pytest.approx([p["chosen_score"] for p in pairs[:8]], abs=1e-5)


def test_relevance_update_reports_heldout_and_keeps_a_bounded_replay(two_cycles, cfg):
    workdir, _, _ = two_cycles
    for k in (1, 2):
        rp = workdir / "rounds" / f"{k:03d}"
        metrics = json.loads((rp / "metrics.json").read_text())
        assert metrics["relevance/judged"] == 1
        for m in ("accuracy", "accuracy_new", "popularity_accuracy", "share_accuracy", "ece_applied"):
            assert f"relevance/heldout_{m}" in metrics
        replay = (rp / "relevance" / "replay.jsonl").read_text().splitlines()
        assert 0 < len(replay) <= cfg.relevance.replay_pairs
        assert metrics["relevance/train_pairs"] <= metrics["relevance/new_pairs"] + cfg.relevance.replay_pairs
        assert "guardrail/delta" in metrics and metrics["guardrail/paired_users"] == metrics["val/users"]


def test_a_worse_relevance_model_is_not_kept(cfg, tmp_path, monkeypatch):
    """The update is replaced by the promoted model with its score head negated: the round keeps the promoted one."""
    import shutil

    from safetensors.torch import load_file, save_file

    import loops.relevance_update as ru
    from loops.reward import RewardResult

    def negated_update(cfg, workdir, previous, pairs, eval_pairs, out_dir):
        shutil.copytree(previous, out_dir / "model")
        path = out_dir / "model" / "adapter_model.safetensors"
        tensors = load_file(path)
        save_file({n: -t if "score" in n else t for n, t in tensors.items()}, path)
        return RewardResult(out_dir / "model", [0.7], len(pairs), float("nan"))

    monkeypatch.setattr(ru, "_update_relevance", negated_update)
    result = run_cycle(cfg, tmp_path)
    m = result.metrics
    assert m["relevance/trained_accuracy"] < m["relevance/promoted_accuracy"]
    assert m["relevance/kept_promoted"] == 1 and m["relevance/heldout_accuracy"] == m["relevance/promoted_accuracy"]
    kept = tmp_path / "rounds" / "001" / "relevance" / "model" / "adapter_model.safetensors"
    promoted = tmp_path / "rounds" / "000" / "relevance" / "model" / "adapter_model.safetensors"
    assert kept.read_bytes() == promoted.read_bytes()
    assert json.loads((tmp_path / "rounds" / "001" / "relevance" / "calibration.json").read_text())["source"] \
        .startswith("carried from round 0")

"""Round 0 end to end on a tiny synthetic world; a rerun skips every finished stage and redoes a missing one."""

from __future__ import annotations

import json
import shutil

import pytest

from loops.bootstrap import run_bootstrap


def _refuse(*args, **kwargs):
    raise AssertionError("a finished stage ran again")


@pytest.fixture(scope="module")
def round0(tiny_cfg, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bootstrap")
    return workdir, run_bootstrap(tiny_cfg, workdir)


def test_bootstrap_writes_every_stage_and_the_report(round0):
    workdir, res = round0
    rp = workdir / "rounds" / "000"
    for path in ["dsie/users.parquet", "dsie/groups.jsonl", "backbone/model/config.json",
                 "backbone/tokenizer/tokenizer.json", "novelty/adapter/adapter_config.json",
                 "novelty/metrics.json", "relevance/model/adapter_config.json", "relevance/calibration.json",
                 "relevance/metrics.json", "backbone/vocab.json", "report.json"]:
        assert (rp / path).exists(), path
    for stage in ["backbone", "novelty", "relevance"]:
        assert "versions" in json.loads((rp / stage / "manifest.json").read_text())
    report = json.loads((rp / "report.json").read_text())
    assert report["novelty"]["valid_candidate_rate"] == 1.0 and report["novelty"]["validation_cases"] > 0
    assert 0.0 <= res.novelty_hit_at_5 <= 1.0 and 0.0 <= res.popularity_hit_at_5 <= 1.0
    assert 0.0 <= res.relevance_accuracy <= 1.0 and report["relevance"]["eval_pairs"] > 0
    assert len(report["novelty"]["sft_loss_curve"]) >= 1 and res.sft_final_loss == report["novelty"][
        "sft_loss_curve"][-1]
    assert 0 < res.keys <= res.users
    assert {"data_dsie_s", "backbone_s", "novelty_sft_s", "relevance_s", "evaluation_s"} <= set(
        report["wall_time_s"])


def test_rerun_skips_finished_stages_and_redoes_a_missing_one(round0, tiny_cfg, monkeypatch):
    import loops.bootstrap

    workdir, first = round0
    rp = workdir / "rounds" / "000"
    for name in ["run_dsie", "build_embedded_backbone", "train_sft", "train_reward"]:
        monkeypatch.setattr(loops.bootstrap, name, _refuse)  # where bootstrap looks them up
    again = run_bootstrap(tiny_cfg, workdir)
    assert again.report == first.report

    shutil.rmtree(rp / "relevance")
    (rp / "report.json").unlink()
    monkeypatch.undo()
    monkeypatch.setattr(loops.bootstrap, "train_sft", _refuse)
    monkeypatch.setattr(loops.bootstrap, "run_dsie", _refuse)
    redone = run_bootstrap(tiny_cfg, workdir)
    assert (rp / "relevance" / "model" / "adapter_config.json").exists()
    assert redone.novelty_hit_at_5 == first.novelty_hit_at_5  # the novelty stage was kept

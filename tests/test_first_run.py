"""The main job as a newcomer runs it (`coea cycle` in a fresh workdir, on a tiny world), and what it leaves.

One cycle through the real console script with W&B offline: a quiet terminal with banners, a short summary, the
log file with everything else, trainer histories in the stage folders, and an offline W&B run that reads back
(with ``wandb leet inspect --json``, the reader wandb ships for ``.wandb`` transaction logs) holding the stage
curves, the round metrics, two model artifacts and the KV Table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_BASE_URL="http://127.0.0.1:9", WANDB_SILENT="true",
               WANDB_DATA_DIR=str(tmp / "wandb-data"), WANDB_CACHE_DIR=str(tmp / "wandb-cache"),
               WANDB_CONFIG_DIR=str(tmp / "wandb-config"), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("WANDB_DIR", None)  # the run goes where a user's would: WORKDIR/tracking/wandb
    env.pop("WANDB_API_KEY", None)
    return env


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_cfg):
    tmp = tmp_path_factory.mktemp("first-run")
    workdir = tmp / "demo"
    tiny_cfg.save(tmp / "tiny.yaml")  # the suite's tiny world (conftest.TINY) as a config file
    cmd = [sys.executable, "-m", "coea.cli", "cycle", "--config", str(tmp / "tiny.yaml"), "--workdir", str(workdir),
           "--set", "tracking.backend=wandb", "--set", "tracking.table_rows=20"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(tmp), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir, proc, tmp


def test_terminal_is_quiet_and_has_banners(first_run):
    _, proc, _ = first_run
    err = proc.stderr
    for noise in ("{'loss'", "FutureWarning", "LOAD REPORT", "score.weight", "it/s]", "examples/s]", "Tip:"):
        assert noise not in err and noise not in proc.stdout, noise
    for stage in ("== round 0", "== DSIE", "== DSIE encoder", "== backbone pretraining", "== Novelty SFT",
                  "== Relevance reward model", "== candidates", "== Novelty DPO + KL", "== Relevance update",
                  "== validation"):
        assert stage in err, stage
    assert re.search(r"== Novelty SFT: [\d,]+ examples, 1 epoch, \d+ steps", err)


def test_summary_is_short_and_says_where_the_files_are(first_run):
    workdir, proc, _ = first_run
    out = proc.stdout.splitlines()
    assert out[0] == "round 1 promoted: serving it now"
    assert len(out) <= 12
    fields = dict(line.strip().split(": ", 1) for line in out[1:])
    assert re.fullmatch(r"[\d,]+ keys for [\d,]+ users, [\d,]+ with aligned categories \(\d+%\)", fields["keys"])
    assert re.fullmatch(r"C-H@1 \d\.\d{3}, C-N@5 \d\.\d{3}, NCP@5 \d\.\d{3}, CLTP@5 \d\.\d{3} \(\d+ held-out users\)",
                        fields["validation"])
    assert fields["time"].count("bootstrap") == 1 and "timings" not in proc.stdout
    assert Path(fields["files"]) == workdir / "rounds" / "001"
    assert Path(fields["plot"]).is_file() and Path(fields["plot"]).name == "metrics.png"
    assert fields["try"].startswith(f"coea lookup --workdir {workdir} --user ")
    log = Path(fields["log"])
    assert log.parent == workdir / "logs" and log.name.startswith("cycle-")
    assert f"log file: {log}" in proc.stderr


def test_log_file_has_what_the_terminal_does_not(first_run):
    workdir, proc, _ = first_run
    text = (workdir / "logs" / "cycle-latest.log").read_text()
    assert re.search(r"coea\.trainer: Novelty SFT step \d+/\d+: loss=", text)  # per-step lines
    assert "coea.cli: coea cycle --config" in text and "finished in" in text
    assert "coea.stage: candidates" in text


def test_trainers_leave_their_history_in_the_stage_folders(first_run):
    workdir, _, _ = first_run
    for stage in ("000/backbone/pretrain", "000/novelty", "000/relevance", "001/pco", "001/relevance"):
        state = json.loads((workdir / "rounds" / stage / "trainer_state.json").read_text())
        assert state["global_step"] == state["max_steps"] > 0
        assert any("loss" in row for row in state["log_history"]), stage


@pytest.fixture(scope="module")
def wandb_records(first_run):
    workdir, _, tmp = first_run
    (run,) = (workdir / "tracking" / "wandb").glob("offline-run-*-round-001-*")
    exe = shutil.which("wandb", path=str(Path(sys.executable).parent)) or "wandb"
    proc = subprocess.run([exe, "leet", "inspect", "--json", str(run)], env=_env(tmp), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_offline_run_holds_stage_curves_against_their_own_step(wandb_records):
    metrics = {m["metric"].get("name"): m["metric"] for m in wandb_records if m["type"] == "metric"}
    history = [r["history"]["item"] for r in wandb_records if r["type"] == "history"]
    for prefix in ("pretrain", "novelty_sft", "relevance_reward", "novelty_dpo", "relevance_update"):
        assert metrics[f"{prefix}/loss"]["step_metric"] == f"{prefix}/global_step", prefix
        steps = [row[f"{prefix}/global_step"] for row in history if f"{prefix}/loss" in row]
        assert steps and steps == sorted(steps) and steps[0] == 1, prefix
    assert metrics["novelty_dpo/rewards/margins"]["step_metric"] == "novelty_dpo/global_step"
    assert metrics["novelty_sft/learning_rate"]["step_metric"] == "novelty_sft/global_step"
    assert metrics["dsie_encoder/loss"]["step_metric"] == "dsie_encoder/epoch"


def test_offline_run_holds_the_round_metrics(wandb_records):
    metrics = {m["metric"].get("name"): m["metric"] for m in wandb_records if m["type"] == "metric"}
    history = [r["history"]["item"] for r in wandb_records if r["type"] == "history"]
    assert metrics["val/C-H@1"]["step_metric"] == "round"
    (row,) = [h for h in history if "val/C-H@1" in h]
    assert row["round"] == 1 and 0 <= row["val/C-H@1"] <= 1 and row["keys/count"] > 0
    assert any(h.get("round") == 0 and "bootstrap/relevance_accuracy" in h for h in history)


def test_offline_run_holds_two_model_artifacts_and_the_kv_table(wandb_records):
    arts = [r["artifact"] for r in wandb_records if r["type"] == "artifact"]
    models = [a for a in arts if a["type"] == "model" and "promoted" in a["aliases"]]
    assert sorted(a["name"].split("-demo")[0] for a in models) == ["novelty-adapter", "relevance-model"]
    assert all("round-1" in a["aliases"] for a in models)
    assert any(p["path"].endswith("adapter_model.safetensors") for a in models for p in a["manifest"]["contents"])
    (kv,) = [a for a in arts if a["type"] == "kv-table"]
    meta = json.loads(kv["metadata"])
    assert meta["round"] == 1 and meta["count"] > 0 and meta["checksum"].startswith("sha256:")
    sample = next(p for p in kv["manifest"]["contents"] if p["path"] == "sample.table.json")
    table = json.loads(Path(sample["local_path"]).read_text())
    assert table["columns"][:6] == ["key", "csid", "portrait", "recent", "categories", "scores"]
    assert 0 < len(table["data"]) <= 20 and all("|" in row[0] for row in table["data"])
    # lineage: adapter (round 0) -> candidates (round 1) -> KV (round 1)
    (cand,) = [a for a in arts if a["type"] == "candidates"]
    assert any(i.startswith("novelty-adapter-") and i.endswith(":round-0") for i in json.loads(cand["metadata"])[
        "inputs"])
    assert meta["inputs"] == [f"{cand['name']}:round-1"]
    assert sorted(a["name"].split("-demo")[0] for a in arts if a["type"] == "model" and "round-0" in a["aliases"]) == [
        "novelty-adapter", "relevance-model"]  # the models round 1 started from


def test_second_cycle_json_result(first_run):
    """`--json` keeps a machine-readable result: status, metrics once (no separate timings), the files."""
    workdir, _, tmp = first_run
    proc = subprocess.run([sys.executable, "-m", "coea.cli", "cycle", "--config", str(tmp / "tiny.yaml"),
                           "--workdir", str(workdir), "--set", "tracking.backend=local", "--json"],
                          cwd=REPO, env=_env(tmp), capture_output=True, text=True, timeout=900)
    result = json.loads(proc.stdout)
    assert result["round"] == 2 and result["status"] in ("promoted", "refused")
    assert proc.returncode == (0 if result["status"] == "promoted" else 4)
    assert "timings" not in result and "time/candidates_s" in result["metrics"]
    assert Path(result["files"]["round"]) == workdir / "rounds" / "002"
    assert Path(result["files"]["log"]).is_file()

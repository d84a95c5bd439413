"""Multi-process path (loops/launch.py, loops/workers.py): 2 gloo processes on CPU against the in-process path.

The round-0 models are built here, untrained (an embedded Qwen2 backbone, a LoRA adapter with non-zero B, a
sequence-classification twin), and saved where the cycle looks for them. Each launch costs process start-up
(~10-20 s on 2 cores). On a CPU-only machine `--multi_gpu` is what starts N processes (torchrun, gloo);
`accelerate launch --cpu` starts one (see docs/cycle.md).
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from coea.workdir import round_dir, write_json
from coea.inference import Key, load_models, propose_and_score
from loops.cycle import stage_candidates
from loops.launch import World, launch_command, run_worker, shard_bounds, world
from loops.workers import _check_world, launch_candidates, launch_dpo, merge_shards, read_rows, write_rows

CATEGORIES = ["Action", "Comedy", "Drama", "Horror", "Musical", "Romance", "Sci-Fi", "Western"]
PORTRAITS = {"default": "likes Drama and Comedy", "0-1": "likes Action and Sci-Fi", "1-2": "likes Horror"}
# 7 keys over 2 ranks: shards of 4 and 3 (uneven on purpose); an empty C'_short and the default CSID included.
KEYS = [Key("0-1", ()), Key("0-1", ("Action",)), Key("0-1", ("Comedy", "Drama")), Key("1-2", ("Horror",)),
        Key("1-2", ("Musical", "Western")), Key("default", ()), Key("default", ("Romance", "Sci-Fi"))]

# Runs inside every worker (PYTHONPATH): records which files each rank opens for writing under the stage dir.
AUDIT = '''
import atexit, json, os, sys
_root, _out, _rank = os.environ.get("COEA_AUDIT_ROOT"), os.environ.get("COEA_AUDIT_OUT"), os.environ.get("RANK")
if _root and _out and _rank is not None:
    _writes = set()
    def _hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2] or 0
            if isinstance(mode, str):
                writing = any(c in mode for c in "wax+")
            else:
                writing = bool(flags & (os.O_WRONLY | os.O_RDWR))
            path = os.path.abspath(os.fsdecode(args[0]))
            if writing and path.startswith(_root):
                _writes.add(path)
    sys.addaudithook(_hook)
    atexit.register(lambda: json.dump(sorted(_writes), open(os.path.join(_out, "writes-%s.json" % _rank), "w")))
'''


@pytest.fixture(scope="module")
def cfg(tiny_cfg):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.cycle.num_processes = 2
    cfg.cycle.launcher_args = "--multi_gpu"  # torchrun: 2 CPU processes with gloo
    return cfg


@pytest.fixture(scope="module")
def workdir(cfg, tmp_path_factory) -> Path:
    """Round-0 models where loops.cycle looks for them: backbone (model + tokenizer), novelty adapter, relevance."""
    from peft import get_peft_model

    from coea.backbones import build_embedded_backbone, load_causal_lm, load_reward_model, lora_config

    workdir = tmp_path_factory.mktemp("launch")
    rp = round_dir(workdir, 0)
    texts = [" ".join(CATEGORIES), *PORTRAITS.values(), "none", cfg.prompts.novelty_infer, cfg.prompts.relevance]
    model_dir, _ = build_embedded_backbone(cfg, texts, rp / "backbone")
    torch.manual_seed(1)
    novelty = get_peft_model(load_causal_lm(model_dir, cfg), lora_config(cfg.lora, "CAUSAL_LM"))
    with torch.no_grad():
        for name, param in novelty.named_parameters():
            if "lora_B" in name:  # a fresh LoRA is the identity; make the adapter matter
                param.normal_(0, 0.5)
    novelty.save_pretrained(rp / "novelty" / "adapter")
    load_reward_model(model_dir, cfg).save_pretrained(rp / "relevance" / "model")
    return workdir


# ------------------------------------------------------------------------------------------- no processes


def test_shard_bounds_are_contiguous_and_cover_in_order():
    assert [shard_bounds(7, 3, r) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]  # hand check in the docstring
    for n in range(0, 12):
        for size in range(1, 5):
            bounds = [shard_bounds(n, size, r) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, in rank order
            assert max(e - s for s, e in bounds) - min(e - s for s, e in bounds) <= 1
    with pytest.raises(ValueError):
        shard_bounds(3, 2, 2)


def _row(key: Key, i: int) -> dict:
    scores = [0.1 * i + 1e-9, 0.7] if i % 2 else []  # some rows with empty lists
    return {"csid": key.csid, "recent": list(key.recent), "candidates": ["Drama", "Horror"][:len(scores)],
            "scores": scores, "aligned": ["Horror"] if scores else [], "aligned_scores": [0.7] if scores else []}


def test_merge_reads_shards_in_rank_order_and_checks_the_keys(tmp_path):
    rows = [_row(k, i) for i, k in enumerate(KEYS)]
    for rank in (1, 0, 2):  # written out of order; read in the order given
        start, end = shard_bounds(len(rows), 3, rank)
        write_rows(tmp_path / f"shard-{rank:03d}.parquet", rows[start:end])
    paths = [tmp_path / f"shard-{r:03d}.parquet" for r in range(3)]
    assert merge_shards(paths, KEYS) == rows  # exact: float64 and empty lists round-trip
    write_rows(tmp_path / "empty.parquet", [])
    assert read_rows(tmp_path / "empty.parquet") == []
    with pytest.raises(RuntimeError, match="not the 7 keys in order"):
        merge_shards(paths[::-1], KEYS)


def test_launch_command_runs_this_interpreter_with_the_launcher_args():
    cmd = launch_command("dpo", Path("/s/spec.json"), num_processes=4,
                         launcher_args="--multi_gpu --main_process_port 1")
    assert cmd[:5] == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "4"]
    assert cmd[5:] == ["--multi_gpu", "--main_process_port", "1", "-m", "loops.workers", "dpo", "/s/spec.json"]
    auto = launch_command("sft", Path("s.json"), num_processes=2, launcher_args="")
    assert auto[5] == "--main_process_port" and int(auto[6]) > 0  # a free port, not torchrun's shared 29500


def test_world_from_the_environment_and_the_size_check(monkeypatch):
    from accelerate import PartialState

    if PartialState._shared_state:
        pytest.skip("PartialState was initialised by an earlier test in this session; world() then reads it")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert world() == World(rank=1, local_rank=1, size=3)
    _check_world({"num_processes": 3})
    with pytest.raises(RuntimeError, match="started 3 process"):
        _check_world({"num_processes": 2})


# ------------------------------------------------------------------------------------------- 2 processes


def test_two_process_candidates_equal_the_in_process_table(cfg, workdir):
    import numpy as np

    cfg, single = copy.deepcopy(cfg), copy.deepcopy(cfg)
    single.cycle.num_processes = 1
    models = load_models(single, workdir, 0, 0, "cpu")
    # An untrained Relevance LLM scores every candidate alike: put tau_align among its scores so that C_align is
    # neither empty nor everything, and the comparison below means something.
    scores = [s for r in propose_and_score(single, models, KEYS, PORTRAITS, CATEGORIES) for s in r["scores"]]
    cfg.relevance.tau_align = single.relevance.tau_align = float(np.median(scores))
    expected = propose_and_score(single, models, KEYS, PORTRAITS, CATEGORIES)

    stage_candidates(single, workdir, 1, 0, KEYS, PORTRAITS, CATEGORIES, "cpu")
    table = stage_candidates(cfg, workdir, 2, 0, KEYS, PORTRAITS, CATEGORIES, "cpu")
    got = table.to_dict("records")
    assert [(r["csid"], tuple(r["recent"])) for r in got] == [(k.csid, k.recent) for k in KEYS]
    for row, want in zip(got, expected):
        assert list(row["candidates"]) == want["candidates"] and list(row["aligned"]) == want["aligned"]
        assert row["scores"] == pytest.approx(want["scores"], abs=1e-6)
        assert row["aligned_scores"] == pytest.approx(want["aligned_scores"], abs=1e-6)
    aligned = sum(map(len, table["aligned"]))
    assert 0 < aligned < sum(map(len, table["candidates"]))  # the comparison is not vacuous
    # Not byte-identical: scoring batches by length over its own input, so a shard's batches differ from the whole
    # list's and float32 sums round differently in the last bit (~3e-8 seen); same columns and types, though.
    one, two = (round_dir(workdir, k) / "candidates" for k in (1, 2))
    assert pq.read_schema(two / "candidates.parquet").equals(pq.read_schema(one / "candidates.parquet"),
                                                            check_metadata=True)
    left = sorted(p.name for p in (two / "worker").iterdir())
    assert "candidates.log" in left and not [n for n in left if n.startswith("shard-") or n == "keys.parquet"]
    assert json.loads((two / "worker" / "candidates.result.json").read_text())["world_size"] == 2


def _audit_writes(tmp_path: Path, out: Path, monkeypatch) -> Path:
    """Make every worker record the files it opens for writing under ``out``; returns where the records go."""
    audit = tmp_path / "audit"
    (audit / "site").mkdir(parents=True)
    (audit / "site" / "sitecustomize.py").write_text(AUDIT)
    monkeypatch.setenv("PYTHONPATH", str(audit / "site"))
    monkeypatch.setenv("COEA_AUDIT_ROOT", str(out.resolve()))
    monkeypatch.setenv("COEA_AUDIT_OUT", str(audit))
    return audit


def _writes(audit: Path) -> dict[int, list[str]]:
    return {r: json.loads((audit / f"writes-{r}.json").read_text()) for r in (0, 1)}  # both ranks ran


def _novelty_pairs(cfg) -> list[dict[str, str]]:
    from coea.prompts import completion_text, novelty_infer_prompt

    return [{"prompt": novelty_infer_prompt(cfg.prompts, PORTRAITS[k.csid], k.recent),
             "chosen": completion_text(CATEGORIES[i % 8]), "rejected": completion_text(CATEGORIES[(i + 3) % 8])}
            for i, k in enumerate(KEYS + KEYS[:1])]  # 8 pairs: 4 per rank, one step


def test_two_process_dpo_trains_and_rank_0_alone_writes(cfg, workdir, tmp_path, monkeypatch):
    out = tmp_path / ".pco.tmp"
    out.mkdir()
    audit = _audit_writes(tmp_path, out, monkeypatch)
    write_json(out / "pairs.json", _novelty_pairs(cfg))
    rp = round_dir(workdir, 0)
    res = launch_dpo(cfg, rp / "backbone" / "model", rp / "novelty" / "adapter", None, rp / "backbone" / "tokenizer",
                     out / "pairs.json", out, seed=0)
    assert res.metrics["steps"] >= 1 and all(torch.isfinite(torch.tensor(v)) for v in res.metrics.values())
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "metrics.json").exists()
    before, after = (load_file(p / "adapter_model.safetensors") for p in (rp / "novelty" / "adapter", out / "adapter"))
    assert any(not torch.equal(before[name], after[name]) for name in before)  # the step moved the LoRA weights
    assert json.loads((out / "metrics.json").read_text())["summary"] == res.metrics
    writes = _writes(audit)
    assert writes[1] == []  # rank 1 wrote nothing the stage keeps
    assert str((out / "adapter" / "adapter_config.json").resolve()) in writes[0]


def test_deepspeed_trains_in_a_launched_process_even_on_one_gpu(cfg):
    from loops.launch import scores_in_workers, trains_in_workers

    one = copy.deepcopy(cfg)
    one.cycle.num_processes = 1
    assert not trains_in_workers(one) and not scores_in_workers(one)  # the plain CPU path: all in-process
    one.cycle.deepspeed = "configs/deepspeed/zero2.json"
    assert trains_in_workers(one) and not scores_in_workers(one)
    cmd = launch_command("dpo", Path("s.json"), num_processes=1, launcher_args="--multi_gpu")
    assert cmd == [sys.executable, "-m", "loops.workers", "dpo", "s.json"]  # no accelerate for a world of one


def test_one_process_worker_gets_a_launchers_environment(cfg, workdir, tmp_path):
    one = copy.deepcopy(cfg)
    one.cycle.num_processes = 1
    out = tmp_path / ".pco.tmp"
    out.mkdir()
    write_json(out / "pairs.json", _novelty_pairs(one)[:4])
    rp = round_dir(workdir, 0)
    res = launch_dpo(one, rp / "backbone" / "model", rp / "novelty" / "adapter", None, rp / "backbone" / "tokenizer",
                     out / "pairs.json", out, seed=0)
    assert res.metrics["steps"] >= 1 and (out / "adapter" / "adapter_config.json").exists()
    assert "[rank 0]" in (out / "worker" / "dpo.log").read_text()  # RANK / WORLD_SIZE reached the worker


def test_a_failing_worker_raises_one_line_naming_the_task_and_the_log(cfg, tmp_path):
    stage_dir = tmp_path / ".candidates.tmp"
    with pytest.raises(RuntimeError) as err:  # an empty workdir: no round-0 models to load
        launch_candidates(cfg, tmp_path / "empty-workdir", 0, 0, KEYS, PORTRAITS, CATEGORIES, stage_dir)
    message = str(err.value)
    log_path = stage_dir / "worker" / "candidates.log"
    assert "\n" not in message and "'candidates'" in message and "exit code" in message
    assert str(log_path) in message and log_path.exists()
    assert "rank" in message  # the worker's own error line is quoted


def test_the_worker_refuses_a_launch_with_fewer_processes(cfg, tmp_path):
    with pytest.raises(RuntimeError, match="started 1 process"):  # `--cpu` alone: accelerate starts one process
        run_worker("sft", {"config": "unused"}, num_processes=2, launcher_args="--cpu", stage_dir=tmp_path)


@pytest.mark.slow
def test_two_process_sft_and_reward_train_and_rank_0_alone_writes(cfg, workdir, tmp_path, monkeypatch):
    from coea.prompts import relevance_prompt
    from loops.workers import launch_reward, launch_sft

    rp = round_dir(workdir, 0)
    model, tokenizer = rp / "backbone" / "model", rp / "backbone" / "tokenizer"
    examples = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in _novelty_pairs(cfg)] * 2
    sft_out = tmp_path / ".novelty.tmp"
    audit = _audit_writes(tmp_path, sft_out, monkeypatch)
    sft = launch_sft(cfg, model, tokenizer, examples, sft_out)
    assert sft.loss_curve and all(map(math.isfinite, sft.loss_curve)) and sft.train_examples == 16
    assert (sft.adapter_dir / "adapter_model.safetensors").exists()
    writes = _writes(audit)
    assert writes[1] == [] and str((sft_out / "adapter" / "adapter_config.json").resolve()) in writes[0]

    pairs = [{"prompt": "", "chosen": relevance_prompt(cfg.prompts, PORTRAITS[k.csid], k.recent, "Drama"),
              "rejected": relevance_prompt(cfg.prompts, PORTRAITS[k.csid], k.recent, "Horror")} for k in KEYS] * 2
    reward_out = tmp_path / ".relevance.tmp"
    audit = _audit_writes(tmp_path / "reward", reward_out, monkeypatch)
    reward = launch_reward(cfg, model, tokenizer, pairs, reward_out, epochs=1, eval_pairs=pairs[:4])
    assert reward.loss_curve and all(map(math.isfinite, reward.loss_curve)) and 0 <= reward.accuracy <= 1
    assert (reward.model_dir / "config.json").exists()
    writes = _writes(audit)
    assert writes[1] == [] and str((reward_out / "model" / "config.json").resolve()) in writes[0]


@pytest.mark.slow
def test_a_cycle_on_two_processes(cfg, tmp_path):
    """Bootstrap + round 1 with every launchable stage on 2 workers: the stages commit and keep their worker logs."""
    from loops.cycle import run_cycle

    result = run_cycle(cfg, tmp_path)
    assert result.round == 1 and result.metrics["kv/entries"] == result.metrics["keys/count"]
    logs = {"000/backbone/pretrain": "sft", "000/novelty": "sft", "000/relevance": "reward",
            "001/candidates": "candidates", "001/pco": "dpo", "001/relevance": "reward"}
    for where, task in logs.items():
        assert (tmp_path / "rounds" / where / "worker" / f"{task}.log").exists(), where
    assert not list((tmp_path / "rounds").glob("*/.*.tmp"))  # every stage committed

"""Distributed workers of the cycle: ``python -m loops.workers TASK SPEC`` under ``accelerate launch``. docs/cycle.md.

Each task has two halves, side by side here:

- the orchestrator half (``launch_*``), called by the cycle / bootstrap when ``loops.launch.trains_in_workers`` /
  ``scores_in_workers`` say so (several processes; training also under DeepSpeed): it writes the inputs as files
  (config YAML, JSON, Parquet; never pickles) into the stage's temp dir, runs :func:`loops.launch.run_worker`, and
  turns the result back into what the in-process call returns;
- the worker half (``_candidates``, ``_sft``, ``_reward``, ``_dpo``), run by every rank:

    candidates  each rank loads the round's models on its own device, scores its contiguous shard of the keys
                (loops.launch.shard_bounds) and writes ``shard-RRR.parquet``; the orchestrator concatenates the
                shards in rank order, which is key order: the single-process table's rows (scores to float32
                rounding, see :func:`launch_candidates`)
    sft         loops.sft.train_sft        } HF Trainer / trl run data-parallel over the ranks (DDP, or ZeRO-2
    reward      loops.reward.train_reward  } when cycle.deepspeed names configs/deepspeed/zero2.json); rank 0
    dpo         loops.dpo.run_dpo          } alone writes the files the stage keeps

Rank 0 writes the task's JSON result; the orchestrator commits the stage. Workers write only under the temp dir
they are given.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from coea.backbones import load_tokenizer
from coea.config import Config, load_config
from coea.inference import Key, load_models, propose_and_score
from coea.workdir import read_json, setup_run, write_json
from loops.dpo import DpoResult, run_dpo
from loops.launch import ERROR_MARK, run_worker, shard_bounds, worker_dir, world
from loops.pairs import preference_dataset
from loops.reward import RewardResult, train_reward
from loops.sft import SftResult, train_sft

log = logging.getLogger("coea.workers")

# Column types spelled out: pyarrow cannot infer a list's item type from a shard whose lists are all empty.
_KEY_COLUMNS = (("csid", "string"), ("recent", "list<string>"))
_ROW_COLUMNS = _KEY_COLUMNS + (("candidates", "list<string>"), ("scores", "list<double>"),
                               ("aligned", "list<string>"), ("aligned_scores", "list<double>"))


# ------------------------------------------------------------------------------------------------ file formats


def _schema(columns: tuple[tuple[str, str], ...]):
    import pyarrow as pa

    types = {"string": pa.string(), "list<string>": pa.list_(pa.string()), "list<double>": pa.list_(pa.float64())}
    return pa.schema([(name, types[kind]) for name, kind in columns])


def write_rows(path: Path, rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...] = _ROW_COLUMNS) -> None:
    """Rows (dicts of str / lists) as Parquet, atomically: a shard is complete or absent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=_schema(columns)), tmp)
    os.replace(tmp, path)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows back as Python dicts, lists and floats (float64 round-trips exactly)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def merge_shards(paths: list[Path], keys: list) -> list[dict[str, Any]]:
    """Concatenate candidate shards in the given (rank) order and check that the rows are ``keys``, in order."""
    rows = [row for path in paths for row in read_rows(path)]
    got = [(r["csid"], tuple(r["recent"])) for r in rows]
    if got != [(k.csid, tuple(k.recent)) for k in keys]:
        raise RuntimeError(f"candidates: the {len(paths)} shards hold {len(rows)} rows that are not the {len(keys)} "
                           "keys in order")
    return rows


def _save_config(cfg: Config, wdir: Path) -> str:
    path = wdir / "config.yaml"
    cfg.save(path)
    return str(path)


def _launch(cfg: Config, task: str, spec: dict[str, Any], stage_dir: Path) -> dict[str, Any]:
    return run_worker(task, spec, num_processes=cfg.cycle.num_processes, launcher_args=cfg.cycle.launcher_args,
                      stage_dir=stage_dir)


# ------------------------------------------------------------------------------------------ orchestrator side


def launch_candidates(cfg: Config, workdir: Path, novelty_round: int, relevance_round: int, keys: list,
                      portraits: dict[str, str], categories: list[str], stage_dir: Path) -> list[dict[str, Any]]:
    """:func:`coea.inference.propose_and_score` over ``keys`` on ``cycle.num_processes`` workers; same rows, same order.

    Score mode (the default) is deterministic: candidates and C_align equal the in-process ones, and scores agree to
    float32 rounding (~1e-7; scoring batches texts by length over its own input, so a shard's batches differ from the
    whole list's). Sample mode seeds every shard with ``run.seed``: reproducible for a given ``num_processes``, but a
    key's sample depends on the shard layout.
    """
    wdir = worker_dir(stage_dir)
    keys_path = wdir / "keys.parquet"
    write_rows(keys_path, [{"csid": k.csid, "recent": list(k.recent)} for k in keys], _KEY_COLUMNS)
    write_json(wdir / "candidates.inputs.json", {"portraits": portraits, "categories": list(categories)})
    spec = {"config": _save_config(cfg, wdir), "workdir": str(Path(workdir).resolve()),
            "novelty_round": novelty_round, "relevance_round": relevance_round, "keys": str(keys_path),
            "inputs": str(wdir / "candidates.inputs.json"), "shard_dir": str(wdir)}
    result = _launch(cfg, "candidates", spec, stage_dir)
    shards = [wdir / name for name in result["shards"]]
    rows = merge_shards(shards, keys)
    for path in [*shards, keys_path]:  # the merged table (and users.parquet) hold the same data
        path.unlink()
    return rows


def launch_sft(cfg: Config, base_model: str | Path, tokenizer_dir: str | Path, examples: list[dict[str, str]],
               out_dir: Path, **options: Any):
    """:func:`loops.sft.train_sft` on ``cycle.num_processes`` workers (data-parallel); returns its ``SftResult``.

    ``options`` are train_sft's keywords (full_weights, completion_only, epochs, lr).
    """
    wdir = worker_dir(out_dir)
    write_json(wdir / "examples.json", examples)
    spec = {"config": _save_config(cfg, wdir), "base_model": str(base_model), "tokenizer": str(tokenizer_dir),
            "examples": str(wdir / "examples.json"), "out_dir": str(Path(out_dir).resolve()), "options": options}
    r = _launch(cfg, "sft", spec, out_dir)
    return SftResult(adapter_dir=Path(r["adapter_dir"]), loss_curve=r["loss_curve"],
                     train_examples=r["train_examples"])


def launch_reward(cfg: Config, init_model: str | Path, tokenizer_dir: str | Path, pairs: list[dict[str, str]],
                  out_dir: Path, *, epochs: float, eval_pairs: list[dict[str, str]] | None = None,
                  base_model: str | Path | None = None):
    """:func:`loops.reward.train_reward` on ``cycle.num_processes`` workers; returns its ``RewardResult``."""
    wdir = worker_dir(out_dir)
    write_json(wdir / "pairs.json", pairs)
    write_json(wdir / "eval_pairs.json", eval_pairs or [])
    spec = {"config": _save_config(cfg, wdir), "init_model": str(init_model), "tokenizer": str(tokenizer_dir),
            "pairs": str(wdir / "pairs.json"), "eval_pairs": str(wdir / "eval_pairs.json"),
            "out_dir": str(Path(out_dir).resolve()), "epochs": epochs,
            "base_model": str(base_model) if base_model is not None else None}
    r = _launch(cfg, "reward", spec, out_dir)
    return RewardResult(model_dir=Path(r["model_dir"]), loss_curve=r["loss_curve"], train_pairs=r["train_pairs"],
                        accuracy=r["accuracy"], calibration=r.get("calibration", {}))


def launch_dpo(cfg: Config, base_model: str | Path, previous_adapter: Path | None, anchor_adapter: Path | None,
               tokenizer_dir: str | Path, pairs_file: Path, out_dir: Path, *, seed: int):
    """:func:`loops.dpo.run_dpo` (``cfg.pco``, ``cfg.lora``, dtype, deepspeed) on the workers; its ``DpoResult``.

    ``pairs_file`` is the stage's ``pairs.json`` (records with prompt / chosen / rejected).
    """
    wdir = worker_dir(out_dir)
    spec = {"config": _save_config(cfg, wdir), "base_model": str(base_model),
            "previous_adapter": str(previous_adapter) if previous_adapter else None,
            "anchor_adapter": str(anchor_adapter) if anchor_adapter else None, "tokenizer": str(tokenizer_dir),
            "pairs": str(pairs_file), "out_dir": str(Path(out_dir).resolve()), "seed": seed}
    r = _launch(cfg, "dpo", spec, out_dir)
    return DpoResult(Path(r["adapter_dir"]), r["metrics"], r["alerts"], r["versions"])


# ------------------------------------------------------------------------------------------------- worker side


def _candidates(cfg: Config, spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    w = world()
    keys = [Key(r["csid"], tuple(r["recent"])) for r in read_rows(Path(spec["keys"]))]
    start, end = shard_bounds(len(keys), w.size, w.rank)
    rows: list[dict[str, Any]] = []
    if end > start:  # a rank without keys never loads the models
        device = f"cuda:{w.local_rank}" if torch.cuda.is_available() else "cpu"
        if device != "cpu":
            torch.cuda.set_device(device)
        inputs = read_json(spec["inputs"])
        models = load_models(cfg, Path(spec["workdir"]), spec["novelty_round"], spec["relevance_round"], device)
        rows = propose_and_score(cfg, models, keys[start:end], inputs["portraits"], inputs["categories"])
    write_rows(Path(spec["shard_dir"]) / f"shard-{w.rank:03d}.parquet", rows)
    log.info("candidates: keys [%d, %d) of %d scored", start, end, len(keys))
    # Rank 0 names every shard; the orchestrator reads them only after all ranks exited with status 0.
    return {"world_size": w.size, "keys": len(keys), "shards": [f"shard-{r:03d}.parquet" for r in range(w.size)]}


def _sft(cfg: Config, spec: dict[str, Any]) -> dict[str, Any]:
    tok = load_tokenizer(spec["tokenizer"], cfg)
    res = train_sft(cfg, spec["base_model"], tok, read_json(spec["examples"]), Path(spec["out_dir"]),
                    **spec["options"])
    return {"adapter_dir": str(res.adapter_dir), "loss_curve": res.loss_curve, "train_examples": res.train_examples}


def _reward(cfg: Config, spec: dict[str, Any]) -> dict[str, Any]:
    tok = load_tokenizer(spec["tokenizer"], cfg)
    res = train_reward(cfg, spec["init_model"], tok, read_json(spec["pairs"]), Path(spec["out_dir"]),
                       epochs=spec["epochs"], eval_pairs=read_json(spec["eval_pairs"]),
                       base_model=spec.get("base_model"))
    return {"model_dir": str(res.model_dir), "loss_curve": res.loss_curve, "train_pairs": res.train_pairs,
            "accuracy": res.accuracy, "calibration": res.calibration}


def _dpo(cfg: Config, spec: dict[str, Any]) -> dict[str, Any]:
    def path(name: str) -> Path | None:
        return Path(spec[name]) if spec[name] else None

    res = run_dpo(cfg.pco, cfg.lora, spec["base_model"], path("previous_adapter"), path("anchor_adapter"),
                  spec["tokenizer"], preference_dataset(read_json(spec["pairs"])), spec["out_dir"],
                  seed=spec["seed"], dtype=cfg.backbone.dtype, deepspeed=cfg.cycle.deepspeed)
    return {"adapter_dir": str(res.adapter_dir), "metrics": res.metrics, "alerts": res.alerts,
            "versions": res.versions}


TASKS = {"candidates": _candidates, "sft": _sft, "reward": _reward, "dpo": _dpo}


def _check_world(spec: dict[str, Any]) -> None:
    size, wanted = world().size, spec["num_processes"]
    if size != wanted:
        raise RuntimeError(
            f"accelerate started {size} process(es) for cycle.num_processes = {wanted}: on a machine without several "
            "GPUs pass --multi_gpu in cycle.launcher_args (torchrun; gloo on CPU); --cpu alone starts one process")


def main(argv: list[str] | None = None) -> int:
    """``python -m loops.workers TASK SPEC``: run one task on this rank; rank 0 writes the result JSON."""
    task, spec_path = argv if argv is not None else sys.argv[1:]
    w = world()
    logging.basicConfig(level=logging.INFO if w.rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {w.rank}] %(levelname)s %(name)s: %(message)s")
    try:
        spec = read_json(spec_path)
        _check_world(spec)
        cfg = load_config(spec["config"])
        setup_run(cfg)  # the orchestrator's seed and threads, the same on every rank
        result = TASKS[task](cfg, spec)
        if w.rank == 0:
            write_json(spec["result"], result)
    except Exception as exc:
        cause = " ".join(f"{type(exc).__name__}: {exc}".split())
        log.error("%s %s (rank %d of %d)", ERROR_MARK, cause, w.rank, w.size)
        raise
    finally:
        _leave_process_group()
    return 0


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

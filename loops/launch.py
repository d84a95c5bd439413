"""Run one stage's heavy part as launched workers (``cycle.num_processes > 1``, or DeepSpeed). See docs/cycle.md.

The cycle stays one process, the orchestrator: it holds the workdir lock, opens the stage's temp dir, writes the
worker's inputs there, and commits (renames) the stage when the workers succeed. :func:`run_worker` runs

    python -m accelerate.commands.launch --num_processes N [--main_process_port P] [launcher_args]
        -m loops.workers TASK STAGE_TMP/worker/TASK.spec.json

and waits for it; the workers (loops/workers.py) write only into that temp dir, and rank 0 writes the JSON result
this returns. Everything the workers print goes to ``STAGE_TMP/worker/TASK.log``.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

from coea.workdir import read_json, write_json

log = logging.getLogger("coea.launch")

# A failing worker logs one line starting with this, so the orchestrator's error can quote the cause.
ERROR_MARK = "coea-worker-error:"
REPO = Path(__file__).resolve().parent.parent


class World(NamedTuple):
    """Where this process sits in a launch: global rank, rank on this machine, number of processes."""

    rank: int
    local_rank: int
    size: int


def world() -> World:
    """This process's rank and world size: accelerate's PartialState once it exists, else the launcher's env.

    Reading the environment needs no process group, so the candidates task (which never communicates) does not
    start one. Outside a launch this is ``World(0, 0, 1)``.
    """
    from accelerate import PartialState

    if PartialState._shared_state:  # initialised (e.g. by a Trainer): it also knows MPI launches
        state = PartialState()
        return World(state.process_index, state.local_process_index, state.num_processes)
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def shard_bounds(n: int, size: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[start, end)`` of ``n`` items among ``size`` processes.

    The first ``n % size`` ranks take one item more (accelerate's ``split_between_processes`` rule), so shards
    concatenated in rank order are the items in their original order. Hand check: n = 7, size = 3 ->
    [0, 3), [3, 5), [5, 7).
    """
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in a world of {size} processes")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def worker_dir(stage_dir: Path) -> Path:
    """``STAGE_TMP/worker``: the spec, inputs, log and result of the stage's worker launches."""
    path = Path(stage_dir) / "worker"
    path.mkdir(parents=True, exist_ok=True)
    return path


def scores_in_workers(cfg) -> bool:
    """Candidate scoring is sharded over workers when there are several processes."""
    return cfg.cycle.num_processes > 1


def trains_in_workers(cfg) -> bool:
    """SFT / reward / DPO training runs in workers with several processes, and always under DeepSpeed.

    DeepSpeed (through accelerate) initialises its process group only in a launched process (``LOCAL_RANK``,
    ``MASTER_ADDR``, ... set); a plain process would fall back to MPI discovery and fail. So even one GPU gets a
    one-process launch, which :func:`launch_command` makes without accelerate.
    """
    return cfg.cycle.num_processes > 1 or bool(cfg.cycle.deepspeed)


def launch_command(task: str, spec_path: Path, *, num_processes: int, launcher_args: str) -> list[str]:
    """The argv :func:`run_worker` runs (same interpreter as this process).

    One process runs the worker directly, with the launcher's environment set by :func:`_worker_env`
    (what torchrun would set for a world of one); ``launcher_args`` then do not apply.
    """
    if num_processes == 1:
        return [sys.executable, "-m", "loops.workers", task, str(spec_path)]
    extra = shlex.split(launcher_args)
    port = [] if any(a.startswith("--main_process_port") for a in extra) else ["--main_process_port", str(_free_port())]
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes), *port, *extra,
            "-m", "loops.workers", task, str(spec_path)]


def run_worker(task: str, spec: dict[str, Any], *, num_processes: int, launcher_args: str,
               stage_dir: Path) -> dict[str, Any]:
    """Run ``loops.workers TASK`` on ``num_processes`` processes and return the result its rank 0 wrote.

    Args:
        task: ``candidates`` | ``sft`` | ``reward`` | ``dpo`` (loops/workers.py).
        spec: the task's inputs, JSON-serialisable (paths of files already written under ``stage_dir``).
        num_processes: processes to launch (the workers refuse to run on another number); 1 runs the worker as
            one process with a launcher's environment (DeepSpeed on one GPU).
        launcher_args: extra ``accelerate launch`` arguments (``cycle.launcher_args``).
        stage_dir: the stage's temp dir; spec, log and result go to its ``worker/`` folder.

    Raises:
        RuntimeError: one line naming the task, the exit code and the log (and the worker's error, when it logged
            one), if the launch exits non-zero or leaves no result.
    """
    wdir = worker_dir(stage_dir)
    spec_path, log_path, result_path = (wdir / f"{task}.{name}" for name in ("spec.json", "log", "result.json"))
    result_path.unlink(missing_ok=True)
    write_json(spec_path, {**spec, "task": task, "num_processes": num_processes, "result": str(result_path)})
    cmd = launch_command(task, spec_path, num_processes=num_processes, launcher_args=launcher_args)
    _release_cached_gpu_memory()
    log.info("%s: launching %d processes (log: %s): %s", task, num_processes, log_path, shlex.join(cmd))
    t0 = time.perf_counter()
    with open(log_path, "w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=_worker_env(num_processes)).returncode
    if code != 0 or not result_path.exists():
        why = f"exit code {code}" if code != 0 else "exit code 0 but no result"
        raise RuntimeError(f"worker {task!r} failed ({why}); log: {log_path}{_cause(log_path)}")
    log.info("%s: %d processes finished in %.1f s", task, num_processes, time.perf_counter() - t0)
    return read_json(result_path)


def _release_cached_gpu_memory() -> None:
    # What this process cached on GPU 0 (DSIE, the Profile LLM, validation models) would stay reserved while
    # rank 0 needs it; free blocks go back to the driver. Never initialises CUDA in a process that has not.
    import gc

    import torch

    if torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def _worker_env(num_processes: int) -> dict[str, str]:
    # The workers must import this checkout's loops/ and coea/, whatever the current directory (which they keep:
    # relative config paths such as cycle.deepspeed resolve as they do for the orchestrator).
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if num_processes == 1:  # a world of one, as torchrun would describe it (DeepSpeed needs it)
        env.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())})
    return env


def _free_port() -> int:
    # torchrun's default port (29500) collides when two cycles (other workdirs, tests) launch on one host.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cause(log_path: Path) -> str:
    """`` -- <the worker's error line>`` (or the log's last line), flattened to one line for the error message."""
    with open(log_path, errors="replace") as f:
        tail = deque((line.strip() for line in f if line.strip()), maxlen=200)
    marked = [line[line.index(ERROR_MARK) + len(ERROR_MARK):].strip() for line in tail if ERROR_MARK in line]
    cause = marked[0] if marked else (tail[-1] if tail else "")
    return f" -- {cause[:400]}" if cause else ""

"""Work-directory layout, restartable stages, manifests and run plumbing shared by every stage.

Layout (docs/architecture.md, The work directory)::

    WORKDIR/
      state.json          promoted round, history of rounds, config fingerprint
      rounds/NNN/<stage>/ everything round NNN produced, one folder per stage
      current -> rounds/NNN

A stage writes into ``rounds/NNN/.<stage>.tmp`` and renames it to ``rounds/NNN/<stage>`` when it succeeds, so
a finished stage is exactly "its folder exists" and a rerun after a crash redoes only the unfinished one.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from coea.console import progress as shared_progress

log = logging.getLogger("coea")

TRACKED_LIBRARIES = (
    "torch", "transformers", "trl", "peft", "accelerate", "lightning", "vector-quantize-pytorch", "rocksdict",
    "pyarrow", "pandas", "numpy", "wandb", "pyspark", "deepspeed",
)


def round_dir(workdir: str | Path, k: int) -> Path:
    return Path(workdir) / "rounds" / f"{k:03d}"


def stage_done(round_path: Path, stage: str) -> bool:
    return (Path(round_path) / stage).is_dir()


@contextlib.contextmanager
def stage(round_path: str | Path, name: str) -> Iterator[Path]:
    """Give a temp directory for stage ``name``; rename it to ``round_path/name`` only if the body succeeds.

    A leftover temp directory from a crashed run is removed first. Callers check :func:`stage_done` to skip a
    finished stage.
    """
    round_path = Path(round_path)
    round_path.mkdir(parents=True, exist_ok=True)
    final = round_path / name
    if final.exists():
        raise FileExistsError(f"stage {name} already finished in {round_path}")
    tmp = round_path / f".{name}.tmp"
    if tmp.exists():
        log.info("removing leftover %s from an interrupted run", tmp)
        shutil.rmtree(tmp)
    tmp.mkdir()
    fault_point(f"{name}:start")
    yield tmp
    fault_point(f"{name}:before_commit")
    os.replace(tmp, final)


#: Stage order in a round's folder, for :func:`log_finished_stages` (other stage folders follow by name).
STAGE_ORDER = ("data", "dsie", "backbone", "novelty", "relevance", "candidates", "kv", "pco")


def log_finished_stages(round_path: str | Path, label: str, extra: dict[str, bool] | None = None, *,
                        this_run: tuple[str, ...] = ()) -> list[str]:
    """A resume: one INFO line per stage of ``round_path`` that finished in an earlier run and will be skipped.

    Every caller of :func:`stage` skips a stage whose folder exists, so the folders present now are exactly
    the stages this run skips, except ``this_run``: stages this same run already wrote (e.g. the data stage,
    written before the round's attempt starts), which are not announced. ``extra`` names finished stages that
    live elsewhere (e.g. the KV version).
    """
    round_path = Path(round_path)
    found = {p.name for p in round_path.iterdir() if p.is_dir() and not p.name.startswith(".")} \
        if round_path.is_dir() else set()
    found |= {name for name, done in (extra or {}).items() if done}
    found -= set(this_run)
    names = [n for n in STAGE_ORDER if n in found] + sorted(found - set(STAGE_ORDER))
    for name in names:
        log.info("%s: stage %s finished in an earlier run; skipping it", label, name)
    return names


class InjectedFault(RuntimeError):
    """Raised by :func:`fault_point` when COEA_FAULT names the current point (crash-safety tests)."""


def fault_point(name: str) -> None:
    """Crash on purpose when the environment variable ``COEA_FAULT`` equals ``name``.

    ``COEA_FAULT_MODE=exit`` kills the process with ``os._exit(137)`` (as a SIGKILL would) instead of raising.
    """
    if os.environ.get("COEA_FAULT") == name:
        if os.environ.get("COEA_FAULT_MODE") == "exit":
            os._exit(137)
        raise InjectedFault(f"injected fault at {name}")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for lib in TRACKED_LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = None
    return out


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default))
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_manifest(stage_path: Path, cfg: Any, extra: dict[str, Any] | None = None) -> None:
    """Record the resolved config, library versions and host facts next to a stage's outputs."""
    cfg.save(stage_path / "config.yaml")
    write_json(stage_path / "manifest.json", {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config_fingerprint": cfg.fingerprint(),
        "versions": library_versions(),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        **(extra or {}),
    })


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def setup_run(cfg: Any) -> str:
    """Seed, thread count (:func:`configure_threads`) and device for a run; returns the torch device string."""
    seed_everything(cfg.run.seed)
    configure_threads(cfg.run.num_threads)
    return resolve_device(cfg.run.device)


#: Environment knobs :func:`configure_threads` sets, read by libraries (and child processes) that start later.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")


def configure_threads(n: int) -> int:
    """Cap every thread pool a stage uses at ``n`` threads (``run.num_threads``); 0 leaves the libraries' defaults.

    Why it matters: torch's default is one OpenMP thread per core, and OpenMP threads spin-wait at every
    barrier. Two runs that each start one thread per core on a shared machine spin against each other, and a
    stage of small ops (the embedded models) slows down many times over (benchmarks/threads.py). The knobs:

    - torch intra-op threads (``torch.set_num_threads``, what HF Trainer, trl and Lightning compute with) and
      inter-op threads (only settable before the first inter-op work; skipped afterwards);
    - the OpenMP / MKL / OpenBLAS pools of numpy, scikit-learn (k-means) and torch, through threadpoolctl;
    - ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``RAYON_NUM_THREADS`` (the Rust
      pool of HF tokenizers) in the environment, for libraries initialised later and for child processes
      (accelerate workers, Spark's Python workers); ``TOKENIZERS_PARALLELISM=false`` when ``n == 1``;
    - ``COEA_SPARK_MASTER=local[n]`` unless it is already set (spark_jobs.session reads it).

    Returns the torch intra-op thread count now in effect.
    """
    import torch

    if n <= 0:
        return torch.get_num_threads()
    for name in THREAD_ENV:
        os.environ[name] = str(n)
    if n == 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("COEA_SPARK_MASTER", f"local[{n}]")
    torch.set_num_threads(n)
    if torch.get_num_interop_threads() != n:
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # inter-op work already ran in this process; the pool is fixed from then on
            log.debug("torch inter-op threads stay at %d (already started)", torch.get_num_interop_threads())
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)
    except ImportError:  # pragma: no cover - scikit-learn (a dependency) requires threadpoolctl >= 3.1
        pass
    return torch.get_num_threads()


def progress(**kwargs: Any):
    """A progress handle on the shared display (coea/console.py): a rich bar with an ETA on a terminal, one
    plain line every ``coea.console.PLAIN_EVERY_S`` seconds elsewhere (cron, CI). ``add_task`` / ``advance``."""
    return shared_progress(**kwargs)

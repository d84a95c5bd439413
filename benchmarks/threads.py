"""Two runs sharing the cores: the demo bootstrap alone vs two copies at once, per thread setting, side by side.

    python benchmarks/threads.py --out benchmarks/results/threads.json
    python benchmarks/threads.py --stop-after bootstrap --modes new,old      # the whole bootstrap, slower

Issue 11 saw the demo bootstrap's backbone stage take 10 minutes instead of seconds when two runs shared this
2-core machine. Every measurement here is one fresh process running the real bootstrap (``loops.bootstrap``)
on its own copy of a prepared workdir whose DSIE stage is already done (DSIE has its own thread setting,
``encoder.num_threads``). By default it stops after the backbone stage (the stage the issue timed): the run is
interrupted where the Novelty stage would start, through the crash-safety fault hook (``COEA_FAULT=novelty:start``).

Modes (each is run alone, then as two copies started together; one table, one run, so the load is shared):

    old      run.num_threads = 0: torch's default, one OpenMP thread per core (the default before this change)
    new      run.num_threads = the default of RunConfig now
    passive  run.num_threads = 0 with OMP_WAIT_POLICY=PASSIVE: the old thread count, but idle OpenMP threads sleep
             instead of spin-waiting (a diagnosis: if this removes most of the collapse, spinning was the cause)

Printed and written: per mode the wall time alone, the two copies' wall times, and the slowdown ratio
(mean wall of the two copies / wall alone; 2.0 would be a fair share of the cores when one run used them all,
1.0 when a run uses one core of two). A copy that runs past ``--child-timeout`` is stopped and its wall time is a
lower bound (``timed_out``). The results file is rewritten after every measurement, so an interrupted run keeps
what it measured. The 1-, 5- and 15-minute load averages at every launch are recorded: on a shared machine the
other users' load contaminates every figure, so rerun it on an idle machine for clean numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NEXT_STAGE = {"backbone": "novelty", "novelty": "relevance"}  # stop-after -> the stage whose start stops the run
CLEAN_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS", "OMP_WAIT_POLICY",
             "TOKENIZERS_PARALLELISM", "COEA_FAULT", "COEA_FAULT_MODE")


def _mode_settings(mode: str) -> tuple[list[str], dict[str, str]]:
    """(config overrides, extra environment) of a mode."""
    if mode == "old":
        return ["run.num_threads=0"], {}
    if mode == "new":
        return [], {}
    if mode == "passive":
        return ["run.num_threads=0"], {"OMP_WAIT_POLICY": "PASSIVE"}
    raise SystemExit(f"unknown mode {mode!r} (old, new, passive)")


def prepare(config: str, overrides: list[str], root: Path) -> Path:
    """A workdir whose round 0 has its data and DSIE stages done (one thread, so it is quick and quiet)."""
    prep = root / "prep"
    cmd = [sys.executable, "-m", "coea.cli", "dsie", "--config", config, "--workdir", str(prep),
           "--set", "run.num_threads=1", *sum((["--set", o] for o in overrides), [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env({}))
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit("preparing the DSIE stage failed")
    return prep


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return {**env, **extra}


def launch(config: str, overrides: list[str], prep: Path, root: Path, mode: str, copies: int,
           stop_after: str, timeout: float) -> list[dict]:
    """Start ``copies`` children at once, wait for all; each returns its JSON line."""
    mode_overrides, extra_env = _mode_settings(mode)
    if stop_after in NEXT_STAGE:
        extra_env = {**extra_env, "COEA_FAULT": f"{NEXT_STAGE[stop_after]}:start"}
    procs = []
    for i in range(copies):
        workdir = root / f"{mode}-{copies}-{i}"
        shutil.rmtree(workdir, ignore_errors=True)
        (workdir / "rounds").mkdir(parents=True)
        shutil.copytree(prep / "rounds" / "000", workdir / "rounds" / "000")
        cmd = [sys.executable, __file__, "--child", "--config", config, "--workdir", str(workdir),
               *sum((["--set", o] for o in [*overrides, *mode_overrides]), [])]
        # Files, not pipes: a child blocked on a full pipe while another is read would distort the pair.
        out, err = (open(workdir.with_suffix(f".{name}"), "w") for name in ("out", "err"))
        procs.append((subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=REPO, env=_env(extra_env)),
                      out, err))
    rows = []
    t0 = time.perf_counter()
    for p, out, err in procs:
        try:
            p.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            out.close()
            err.close()
            rows.append({"wall_s": round(time.perf_counter() - t0, 1), "timed_out": True})
            continue
        out.close()
        err.close()
        if p.returncode != 0:
            sys.stderr.write(Path(err.name).read_text()[-3000:])
            raise SystemExit(f"a {mode} child failed with exit {p.returncode}")
        rows.append(json.loads(Path(out.name).read_text().strip().splitlines()[-1]))
    return rows


def child(config: str, overrides: list[str], workdir: Path) -> None:
    """One bootstrap (DSIE already done) in this process; prints one JSON line with its wall time."""
    from coea.config import load_config
    from coea.workdir import InjectedFault
    from loops.bootstrap import run_bootstrap

    cfg = load_config(config, overrides)
    t0 = time.perf_counter()
    stopped = False
    try:
        run_bootstrap(cfg, workdir)
    except InjectedFault:  # stop-after: the next stage's start was reached, so the measured stages are done
        stopped = True
    wall = time.perf_counter() - t0
    import torch

    report = workdir / "rounds" / "000" / "report.json"
    stages = json.loads(report.read_text())["wall_time_s"] if report.exists() else {}
    print(json.dumps({"wall_s": round(wall, 2), "stopped_early": stopped, "stage_s": stages,
                      "torch_threads": torch.get_num_threads(),
                      "torch_interop_threads": torch.get_num_interop_threads(),
                      "run.num_threads": cfg.run.num_threads}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--modes", default="new,passive,old", help="comma-separated: old, new, passive")
    ap.add_argument("--stop-after", default="backbone", choices=["backbone", "novelty", "bootstrap"],
                    help="measure the bootstrap up to the end of this stage (bootstrap = all of it)")
    ap.add_argument("--out", help="write the results JSON here (rewritten after every measurement)")
    ap.add_argument("--child-timeout", type=float, default=1800.0,
                    help="stop a copy after this many seconds; its time is then a lower bound")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.config, args.overrides, Path(args.workdir))
        return

    from coea.config import RunConfig

    root = Path(tempfile.mkdtemp(prefix="coea-threads-"))
    t0 = time.perf_counter()
    meta = {
        "what": f"demo bootstrap up to the end of the {args.stop_after} stage (DSIE prepared beforehand), one "
                "process alone vs two started together, per thread mode",
        "command": " ".join(["python", "benchmarks/threads.py", *sys.argv[1:]]),
        "config": args.config, "overrides": args.overrides, "new_default_num_threads": RunConfig().num_threads,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "cores_available": len(os.sched_getaffinity(0)), "python": platform.python_version()},
        "load_average_before": _load(), "results": {},
    }

    def save() -> None:
        meta["load_average_after"] = _load()
        meta["wall_s_total"] = round(time.perf_counter() - t0, 1)
        if args.out:
            Path(args.out).write_text(json.dumps(meta, indent=2) + "\n")

    try:
        prep = prepare(args.config, args.overrides, root)
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            row: dict = {"load_average_at_start": _load()}
            meta["results"][mode] = row
            alone = launch(args.config, args.overrides, prep, root, mode, 1, args.stop_after, args.child_timeout)[0]
            row.update({"alone_s": alone["wall_s"], "alone": alone, "load_average_before_pair": _load()})
            save()
            pair = launch(args.config, args.overrides, prep, root, mode, 2, args.stop_after, args.child_timeout)
            shared = sum(r["wall_s"] for r in pair) / len(pair)
            row.update({"two_copies_s": [r["wall_s"] for r in pair], "copies": pair,
                        "slowdown": round(shared / alone["wall_s"], 2),
                        "lower_bound": any(r.get("timed_out") for r in pair + [alone]),
                        "torch_threads": alone.get("torch_threads"), "load_average_after": _load()})
            save()
            print(json.dumps({"mode": mode, **{k: v for k, v in row.items() if k not in ("alone", "copies")}}),
                  flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        save()
    print(json.dumps({"load_average_before": meta["load_average_before"],
                      "load_average_after": meta["load_average_after"], "wall_s_total": meta["wall_s_total"]}))


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


if __name__ == "__main__":
    main()

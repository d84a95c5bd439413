"""Wall times of the main job on this machine (issue 4's targets), printed as JSON lines.

    python benchmarks/cycle.py --config configs/demo.yaml --cycles 2 --out benchmarks/results/cycle_demo.json
    python benchmarks/cycle.py --config configs/ml-100k.yaml --cycles 1 --out benchmarks/results/cycle_ml100k.json

Each cycle runs in a fresh process (as cron would run it), so import and model-load time count. The first cycle
includes the bootstrap (round 0). Targets: demo bootstrap + one round < 5 min, each later demo round < 2 min, one
ml-100k round < 15 min.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--cycles", type=int, default=2)
    ap.add_argument("--workdir", help="default: a fresh temp dir (removed afterwards)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", help="write the results JSON here")
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="coea-bench-"))
    rows = []
    for i in range(args.cycles):
        cmd = [sys.executable, "-m", "coea.cli", "cycle", "--config", args.config, "--workdir", str(workdir), "--json"]
        for o in args.overrides:
            cmd += ["--set", o]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 4):
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"cycle {i + 1} failed with exit {proc.returncode}")
        result = json.loads(proc.stdout)
        row = {"config": args.config, "cycle": i + 1, "round": result["round"], "promoted": result["promoted"],
               "wall_s": round(wall, 1),
               "stage_s": {k: v for k, v in result.get("metrics", {}).items() if k.startswith("time/")},
               "val": {k: v for k, v in result.get("metrics", {}).items() if k.startswith("val/")},
               "keys": result.get("metrics", {}).get("keys/count"),
               "users": result.get("metrics", {}).get("keys/users")}
        print(json.dumps(row), flush=True)
        rows.append(row)
    meta = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(meta, indent=2))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""One demo round before and after a change, side by side: benchmarks/cycle.py run in two checkouts, in turns.

    git worktree add --detach /tmp/coea-before 54efa28
    python benchmarks/round_speed.py --before /tmp/coea-before --out benchmarks/results/round_speed_demo.json

Each checkout runs ``benchmarks/cycle.py --config configs/demo.yaml --cycles 2`` with its own code and its own
configs/demo.yaml (what a user of that commit runs) on a fresh temp workdir: cycle 1 = bootstrap + round 1, cycle
2 = round 2 in a fresh process. ``--repeats`` alternates before / after that many times, so a change in the
machine's load hits both. Prints and writes both commits' wall times per round, the stage times, the after / before
ratio of round 2 (the daily cron's cost), the load average and the thread setting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def commit_of(tree: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=tree).stdout.strip()


def run(tree: Path, config: str, overrides: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="coea-speed-")) / "cycle.json"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    sets = [x for o in overrides for x in ("--set", o)]
    subprocess.run([sys.executable, "benchmarks/cycle.py", "--config", config, "--cycles", "2", "--out", str(out),
                    *sets], cwd=tree, env=env, check=True, capture_output=True, text=True)
    rows = json.loads(out.read_text())["rows"]
    return {"commit": commit_of(tree), "load_average_before": None,
            "rounds": [{"round": r["round"], "wall_s": r["wall_s"], "promoted": r["promoted"],
                        "stage_s": r["stage_s"]} for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="a checkout of the baseline commit (git worktree add ...)")
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="the same overrides in both checkouts (e.g. cycle.replay_days=4: the same windows)")
    ap.add_argument("--out")
    args = ap.parse_args()
    trees = {"before": Path(args.before).resolve(), "after": REPO}
    commits = {name: commit_of(tree) for name, tree in trees.items()}  # before anything runs: what was measured
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(args.repeats):
        for name, tree in trees.items():
            load = os.getloadavg()
            r = run(tree, args.config, args.overrides)
            r["load_average_before"], r["load_average_after"] = load, os.getloadavg()
            runs[name].append(r)
            print(name, json.dumps(r))

    def round2(name: str) -> float:
        walls = [r["rounds"][1]["wall_s"] for r in runs[name]]
        return sorted(walls)[len(walls) // 2]

    summary = {"round2_wall_s_before": round2("before"), "round2_wall_s_after": round2("after"),
               "ratio_after_over_before": round(round2("after") / round2("before"), 3)}
    print(json.dumps(summary))
    if args.out:
        result = {"command": " ".join(["benchmarks/round_speed.py", *sys.argv[1:]]), "config": args.config,
                  "overrides": args.overrides,
                  "commit": commits["after"], "baseline_commit": commits["before"], "cpus": os.cpu_count(),
                  "num_threads": "run.num_threads from each commit's config (1 in configs/demo.yaml)",
                  "summary": summary, "runs": runs}
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

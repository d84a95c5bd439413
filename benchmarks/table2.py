"""Table 2 on MovieLens-100K: every baseline, CoEA and its ablations over 3 seeds (docs/evaluation.md).

    python benchmarks/table2.py                      # train what is missing, evaluate, print the table
    python benchmarks/table2.py --seeds 0 --variants coea --rounds 1     # a quicker, partial table
    python benchmarks/table2.py --seeds 1 --train-only --set run.num_threads=1 &   # train shards in parallel,
    python benchmarks/table2.py --seeds 2 --train-only --set run.num_threads=1 &   # one thread each,
    wait; python benchmarks/table2.py --evaluate-only                              # then evaluate once

Layout: ``--root`` (default workdirs/table2-ml100k) holds one workdir per seed and variant,
``seed<S>/<variant>/``, trained with ``coea cycle`` (bootstrap + rounds) in a fresh process each, with the
variant's overrides (:data:`VARIANTS`). The replay step is chosen so that the last round's cut-off is the
evaluation's test cut: CoEA's KV table then holds exactly the keys of the users' state at t_test.

Resumable: a workdir whose state.json already records ``--rounds`` finished rounds is skipped, and a cycle that
crashed resumes at its unfinished stage. Writes benchmarks/results/table2_ml100k.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DAY = 86_400
_NOVELTY_TRIGGER = "Suggest a category this user has not explored lately.\n"

# variant -> --set overrides of `coea cycle` (wo_rllm needs no workdir: it is the CoEA workdir's round-0 Novelty
# LLM with the full prompt and no Relevance filter, which is what training without the R-LLM and DPO leaves).
def _text(key: str, value: str) -> str:
    """A ``--set`` override whose value is a string with newlines and colons (JSON is valid YAML)."""
    return f"{key}={json.dumps(value)}"


VARIANTS: dict[str, list[str]] = {
    "coea": [],
    "wo_long": [  # no group portrait in any prompt
        _text("prompts.novelty_train", "Recent categories: {recent}\nNext category:"),
        _text("prompts.novelty_infer", f"Recent categories: {{recent}}\n{_NOVELTY_TRIGGER}Next category:"),
        _text("prompts.relevance", "Recent categories: {recent}\nCandidate category: {candidate}"),
    ],
    "wo_short": [  # no recent categories in any prompt (the KV key still carries C'_short)
        _text("prompts.novelty_train", "Group portrait: {portrait}\nNext category:"),
        _text("prompts.novelty_infer", f"Group portrait: {{portrait}}\n{_NOVELTY_TRIGGER}Next category:"),
        _text("prompts.relevance", "Group portrait: {portrait}\nCandidate category: {candidate}"),
    ],
    "wo_kl": ["pco.alpha=0"],
}


def finished_rounds(workdir: Path) -> int:
    state = workdir / "state.json"
    if not state.exists():
        return 0
    rounds = json.loads(state.read_text()).get("rounds", [])
    return sum(1 for r in rounds if r["round"] > 0 and r.get("status") in ("promoted", "refused"))


def replay_days(cfg, rounds: int) -> float:
    """Days per round so that cutoff(rounds) == the evaluation's test cut."""
    from coea.data.loaders import load_interactions
    from coea.evaluate import temporal_split

    inter = load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)
    split = temporal_split(cfg, inter)
    ts = inter.events["timestamp"]
    start, end = int(ts.min()), int(ts.max()) + 1
    c0 = start + int(cfg.data.bootstrap_fraction * (end - start))
    return (split.test - c0) / DAY / rounds


def train(config: str, workdir: Path, overrides: list[str], rounds: int, log) -> None:
    for _ in range(rounds + 2):  # a refused or crashed round gets a retry or two
        done = finished_rounds(workdir)
        if done >= rounds:
            return
        cmd = [sys.executable, "-m", "coea.cli", "cycle", "--config", config, "--workdir", str(workdir)]
        for o in overrides:
            cmd += ["--set", o]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        log(f"  {workdir.relative_to(workdir.parent.parent)}: round {done + 1} exit {proc.returncode} "
            f"in {time.perf_counter() - t0:.0f}s")
        if proc.returncode not in (0, 4):
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"cycle failed in {workdir} (exit {proc.returncode}); rerun to resume")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/ml-100k.yaml")
    ap.add_argument("--root", default="workdirs/table2-ml100k")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=2, help="co-evolution rounds after the bootstrap")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra overrides, every run")
    ap.add_argument("--evaluate-only", action="store_true", help="train nothing; evaluate what exists")
    ap.add_argument("--train-only", action="store_true",
                    help="train what is missing and stop (run shards of --seeds / --variants in parallel processes, "
                         "then one --evaluate-only)")
    ap.add_argument("--out", default="benchmarks/results/table2_ml100k")
    args = ap.parse_args()

    from coea.config import load_config
    from coea.evaluate import run_evaluate

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    root = (REPO / args.root).resolve()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = [v for v in args.variants.split(",") if v.strip()]
    cfg = load_config(REPO / args.config, [*args.overrides, _text("eval.seeds", args.seeds)])
    days = replay_days(cfg, args.rounds)
    log(f"replay_days {days:.3f} -> {args.rounds} rounds end at the test cut; root {root}")
    t0 = time.perf_counter()
    if not args.evaluate_only:
        for seed in seeds:
            for v in variants:
                wd = root / f"seed{seed}" / v
                if finished_rounds(wd) >= args.rounds:
                    log(f"seed {seed} {v}: done, skipped")
                    continue
                log(f"seed {seed} {v}: training")
                train(args.config, wd, [*args.overrides, f"run.seed={seed}", f"cycle.replay_days={days}",
                                        *VARIANTS[v]], args.rounds, log)
    if args.train_only:
        log(f"trained in {time.perf_counter() - t0:.0f}s; evaluate with --evaluate-only")
        return
    log("evaluating")
    out = REPO / args.out
    summary = run_evaluate(cfg, root, out)
    dest = REPO / "benchmarks" / "results"
    shutil.copy(out / "results.md", dest / "table2_ml100k.md")
    report = {"command": " ".join(["python", "benchmarks/table2.py", *sys.argv[1:]]), "users": summary["users"],
              "seeds": seeds, "rounds": args.rounds, "replay_days": days, "split": summary["split"],
              "skipped": summary["skipped"], "wall_s": round(time.perf_counter() - t0, 1),
              "results": summary["results"]}
    (dest / "table2_ml100k.json").write_text(json.dumps(report, indent=2))
    with open(dest / "table2_ml100k.md", "a") as f:
        f.write(f"\nCommand: `{report['command']}`; {summary['users']} test users; rounds {args.rounds}; "
                f"skipped rows: {summary['skipped'] or 'none'}.\n")
    print((dest / "table2_ml100k.md").read_text())
    if math.isfinite(report["wall_s"]):
        log(f"done in {report['wall_s']:.0f}s")


if __name__ == "__main__":
    main()

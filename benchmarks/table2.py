"""Table 2 on MovieLens-100K under evaluation v3: every baseline (kNN rows included), CoEA at its operating points
and its ablations, 5 seeds, test-based metrics with hierarchical intervals (docs/evaluation.md).

    nice python benchmarks/table2.py --set run.num_threads=1             # train what is missing, evaluate
    python benchmarks/table2.py --seeds 0 --variants coea,wo_long --rounds 1      # a quicker, partial table
    python benchmarks/table2.py --seeds 1 --train-only --set run.num_threads=1 &  # train shards in parallel,
    python benchmarks/table2.py --seeds 2 --train-only --set run.num_threads=1 &  # one thread each,
    wait; python benchmarks/table2.py --evaluate-only --set run.num_threads=1     # then evaluate once

Layout under ``--root`` (default workdirs/table2-ml100k):

    view/                 the split's train events as a Parquet data set (coea.evaluate.write_train_view): every
                          workdir trains on it, so no model ever sees a validation or test event
    seed<S>/<variant>/    one coea workdir per seed and variant (:data:`VARIANTS`), bootstrap + ``--rounds`` rounds,
                          each round in a fresh ``coea cycle`` process; replay windows sized so that the last round's
                          cut-off is the end of the view. w/o KL starts from a copy of CoEA's round 0 (identical:
                          pco.alpha only acts from round 1), so train coea before wo_kl of a seed
    eval/                 run_evaluate's files (rankings, truth, meta, results, frontier.png)

Resumable: a workdir whose state.json records ``--rounds`` finished rounds is skipped, and a cycle that crashed
resumes at its unfinished stage. Writes benchmarks/results/table2_ml100k.{json,md,png} (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DAY = 86_400
_NOVELTY_TRIGGER = "Suggest a category this user has not explored lately.\n"


def _text(key: str, value: str) -> str:
    """A ``--set`` override whose value is a string with newlines and colons (JSON is valid YAML)."""
    return f"{key}={json.dumps(value)}"


# variant -> --set overrides of `coea cycle`. wo_long's round 0 doubles as Google-v1 / Google-v2 / LLM-KERec's LLMs
# (trained on short-term-only prompts; eval.short_term_variant). wo_rllm needs no workdir: it is the CoEA
# workdir's round-0 Novelty LLM with the full prompt and no Relevance filter.
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
# variants whose round 0 is the CoEA workdir's (the overrides only act from round 1 on): copied, not retrained.
SHARES_ROUND0 = {"wo_kl": "coea"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def finished_rounds(workdir: Path) -> int:
    state = workdir / "state.json"
    if not state.exists():
        return 0
    rounds = json.loads(state.read_text()).get("rounds", [])
    return sum(1 for r in rounds if r["round"] > 0 and r.get("status") in ("promoted", "refused"))


def ensure_view(cfg, root: Path) -> Path:
    """Write (or check) the train view of the configured split under ``root/view``."""
    from coea.data.loaders import load_interactions
    from coea.evaluate import make_split, write_train_view
    from coea.evaluate.split import VIEW_META, split_fingerprint

    view = root / "view"
    inter = load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)
    fingerprint = split_fingerprint(inter, make_split(cfg, inter))
    if (view / VIEW_META).exists():
        if json.loads((view / VIEW_META).read_text())["fingerprint"] != fingerprint:
            raise SystemExit(f"{view} holds the train view of another split; use another --root or delete it")
        return view
    write_train_view(cfg, view)
    return view


def view_overrides(cfg, view: Path, rounds: int) -> list[str]:
    """Overrides that train on the view with ``rounds`` replay rounds ending at its last event."""
    from coea.config import CycleConfig
    from coea.rounds import cutoff, load_data, timeline

    sets = ["data.source=parquet", f"data.path={view}"]
    if "clock" in {f.name for f in dataclasses.fields(CycleConfig)}:
        sets.append("cycle.clock=replay")  # a static view is replayed, whatever the parquet default
    vcfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source="parquet", path=str(view)))
    inter = load_data(vcfg)
    days = math.ceil((timeline(inter)[1] - cutoff(vcfg, inter, 0)) / DAY / rounds * 1e6) / 1e6  # up: reach the end
    return [*sets, f"cycle.replay_days={days}"]


def copy_round0(source: Path, workdir: Path) -> bool:
    """Start ``workdir`` from ``source``'s recorded round 0 (same seed, same config up to round-1+ settings)."""
    state_path = source / "state.json"
    if workdir.exists() or not state_path.exists():
        return False
    state = json.loads(state_path.read_text())
    if not any(r["round"] == 0 for r in state.get("rounds", [])):
        return False
    shutil.copytree(source / "rounds" / "000", workdir / "rounds" / "000")
    state = {**state, "promoted_round": None, "rounds": [r for r in state["rounds"] if r["round"] == 0]}
    (workdir / "state.json").write_text(json.dumps(state))
    return True


def train(config: str, workdir: Path, overrides: list[str], rounds: int) -> None:
    for _ in range(rounds + 2):  # a refused or crashed round gets a retry or two
        done = finished_rounds(workdir)
        if done >= rounds:
            return
        cmd = [sys.executable, "-m", "coea.cli", "cycle", "--config", config, "--workdir", str(workdir)]
        for o in overrides:
            cmd += ["--set", o]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ})
        log(f"  {workdir.parent.name}/{workdir.name}: round {done + 1} exit {proc.returncode} "
            f"in {time.perf_counter() - t0:.0f}s")
        if proc.returncode not in (0, 4):
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"cycle failed in {workdir} (exit {proc.returncode}); rerun to resume")


def git_state() -> dict:
    """The commit this ran on and whether the code had uncommitted changes (results must come from a commit)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "coea", "loops",
                                                                  "storage", "quantizer", "benchmarks/table2.py"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/ml-100k.yaml")
    ap.add_argument("--root", default="workdirs/table2-ml100k")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=3, help="co-evolution rounds after the bootstrap")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra overrides, every run")
    ap.add_argument("--evaluate-only", action="store_true", help="train nothing; evaluate what exists")
    ap.add_argument("--train-only", action="store_true",
                    help="train what is missing and stop (run shards of --seeds / --variants in parallel processes, "
                         "then one --evaluate-only)")
    ap.add_argument("--out", default="benchmarks/results/table2_ml100k",
                    help="results prefix: <out>.md, <out>.json, <out>.png")
    args = ap.parse_args()

    from coea.config import load_config
    from coea.evaluate import run_evaluate

    root = (REPO / args.root).resolve()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = [v for v in args.variants.split(",") if v.strip()]
    cfg = load_config(REPO / args.config, [*args.overrides, f"eval.seeds={args.seeds}"])
    cfg.data.path = str(Path(cfg.data.path).resolve()) if cfg.data.path else cfg.data.path
    t0 = time.perf_counter()
    git = git_state()  # at the start: the code that runs, even if the tree moves on meanwhile
    if not args.evaluate_only:
        root.mkdir(parents=True, exist_ok=True)
        view = ensure_view(cfg, root)
        sets = view_overrides(cfg, view, args.rounds)
        log(f"training on the train view {view}; {sets[-1]} -> {args.rounds} rounds end at the view's last event")
        for seed in seeds:
            for v in variants:
                wd = root / f"seed{seed}" / v
                if finished_rounds(wd) >= args.rounds:
                    log(f"seed {seed} {v}: done, skipped")
                    continue
                if v in SHARES_ROUND0 and copy_round0(root / f"seed{seed}" / SHARES_ROUND0[v], wd):
                    log(f"seed {seed} {v}: round 0 copied from {SHARES_ROUND0[v]}")
                log(f"seed {seed} {v}: training")
                train(args.config, wd, [*args.overrides, *sets, f"run.seed={seed}", *VARIANTS[v]], args.rounds)
    if args.train_only:
        log(f"trained in {time.perf_counter() - t0:.0f}s; evaluate with --evaluate-only")
        return
    log("evaluating")
    summary = run_evaluate(cfg, root, root / "eval")
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "eval" / "frontier.png", out.with_suffix(".png"))
    results = json.loads((root / "eval" / "results.json").read_text())
    meta = json.loads((root / "eval" / "meta.json").read_text())
    command = " ".join(["python", "benchmarks/table2.py", *sys.argv[1:]])
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    report = {"command": command, "git": git, "users": summary["users"], "seeds": seeds,
              "rounds": args.rounds, "split": meta["split"], "skipped": meta["skipped"], "chosen": meta["chosen"],
              "sources": meta["sources"], "fits": meta.get("fits", {}), "wall_s": round(time.perf_counter() - t0, 1),
              "load_average": load, "threads": cfg.eval.num_threads or cfg.run.num_threads, "results": results}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    md = (root / "eval" / "results.md").read_text()
    md += (f"\nCommand: `{command}` at commit {report['git']['commit'][:10]}"
           f"{' (uncommitted changes)' if report['git']['dirty'] else ''}; {summary['users']} test users; "
           f"{args.rounds} rounds after the bootstrap on the "
           f"train view; skipped rows: {meta['skipped'] or 'none'}. Frontier plot: `{out.with_suffix('.png').name}`.\n")
    out.with_suffix(".md").write_text(md)
    print(md)
    log(f"done in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()

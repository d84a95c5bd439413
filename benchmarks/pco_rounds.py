"""Ten demo rounds with Eq. 15's sample, the judged Relevance update and the paired guardrail: the per-round table.

    python benchmarks/pco_rounds.py --config configs/demo.yaml --n 10 --out benchmarks/results/pco_rounds_demo.json

Runs ``coea rounds --config C --workdir W --n N`` on a fresh workdir (bootstrap + N rounds, one process, with
``cycle.keep_rounds`` = N + 1 so no round expires) and reads every round's metrics back from state.json: promoted or not, D_k records and pairs, the DPO loss / KL / reward accuracy at the
end of the round, the Relevance LLM's held-out pairwise accuracy (overall and new-to-user) beside the popularity and
click-share scorers, whether the round kept the promoted Relevance LLM, validation C-H@1 / C-N@5 / NCP@5 and the
guardrail's paired figures. The guardrail's false-refusal rate is measured on the rounds' own validation users
(rounds/NNN/validation_hits.json): each round's per-user differences with random signs (the two models equally
good for every user) are judged by the same rule, ``--flips`` times per round. Records the git commit, load
average and threads; run it from a clean tree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from coea.config import load_config  # noqa: E402
from loops.guardrail import judge, paired_stats  # noqa: E402

COLUMNS = ["pco/dk_records", "pco/sampled_records", "pco/pairs", "pco/dpo_loss", "pco/kl", "pco/rewards/accuracies",
           "pco/steps", "relevance/new_pairs", "relevance/replay_pairs", "relevance/kept_promoted",
           "relevance/trained_accuracy", "relevance/promoted_accuracy", "relevance/heldout_accuracy",
           "relevance/heldout_accuracy_new", "relevance/heldout_popularity_accuracy",
           "relevance/heldout_share_accuracy", "relevance/heldout_popularity_accuracy_new",
           "relevance/heldout_pairs", "relevance/heldout_pairs_new", "val/users", "val/C-H@1", "val/base_C-H@1",
           "val/C-N@5", "val/NCP@5", "guardrail/delta", "guardrail/wins", "guardrail/losses", "guardrail/p_value",
           "guardrail/judged"]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO).stdout.strip()


def false_refusals(hits: dict, cfg, flips: int, seed: int) -> tuple[int, int]:
    """(refused, judged) over ``flips`` sign-randomised copies of one round's paired differences."""
    d = np.asarray(hits["new"], dtype=float) - np.asarray(hits["base"], dtype=float)
    rng = np.random.default_rng(seed)
    refused = judged = 0
    for _ in range(flips):
        signs = rng.choice([-1.0, 1.0], size=len(d))
        flipped = d * signs  # a user's discordant pair points either way with probability 1/2
        base = np.zeros(len(d))
        metrics = paired_stats(flipped, base)
        ok, _ = judge(metrics, None, 0, margin=cfg.cycle.guardrail_margin, alpha=cfg.cycle.guardrail_alpha,
                      min_users=cfg.cycle.guardrail_min_users)
        judged += int(metrics.get("guardrail/judged", 0))
        refused += int(not ok)
    return refused, judged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--workdir", help="default: a fresh temp dir")
    ap.add_argument("--flips", type=int, default=2000)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides, every round")
    ap.add_argument("--out")
    args = ap.parse_args()
    # Retention would expire the early rounds' folders (their validation hits) before the table is read.
    args.overrides = [*args.overrides, f"cycle.keep_rounds={args.n + 1}"]
    cfg = load_config(REPO / args.config, args.overrides)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="coea-pco-"))
    if workdir.exists() and any(workdir.iterdir()):
        sys.exit(f"{workdir} is not empty: the benchmark needs a fresh workdir")
    commit, dirty = git("rev-parse", "HEAD"), bool(git("status", "--porcelain"))
    load_before = os.getloadavg()
    cmd = [sys.executable, "-m", "coea.cli", "rounds", "--config", args.config, "--workdir", str(workdir),
           "--n", str(args.n), *(x for o in args.overrides for x in ("--set", o))]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    state = json.loads((workdir / "state.json").read_text())
    status = {r["round"]: r["status"] for r in state["rounds"]}
    recorded = {r["round"]: r.get("metrics") or {} for r in state["rounds"]}
    boot = json.loads((workdir / "rounds" / "000" / "relevance" / "metrics.json").read_text()).get("heldout", {})
    rows = [{"round": 0, "status": status.get(0),
             **{f"relevance/{m}" if m.startswith("heldout_") else f"relevance/heldout_{m}": v for m, v in boot.items()}}]
    refused_null = judged_null = 0
    for k in range(1, args.n + 1):
        rp = workdir / "rounds" / f"{k:03d}"
        if k not in recorded or status.get(k) not in ("promoted", "refused"):
            continue
        m = recorded[k]
        rows.append({"round": k, "status": status.get(k), **{c: m.get(c) for c in COLUMNS},
                     "time_s": round(sum(v for n, v in m.items() if n.startswith("time/")), 1)})
        if (rp / "validation_hits.json").exists():
            r, j = false_refusals(json.loads((rp / "validation_hits.json").read_text()), cfg, args.flips, k)
            refused_null, judged_null = refused_null + r, judged_null + j
    first = rows[0]
    drops = {m: max((first.get(m, float("nan")) - r[m] for r in rows[1:] if r.get(m) is not None), default=None)
             for m in ("relevance/heldout_accuracy", "relevance/heldout_accuracy_new")}
    later = rows[1:]
    n_new = sum(r.get("relevance/heldout_pairs_new") or 0 for r in later)
    pooled_new = sum((r.get("relevance/heldout_accuracy_new") or 0) * (r.get("relevance/heldout_pairs_new") or 0)
                     for r in later) / n_new if n_new else None
    summary = {
        "heldout_accuracy_new_pooled_rounds_1_n": pooled_new, "heldout_pairs_new_rounds_1_n": n_new,
        "heldout_accuracy_new_round0": first.get("relevance/heldout_accuracy_new"),
        "heldout_pairs_new_round0": first.get("relevance/heldout_pairs_new"),
        "rounds": len(rows) - 1, "promoted": sum(r["status"] == "promoted" for r in rows[1:]),
        "exit_code": proc.returncode, "wall_s": round(wall, 1),
        "pairs_median": float(np.median([r["pco/pairs"] for r in rows[1:]])) if len(rows) > 1 else None,
        "dpo_loss_mean": float(np.nanmean([r["pco/dpo_loss"] if r["pco/dpo_loss"] is not None else np.nan
                                           for r in rows[1:]])) if len(rows) > 1 else None,
        "relevance_kept_promoted_rounds": sum(bool(r.get("relevance/kept_promoted")) for r in rows[1:]),
        "largest_drop_below_round0": drops,
        "guardrail_false_refusal_rate": refused_null / max(args.flips * (len(rows) - 1), 1),
        "guardrail_null_judged_share": judged_null / max(args.flips * (len(rows) - 1), 1),
    }
    result = {"command": " ".join(["benchmarks/pco_rounds.py", *sys.argv[1:]]), "rounds_command": " ".join(cmd[1:]),
              "commit": commit, "dirty_tree": dirty, "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "num_threads": cfg.run.num_threads,
              "cpus": os.cpu_count(), "summary": summary, "rows": rows}
    for r in rows:
        print(json.dumps(r))
    print(json.dumps(summary, indent=1))
    if proc.returncode not in (0, 4):
        print(proc.stderr[-3000:], file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

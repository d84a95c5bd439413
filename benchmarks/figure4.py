"""The paper's Figure 4 on MovieLens-100K: does novelty hold over many co-evolution rounds, with and without KL?

    nice python benchmarks/figure4.py --set run.num_threads=1          # 30 rounds each, resumable
    python benchmarks/figure4.py --summarize-only                      # tables + plot from what exists

Two workdirs share one round 0 (bootstrapped once, then copied): ``kl`` runs every round with the configured
``pco.alpha`` (the KL anchor of Eq. 17 on), ``nokl`` with ``pco.alpha=0``. Each round replays the next
``--replay-days`` days of the log (``cycle.replay_days``) in a fresh ``coea cycle`` process; rerunning continues each
workdir where it stopped (a crashed round resumes at its unfinished stage, a refused round is kept and the next one
starts from the promoted models, as the cycle does).

The figures are the cycle's own per-round validation (loops/cycle.py ``validation_metrics``): held-out validation
users (a stable 10% hash, never trained on), their state at the round's previous cut-off, the round's Novelty +
Relevance LLMs, truth = their clicks in the round's window; metrics as App. A.4 (docs/metrics.md). Also the DPO
round's KL to its reference and the keys with an aligned candidate.

Writes ``--out`` .json (every round of both runs, the protocol, thirds summary), .md (the table) and .png (one
panel per metric, both runs).
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

METRICS = ("val/NCP@5", "val/CLTP@5", "val/C-H@1", "val/C-N@5", "val/NCP-recent@5", "pco/kl", "pco/dpo_loss",
           "keys/aligned", "val/users", "pco/pairs")
PLOTTED = ("val/NCP@5", "val/CLTP@5", "val/C-H@1", "val/C-N@5", "pco/kl", "keys/aligned")
RUNS = {"kl": "with KL (pco.alpha as configured)", "nokl": "without KL (pco.alpha = 0)"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rounds_of(workdir: Path) -> list[dict]:
    """Finished rounds > 0 of a workdir (promoted or refused) with their recorded metrics."""
    state = workdir / "state.json"
    if not state.exists():
        return []
    rows = []
    for r in json.loads(state.read_text()).get("rounds", []):
        if r["round"] > 0 and r.get("status") in ("promoted", "refused"):
            rows.append({"round": r["round"], "status": r["status"],
                         **{m: (r.get("metrics") or {}).get(m) for m in METRICS}})
    return sorted(rows, key=lambda r: r["round"])


def coea(*args: str) -> int:
    cmd = [sys.executable, "-m", "coea.cli", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode not in (0, 4):
        sys.stderr.write(proc.stderr[-3000:])
    return proc.returncode


def train(config: str, root: Path, rounds: int, overrides: list[str]) -> None:
    """``kl``'s first cycle bootstraps round 0; ``nokl`` starts from a copy of it; then both advance in turns, so a
    run stopped early still has two curves of the same length."""
    kl, nokl = root / "kl", root / "nokl"
    sets = [x for o in overrides for x in ("--set", o)]
    runs = {kl: sets, nokl: [*sets, "--set", "pco.alpha=0"]}
    failures = {kl: 0, nokl: 0}
    for target in range(1, rounds + 1):
        for wd, wd_sets in runs.items():
            if wd is nokl and not nokl.exists():
                shutil.copytree(kl / "rounds" / "000", nokl / "rounds" / "000")
                state = json.loads((kl / "state.json").read_text())
                state = {**state, "promoted_round": None, "rounds": [r for r in state["rounds"] if r["round"] == 0]}
                (nokl / "state.json").write_text(json.dumps(state))
            while len(rounds_of(wd)) < target:
                done = len(rounds_of(wd))
                t = time.perf_counter()
                rc = coea("cycle", "--config", config, "--workdir", str(wd), *wd_sets)
                log(f"{wd.name}: round {done + 1} exit {rc} in {time.perf_counter() - t:.0f}s")
                if rc not in (0, 4):
                    failures[wd] += 1
                    if failures[wd] > 2:
                        raise SystemExit(f"{wd}: cycle failed {failures[wd]} times; rerun to resume")
                elif len(rounds_of(wd)) == done:
                    log(f"{wd.name}: no new round (the replay reached the end of the data)")
                    return


def mean(rows: list[dict], key: str, lo: int, hi: int) -> float | None:
    vals = [r[key] for r in rows if lo <= r["round"] <= hi and isinstance(r.get(key), (int, float))]
    return round(sum(vals) / len(vals), 4) if vals else None


def summarize(result: dict) -> dict:
    n = max((r["round"] for v in RUNS for r in result[v]), default=0)
    third = max(1, n // 3)
    return {v: {m: {"first_third": mean(result[v], m, 1, third), "last_third": mean(result[v], m, n - third + 1, n),
                    "all": mean(result[v], m, 1, n)} for m in PLOTTED}
            | {"refused_rounds": [r["round"] for r in result[v] if r["status"] == "refused"]} for v in RUNS}


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown(result: dict) -> str:
    p = result["protocol"]
    lines = [f"### Figure 4 on ml-100k: {p['rounds']} rounds of {p['replay_days']} days, with and without KL", "",
             f"Command: `{p['command']}`. Validation = the cycle's held-out users (docs/evaluation.md, Figure 4).", "",
             "| round | " + " | ".join(f"{m} KL" + " | " + f"{m} no KL" for m in PLOTTED) + " |",
             "|---:|" + "---:|" * (2 * len(PLOTTED))]
    by = {v: {r["round"]: r for r in result[v]} for v in RUNS}
    for k in sorted(set(by["kl"]) | set(by["nokl"])):
        cells = []
        for m in PLOTTED:
            for v in RUNS:
                r = by[v].get(k)
                cells.append(_fmt(r.get(m)) + ("*" if r and r["status"] == "refused" and m == PLOTTED[0] else "")
                             if r else "–")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "`*` = the guardrail refused that round (its models were not promoted).", "",
              "| metric | KL first third | KL last third | no KL first third | no KL last third |",
              "|---|---:|---:|---:|---:|"]
    s = result["summary"]
    for m in PLOTTED:
        lines.append(f"| {m} | {_fmt(s['kl'][m]['first_third'])} | {_fmt(s['kl'][m]['last_third'])} | "
                     f"{_fmt(s['nokl'][m]['first_third'])} | {_fmt(s['nokl'][m]['last_third'])} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, out_png: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3, squeeze=False)
    for ax, m in zip(axes.flat, PLOTTED):
        for v, style in (("kl", "-o"), ("nokl", "--s")):
            pts = [(r["round"], r[m]) for r in result[v] if isinstance(r.get(m), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, markersize=3, label=RUNS[v])
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Figure 4 (ml-100k): {result['protocol']['rounds']} co-evolution rounds with / without KL",
                 fontsize=10)
    fig.tight_layout()
    tmp = out_png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out_png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/ml-100k.yaml")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--replay-days", type=float, default=2.0)
    ap.add_argument("--root", default="workdirs/figure4-ml100k")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra overrides, every run")
    ap.add_argument("--summarize-only", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/figure4_ml100k")
    args = ap.parse_args()
    root = (REPO / args.root).resolve()
    overrides = [f"cycle.replay_days={args.replay_days}", "tracking.backend=local", *args.overrides]
    t0 = time.perf_counter()
    if not args.summarize_only:
        train(args.config, root, args.rounds, overrides)
    result = {"protocol": {"config": args.config, "replay_days": args.replay_days, "rounds": args.rounds,
                           "overrides": overrides, "command": " ".join(["python", "benchmarks/figure4.py",
                                                                        *sys.argv[1:]])},
              "kl": rounds_of(root / "kl"), "nokl": rounds_of(root / "nokl")}
    result["summary"] = summarize(result)
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    plot(result, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
    log(f"wrote {out}.{{json,md,png}} in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()

"""The paper's Figure 4 on MovieLens-100K: does novelty hold over 30 co-evolution rounds, with and without KL?

    nice python benchmarks/figure4.py --set run.num_threads=1         # train (resumable), evaluate, write
    nice python benchmarks/figure4.py --rounds 60 --eval-every 5 --root workdirs/figure4-ml100k-60 \
        --out benchmarks/results/figure4_ml100k_60 --set run.num_threads=1   # issue 23's 60-round run
    python benchmarks/figure4.py --evaluate-only                      # evaluate the rounds that exist so far

Protocol (docs/evaluation.md, Figure 4):

- Data: the train view of evaluation v2's per-user split (benchmarks/table2.py ``ensure_view``): no round ever sees
  a validation or test event.
- Two workdirs share one round 0 (``kl`` bootstraps it in its first cycle; ``nokl`` starts from a copy): ``kl``
  runs every round with the configured ``pco.alpha`` (the KL anchor of Eq. 17), ``nokl`` with ``pco.alpha=0``.
  ``--rounds`` replay rounds (``cycle.replay_days`` sized so the last one ends at the view's last event), one
  ``coea cycle`` process per round, the two runs in turns (a run stopped early has two curves of equal length).
- After each round k, round k's Novelty + Relevance LLMs rank the catalogue for every test user of the split
  (920 on ml-100k; state = train + validation events), each user's own list as in Table 2, with the workdir's
  ``relevance.tau_align``: C-H@1, C-N@5, NCP@5, CLTP@5 (App. A.4) over rounds. Round 0 is the shared start.
  Nothing is chosen from these figures. The cycle's own per-round figures (KL of the DPO round, pairs, keys with
  an aligned candidate, its small validation) come from state.json.

Resumable: finished rounds are skipped, each round's evaluation is cached in ``<run>/figure4/round_NNN.json``.
Writes ``--out`` .json (every round of both runs, the protocol, thirds summary), .md (table) and .png.
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

EVAL = ("NCP@5", "CLTP@5", "C-H@1", "C-N@5", "NCP-recent@5", "aligned_per_key")
CYCLE = ("pco/kl", "pco/dpo_loss", "pco/pairs", "pco/rewards/accuracies", "relevance/heldout_accuracy",
         "relevance/kept_promoted", "keys/aligned", "val/users")
PLOTTED = ("NCP@5", "CLTP@5", "C-H@1", "C-N@5", "aligned_per_key", "pco/kl")
RUNS = {"kl": "with KL (pco.alpha as configured)", "nokl": "without KL (pco.alpha = 0)"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rounds_of(workdir: Path) -> list[dict]:
    """Finished rounds > 0 of a workdir (promoted or refused) with the cycle's recorded figures."""
    state = workdir / "state.json"
    if not state.exists():
        return []
    rows = [{"round": r["round"], "status": r["status"], **{m: (r.get("metrics") or {}).get(m) for m in CYCLE}}
            for r in json.loads(state.read_text()).get("rounds", [])
            if r["round"] > 0 and r.get("status") in ("promoted", "refused")]
    return sorted(rows, key=lambda r: r["round"])


def coea(*args: str) -> int:
    proc = subprocess.run([sys.executable, "-m", "coea.cli", *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode not in (0, 4):
        sys.stderr.write(proc.stderr[-3000:])
    return proc.returncode


def train(config: str, root: Path, rounds: int, sets: list[str]) -> None:
    kl, nokl = root / "kl", root / "nokl"
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


def evaluate(cfg, root: Path, every: int = 1) -> dict[str, list[dict]]:
    """Round 0, every ``every``-th finished round and the last of both runs on the test phase (cached per round);
    the other rounds keep the cycle's own figures only."""
    from coea.data.loaders import load_interactions
    from coea.evaluate.run import evaluate_round
    from coea.evaluate.split import build_phase, make_split

    inter = load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)
    split = make_split(cfg, inter)
    phase = build_phase(cfg, inter, split, "test")
    cache: dict = {}
    out: dict[str, list[dict]] = {}
    for name in RUNS:
        wd = root / name
        cycle = {r["round"]: r for r in rounds_of(wd)}
        rows = []
        for k in [0, *sorted(cycle)]:
            path = wd / "figure4" / f"round_{k:03d}.json"
            if k % every and k != max(cycle, default=0) and not path.exists():
                rows.append({"round": k, "status": cycle[k]["status"], **{m: cycle[k].get(m) for m in CYCLE}})
                continue
            if not path.exists():
                t = time.perf_counter()
                res = evaluate_round(cfg, inter, split, phase, wd, k, leak_cache=cache)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(res))
                log(f"{name}: round {k} evaluated in {time.perf_counter() - t:.0f}s: NCP@5 {res['NCP@5']:.4f} "
                    f"C-N@5 {res['C-N@5']:.4f}")
            res = json.loads(path.read_text())
            rows.append({"round": k, "status": cycle.get(k, {}).get("status", "bootstrapped"),
                         **{m: res.get(m) for m in EVAL}, **{m: cycle.get(k, {}).get(m) for m in CYCLE}})
        out[name] = rows
    return out


def mean(rows: list[dict], key: str, lo: int, hi: int) -> float | None:
    vals = [r[key] for r in rows if lo <= r["round"] <= hi and isinstance(r.get(key), (int, float))]
    return round(sum(vals) / len(vals), 4) if vals else None


def summarize(result: dict) -> dict:
    n = max((r["round"] for v in RUNS for r in result[v]), default=0)
    third = max(1, n // 3)
    return {v: {m: {"round0": mean(result[v], m, 0, 0), "first_third": mean(result[v], m, 1, third),
                    "last_third": mean(result[v], m, n - third + 1, n)} for m in PLOTTED}
            | {"refused_rounds": [r["round"] for r in result[v] if r["status"] == "refused"]} for v in RUNS}


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown(result: dict) -> str:
    p = result["protocol"]
    cols = ("NCP@5", "CLTP@5", "C-H@1", "C-N@5", "pco/kl")
    lines = [f"### Figure 4 ({p['config']}): {p['rounds']} co-evolution rounds with and without KL", "",
             f"Command: `{p['command']}`. Each round's models on the {p['users']} test users of the per-user split "
             "(state = train + validation events, Table 2's own lists); KL = the DPO round's mean KL to its "
             "reference (state.json). `*` = the guardrail refused the round (its models are still evaluated).", "",
             "| round | " + " | ".join(f"{m} KL | {m} no KL" for m in cols) + " |",
             "|---:|" + "---:|" * (2 * len(cols))]
    by = {v: {r["round"]: r for r in result[v]} for v in RUNS}
    for k in sorted(set(by["kl"]) | set(by["nokl"])):
        cells = []
        for m in cols:
            for v in RUNS:
                r = by[v].get(k)
                mark = "*" if r and r["status"] == "refused" and m == cols[0] else ""
                cells.append(_fmt(r.get(m)) + mark if r else "–")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    s = result["summary"]
    lines += ["", "| metric | round 0 | KL first third | KL last third | no KL first third | no KL last third |",
              "|---|---:|---:|---:|---:|---:|"]
    for m in PLOTTED:
        lines.append(f"| {m} | {_fmt(s['kl'][m]['round0'])} | {_fmt(s['kl'][m]['first_third'])} | "
                     f"{_fmt(s['kl'][m]['last_third'])} | {_fmt(s['nokl'][m]['first_third'])} | "
                     f"{_fmt(s['nokl'][m]['last_third'])} |")
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
        ax.set_title(m if m != "aligned_per_key" else "C_align size per key", fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Figure 4 ({result['protocol']['config']}, {result['protocol']['users']} test users): {result['protocol']['rounds']} "
                 "co-evolution rounds with / without KL", fontsize=10)
    fig.tight_layout()
    tmp = out_png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out_png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/ml-100k.yaml")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--root", default="workdirs/figure4-ml100k")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra overrides, every run")
    ap.add_argument("--evaluate-only", action="store_true", help="train nothing; evaluate the rounds that exist")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--eval-every", type=int, default=1, help="evaluate round 0, every N-th round and the last")
    ap.add_argument("--out", default="benchmarks/results/figure4_ml100k")
    args = ap.parse_args()

    from benchmarks.table2 import ensure_view, view_overrides
    from coea.config import load_config

    root = (REPO / args.root).resolve()
    cfg = load_config(REPO / args.config, args.overrides)
    cfg.data.path = str(Path(cfg.data.path).resolve()) if cfg.data.path else cfg.data.path
    t0 = time.perf_counter()
    if not args.evaluate_only:
        root.mkdir(parents=True, exist_ok=True)
        view = ensure_view(cfg, root)
        sets = [*args.overrides, *view_overrides(cfg, view, args.rounds), "tracking.backend=local",
                f"cycle.keep_rounds={args.rounds + 1}"]
        log(f"training on {view}: {next(o for o in sets if o.startswith('cycle.replay_days'))}")
        train(args.config, root, args.rounds, [x for o in sets for x in ("--set", o)])
    if args.train_only:
        return
    runs = evaluate(cfg, root, args.eval_every)
    result = {"protocol": {"config": args.config, "rounds": args.rounds, "overrides": args.overrides,
                           "users": None, "command": " ".join(["python", "benchmarks/figure4.py", *sys.argv[1:]])},
              **runs}
    first = next((r for v in RUNS for r in result[v]), None)
    if first is not None:
        result["protocol"]["users"] = json.loads((root / "kl" / "figure4" / "round_000.json").read_text())["users"]
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

"""The paper's Figure-4 protocol on MovieLens-100K: does novelty hold over many rounds, with and without KL?

    python benchmarks/figure4.py --rounds 30 --out benchmarks/results/figure4_ml100k.json
    python benchmarks/figure4.py --summarize-only --workdir-kl W1 --workdir-nokl W2 --out ...

Two workdirs share one round 0 (bootstrapped once, then copied); one runs `coea rounds` with the default
alpha (KL on), the other with `pco.alpha=0`. Replay windows of `--replay-days` days. Resumable: rerunning continues
each workdir where it stopped. Prints and writes validation NCP@5, CLTP@5, C-H@1 and KL per round.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

METRICS = ("val/NCP@5", "val/CLTP@5", "val/C-H@1", "val/C-N@5", "pco/kl", "keys/aligned", "val/users")


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def summarize(workdir: Path) -> list[dict]:
    state = json.loads((workdir / "state.json").read_text())
    return [{"round": r["round"], "status": r["status"], **{m: r["metrics"].get(m) for m in METRICS}}
            for r in state["rounds"] if r["round"] > 0]


def mean(rows: list[dict], key: str, lo: int, hi: int) -> float | None:
    vals = [r[key] for r in rows if lo <= r["round"] <= hi and r.get(key) is not None]
    return round(sum(vals) / len(vals), 4) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/ml-100k.yaml")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--replay-days", type=float, default=2.0)
    ap.add_argument("--sample-fraction", type=float, default=0.5,
                    help="pco.sample_fraction: 1%% of a 2-day ml-100k window is about one pair per round")
    ap.add_argument("--root", default="workdirs/figure4")
    ap.add_argument("--workdir-kl")
    ap.add_argument("--workdir-nokl")
    ap.add_argument("--summarize-only", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    root = Path(args.root)
    kl, nokl = Path(args.workdir_kl or root / "kl"), Path(args.workdir_nokl or root / "nokl")
    common = ["--set", f"cycle.replay_days={args.replay_days}", "--set", f"pco.sample_fraction={args.sample_fraction}",
              "--set", "tracking.backend=local"]
    coea = [sys.executable, "-m", "coea.cli"]
    if not args.summarize_only:
        if not (kl / "rounds" / "000" / "relevance").exists():
            run([*coea, "bootstrap", "--config", args.config, "--workdir", str(kl), *common])
        if not nokl.exists():
            shutil.copytree(kl / "rounds" / "000", nokl / "rounds" / "000")
            state = json.loads((kl / "state.json").read_text()) if (kl / "state.json").exists() else {}
            state = {**state, "promoted_round": None, "rounds": [r for r in state.get("rounds", []) if r["round"] == 0]}
            (nokl / "state.json").write_text(json.dumps(state))
        for wd, extra in ((kl, []), (nokl, ["--set", "pco.alpha=0"])):
            done = len(summarize(wd)) if (wd / "state.json").exists() else 0
            if done < args.rounds:
                run([*coea, "rounds", "--config", args.config, "--workdir", str(wd), "--n", str(args.rounds - done),
                     *common, *extra])
    result = {"protocol": {"config": args.config, "replay_days": args.replay_days, "rounds": args.rounds,
                           "sample_fraction": args.sample_fraction},
              "kl": summarize(kl), "nokl": summarize(nokl)}
    n = max((r["round"] for r in result["kl"] + result["nokl"]), default=0)
    third = max(1, n // 3)
    result["summary"] = {v: {m: {"first_third": mean(result[v], m, 1, third),
                                 "last_third": mean(result[v], m, n - third + 1, n)} for m in METRICS[:5]}
                         for v in ("kl", "nokl")}
    print(json.dumps(result["summary"], indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""The closed-loop A/B simulation, benchmark default (issue 12; docs/simulate.md, "Measured results").

    nice -n 10 python benchmarks/simulate.py                      # validation, then the full default (resumable)
    python benchmarks/simulate.py --skip-validation --chosen "sim.explore_slots=1"   # fixed settings
    python benchmarks/simulate.py --report-only                   # rewrite the committed files from the run so far

Protocol:

1. **Validation** (world seed ``sim.validation_seed``, never a reported one): the coea arm and exploitation for
   ``--val-days`` days under each candidate of ``--candidates`` (``|``-separated; each a ``&``-separated list of
   config overrides, e.g. ``sim.explore_slots=1&sim.coea_set=relevance.tau_align=0.3``). The
   chosen candidate has the highest final discovery rate among those whose GTV is at most 1% below exploitation's
   on that seed; if none is, the highest GTV. Written to ``validation.json``.
2. **Full run**: ``configs/sim.yaml`` (``sim.seeds`` x ``sim.days`` x ``sim.arms``) with the chosen
   settings, in ``--out`` (resumable: rerun the same command after a kill). Arms that cannot run yet (the
   LLM arms without coea/simulate/coea_arm.py) are left out and listed as missing.
3. The results -- results.md (with wall time, load average and what ran), days.jsonl, summary.json, days.png,
   kl.png, validation.json -- are copied to ``benchmarks/results/simulate/``. Each step writes them, so a kill
   loses nothing.

Simulation v2 (issue 26): every arm at every exploration budget, 10 world seeds, 2 training seeds on 4 of them::

    nice -n 10 python benchmarks/simulate.py --config configs/sim-v2.yaml --out /tmp/sim-v2 \
        --results benchmarks/results/simulate_v2 --budgets 1,2,0 --tune-baselines

``--tune-baselines``: ucb, user_knn, item_knn and linucb each get as many settings as coea has candidates
(:data:`BASELINE_GRID`), tried on the validation seed only and chosen by the same rule; every setting's figures
are in ``baseline_validation.json``. The other non-LLM arms have no setting to tune.

``--budgets``: one full run per ``sim.explore_slots`` value (0 = every slot), results in ``RESULTS/budget<B>/``,
and the discovery-GTV frontier (``frontier.json``, ``frontier.png``: discovery, and knowledge discovery, against
cumulative GTV per arm and budget) in ``RESULTS``.

Provenance: the benchmark refuses to start from uncommitted code (coea/simulate/provenance.py: commit first, run
from the clean tree, then commit the results); ``--allow-dirty`` runs anyway and marks results.md, summary.json
and validation.json. Each records the commit it ran on.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from coea.config import SIM_LLM_ARMS, ConfigError, load_config  # noqa: E402
from coea.simulate.provenance import check_provenance  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "simulate"
DEFAULT_CANDIDATES = ("sim.explore_slots=1&sim.coea_set=relevance.tau_align=0.3"
                      "|sim.explore_slots=1&sim.coea_set=relevance.tau_align=0.5")
COPIED = ("results.md", "days.jsonl", "summary.json", "days.png", "kl.png")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class LoadSampler:
    """Load average (1 min) sampled every ``every`` seconds while the benchmark runs."""

    def __init__(self, every: float = 30.0) -> None:
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._t.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict:
        self._stop.set()
        s = self.samples + [os.getloadavg()[0]]
        return {"mean": round(sum(s) / len(s), 2), "max": round(max(s), 2), "samples": len(s)}


def wall_book(out: Path, phase: str, seconds: float, load: dict) -> dict:
    """Accumulate wall time over resumed invocations in OUT/bench_wall.json."""
    path = out / "bench_wall.json"
    book = json.loads(path.read_text()) if path.exists() else {"invocations": []}
    book["invocations"].append({"phase": phase, "wall_s": round(seconds, 1), "load": load,
                                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    book["total_wall_s"] = round(sum(i["wall_s"] for i in book["invocations"] if i["phase"] == phase), 1)
    path.write_text(json.dumps(book, indent=1))
    return book


def share_start(first: Path, vdir: Path, seed: int) -> None:
    """A later candidate reuses the first one's warm-up and round 0 (the same world; a candidate only changes the
    LLM arms' serving and training from their round 1 on, which each arm runs itself)."""
    src, dst = first / f"seed{seed}", vdir / f"seed{seed}"
    if (dst / "round0.done").exists() or not (src / "round0.done").exists():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("warmup", "warmup.pkl", "world.json"):
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name, dirs_exist_ok=True)
        else:
            shutil.copy2(src / name, dst / name)
    (dst / "round0.done").write_text((src / "round0.done").read_text())


BASELINE_GRID = {  # each tunable non-LLM arm's settings, the current default first; the first n are tried, n = the
    # number of coea candidates, so every tuned arm gets the same tuning budget (on the validation seed only)
    "ucb": ("sim.ucb_c=0.5", "sim.ucb_c=0.1", "sim.ucb_c=2.0"),
    "user_knn": ("sim.user_knn_k=10", "sim.user_knn_k=20", "sim.user_knn_k=5"),
    "item_knn": ("sim.item_knn_k=0", "sim.item_knn_k=20", "sim.item_knn_k=5"),
    "linucb": ("sim.linucb_alpha=0.5", "sim.linucb_alpha=0.1", "sim.linucb_alpha=2.0"),
}


def choose(rows: list[dict]) -> dict:
    """The rule every arm is tuned by: the highest discovery with GTV >= exploitation - 1%, else the highest GTV."""
    ok = [r for r in rows if r["gtv_rel"] >= -0.01]
    return max(ok, key=lambda r: r["discovery"]) if ok else max(rows, key=lambda r: r["gtv_rel"])


def validate_baselines(args, overrides: list[str], out: Path, arms: list[str], n: int) -> dict:
    """Tune every tunable non-LLM arm in ``arms`` with ``n`` settings of :data:`BASELINE_GRID` on the validation seed
    (against exploitation, ``--val-days`` days, the same rule as coea); writes baseline_validation.json with every
    setting tried. Returns it; its ``chosen`` overrides are applied to the full run."""
    from coea.simulate.report import final_values, load_rows
    from coea.simulate.run import simulate

    record: dict = {"rule": "highest discovery with GTV >= exploitation - 1% on the validation seed; else highest "
                            "GTV", "days": args.val_days, "settings_per_arm": n, "arms": {},
                    "untuned": [a for a in arms if a not in BASELINE_GRID and a not in SIM_LLM_ARMS]}
    for arm in [a for a in arms if a in BASELINE_GRID]:
        rows = []
        for i, cand in enumerate(BASELINE_GRID[arm][:n]):
            cfg = load_config(args.config, [*overrides, cand, f"sim.days={args.val_days}"])
            vdir = out / "validation" / f"{arm}-c{i}"
            t0 = time.perf_counter()
            simulate(cfg, vdir, seeds=[cfg.sim.validation_seed], arms=["exploitation", arm], report=False,
                     allow_dirty=args.allow_dirty)
            df = load_rows(vdir)
            disc, g = final_values(df, "discovery_rate"), final_values(df, "gtv_cum")
            rows.append({"settings": cand, "discovery": float(disc[arm].iloc[0]),
                         "gtv_rel": float(g[arm].iloc[0] / g["exploitation"].iloc[0] - 1),
                         "wall_s": round(time.perf_counter() - t0, 1)})
            log(f"  {arm} {cand}: discovery {rows[-1]['discovery']:.3f}, GTV {100 * rows[-1]['gtv_rel']:+.2f}%")
        record["arms"][arm] = {"candidates": rows, "chosen": choose(rows)["settings"]}
    record["chosen"] = [v["chosen"] for v in record["arms"].values()]
    record["provenance"] = check_provenance(args.allow_dirty).as_dict()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "baseline_validation.json").write_text(json.dumps(record, indent=1))
    return record


def validate(args, overrides: list[str], out: Path) -> dict:
    from coea.simulate.run import simulate
    from coea.simulate.report import final_values, load_rows

    path = RESULTS / "validation.json"
    candidates = [c.strip() for c in args.candidates.split("|")]
    cfg0 = load_config(args.config, overrides)
    seed = cfg0.sim.validation_seed
    rows = []
    for i, cand in enumerate(candidates):
        cfg = load_config(args.config, [*overrides, *cand.split("&"), f"sim.days={args.val_days}"])
        vdir = out / "validation" / f"c{i}"
        if i > 0:
            share_start(out / "validation" / "c0", vdir, seed)
        log(f"validation {i + 1}/{len(candidates)}: seed {seed}, {args.val_days} days, {cand!r}")
        t0 = time.perf_counter()
        simulate(cfg, vdir, seeds=[seed], arms=["exploitation", "coea"], report=False,
                 allow_dirty=args.allow_dirty)
        df = load_rows(vdir)
        disc, g = final_values(df, "discovery_rate"), final_values(df, "gtv_cum")
        rows.append({"settings": cand, "discovery": float(disc["coea"].iloc[0]),
                     "gtv_rel": float(g["coea"].iloc[0] / g["exploitation"].iloc[0] - 1),
                     "exploitation_discovery": float(disc["exploitation"].iloc[0]),
                     "wall_s": round(time.perf_counter() - t0, 1)})
        log(f"  discovery {rows[-1]['discovery']:.3f}, GTV vs exploitation {100 * rows[-1]['gtv_rel']:+.2f}%")
    chosen = choose(rows)
    result = {"seed": seed, "days": args.val_days, "arms": ["exploitation", "coea"], "candidates": rows,
              "rule": "highest discovery with GTV >= exploitation - 1% on the validation seed; else highest GTV",
              "chosen": chosen["settings"], "provenance": check_provenance(args.allow_dirty).as_dict()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def main() -> int:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "sim.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default="/tmp/sim-env-bench", help="run directory (not committed; resumable)")
    ap.add_argument("--candidates", default=DEFAULT_CANDIDATES,
                    help="'|'-separated candidates, each '&'-separated --set overrides, tried on the validation seed")
    ap.add_argument("--val-days", type=int, default=8)
    ap.add_argument("--skip-validation", action="store_true")
    ap.add_argument("--chosen", default=None, help="with --skip-validation: the '&'-separated overrides to use")
    ap.add_argument("--arms", default=None, help="override sim.arms")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--results", default=str(RESULTS), help="where the committed files go")
    ap.add_argument("--budgets", default=None, metavar="B,B,...",
                    help="exploration budgets (sim.explore_slots values; 0 = every slot): one full run each, "
                         "results in RESULTS/budget<B>/, and the discovery-GTV frontier in RESULTS/frontier.*")
    ap.add_argument("--tune-baselines", action="store_true",
                    help="tune ucb, user_knn, item_knn and linucb on the validation seed with as many settings as "
                         "coea has candidates (baseline_validation.json records every one)")
    ap.add_argument("--train-seeds", default=None, help="sim.train_seeds (e.g. 0,1)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="run from uncommitted code anyway and mark the results (refused otherwise)")
    ap.add_argument("--analysis", default=None, metavar="FILE",
                    help="markdown appended to results.md's notes (what the measured curves show; written by a person)")
    args = ap.parse_args()
    RESULTS = Path(args.results)
    try:
        check_provenance(args.allow_dirty)  # before hours of work, not after
    except ConfigError as exc:
        print(f"simulate benchmark: {exc}", file=sys.stderr)
        return 2

    if os.nice(0) < 10:
        os.nice(10 - os.nice(0))  # not a timing figure: yield the shared cores
    from coea.workdir import configure_threads

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = list(args.overrides)
    cfg = load_config(args.config, overrides)
    configure_threads(cfg.run.num_threads)
    have_llm = importlib.util.find_spec("coea.simulate.coea_arm") is not None
    arms = [a.strip() for a in (args.arms or cfg.sim.arms).split(",") if a.strip()]
    missing = [a for a in arms if a in SIM_LLM_ARMS and not have_llm]
    arms = [a for a in arms if a not in missing]

    vpath = RESULTS / "validation.json"
    if args.skip_validation or args.report_only or not have_llm or "coea" not in arms:
        chosen = args.chosen if args.chosen is not None else (
            json.loads(vpath.read_text())["chosen"] if vpath.exists() else "")
        validation = json.loads(vpath.read_text()) if vpath.exists() else None
    else:
        sampler, t0 = LoadSampler(), time.perf_counter()
        validation = validate(args, overrides, out)
        wall_book(out, "validation", time.perf_counter() - t0, sampler.stop())
        chosen = validation["chosen"]
    overrides += [t for t in chosen.split("&") if t.strip()]
    if args.tune_baselines and not args.report_only:
        n = len([c for c in args.candidates.split("|") if c.strip()])
        sampler, t0 = LoadSampler(), time.perf_counter()
        overrides += validate_baselines(args, overrides, out, arms, n)["chosen"]
        wall_book(out, "baseline-validation", time.perf_counter() - t0, sampler.stop())
    elif (RESULTS / "baseline_validation.json").exists():
        overrides += json.loads((RESULTS / "baseline_validation.json").read_text())["chosen"]
    if args.train_seeds:
        overrides.append(f"sim.train_seeds={args.train_seeds}")

    from coea.simulate.run import simulate

    budgets = [int(b) for b in args.budgets.split(",") if b.strip()] if args.budgets else [None]
    base_results, summaries = RESULTS, {}
    for b in budgets:  # one full run per exploration budget (sim.explore_slots; 0 = every slot)
        cfg = load_config(args.config, overrides + ([f"sim.explore_slots={b}"] if b is not None else []))
        full, phase = (out / "full", "full") if b is None else (out / f"full-b{b}", f"full-b{b}")
        RESULTS = base_results if b is None else base_results / f"budget{b}"
        if not args.report_only:
            log(f"full run: seeds {cfg.sim.seeds}, {cfg.sim.days} days, arms {','.join(arms)} "
                f"(missing: {','.join(missing) or 'none'}), settings {chosen!r}, budget {b}, out {full}")
            sampler, t0 = LoadSampler(), time.perf_counter()
            try:
                simulate(cfg, full, arms=arms, report=False, allow_dirty=args.allow_dirty)
            finally:
                book = wall_book(out, phase, time.perf_counter() - t0, sampler.stop())
                finish(cfg, full, out, arms, missing, chosen, validation, book, args.analysis, args.allow_dirty,
                       phase)
        else:
            book = json.loads((out / "bench_wall.json").read_text()) if (out / "bench_wall.json").exists() else {}
            finish(cfg, full, out, arms, missing, chosen, validation, book, args.analysis, args.allow_dirty, phase)
        if (full / "summary.json").exists():
            summaries[b if b is not None else cfg.sim.explore_slots] = json.loads((full / "summary.json").read_text())
    if len(summaries) > 1:
        write_frontier(summaries, base_results, cfg.sim.slots)
    return 0


def write_frontier(summaries: dict, results: Path, slots: int) -> None:
    """The discovery-GTV frontier: per arm and budget (slots the arm fills; 0 = all), the final discovery (and
    knowledge discovery) and cumulative GTV, mean and interval over world seeds -> frontier.json, frontier.png."""
    rows = []
    for b, s in sorted(summaries.items()):
        for arm, vals in s.get("arms", {}).items():
            budget = 0 if arm == "exploitation" else (b or slots)  # exploitation explores nothing at any budget
            rows.append({"arm": arm, "budget": budget, **{k: vals.get(k) for k in (
                "discovery_rate", "discovery_rate_knowledge", "discovery_rate_collab", "gtv_cum")}})
    results.mkdir(parents=True, exist_ok=True)
    (results / "frontier.json").write_text(json.dumps(rows, indent=1))
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional heavy dependency: plots only
    from matplotlib.figure import Figure

    keys = ["discovery_rate"] + (["discovery_rate_knowledge"] if any(r["discovery_rate_knowledge"] for r in rows)
                                 else [])
    fig = Figure(figsize=(6 * len(keys), 5))
    FigureCanvasAgg(fig)
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys):
        for arm in dict.fromkeys(r["arm"] for r in rows):
            pts = sorted((r["budget"], r["gtv_cum"][0], r[key][0]) for r in rows
                         if r["arm"] == arm and r[key] and r["gtv_cum"])
            ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", label=arm)
            for bud, x, y in pts:
                ax.annotate(str(bud), (x, y), fontsize=7)
        ax.set_xlabel("cumulative GTV (mean over world seeds)")
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
    fig.suptitle(f"Discovery against GTV per arm; labels = exploration slots of {slots}")
    fig.tight_layout()
    fig.savefig(results / "frontier.png", dpi=90)


def finish(cfg, full: Path, out: Path, arms, missing, chosen, validation, book, analysis=None,
           allow_dirty: bool = False, phase: str = "full") -> None:
    from coea.simulate.report import write_report
    from coea.simulate.run import parse_list

    inv = [i for i in book.get("invocations", []) if i["phase"] == phase]
    loads = [i["load"]["mean"] for i in inv if i.get("load")]
    note = [
        f"Command: `nice -n 10 python benchmarks/simulate.py` (resumable; {len(inv)} invocation(s)), "
        f"run.num_threads {cfg.run.num_threads}, on the shared 2-core machine.",
        f"Wall time of the full run: {book.get('total_wall_s', 0) / 60:.1f} min over its invocations; "
        f"load average (1 min, sampled every 30 s) per invocation: "
        f"{', '.join(f'{v:.2f}' for v in loads) or 'n/a'} (the 2 cores are shared with other agents' work).",
        f"Settings chosen on the validation seed: `{chosen or '(none: configs/sim.yaml and sim-coea.yaml as they are)'}`"
        + (f", chosen on validation seed {validation['seed']} ({validation['days']} days, coea vs exploitation; "
           f"rule: {validation['rule']}; candidates: "
           + "; ".join(f"`{c['settings']}` discovery {c['discovery']:.3f}, GTV {100 * c['gtv_rel']:+.2f}%"
                       for c in validation["candidates"]) + ")." if validation else "; no validation run."),
    ]
    if analysis:
        note.append(Path(analysis).read_text().strip())
    if missing:
        note.append(f"Missing arms: {', '.join(missing)} (coea/simulate/coea_arm.py not available when this ran).")
    write_report(cfg, full, arms=arms, seeds=[int(s) for s in parse_list(cfg.sim.seeds)],
                 wall_s=book.get("total_wall_s"), note="\n\n".join(note), missing=missing, allow_dirty=allow_dirty)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (full / name).exists():
            shutil.copy2(full / name, RESULTS / name)
    (RESULTS / "bench_wall.json").write_text(json.dumps(book, indent=1))
    if validation:
        (RESULTS / "validation.json").write_text(json.dumps(validation, indent=1))
    log(f"results in {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())

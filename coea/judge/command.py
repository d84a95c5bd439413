"""``coea judge`` arguments and the command itself, kept here so coea/cli.py stays a thin dispatcher.

``add_arguments`` is imported while the parser is built (for every command), so this module imports only the
standard library and the prompts at the top; the run module (torch, transformers, pandas) is imported by
:func:`run_command` when the command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from coea.config import ConfigError
from coea.judge_prompts import TEMPLATES, load_shots, parse_templates, shot_balance

DESCRIPTION = """\
Score recommended categories for serendipity with an LLM judge (Tokutake and Okamoto): each (user, category) gets
a 1-5 score from each template -- base, ls (Likert scale), cot (relevance, unexpectedness, serendipity in one
answer), ltm (the three as chained sub-prompts); >= 4 counts as serendipitous. Input: --workdir (the promoted
round as serving answers it) or --evaluation (every method's lists of a `coea evaluate` output); `coea judge
calibrate --labels FILE` compares the judge with people's labels. Writes OUT/judgments.jsonl (scores and the
model's reasoning), table.md / table.json (precision@K, nDCG@K, average score with bootstrap intervals) or
calibration.md / .json, meta.json and one offline W&B run. Every reply is cached in OUT/cache.jsonl: a rerun (or a
run resumed after a crash) makes no call twice. The default judge, `embedded`, is an UNTRAINED model: its scores
are noise; use --model PATH (a Hugging Face instruct checkpoint) or --endpoint URL (vLLM, TGI) for real ones."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["calibrate"], help="calibrate: compare with --labels")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--workdir", help="judge the promoted round of this workdir (its served categories)")
    src.add_argument("--evaluation", metavar="DIR", help="judge every method's lists of a `coea evaluate` output")
    src.add_argument("--labels", metavar="FILE",
                     help="calibrate: JSON lines {user, item, label 1-5, history} (docs/judge.md)")
    p.add_argument("--out", required=True, help="output directory (an existing one resumes from its cache)")
    p.add_argument("--config", help="YAML config for the embedded judge's size, threads, device and dtype "
                                    "(default: the workdir's own config, else the defaults)")
    p.add_argument("--model", default="embedded",
                   help="embedded (untrained, built here), a Hugging Face causal-LM path, or with --endpoint the "
                        "served model name")
    p.add_argument("--endpoint", default="", metavar="URL", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    p.add_argument("--templates", default=",".join(TEMPLATES), help="comma-separated, default all: base,ls,cot,ltm")
    p.add_argument("--shots", metavar="FILE", help="few-shot examples, JSON lines (the paper: 10, two per score)")
    p.add_argument("--unit", default="category",
                   help="what the prompts call a recommendation (default category; e.g. movie for Serendipity-2018)")
    p.add_argument("--k", type=int, default=5, help="judge each list's top K (default 5)")
    p.add_argument("--max-users", type=int, default=None, metavar="N", help="judge a seeded sample of N users")
    p.add_argument("--methods", help="--evaluation: comma-separated methods (default all)")
    p.add_argument("--eval-seed", type=int, default=None, help="--evaluation: which seed's lists (default the first)")
    p.add_argument("--seed", type=int, default=0, help="seed of the user sample and the bootstrap (default 0)")
    p.add_argument("--history-len", type=int, default=20, help="history categories shown per user (default 20)")
    p.add_argument("--batch-size", type=int, default=8, help="local model: prompts per batch (default 8)")
    p.add_argument("--max-reasoning-tokens", type=int, default=32,
                   help="local model: tokens of reasoning per aspect, CoT and LtM (default 32)")
    p.add_argument("--concurrency", type=int, default=4, help="endpoint: requests in flight (default 4)")
    p.add_argument("--max-retries", type=int, default=5, help="endpoint: retries on HTTP 429/5xx (default 5)")
    p.add_argument("--timeout", type=float, default=120.0, help="endpoint: seconds per request (default 120)")
    p.add_argument("--max-tokens", type=int, default=512, help="endpoint: answer token cap (default 512)")
    p.add_argument("--price-in", type=float, default=0.0, metavar="USD", help="USD per 1M prompt tokens (estimate)")
    p.add_argument("--price-out", type=float, default=0.0, metavar="USD", help="USD per 1M completion tokens")
    p.add_argument("--estimate-only", action="store_true", help="print the cost estimate and stop (no call)")
    p.add_argument("--reference", default="",
                   help="--evaluation: the method every other one is compared with, paired over users (default coea)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples over users (default 1000)")
    p.add_argument("--tracking", choices=["wandb", "local", "none"], default="wandb",
                   help="wandb (offline run under OUT/tracking, default), local (OUT/tracking/metrics.jsonl), none")


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def options(args: argparse.Namespace):
    """Validated :class:`coea.judge.run.JudgeOptions` from the arguments; a bad one raises ConfigError (exit 2)."""
    # Imported on use: `coea --help` reads this module's add_arguments, and these load torch and pandas.
    from coea.judge.run import JudgeOptions

    _positive(args, "k", "max_users", "batch_size", "concurrency", "bootstrap", "history_len", "max_tokens")
    if args.max_retries < 0 or args.max_reasoning_tokens < 0:
        raise ConfigError("--max-retries and --max-reasoning-tokens must be >= 0")
    if args.endpoint and args.model == "embedded":
        raise ConfigError("--endpoint needs --model NAME, the model name the server serves")
    try:
        templates = parse_templates(args.templates)
        shots = load_shots(args.shots) if args.shots else []
    except (ValueError, OSError) as exc:
        raise ConfigError(str(exc)) from None
    if shots and any(v != 2 for v in shot_balance(shots).values()):
        logging.getLogger("coea.judge").warning("judge: %d shots, per score 1-5: %s (the paper uses two per score)",
                                                len(shots), shot_balance(shots))
    return JudgeOptions(out=Path(args.out), model=args.model, endpoint=args.endpoint, templates=templates,
                        unit=args.unit.strip() or "category", shots=shots, shots_path=args.shots or "", k=args.k,
                        max_users=args.max_users, seed=args.seed,
                        history_len=args.history_len, batch_size=args.batch_size,
                        max_reasoning_tokens=args.max_reasoning_tokens, concurrency=args.concurrency,
                        max_retries=args.max_retries, timeout_s=args.timeout, max_tokens=args.max_tokens,
                        price_in=args.price_in, price_out=args.price_out, bootstrap=args.bootstrap,
                        reference=args.reference,
                        estimate_only=args.estimate_only, tracking=args.tracking)


def run_command(args: argparse.Namespace, *, open_log) -> dict[str, Any]:
    """Read the input, judge it, write the files; returns the summary the CLI prints. ``open_log(dir)`` starts
    the command's log file (OUT/logs/judge-<time>.log)."""
    # Imported on use: `coea --help` reads this module's add_arguments, and these load torch and pandas.
    from coea.config import load_config
    from coea.evaluate.split import workdir_config
    from coea.judge.inputs import evaluation_lists, label_cases, workdir_lists
    from coea.judge.run import run_judge
    from coea.rounds import read_state

    calibrate = args.action == "calibrate"
    if calibrate != bool(args.labels):
        raise ConfigError("judge: `coea judge calibrate --labels FILE` compares with people; plain `coea judge` takes "
                          "--workdir W or --evaluation DIR")
    if not calibrate and not (args.workdir or args.evaluation):
        raise ConfigError("judge: give --workdir W or --evaluation DIR (or `calibrate --labels FILE`)")
    opts = options(args)
    if args.config:
        cfg = load_config(args.config)
    elif args.workdir and (Path(args.workdir) / "state.json").exists():
        cfg = workdir_config(Path(args.workdir), read_state(Path(args.workdir)).get("promoted_round"))
    else:
        cfg = load_config(None)
    opts.out.mkdir(parents=True, exist_ok=True)
    open_log(opts.out)
    common = {"max_users": opts.max_users, "seed": opts.seed, "history_len": opts.history_len}
    try:
        if calibrate:
            data = label_cases(args.labels, **common)
        elif args.workdir:
            data = workdir_lists(args.workdir, k=opts.k, **common)
        else:
            methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
            data = evaluation_lists(args.evaluation, k=opts.k, methods=methods, eval_seed=args.eval_seed, **common)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    summary = run_judge(data, opts, cfg, calibrate=calibrate)
    return json.loads(json.dumps(summary, default=str))

"""``coea judge`` itself: validate the options, read the lists, judge them, write the files.

Its arguments are coea/judge/arguments.py (light: the parser is built for every command); this module loads the
judge's run (torch, transformers, pandas), so coea/cli.py imports it when the command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from coea.config import ConfigError, load_config
from coea.evaluate.split import workdir_config
from coea.judge.inputs import evaluation_lists, label_cases, workdir_lists
from coea.judge.run import JudgeOptions, run_judge
from coea.judge_prompts import load_shots, parse_templates, shot_balance
from coea.rounds import read_state


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def options(args: argparse.Namespace):
    """Validated :class:`coea.judge.run.JudgeOptions` from the arguments; a bad one raises ConfigError (exit 2)."""
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

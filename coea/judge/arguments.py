"""``coea judge``'s description and arguments: read by coea/cli.py while it builds the parser (for every
command, ``coea --help`` included), so this module imports only the standard library and the judge prompts.
The command itself is coea/judge/command.py.
"""

from __future__ import annotations

import argparse

from coea.judge_prompts import TEMPLATES

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

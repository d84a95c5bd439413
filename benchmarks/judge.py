"""Throughput of the local judge (``coea judge`` with a Hugging Face causal LM) in items per second, per template.

    nice -n 5 python benchmarks/judge.py [--shapes embedded,qwen2-0.5b] [--threads 1] \
        [--out benchmarks/results/judge_cpu.json]

Builds each shape with random weights (speed does not depend on the weights; no download): ``embedded`` is the
default ``backbone`` section (hidden 64, 2 layers) and ``qwen2-0.5b`` the public Qwen2-0.5B config (hidden 896, 24
layers, 14 heads / 2 KV heads, MLP 4,864, 151,936 vocabulary rows, tied embeddings). Both read the prompts through
the word-level tokenizer coea's embedded judge uses (a real Qwen BPE tokenizer gives somewhat more tokens for the
same text; the mean prompt length is recorded). Items are 10-shot (two shots per score level, as in the paper) with
a 10-category history; each template judges its items through :class:`coea.judge.backends.LocalBackend` exactly
as ``coea judge`` does (batched greedy decoding, reasons of ``--reasoning-tokens`` tokens for CoT and LtM, every
score one constrained digit). One extra item per template (and LtM turn) warms up first and is not timed. Prints one
JSON line per (shape, template) and writes them with the conditions (commit, load average, threads) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from coea.backbones import build_word_tokenizer  # noqa: E402
from coea.judge.backends import LocalBackend, Request  # noqa: E402
from coea.judge_prompts import TEMPLATES, Shot, calls  # noqa: E402

SHAPES = {
    "embedded": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                     intermediate_size=128, vocab_size=None),  # the word tokenizer's size, as coea builds it
    "qwen2-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, vocab_size=151936),
}
CATEGORIES = ["Action", "Adventure", "Animation", "Comedy", "Crime", "Documentary", "Drama", "Fantasy", "Horror",
              "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western", "Jazz", "Hiking", "Baking",
              "Astronomy", "Chess", "Sailing", "Poetry", "Gardening"]


def shots() -> list[Shot]:
    """10 shots, two per score level, each with the three CoT steps."""
    out = []
    for i in range(10):
        score = i // 2 + 1
        hist = tuple(CATEGORIES[(i + j) % len(CATEGORIES)] for j in range(5))
        steps = {"relevance": ("it shares themes with the history", 6 - score if score > 2 else 5),
                 "unexpectedness": ("the user has not chosen it before", score),
                 "serendipity": ("relevant and new" if score >= 4 else "not both", score)}
        out.append(Shot(hist, CATEGORIES[(i * 7 + 3) % len(CATEGORIES)], score, steps["serendipity"][0], steps))
    return out


def cases(n: int) -> list[tuple[list[str], str]]:
    return [([CATEGORIES[(u * 3 + j) % len(CATEGORIES)] for j in range(10)], CATEGORIES[(u * 5 + 11) % len(CATEGORIES)])
            for u in range(n)]


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def time_template(backend: LocalBackend, template: str, items: list[tuple[list[str], str]], sh: list[Shot]) -> dict:
    """Judge ``items`` with ``template`` turn by turn (LtM's later turns after the earlier answers); seconds of the
    timed items (all but the first, a warm-up)."""
    plans = [calls(template, h, item, sh) for h, item in items]
    convo: list[list[tuple[str, str]]] = [[] for _ in items]
    prompt_tokens = []
    timed_s = 0.0
    for t in range(len(plans[0])):
        reqs = [Request(tuple(convo[j] + [("user", plans[j][t].prompt)]), plans[j][t].aspects, plans[j][t].reasoning)
                for j in range(len(items))]
        got: dict[int, object] = {}
        backend.run(reqs[:1], lambda i, r: got.__setitem__(i, r))
        t1 = time.perf_counter()
        backend.run(reqs[1:], lambda i, r: got.__setitem__(1 + i, r))
        timed_s += time.perf_counter() - t1
        for j, r in enumerate(reqs):
            convo[j] = [*r.messages, ("assistant", got[j].text)]
            if t == 0:
                prompt_tokens.append(got[j].prompt_tokens)
        assert all(got[j].parsed for j in range(len(items))), "a local judge's scores always parse"
    timed = len(items) - 1
    return {"items_timed": timed, "seconds": round(timed_s, 2), "items_per_s": round(timed / timed_s, 3),
            "prompt_tokens_mean": round(sum(prompt_tokens) / len(prompt_tokens), 1)}


def main(argv: list[str] | None = None) -> list[dict]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="embedded,qwen2-0.5b")
    ap.add_argument("--templates", default=",".join(TEMPLATES))
    ap.add_argument("--items", default="embedded=64,qwen2-0.5b=8",
                    help="timed items per template and shape (SHAPE=N,...); one more item warms up first")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reasoning-tokens", type=int, default=32)
    ap.add_argument("--slow-templates", default="cot,ltm",
                    help="templates timed on --slow-items items only at the large shape (they cost 6 prefills)")
    ap.add_argument("--slow-items", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = library default)")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_items = {k: int(v) for k, v in (x.split("=") for x in args.items.split(","))}
    sh = shots()
    templates = [t.strip() for t in args.templates.split(",") if t.strip()]
    lines = []
    for shape in [s.strip() for s in args.shapes.split(",") if s.strip()]:
        spec = dict(SHAPES[shape])
        n = n_items.get(shape, 16)
        texts = [c.prompt for t in TEMPLATES for h, i in cases(n) for c in calls(t, h, i, sh)]
        tok = build_word_tokenizer([*texts, "1 2 3 4 5 : ?"])
        tok.save_pretrained(tempfile.mkdtemp(prefix="coea-judge-bench-"))
        spec["vocab_size"] = spec["vocab_size"] or len(tok)
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(Qwen2Config(**spec, max_position_embeddings=8192, tie_word_embeddings=True,
                                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                             bos_token_id=tok.bos_token_id))
        params = sum(p.numel() for p in model.parameters())
        backend = LocalBackend(model, tok, identity=shape, batch_size=args.batch_size,
                               max_reasoning_tokens=args.reasoning_tokens)
        for template in templates:
            count = n
            batch = args.batch_size
            if shape != "embedded" and template in args.slow_templates.split(","):
                count, batch = args.slow_items, args.slow_items
            backend.batch_size = batch
            got = time_template(backend, template, cases(count + 1), sh)
            line = {"benchmark": "judge", "shape": shape, "template": template, "params_m": round(params / 1e6, 1),
                    "shots": len(sh), "batch_size": batch, "reasoning_tokens": args.reasoning_tokens, **got,
                    "device": "cpu", "threads": torch.get_num_threads(), "load_avg_1m": round(os.getloadavg()[0], 2)}
            print(json.dumps(line), flush=True)
            lines.append(line)
    result = {"commit": commit(), "command": "python benchmarks/judge.py " + " ".join(argv or sys.argv[1:]),
              "platform": platform.platform(), "cpus": os.cpu_count(),
              "cores_available": len(os.sched_getaffinity(0)), "torch": torch.__version__,
              "load_avg_end": [round(x, 2) for x in os.getloadavg()], "rows": lines,
              "note": "2 cores shared with other engineers' jobs; figures are indicative"}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return lines


if __name__ == "__main__":
    main()

"""Disk per round of the Relevance LLM: LoRA adapter + score head (now) vs a merged full copy (before).

    python benchmarks/relevance_disk.py --workdir /tmp/demo [--config configs/demo.yaml] \
        [--out benchmarks/results/relevance_disk.json]

For every round of a workdir written with ``lora.enabled: true`` it reports the bytes of ``relevance/model`` (the
adapter + score head coea saves) and the bytes the same model takes merged (loaded through the cycle's loader,
merged and written with ``save_pretrained`` to a temporary directory: what every round kept before). When the
workdir is missing or empty (or not given: a temporary one) it runs the demo main job into it first
(``coea rounds --n 3`` on the config, one thread).

It also counts, without downloading anything, the parameters of the paper's backbone (a Qwen2.5-7B-Instruct-shaped
Qwen2 built on the meta device from its published config values) and of its Relevance adapter with the config's
LoRA settings, and converts them to bytes (adapter weights in float32 as peft saves them from a float32 LoRA,
the merged model in bfloat16): the per-round footprint at 7B, computed rather than measured.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Qwen2.5-7B-Instruct's config.json (hidden 3584, 28 layers, 28 heads / 4 KV heads, MLP 18944, vocab 152064).
QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def measure_workdir(cfg, workdir: Path) -> list[dict]:
    from coea.backbones import is_adapter_dir, load_relevance_model, load_tokenizer
    from coea.rounds import base_model_path, relevance_model_dir, tokenizer_path

    rows = []
    tok = load_tokenizer(tokenizer_path(workdir), cfg)
    for rp in sorted((workdir / "rounds").glob("[0-9]*")):
        k = int(rp.name)
        model_dir = relevance_model_dir(workdir, k)
        if not model_dir.is_dir():
            continue
        row = {"round": k, "layout": "adapter" if is_adapter_dir(model_dir) else "full",
               "relevance_dir_bytes": dir_bytes(model_dir.parent), "model_bytes": dir_bytes(model_dir)}
        with tempfile.TemporaryDirectory(prefix="coea-merged-") as tmp:
            merged = load_relevance_model(cfg, model_dir, base_model=base_model_path(cfg, workdir), tokenizer=tok)
            merged.save_pretrained(tmp)
            row["merged_bytes"] = dir_bytes(Path(tmp))
        row["ratio_merged_over_saved"] = round(row["merged_bytes"] / row["model_bytes"], 2)
        rows.append(row)
        print(json.dumps(row))
    return rows


def qwen7b_footprint(cfg) -> dict:
    """Parameter counts of a 7B-shaped sequence classifier and its LoRA adapter (+ score head), on meta tensors."""
    import torch
    from peft import get_peft_model
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from coea.backbones import lora_config

    with torch.device("meta"):
        model = Qwen2ForSequenceClassification(Qwen2Config(num_labels=1, **QWEN25_7B))
    full = sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, lora_config(cfg.lora, "SEQ_CLS"))
    adapter = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    head = sum(p.numel() for n, p in peft_model.named_parameters() if "modules_to_save" in n)
    return {"backbone": "Qwen2.5-7B-Instruct shape (meta device, nothing downloaded)", "lora_r": cfg.lora.r,
            "lora_target_modules": cfg.lora.target_modules, "full_parameters": full, "adapter_parameters": adapter,
            "score_head_parameters": head, "merged_bytes_bf16": full * 2, "adapter_bytes_fp32": (adapter + head) * 4,
            "ratio": round(full * 2 / ((adapter + head) * 4), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, help="a workdir to measure; missing or empty: run the demo into it first")
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--rounds", type=int, default=3, help="cycles to run when --workdir is not given")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "relevance_disk.json")
    args = ap.parse_args(argv)

    from coea.config import load_config

    cfg = load_config(args.config, [])
    started = time.time()
    workdir = args.workdir
    if workdir is None or not (workdir / "state.json").exists():  # nothing there yet: run the demo into it
        workdir = workdir or Path(tempfile.mkdtemp(prefix="coea-relevance-disk-"))
        subprocess.run([sys.executable, "-m", "coea.cli", "rounds", "--n", str(args.rounds), "--config", args.config,
                        "--workdir", str(workdir), "--set", "run.num_threads=1"], check=True, cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    rounds = measure_workdir(cfg, workdir)
    big = qwen7b_footprint(cfg)
    print(json.dumps(big))
    result = {"config": args.config, "workdir": str(workdir), "rounds": rounds, "qwen2.5_7b": big,
              "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                       "shared": "2-core machine shared with other engineers; sizes do not depend on load"},
              "wall_time_s": round(time.time() - started, 1), "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

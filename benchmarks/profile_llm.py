"""Time per group of the Profile LLM (``profile.backend: llm``) at real model shapes, with random weights.

    python benchmarks/profile_llm.py [--shape qwen2.5-0.5b] [--device cpu] [--groups 3] [--dtype float32] \
        [--out benchmarks/results/profile_llm_cpu.json]

Builds a Qwen2 of the named shape with random weights (speed does not depend on the weights; no download), wraps
it in coea's writer (``LlmPortraitWriter.from_model``), and writes ``--groups`` portraits from demo-sized prompts
(``profile.k_representatives`` = 8 users x ``profile.categories_per_user`` = 10 categories). Generation is forced
to the full ``--max-new-tokens`` (96, the default of ``profile.max_new_tokens``) through ``min_new_tokens``, so the
figure is the worst case of one group. Prints one JSON line: prompt tokens, seconds per group, new tokens per second,
parameters, weight memory, peak resident memory (CPU) or peak allocated memory (CUDA). A shared machine's load
moves the timings; the line records the load average.

Shapes follow the public configs of Qwen2.5-0.5B / 1.5B / 7B-Instruct. The vocabulary is the real one (151,936
rows: the LM head is a large share of a small model's cost); the prompt goes through a small stand-in tokenizer,
and the prompt length is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

SHAPES = {  # hidden, layers, heads, kv heads, intermediate (Qwen2.5 configs); vocabulary 151,936
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=2048),
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, vocab_size=151936),
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960, vocab_size=151936),
    "qwen2.5-7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       intermediate_size=18944, vocab_size=151936),
}
CATEGORIES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
              "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def stand_in_tokenizer(path: str, vocab: int):
    """A byte-level BPE trained on the prompt's words (real Qwen tokenisation of such prompts is similar)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from coea.config import ProfileConfig

    corpus = [ProfileConfig().prompt, ", ".join(CATEGORIES)] * 4
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=min(vocab, 600), special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.save_pretrained(path)
    return tok


def main(argv: list[str] | None = None) -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from coea.config import ProfileConfig
    from coea.groups import LlmPortraitWriter

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--groups", type=int, default=3, help="portraits written (the first one warms up, not timed)")
    ap.add_argument("--max-new-tokens", type=int, default=ProfileConfig().max_new_tokens)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = library default)")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    shape = SHAPES[args.shape]
    tok = stand_in_tokenizer(tempfile.mkdtemp(prefix="coea-profile-tok-"), shape["vocab_size"])

    t = time.perf_counter()
    torch.manual_seed(0)
    config = Qwen2Config(**shape, max_position_embeddings=4096, tie_word_embeddings=args.shape != "qwen2.5-7b",
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    with torch.device(args.device):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.generation_config.min_new_tokens = args.max_new_tokens  # always the full length: the worst case
    model.generation_config.eos_token_id = tok.eos_token_id
    build_s = time.perf_counter() - t
    params = sum(p.numel() for p in model.parameters())

    profile = ProfileConfig()
    writer = LlmPortraitWriter.from_model(model, tok, name=f"random-{args.shape}", prompt=profile.prompt,
                                          max_new_tokens=args.max_new_tokens, device=args.device)
    lines = [", ".join(CATEGORIES[(u + j) % len(CATEGORIES)] for j in range(profile.categories_per_user))
             for u in range(profile.k_representatives)]
    prompt_tokens = len(tok(writer.render(lines))["input_ids"])
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for g in range(max(args.groups, 2)):
        t = time.perf_counter()
        writer.write(lines[g % len(lines):] + lines[: g % len(lines)])  # a different prompt per group
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if g:
            seconds.append(time.perf_counter() - t)
    per_group = sorted(seconds)[len(seconds) // 2]
    line = {
        "benchmark": "profile_llm", "shape": args.shape, "device": args.device, "dtype": args.dtype,
        "threads": torch.get_num_threads(), "params_m": round(params / 1e6, 1),
        "weights_gib": round(params * dtype.itemsize / 2**30, 2), "prompt_tokens": prompt_tokens,
        "new_tokens": args.max_new_tokens, "groups_timed": len(seconds), "seconds_per_group": round(per_group, 2),
        "new_tokens_per_s": round(args.max_new_tokens / per_group, 2), "build_s": round(build_s, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2), "platform": platform.platform(), "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    if args.device.startswith("cuda"):
        line["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        line["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(line), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(line, indent=2) + "\n")
    return line


if __name__ == "__main__":
    main()

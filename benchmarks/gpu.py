"""GPU speed of the two hot paths, side by side in one run on the same device (issue 7).

    python benchmarks/gpu.py                                  # Qwen2.5-0.5B- and 7B-shaped, CUDA, bf16
    python benchmarks/gpu.py --shapes qwen2.5-0.5b --steps 8  # one shape, shorter
    python benchmarks/gpu.py --smoke                          # tiny shapes on CPU: exercises every code path
    python benchmarks/gpu.py --device cpu --dtype float32 --shapes small --steps 4 --warmup 1 --keys 32 \
        --out benchmarks/results/gpu_bench_cpu.jsonl          # indicative CPU ratios (not the GPU targets)

Prints one JSON line per measurement and appends them to ``--out`` (default on CUDA:
benchmarks/results/gpu_<gpu-name>.jsonl). Models are random-init Qwen2.5-shaped (weights do not change
throughput), built directly on the device in the benchmark dtype.

DPO + KL (``benchmark: dpo``), per shape, on the same batches (``--pairs`` pairs a step, ``--prompt-tokens``
prompts, ~8-token completions), LoRA r 8 / alpha 16 on all linear layers everywhere:
  trl_dpo            plain trl ``DPOTrainer`` (sigmoid, beta 0.1); its reference is the adapter-disabled policy,
                     run at every step (the baseline of the target)
  dpo_kl             coea's DPOKLTrainer, two rows per pair, live reference (the exact KL over the vocabulary)
  dpo_kl_fast        shared prompt (one packed row per pair) + the reference precomputed once per round;
                     ``pairs_per_s`` counts the precompute (amortised over this run's pairs), ``steady_pairs_per_s``
                     does not
Each row has pairs/s, step time (median after ``--warmup`` steps), peak memory, MFU, ``x_vs_trl`` and, for the
coea rows, ``loss_abs_diff``: |loss - the plain row's loss| on the same first batch (alpha 0 against trl_dpo;
alpha 0.4 between dpo_kl and dpo_kl_fast).

Candidates (``benchmark: candidates``): closed-vocabulary scoring ``rank_categories`` (prompt once, KV cache shared
by every category completion, batched by length) against Hugging Face ``generate`` with M sampled sequences on the
same model and prompts; keys/s, ``x_vs_hf_generate``, MFU.

MFU = estimated executed FLOPs / time / the GPU's dense bf16 peak (``PEAK_FLOPS``; null when unknown or CPU).
FLOPs: 2 * N_body per token forward (N_body = parameters less embeddings and LM head), 2 * N_body more per token
backward (activation gradients; LoRA's own weight gradients are negligible), 2 * d * V per position projected
through the LM head (times 3 with a backward). Attention's T^2 term is left out (T <= 300 here).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import PrinterCallback, Qwen2Config, Qwen2ForCausalLM, TrainerCallback  # noqa: E402

from benchmarks.candidates import CATEGORIES, build_prompts, build_tokenizer, hf_generate, machine  # noqa: E402

# Dense bf16 peak of each GPU, FLOP/s (vendor figures, no sparsity).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}

SHAPES = {  # Qwen2.5 configs (hidden, MLP, layers, heads, kv heads, vocab, tied embeddings)
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    # not Qwen2.5: a body heavy enough for indicative CPU ratios in minutes, and the --smoke shape
    "small": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=32000, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=False),
}
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


# ------------------------------------------------------------------------------------------------ shared parts


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def build_model(shape: str, tokenizer, device: torch.device, dtype: torch.dtype) -> Qwen2ForCausalLM:
    config = Qwen2Config(**SHAPES[shape], max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, attn_implementation="sdpa")
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model


def body_params(model) -> int:
    skip = {id(p) for p in model.get_input_embeddings().parameters()}
    skip |= {id(p) for p in model.get_output_embeddings().parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def forward_flops(n_body: int, dim: int, vocab: int, tokens: float, lm_positions: float, backward: bool) -> float:
    body = 2 * n_body * tokens * (2 if backward else 1)
    head = 2 * dim * vocab * lm_positions * (3 if backward else 1)
    return body + head


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def emit(row: dict, out: Path | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(line + "\n")


# --------------------------------------------------------------------------------------------------------- DPO


def preference_data(tokenizer, n: int, prompt_tokens: int) -> Dataset:
    """n pairs: ~prompt_tokens-token prompts, completions of two or three category names (~8 tokens)."""
    prompts, _ = build_prompts(n, prompt_tokens, tokenizer)
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for i, p in enumerate(prompts):
        rows["prompt"].append(p)
        rows["chosen"].append(" " + ", ".join(CATEGORIES[(i + j) % len(CATEGORIES)] for j in range(2 + i % 2)))
        rows["rejected"].append(" " + ", ".join(CATEGORIES[(3 * i + j + 5) % len(CATEGORIES)] for j in range(2)))
    return Dataset.from_dict(rows)


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (synchronised, so GPU work is inside the step it belongs to)."""

    def __init__(self, device: torch.device):
        self.device, self.times, self._t0 = device, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        sync(self.device)
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        self.times.append(time.perf_counter() - self._t0)


def _training_args(cls, out: str, args, device, **extra):
    cuda = device.type == "cuda"
    return cls(output_dir=out, per_device_train_batch_size=args.pairs, gradient_accumulation_steps=1,
               max_steps=args.steps, learning_rate=5e-6, beta=0.1, logging_steps=1, save_strategy="no",
               report_to="none", disable_tqdm=True, use_cpu=not cuda, bf16=cuda and args.dtype == "bfloat16",
               gradient_checkpointing=False, max_length=args.prompt_tokens + 64, dataloader_drop_last=True,
               seed=0, **extra)


def _policy(shape, tokenizer, device, dtype):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(build_model(shape, tokenizer, device, dtype), LoraConfig(**LORA))


def _reference(shape, tokenizer, device, dtype):
    ref = build_model(shape, tokenizer, device, dtype).eval()  # same seed: equals the policy's base
    ref.requires_grad_(False)
    return ref


def _first_batch_loss(trainer) -> float:
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.eval()
    with torch.no_grad(), trainer.compute_loss_context_manager():
        loss = float(trainer.compute_loss(trainer.model, batch))
    trainer.model.train()
    return loss


def make_trainer(method: str, shape: str, tokenizer, data, args, device, dtype, *, alpha: float, out: str):
    """One trainer of ``method`` ('trl_dpo', 'dpo_kl', 'dpo_kl_fast'); returns (trainer, precompute seconds)."""
    from trl import DPOConfig, DPOTrainer

    from loops.dpo import DPOKLConfig, DPOKLTrainer

    policy = _policy(shape, tokenizer, device, dtype)
    if method == "trl_dpo":
        return DPOTrainer(policy, None, _training_args(DPOConfig, out, args, device), train_dataset=data,
                          processing_class=tokenizer), 0.0
    fast = method == "dpo_kl_fast"
    cfg = _training_args(DPOKLConfig, out, args, device, alpha=alpha, shared_prompt=fast, precompute_reference=fast)
    ref = _reference(shape, tokenizer, device, dtype)
    trainer = DPOKLTrainer(policy, ref, cfg, train_dataset=data, processing_class=tokenizer)
    return trainer, trainer.reference_precompute_s


def dpo_rows(shape: str, tokenizer, args, device, dtype, out: Path | None) -> list[dict]:
    n_pairs = args.pairs * args.steps
    data = preference_data(tokenizer, n_pairs, args.prompt_tokens)
    lengths = [len(tokenizer(p)["input_ids"]) for p in list(data["prompt"])]
    comp = [len(tokenizer(c)["input_ids"]) + 1 for c in list(data["chosen"]) + list(data["rejected"])]  # + EOS
    prompt_len, comp_len = statistics.mean(lengths), statistics.mean(comp)
    common = {"benchmark": "dpo", "shape": shape, "pairs_per_step": args.pairs, "prompt_tokens": round(prompt_len, 1),
              "completion_tokens": round(comp_len, 1), "steps": args.steps, "dtype": args.dtype,
              "device": str(device), "lora": f"r{LORA['r']} all-linear"}
    peak = peak_flops(device)
    rows, losses = [], {}
    for method in ("trl_dpo", "dpo_kl", "dpo_kl_fast"):
        reset_memory(device)
        with tempfile.TemporaryDirectory() as tmp:
            trainer, precompute_s = make_trainer(method, shape, tokenizer, data, args, device, dtype, alpha=0.4,
                                                 out=tmp)
            # Losses on the first batch before training: alpha 0 is plain DPO (comparable with trl's), 0.4 the KL.
            for alpha in ((0.0, 0.4) if method != "trl_dpo" else (0.0,)):
                trainer.alpha = alpha
                losses[(method, alpha)] = _first_batch_loss(trainer)
            trainer.alpha = 0.4
            timer = StepTimer(device)
            trainer.add_callback(timer)
            trainer.remove_callback(PrinterCallback)  # keep stdout to the JSON lines
            trainer.train()
            n_body = body_params(trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model")
                                 else trainer.model)
            del trainer
        step_s = statistics.median(timer.times[args.warmup:] or timer.times)
        steady = args.pairs / step_s
        round_pairs_per_s = n_pairs / (precompute_s + n_pairs / steady)
        cfg = SHAPES[shape]
        d, v = cfg["hidden_size"], cfg["vocab_size"]
        if method == "dpo_kl_fast":  # packed: B rows of T + Lc + Lr; the reference is in precompute_s
            policy_tokens, ref_tokens = prompt_len + 2 * comp_len, 0.0
        else:  # two rows per pair of T + L, policy and reference every step
            policy_tokens = ref_tokens = 2 * (prompt_len + comp_len)
        # trl's fused head projects every position; coea projects only the completion windows
        head_positions = 2 * (prompt_len + comp_len) if method == "trl_dpo" else 2 * comp_len
        flops = args.pairs * (forward_flops(n_body, d, v, policy_tokens, head_positions, backward=True)
                              + forward_flops(n_body, d, v, ref_tokens, head_positions if ref_tokens else 0, False))
        row = {**common, "method": method, "step_s": round(step_s, 4), "steady_pairs_per_s": round(steady, 2),
               "pairs_per_s": round(round_pairs_per_s, 2), "precompute_s": round(precompute_s, 3),
               "tflops": round(flops / step_s / 1e12, 2),
               "mfu": round(flops / step_s / peak, 4) if peak else None, "peak_memory_gb": peak_memory_gb(device)}
        rows.append(row)
    base = rows[0]["pairs_per_s"]
    for row in rows:
        row["x_vs_trl"] = round(row["pairs_per_s"] / base, 2)
        row["loss_first_batch"] = round(losses[(row["method"], 0.0)], 6)
        if row["method"] == "dpo_kl":
            row["loss_abs_diff"] = abs(losses[("dpo_kl", 0.0)] - losses[("trl_dpo", 0.0)])
        if row["method"] == "dpo_kl_fast":
            row["loss_abs_diff"] = max(abs(losses[("dpo_kl_fast", 0.0)] - losses[("trl_dpo", 0.0)]),
                                       abs(losses[("dpo_kl_fast", 0.4)] - losses[("dpo_kl", 0.4)]))
        emit(row, out)
    return rows


# -------------------------------------------------------------------------------------------------- candidates


def candidate_rows(shape: str, tokenizer, args, device, dtype, out: Path | None) -> list[dict]:
    from coea.candidates import rank_categories

    model = build_model(shape, tokenizer, device, dtype).eval()
    prompts, recent = build_prompts(args.keys, args.prompt_tokens, tokenizer)
    prompt_len = statistics.mean(len(tokenizer(p)["input_ids"]) for p in prompts)
    comp = [len(tokenizer(" " + c)["input_ids"]) + 1 for c in CATEGORIES]  # + EOS
    max_new = max(comp)
    reset_memory(device)

    def score():
        rank_categories(model, tokenizer, prompts, CATEGORIES, exclude=recent, top_m=args.m,
                        batch_size=args.score_batch)

    def generate():
        hf_generate(model, tokenizer, prompts, args.m, beam=False, max_new_tokens=max_new,
                    batch_size=args.score_batch, device=device)

    seconds = {}
    with torch.inference_mode():
        for name, fn in (("rank_categories", score), ("hf_generate_sample", generate)):
            fn()  # warm-up (kernels, allocator)
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                fn()
            sync(device)
            seconds[name] = (time.perf_counter() - t0) / args.repeats
    n_body, cfg = body_params(model), SHAPES[shape]
    c = len(CATEGORIES) - 2  # two recent categories are excluded per key
    mean_comp = statistics.mean(comp)
    score_flops = args.keys * forward_flops(n_body, cfg["hidden_size"], cfg["vocab_size"],
                                            prompt_len + c * (mean_comp - 1), 1 + c * (mean_comp - 1), False)
    peak = peak_flops(device)
    rows = []
    for name, s in seconds.items():
        row = {"benchmark": "candidates", "shape": shape, "method": name, "keys": args.keys, "m": args.m,
               "categories": len(CATEGORIES), "prompt_tokens": round(prompt_len, 1),
               "completion_tokens": round(mean_comp, 2), "batch_size": args.score_batch, "dtype": args.dtype,
               "device": str(device), "seconds": round(s, 4), "keys_per_s": round(args.keys / s, 2),
               "peak_memory_gb": peak_memory_gb(device)}
        if name == "rank_categories":
            row["tflops"] = round(score_flops / s / 1e12, 3)
            row["mfu"] = round(score_flops / s / peak, 4) if peak else None
        rows.append(row)
    for row in rows:
        row["x_vs_hf_generate"] = round(row["keys_per_s"] / rows[1]["keys_per_s"], 2)
        emit(row, out)
    del model
    return rows


# -------------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="qwen2.5-0.5b,qwen2.5-7b", help=f"comma-separated, from {sorted(SHAPES)}")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--pairs", type=int, default=16, help="preference pairs per DPO step")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--steps", type=int, default=12, help="DPO steps per method (the data is pairs * steps)")
    ap.add_argument("--warmup", type=int, default=2, help="DPO steps left out of the median step time")
    ap.add_argument("--keys", type=int, default=256, help="unique keys (prompts) for candidate generation")
    ap.add_argument("--m", type=int, default=5, help="candidates per key")
    ap.add_argument("--score-batch", type=int, default=32, help="keys per scoring / generate call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["dpo", "candidates"], default=None)
    ap.add_argument("--out", default="", help="JSONL to append to; default on CUDA: results/gpu_<gpu>.jsonl")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU in float32: checks the code paths")
    args = ap.parse_args(argv)
    if args.smoke:
        args.shapes, args.device, args.dtype = "tiny", "cpu", "float32"
        args.pairs, args.prompt_tokens, args.steps, args.warmup = 4, 24, 3, 1
        args.keys, args.repeats, args.score_batch = 8, 1, 8
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        ap.error(f"--shapes: unknown {unknown[0]!r}; choose from {sorted(SHAPES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available here (use --smoke for a CPU check of the code paths)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    out = Path(args.out) if args.out else None
    if out is None and device.type == "cuda":
        slug = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
        out = REPO / "benchmarks" / "results" / f"gpu_{slug}.jsonl"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    emit({"benchmark": "machine", "command": command, **machine(device)}, out)
    tokenizer = build_tokenizer(tempfile.mkdtemp())
    for shape in args.shapes.split(","):
        if args.only in (None, "candidates"):
            candidate_rows(shape, tokenizer, args, device, dtype, out)
        if args.only in (None, "dpo"):
            dpo_rows(shape, tokenizer, args, device, dtype, out)


if __name__ == "__main__":
    main()

"""Typed, validated configuration.

Every YAML key under ``configs/`` maps one-to-one onto an attribute of a dataclass here (same name). Unknown
keys and bad values raise :class:`ConfigError` whose message is one line naming the key; the CLI turns it into
exit status 2. Command-line overrides use the same dotted names: ``--set encoder.d_model=64``.

Each field carries its help text in ``metadata["help"]`` (shown by ``coea config --config C --explain``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message is one line that names the offending key."""


def opt(default: Any, help: str, *, min: float | None = None, max: float | None = None) -> Any:  # noqa: A002
    """A config field with help text and optional numeric bounds (inclusive)."""
    meta = {"help": help, "min": min, "max": max}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------------- sections


@dataclass
class RunConfig:
    name: str = opt("demo", "Run name; used for the W&B group together with the workdir.")
    seed: int = opt(0, "Global seed (torch, numpy, python, sampling).", min=0)
    device: str = opt("auto", "Torch device: auto | cpu | cuda | cuda:N.")
    num_threads: int = opt(
        1, "Threads of every stage: torch intra- and inter-op, the OpenMP / MKL / OpenBLAS pools, HF tokenizers and "
        "Spark local[N] (coea.workdir.configure_threads). 1 is safe when runs share cores, and the fastest for the "
        "embedded models; raise it for a large model on CPU on a machine of its own. 0 = the libraries' defaults "
        "(one spin-waiting thread per core: two such runs on shared cores slow each other down several times, "
        "benchmarks/threads.py).", min=0)


@dataclass
class DataConfig:
    source: Literal["synthetic", "movielens-100k", "movielens-1m", "parquet"] = opt(
        "synthetic", "Where events come from. synthetic = the embedded demo world."
    )
    path: str = opt("", "Directory of the data set (MovieLens layout, or a Parquet log: items.parquet, users.parquet "
                    "and events.parquet or events/date=YYYY-MM-DD/ day partitions; docs/data.md).")
    engine: Literal["pandas", "spark"] = opt(
        "pandas", "What builds each round's sequences: 'pandas' = the in-process sequence state carried from round "
        "to round; 'spark' = spark_jobs/build_sequences.py over every consumed file (needs data.source: parquet, "
        "pyspark and Java 17; checked against the in-process state, docs/spark.md).")
    click_min_rating: float = opt(4.0, "MovieLens: a rating >= this is a click; lower ratings are exposures.")
    tau: int = opt(5, "Long-term filter threshold (Eq. 3): minimum click frequency.", min=1)
    long_filter: Literal["category", "item"] = opt(
        "category",
        "Level the tau filter applies at. 'category' keeps a click when the user clicked its category >= tau "
        "times (for data where a user meets an item once, e.g. MovieLens); 'item' is Eq. 3 literally.",
    )
    short_k: int = opt(10, "K: the short-term window I_short is the user's last K clicks.", min=1)
    max_long_len: int = opt(200, "Keep the most recent N items of I_long for the encoder.", min=1)
    bootstrap_fraction: float = opt(
        0.7, "Share of the timeline that round 0 trains on (live clock: of the complete days when round 0 runs, "
        "rounded down to whole days); fixed in state.json when round 0 runs.",
        min=0.05, max=1.0,
    )
    validation_fraction: float = opt(
        0.1, "Share of round-0 users' next windows held out for bootstrap validation.", min=0.0, max=0.5
    )
    max_reject_rows: int = opt(
        10000, "Rejected rows kept per reason for the rejects file (counts are always exact); 0 keeps all.", min=0
    )
    on_unreadable: Literal["fail", "quarantine"] = opt(
        "fail", "Live log: what a round does with a data file it cannot read (not Parquet, truncated, a required "
        "column missing). fail = exit 7 naming the file; nothing is consumed and the window stays before its day, "
        "so the next run after the fix consumes it normally. quarantine = move it to PATH/events/_quarantine/ "
        "(recorded in window.json and WORKDIR/quarantine.jsonl) and go on without it (docs/data.md).")
    max_reject_fraction: float = opt(
        0.05, "Live log: the round fails (exit 7, nothing consumed) when more than this share of the rows read, "
        "of one partition day or of the whole round, is dropped for a reason that loses an event (malformed_row, "
        "bad_event_kind, unknown_item, future_timestamp); duplicates do not count. 1 = never fail.",
        min=0.0, max=1.0)


@dataclass
class SyntheticConfig:
    n_users: int = opt(600, "Users in the synthetic world.", min=1)
    n_groups: int = opt(8, "Latent user groups (long-term taste archetypes).", min=1)
    n_categories: int = opt(24, "Catalogue categories.", min=2)
    items_per_category: int = opt(15, "Items per category.", min=1)
    n_days: int = opt(40, "Days of simulated activity.", min=2)
    sessions_per_day: float = opt(1.0, "Mean sessions per user and day (Poisson).", min=0.0)
    exposures_per_session: int = opt(6, "Items exposed per session.", min=1)
    categories_per_group: int = opt(4, "Core categories of each group's long-term taste.", min=1)
    latent_per_user: int = opt(2, "Latent unexplored interests per user (ground truth for novelty).", min=0)
    drift: float = opt(0.3, "Probability that a session follows the user's short-term drift.", min=0.0, max=1.0)
    discover_prob: float = opt(
        0.1, "Per-day probability that a user starts clicking one of their latent interests.", min=0.0, max=1.0
    )
    user_features: int = opt(3, "Sparse features per user (each a small categorical).", min=0)


@dataclass
class EncoderConfig:
    d_model: int = opt(128, "d: width of the causal self-attention encoder.", min=8)
    n_layers: int = opt(4, "L: transformer layers.", min=1)
    n_heads: int = opt(4, "Attention heads.", min=1)
    dropout: float = opt(0.1, "Dropout.", min=0.0, max=0.9)
    epochs: int = opt(10, "Training epochs (next-item prediction over I_long).", min=1)
    batch_size: int = opt(64, "Batch size.", min=1)
    lr: float = opt(1e-3, "Learning rate (AdamW).", min=0.0)
    norm_first: bool = opt(
        True, "Pre-norm blocks (LayerNorm before attention / MLP, residual around both) plus a final LayerNorm; "
        "False = post-norm blocks."
    )
    positions: Literal["recency", "absolute", "none"] = opt(
        "recency", "Learned position embeddings: 'recency' (items counted back from the newest, so u_long's "
        "position is the same for every user), 'absolute' (0 = e_sparse, 1.. from the oldest), 'none'."
    )
    num_threads: int = opt(
        0, "torch threads for the DSIE stage on CPU (encoder, embedding, RQ-VAE), restored afterwards; 0 = keep "
        "run.num_threads / the library default. These models are tiny: 1 thread is as fast on an idle machine "
        "and several times faster on a busy one.", min=0
    )


@dataclass
class QuantizerConfig:
    levels: int = opt(4, "l: RQ-VAE levels (CSID length).", min=1)
    codebook_size: int = opt(16, "Codebook size per level.", min=2)
    code_dim: int = opt(32, "Latent dimension of the RQ-VAE.", min=2)
    max_groups: int = opt(50, "M_N: cap on the number of groups; smaller groups are merged (docs/dsie.md).", min=1)
    min_group_size: int = opt(1, "Groups smaller than this are merged into their nearest group.", min=1)
    merge_search: Literal["exact", "prefix"] = opt(
        "exact", "Where the merge rule looks for a group's most similar group: 'exact' = every alive group (the "
        "paper's rule, quadratic in code tuples), 'prefix' = the groups sharing the longest code prefix (about "
        "linear; for MTRec-size runs, docs/dsie.md)."
    )
    epochs: int = opt(50, "RQ-VAE training epochs.", min=1)
    batch_size: int = opt(256, "Batch size.", min=1)
    lr: float = opt(1e-3, "Learning rate.", min=0.0)
    commitment_weight: float = opt(0.25, "Commitment loss weight.", min=0.0)
    kmeans_init: bool = opt(True, "Initialise codebooks with k-means.")
    threshold_ema_dead_code: int = opt(2, "Replace codes used fewer times than this (EMA) with batch samples.", min=0)
    hidden_dim: int = opt(64, "Width of the RQ-VAE's MLP encoder and decoder.", min=2)
    ema_decay: float = opt(0.8, "EMA decay of the codebook updates (vector-quantize-pytorch 'decay').", min=0.0, max=1.0)
    standardize: bool = opt(
        True, "Centre u_long on the warm users' mean and L2-normalise it before the RQ-VAE, the CSID merge rule "
        "and the representatives (the mean is saved with the RQ-VAE)."
    )


@dataclass
class ProfileConfig:
    backend: Literal["statistical", "llm"] = opt(
        "statistical", "Portrait writer: 'llm' (native generation, no fine-tuning) or 'statistical'."
    )
    k_representatives: int = opt(8, "k: representative users nearest each group centroid (Eq. 7).", min=1)
    top_categories: int = opt(5, "Statistical backend: distinctive categories named in a portrait.", min=1)
    model: str = opt("", "llm backend: Hugging Face path or hub id of the Profile LLM ('' = backbone.name).")
    prompt: str = opt(
        "Here are the long-term interests of {k} similar users:\n{users}\n"
        "Describe this group's interests in two sentences.",
        "llm backend: prompt template; {k} and {users} (one line per representative user) are filled in.",
    )
    max_new_tokens: int = opt(96, "llm backend: tokens generated per portrait.", min=1)
    categories_per_user: int = opt(
        10, "llm backend: a representative user's most clicked long-term categories listed in {users}.", min=1
    )


@dataclass
class BackboneConfig:
    name: str = opt("embedded", "'embedded' or a Hugging Face path / hub id (e.g. Qwen/Qwen2.5-7B-Instruct).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt("auto", "Model dtype.")
    attn_implementation: str = opt("sdpa", "Attention implementation: eager | sdpa | flash_attention_2.")
    use_chat_template: bool = opt(False, "Profile LLM: wrap its prompts in the tokenizer's chat template when it has "
                                  "one (the fine-tuned Novelty / Relevance LLMs always use the plain templates).")
    hidden_size: int = opt(64, "embedded: hidden size.", min=8)
    num_layers: int = opt(2, "embedded: transformer layers.", min=1)
    num_heads: int = opt(4, "embedded: attention heads.", min=1)
    intermediate_size: int = opt(128, "embedded: MLP width.", min=8)


@dataclass
class LoraConfig:
    enabled: bool = opt(True, "Train LoRA adapters (peft) instead of full weights.")
    r: int = opt(8, "LoRA rank.", min=1)
    alpha: int = opt(16, "LoRA alpha.", min=1)
    dropout: float = opt(0.05, "LoRA dropout.", min=0.0, max=0.9)
    target_modules: str = opt("all-linear", "peft target_modules ('all-linear' or comma-separated names).")


@dataclass
class PromptConfig:
    novelty_train: str = opt(
        "Group portrait: {portrait}\nRecent categories: {recent}\nNext category:",
        "P_ft-nov (Eq. 8): {portrait} = D_s, {recent} = S_short(t-2:t-1); the completion is S_short(t).",
    )
    novelty_infer: str = opt(
        "Group portrait: {portrait}\nRecent categories: {recent}\n"
        "Suggest a category this user has not explored lately.\nNext category:",
        "P_infer-nov: {portrait} = D_s, {recent} = C'_short; the last line is the novelty trigger.",
    )
    relevance: str = opt(
        "Group portrait: {portrait}\nRecent categories: {recent}\nCandidate category: {candidate}",
        "P_ft-rel / P_infer-rel (Eq. 11): scored by the Relevance LLM.",
    )
    recent_separator: str = opt(", ", "Separator between category names in {recent}.")


@dataclass
class NoveltyConfig:
    sft_epochs: float = opt(3.0, "SFT epochs (round 0).", min=0.0)
    sft_lr: float = opt(1e-4, "SFT learning rate.", min=0.0)
    per_device_batch_size: int = opt(2, "Per-device train batch size.", min=1)
    gradient_accumulation_steps: int = opt(2, "Gradient accumulation steps.", min=1)
    max_train_examples: int = opt(0, "Cap on SFT examples (0 = all).", min=0)
    num_candidates: int = opt(5, "M: candidate categories per key.", min=1)
    generation_mode: Literal["score", "sample", "beam"] = opt(
        "score", "score = closed-vocabulary log-probabilities; sample / beam = trie-constrained decoding."
    )
    temperature: float = opt(1.0, "Sampling temperature (sample mode).", min=0.0)
    exclude_recent: bool = opt(True, "Never propose a category already in C'_short.")
    exclude: Literal["short", "history"] = opt(
        "short", "What a user's list leaves out (with exclude_recent). short = C'_short, the key's categories (the "
        "paper's prompt; the KV list is the key's). history = also every category the user clicked in D_k, removed "
        "per user where the user is known: validation, the DPO pairs and `coea lookup --user` (docs/candidates.md).")
    inference_batch_size: int = opt(32, "Keys per inference batch.", min=1)
    completion_eos: bool = opt(
        True, "SFT completions end with EOS: score mode counts its log-probability after each name "
        "(sample / beam always end a name on EOS)."
    )
    num_beams: int = opt(0, "Beam mode: beam width; 0 = num_candidates (never fewer).", min=0)
    sample_rounds: int = opt(
        3, "Sample mode: at most this many sampling rounds; each later round excludes the names found so far.", min=1
    )


@dataclass
class RelevanceConfig:
    epochs: float = opt(3.0, "Reward-model epochs (round 0).", min=0.0)
    lr: float = opt(1e-4, "Learning rate.", min=0.0)
    per_device_batch_size: int = opt(8, "Per-device train batch size.", min=1)
    gradient_accumulation_steps: int = opt(1, "Gradient accumulation steps.", min=1)
    max_train_pairs: int = opt(0, "Cap on preference pairs (0 = all).", min=0)
    negatives_per_positive: int = opt(1, "Negatives drawn per clicked category.", min=1)
    tau_align: float = opt(0.5, "Keep candidates whose score s_i > tau_align; s_i is the calibrated probability "
                           "that the category is clicked (see relevance.calibration).", min=0.0, max=1.0)
    update_epochs: float = opt(1.0, "Epochs of the per-round update on new clicks.", min=0.0)
    replay_pairs: int = opt(
        1000, "Replay buffer of the per-round update: it trains on the window's new pairs plus the promoted round's "
        "buffer, then keeps a uniform sample of this many from both (0 = no replay; docs/cycle.md).", min=0)
    keep_tolerance: float = opt(
        0.0, "A round keeps the promoted Relevance LLM when the updated one's held-out pairwise accuracy is lower "
        "than the promoted one's on the same pairs by more than this (docs/cycle.md).", min=0.0, max=1.0)
    filter: bool = opt(
        True, "C_align = the Novelty candidates scoring > tau_align, by score (the Relevance filter). false = every "
        "Novelty candidate in the Novelty LLM's own order, scores still computed and stored (CoEA w/o R-LLM: the "
        "simulation's wo_rllm arm, docs/simulate.md).")
    calibration: Literal["platt", "none"] = opt(
        "platt", "platt = fit s_i = sigmoid(a * reward + b) each round on held-out users' clicked vs unclicked "
        "categories (docs/llms.md); none = s_i = sigmoid(reward), uncalibrated.")
    calibration_min_examples: int = opt(
        20, "Fewer held-out clicked or unclicked categories than this (or fewer than half of it in either fold of the "
        "held-out users) and the round keeps the previous round's calibration.", min=1)
    calibration_bins: int = opt(10, "Equal-width bins of the reported expected calibration error (relevance/ece).",
                                min=1)


@dataclass
class PcoConfig:
    sample_fraction: float = opt(
        0.01, "Eq. 15: N = floor(f * |D_k|) records of D_k (every click the cycle holds, history + window, "
        "validation users excluded) drawn uniformly; one preference pair per record (docs/dpo.md).",
        min=0.0, max=1.0)
    steps_per_round: int = opt(
        0, "DPO optimizer steps (batches of per_device_batch_size x gradient_accumulation_steps x processes) a "
        "round; 0 = pco.epochs passes over the sample. The paper: 5 batches of 1,024.", min=0)
    loss_type: Literal["sigmoid", "ipo"] = opt("sigmoid", "sigmoid = DPO (Eq. 16); ipo = IPO + alpha * SFT (SERAL).")
    beta: float = opt(0.1, "DPO beta.", min=0.0)
    alpha: float = opt(0.4, "Weight of the KL term (Eq. 17); for ipo, of the SFT term.", min=0.0)
    anchor: Literal["previous", "round0"] = opt("previous", "Reference model: previous round or round 0.")
    lr: float = opt(5e-6, "DPO learning rate.", min=0.0)
    epochs: float = opt(1.0, "DPO epochs per round; 0 = no DPO: each round carries its base round's Novelty adapter "
                        "forward unchanged (a frozen Novelty LLM, e.g. the simulation's google_v1 arm).", min=0.0)
    per_device_batch_size: int = opt(2, "Per-device train batch size.", min=1)
    gradient_accumulation_steps: int = opt(8, "Gradient accumulation steps.", min=1)
    max_length: int = opt(1024, "Truncate prompt + completion to this many tokens (trl keeps the start).", min=2)
    shared_prompt: bool = opt(
        True, "Fast path: run each pair's prompt once for chosen and rejected (one packed row with a block-causal "
              "mask; same loss; sdpa or eager attention, else the two-row forward). docs/dpo.md")
    precompute_reference: bool = opt(
        True, "Fast path: run the reference once per round before training, cache its completion log-probs and "
              "hidden states, and free it (same loss; needs an LM head LoRA does not adapt). docs/dpo.md")
    alert_saturation_accuracy: float = opt(
        0.95, "Alert when DPO pair accuracy exceeds this early in a round (with alert_saturation_margin).",
        min=0.0, max=1.0)
    alert_saturation_margin: float = opt(
        0.1, "... and the mean reward margin (beta-scaled) exceeds this; 0 alerts on accuracy alone.", min=0.0)
    alert_early_fraction: float = opt(0.25, "Share of a round's DPO steps in which saturation counts as early.",
                                      min=0.0, max=1.0)
    alert_kl_spike_factor: float = opt(10.0, "Alert when the KL exceeds this multiple of its running median.",
                                       min=1.0)
    alert_eos_logratio: float = opt(
        0.7, "Alert when |policy - reference log-prob of the completion's EOS| exceeds this (length drift).",
        min=0.0)


@dataclass
class CycleConfig:
    clock: Literal["auto", "live", "replay"] = opt(
        "auto", "Which events a round consumes (docs/cycle.md, 'The clock'). live: [end of the previous round, "
        "the newest complete day of a growing Parquet log); replay: a static data set revealed cycle.replay_days "
        "at a time. auto = live for data.source: parquet, replay otherwise. A workdir keeps the clock it started "
        "with.")
    replay_days: float = opt(1.0, "Replay clock: each round reveals the next this-many days of events.",
                             min=0.0)
    dsie_refresh_every: int = opt(0, "Re-run DSIE every N rounds (0 = only in round 0).", min=0)
    keep_rounds: int = opt(
        5, "Retention: after each finished round, keep the newest this-many finished rounds (promoted or refused) "
        "on disk and delete every older round whole (rounds/NNN with its models and candidates, and its KV "
        "version kv/NNN). Always kept besides: round 0 (base model, tokenizer, round-0 models), the promoted "
        "round, the round holding the newest DSIE, the round holding the newest grown backbone, and an unfinished "
        "round: at most keep_rounds + 4 finished rounds plus one unfinished on disk. `coea rollback` offers the kept rounds "
        "that were promoted once (docs/cycle.md).", min=1)
    max_attempts: int = opt(
        3, "A round that fails this many times is not retried blindly: the cycle exits 5 until the cause is fixed "
        "and `coea cycle --retry` resets the count. Every attempt (also a killed one) counts.", min=1)
    max_gap_days: int = opt(
        2, "Live log: a run exits 8 when a day is missing (no partition or no _SUCCESS; for one events.parquet, no "
        "event) and the newest complete day after it is more than this many days later: training has stalled and "
        "serving goes stale. Write the day (a marker-only partition for a day without events) or declare it empty "
        "with `coea cycle --skip-day YYYY-MM-DD` (docs/cycle.md).", min=0)
    guardrail_margin: float = opt(
        0.05, "Refuse promotion only when validation C-H@1 drops by more than this (absolute) against the promoted "
        "round's models on the same users, and significantly (cycle.guardrail_alpha; docs/cycle.md).", min=0.0)
    guardrail_alpha: float = opt(
        0.05, "Level of the guardrail's exact one-sided sign test on the validation users whose C-H@1 changed: at "
              "most this share of rounds as good as the promoted one are refused.", min=0.0, max=1.0)
    guardrail_min_users: int = opt(5, "The guardrail judges only rounds validated on at least this many users; "
                                      "smaller rounds are promoted with a warning.", min=0)
    deepspeed: str = opt("", "Path of a DeepSpeed config (e.g. configs/deepspeed/zero2.json) for GPU training.")
    num_processes: int = opt(
        1, "1 = every stage runs in this process. N > 1 = candidate scoring and the SFT / reward / DPO training run "
        "as `accelerate launch --num_processes N` workers (one per GPU: keys sharded, training data-parallel, "
        "DDP or cycle.deepspeed); the cycle itself stays one process that holds the lock and commits the stages "
        "(docs/cycle.md).", min=1)
    launcher_args: str = opt(
        "", "Extra arguments for `accelerate launch` when num_processes > 1, e.g. '--multi_gpu --mixed_precision "
        "bf16'. On a CPU-only machine '--multi_gpu' starts N gloo processes (torchrun); '--cpu' alone starts one, "
        "which the workers refuse.")


@dataclass
class TrackingConfig:
    """Metrics sink (``coea/tracking.py``, docs/metrics.md): W&B offline by default, local files, or none."""

    backend: Literal["wandb", "local", "none"] = opt("wandb", "Metrics sink; wandb also writes local files.")
    mode: Literal["offline", "online"] = opt("offline", "W&B mode; offline never needs a network.")
    project: str = opt("coea", "W&B project.")
    init_timeout_s: float = opt(60.0, "Give up on W&B init (service start and run creation) after this long and "
                                "continue with local tracking only.", min=1.0)
    finish_timeout_s: float = opt(300.0, "Online runs: stop waiting for uploads at finish after this long (the "
                                  "offline files stay for `wandb sync`); 0 = wait as long as it takes.", min=0.0)
    group: str = opt("", "W&B group; empty = a stable name derived from the workdir path (and run name).")
    entity: str = opt("", "W&B entity (team or user) for online runs; empty = the logged-in account's default.")
    log_models: bool = opt(True, "W&B: log the promoted round's Novelty adapter and Relevance model as model "
                           "artifacts (aliases round-K and promoted), plus the candidates and KV table artifacts.")
    artifact_copy_max_mb: float = opt(
        100.0, "W&B: a model folder up to this size is copied into its artifact (wandb sync uploads it); a larger "
        "one is logged as a file:// reference (checksums only; the bytes stay in the workdir).", min=0.0)
    plot_rounds: bool = opt(True, "Draw rounds/NNN/metrics.png (the metrics of every round so far) after each "
                            "round; false saves about 2 s a round (matplotlib), e.g. for the simulation's daily "
                            "cycles (configs/sim-coea.yaml).")
    table_rows: int = opt(200, "W&B: KV entries sampled into the round's Table (key, portrait, recent "
                          "categories, categories, scores); 0 = no Table.", min=0)


@dataclass
class EvalConfig:
    """Offline evaluation (``coea evaluate``, docs/evaluation.md): split, truth sets, methods, lists, uncertainty."""

    split: Literal["user", "global"] = opt(
        "user", "user = per-user chronological split (each user's last test_clicks clicks are the test, the "
        "valid_clicks before them the validation; BERT4Rec-style); global = one timeline cut (valid_fraction, "
        "test_fraction). docs/evaluation.md has the trade-off.")
    test_clicks: int = opt(3, "user split: each user's last this-many clicks (and the exposures among them) are "
                           "the test part.", min=1)
    valid_clicks: int = opt(3, "user split: the this-many clicks before the test part are the validation part.",
                            min=1)
    min_train_clicks: int = opt(2, "user split: a user is evaluated when this many clicks remain before the "
                                "validation part.", min=1)
    valid_fraction: float = opt(
        0.0, "global split: the validation window starts this far through the timeline; 0 = "
        "data.bootstrap_fraction. Item models train before it.", min=0.0, max=1.0)
    test_fraction: float = opt(
        0.85, "global split: the test window starts this far through the timeline; truth = clicks after it.",
        min=0.05, max=1.0)
    ks: str = opt("1,5,10", "Cut-offs K for every metric, comma-separated.")
    seeds: str = opt("0", "Comma-separated seeds; results are mean and std over them. A benchmark root "
                     "(seed<S>/<variant>/ workdirs) gives every seed its own CoEA workdirs.")
    max_users: int = opt(0, "Evaluate a fixed random sample of this many users (0 = all).", min=0)
    hist_k: int = opt(0, "The NCP-recent variant's window: categories of the user's last hist_k clicks; 0 = "
                      "data.short_k (the C'_short of the KV key). NCP itself uses the whole history (A.4).", min=0)
    tail_fraction: float = opt(0.2, "Long tail = this bottom share of categories by clicks in the state.",
                               min=0.0, max=1.0)
    list_length: int = opt(10, "Length of every final category list.", min=1)
    policy: Literal["own", "slots"] = opt(
        "own", "Table 2's lists: own = each method's own ranking; slots = evaluation v1's policy (the method's "
        "novel categories at eval.slots of eval.base_model's ranking).")
    slots: str = opt("2,4", "slots policy: 1-based positions of the final list that receive an exploration "
                     "method's novel categories (in its order); the other positions keep the base ranking.")
    base_model: Literal["two_tower", "gru4rec", "sasrec", "bert4rec"] = opt(
        "sasrec", "slots policy: the exploitation model whose category ranking the slots are placed into.")
    budget_k: int = opt(5, "Novelty budget: positions 1..budget_k hold exactly b novel categories, b = 0.."
                        "budget_k (the frontiers plot C-N@budget_k against NCP@budget_k and CLTP@budget_k).", min=1)
    matched_budget: int = opt(2, "Summary figure: C-N@budget_k at matched NCP@budget_k = matched_budget / |C| "
                              "(linear interpolation on each method's frontier).", min=0)
    bootstrap: int = opt(1000, "Hierarchical bootstrap resamples (seeds, then users within them) for the "
                         "CoEA-minus-baseline intervals.", min=1)
    bootstrap_seed: int = opt(0, "Seed of the bootstrap resamples.", min=0)
    confidence: float = opt(0.95, "Coverage of the bootstrap intervals.", min=0.5, max=0.999)
    exploitation: str = opt("two_tower,gru4rec,sasrec,bert4rec", "Exploitation rows (comma-separated).")
    exploration: str = opt("random,popular,ucb,hucb,phucb,nlb,user_knn,item_knn,google_v1,google_v2,llm_kerec,coea",
                           "Exploration rows (comma-separated).")
    ablations: str = opt("wo_long,wo_short,wo_rllm,wo_kl", "Ablation rows (comma-separated); each reads its own "
                         "workdir (docs/evaluation.md); wo_rllm is the CoEA workdir's round-0 Novelty LLM.")
    variants_dir: str = opt("", "Where ablation workdirs live (<dir>/<name>); '' = siblings of --workdir "
                            "named <workdir>-<name>, or seed<S>/<name> under a benchmark root.")
    short_term_variant: str = opt(
        "wo_long", "Variant workdir whose round-0 LLMs were trained on short-term-only prompts (no portrait): "
        "Google-v1 (its Novelty + Relevance LLMs), Google-v2 and LLM-KERec (its Novelty LLM).")
    item_sequences: Literal["all", "long"] = opt(
        "all", "Item models' input: 'all' clicks (tau = 1) or 'long' = I_long exactly as DSIE sees it.")
    max_seq_len: int = opt(50, "Item models: most recent clicks kept per sequence.", min=2)
    d_model: int = opt(64, "Item models: embedding / hidden width.", min=4)
    n_layers: int = opt(2, "SASRec / BERT4Rec: transformer layers.", min=1)
    n_heads: int = opt(2, "SASRec / BERT4Rec: attention heads (must divide d_model).", min=1)
    dropout: float = opt(0.2, "Item models: dropout.", min=0.0, max=0.9)
    epochs: int = opt(200, "Item models: most training epochs (early stopping on the validation part, "
                      "eval.patience; the best epoch is kept).", min=1)
    patience: int = opt(50, "Item models: stop after this many epochs without a better validation hit@10 "
                        "(0 = run every epoch). Long: on ml-100k GRU4Rec sits on a plateau near popularity's hit@10 "
                        "for 25 epochs before it rises (docs/evaluation.md).", min=0)
    popularity_floor: Literal["error", "warn", "off"] = opt(
        "error", "Item models: a model whose best validation hit@10 is below plain item popularity's fails the "
        "evaluation (error), is logged and flagged in meta.json (warn), or is not checked (off).")
    category_score: Literal["mass", "best"] = opt(
        "mass", "Item models' category ranking: mass = the summed next-click probability of the category's unseen "
        "items; best = its best unseen item's score (evaluation v2).")
    batch_size: int = opt(128, "Item models: sequences per batch.", min=1)
    lr: float = opt(1e-3, "Item models: Adam learning rate.", min=0.0)
    mask_prob: float = opt(0.2, "BERT4Rec: share of positions masked (Cloze objective).", min=0.01, max=1.0)
    ucb_c: str = opt("0,0.1,0.5,1,2", "UCB: bonus weights c tried on validation (comma-separated; one = fixed).")
    hucb_c: str = opt("0,0.1,0.5,1,2", "HUCB: bonus weights tried on validation.")
    hucb_clusters: int = opt(0, "HUCB / pHUCB: clusters of categories in the tree; 0 = round(sqrt(|C|)).", min=0)
    phucb_c: str = opt("0,0.1,0.5,1,2", "pHUCB: bonus weights tried on validation.")
    phucb_prior: str = opt("0.1,1,10", "pHUCB: strengths m of the global prior on each user's rates, tried on "
                           "validation.")
    nlb_alpha: str = opt("0,0.5,1,2", "NLB: weights alpha of the posterior std tried on validation.")
    nlb_hidden: int = opt(32, "NLB: width of the representation network.", min=2)
    nlb_epochs: int = opt(3, "NLB: passes over the logged feedback.", min=1)
    nlb_ridge: float = opt(1.0, "NLB: ridge (prior precision) of the per-category linear posteriors.", min=1e-6)
    user_knn_k: str = opt("5,10,20,50,100,200,400", "user-kNN: neighbours k tried on validation (cosine on "
                          "category click vectors; coea/exploration/knn.py).")
    item_knn_k: str = opt("0,3,5", "item-kNN: co-occurring categories kept per category, tried on validation "
                          "(0 = all).")
    kerec_edges: int = opt(3, "LLM-KERec: complementary edges kept per category.", min=1)
    kerec_beta: str = opt("0.1,0.25,0.5,0.75,1", "LLM-KERec: weights of the complementary view tried on validation.")
    tau_align: str = opt("0.3,0.5,0.7,0.9", "CoEA, its ablations and Google-v1: tau_align values tried on "
                         "validation (comma-separated); '' = each workdir's relevance.tau_align only.")
    tau_objective: Literal["cn_na", "area"] = opt(
        "cn_na", "How tau_align is chosen on validation: cn_na = the largest C-N@budget_k + NA@budget_k of the "
        "method's own list (accuracy on the window plus adoption of new categories, docs/evaluation.md); area = "
        "the validation frontier area, as every other grid.")
    num_threads: int = opt(0, "torch threads while evaluating (restored afterwards); 0 = keep.", min=0)


SIM_ARMS = ("exploitation", "random", "popular", "ucb", "user_knn", "item_knn", "thompson", "linucb",
            "kg_neighbour", "google_v1", "coea", "wo_kl", "wo_rllm")
SIM_LLM_ARMS = ("google_v1", "coea", "wo_kl", "wo_rllm")


@dataclass
class SimConfig:
    """``coea simulate``: the closed-loop A/B simulation (coea/simulate, docs/simulate.md)."""

    seeds: str = opt("0,1,2", "World seeds reported (comma-separated); every arm runs on an identical copy of "
                     "each world. Results are mean and 95% interval over them.")
    validation_seed: int = opt(100, "The world seed on which settings are chosen (benchmarks/simulate.py); never "
                               "one of sim.seeds.", min=0)
    train_seeds: str = opt("0", "Training seeds of every arm (comma-separated): each is a separate run of the arm on "
                           "the same world copy (the LLM arms' run.seed + t, round 0 included; the random arms' "
                           "stream), so the report can separate training noise from world noise. Seed 0 is the "
                           "plain run.")
    train_seed_worlds: str = opt("", "World seeds (comma-separated, a subset of sim.seeds) on which the training "
                                 "seeds after the first run; empty = every world seed.")
    days: int = opt(30, "A/B days per world after the warm-up: each day every arm fills its slots, the world "
                    "plays the sessions, the arm's log grows by one day partition and the arm updates.", min=1)
    warmup_days: int = opt(14, "Organic-only days before the A/B (identical for every arm); round 0 of the LLM "
                           "arms bootstraps on them once per world seed.", min=1)
    arms: str = opt("exploitation,random,popular,ucb,user_knn,item_knn,thompson,linucb,kg_neighbour,google_v1,"
                    "coea,wo_kl,wo_rllm",
                    "Arms to run (comma-separated): exploitation, random, popular, ucb, user_knn, item_knn, "
                    "thompson, linucb, kg_neighbour (non-LLM, coea/simulate/policies.py) and google_v1, coea, "
                    "wo_kl, wo_rllm (LLM arms, coea/simulate/coea_arm.py).")
    coea_config: str = opt("configs/sim-coea.yaml", "coea YAML of the LLM arms (tiny embedded backbones); "
                           "data.source / data.path are set per arm to its own log. Relative paths resolve "
                           "against the working directory, then the repository.")
    coea_set: str = opt("", "Overrides of the LLM arms' coea config, key=value pairs separated by ';' (e.g. "
                        "'relevance.tau_align=0.3;pco.beta=0.2'): how benchmarks/simulate.py applies the settings "
                        "chosen on the validation seed.")
    start_date: str = opt("2024-01-01", "UTC date of simulation day 0 (the first warm-up day); day d's events "
                          "are the log partition date=start_date+d.")
    n_users: int = opt(240, "Users in each world.", min=1)
    n_groups: int = opt(12, "Latent user groups: a group's users have centres near the group's centre, so they "
                        "share core and latent interests (what collaborative exploration can learn).", min=1)
    n_categories: int = opt(200, "Catalogue categories (MTRec has 594).", min=4, max=594)
    latent_dim: int = opt(8, "Dimension of the latent space that holds categories and user centres.", min=1)
    n_topics: int = opt(0, "Topic clusters the categories are placed around in the latent space (related "
                        "categories are near); 0 = round(sqrt(n_categories)).", min=0)
    topic_spread: float = opt(0.35, "Std of a category's position around its topic centre (topic centres are "
                              "standard normal).", min=0.0)
    group_spread: float = opt(0.15, "Std of a user's centre around its group's centre.", min=0.0)
    zipf_exponent: float = opt(1.0, "Category popularity prior p_c ~ 1 / rank^s over a random order of the "
                               "categories (the organic feed's non-core weights, the long tail).", min=0.0)
    core_per_user: int = opt(5, "Core categories of a user: the nearest to its centre; clicked from day 0.",
                             min=1)
    latent_per_user: int = opt(3, "Latent interests of a user: the next-nearest categories after the core, "
                               "clickable only once discovered (the serendipity ground truth).", min=0)
    knowledge_per_user: int = opt(0, "World v2 switch: knowledge latent interests per user (0 = off: today's "
                                  "world). Related to the user's core categories through the world-knowledge "
                                  "relation (sim.knowledge_links), not shared with group-mates; discovered like "
                                  "the collaborative ones, reported separately.", min=0)
    knowledge_links: int = opt(8, "World knowledge: related categories (of other topics) stated for each "
                               "category in the world's knowledge corpus; read by the kg_neighbour arm. Broad "
                               "relations keep knowledge interests personal (few group-mates share one).", min=1)
    user_activity_sigma: float = opt(0.0, "World v2 switch: heterogeneous activity; a user's session rate is "
                                     "sessions_per_day times a lognormal factor of mean 1 and this log-std (0 = "
                                     "off).", min=0.0)
    user_click_sigma: float = opt(0.0, "World v2 switch: heterogeneous click propensity; every click probability "
                                  "of a user times a lognormal factor of mean 1 and this log-std, capped at 1 "
                                  "(0 = off).", min=0.0)
    user_openness_sigma: float = opt(0.0, "World v2 switch: heterogeneous openness to new categories; a user's "
                                     "discovery probability times a lognormal factor of mean 1 and this log-std "
                                     "(0 = off).", min=0.0)
    position_bias: float = opt(1.0, "World v2 switch: served slot k (0-based) is examined with probability "
                               "position_bias^k; unexamined, it is neither clicked nor discovers (1 = off).",
                               min=0.0, max=1.0)
    retention_rate: float = opt(0.0, "World v2 switch: retention; a user's satisfaction is a moving average (this "
                                "rate) of its daily served-slot CTR, and a drawn session happens with probability "
                                "min(1, satisfaction / retention_ref) (0 = off: every session happens).",
                                min=0.0, max=1.0)
    retention_ref: float = opt(0.3, "Retention: the served-slot CTR at which a user always comes back (its "
                               "starting satisfaction).", min=1e-6, max=1.0)
    day_fatigue: float = opt(1.0, "World v2 switch: fatigue across days; every click probability times "
                             "day_fatigue^e, e = the user's decaying count of earlier days' exposures of the "
                             "category (1 = off).", min=0.0, max=1.0)
    day_fatigue_decay: float = opt(0.5, "Fatigue across days: the count of earlier exposures is multiplied by this "
                                   "each day before today's are added.", min=0.0, max=1.0)
    items_per_category: int = opt(10, "Items per category (a served or organic slot shows one of them).", min=1)
    price_log_mean: float = opt(3.0, "Mean of a category's log price (item prices are lognormal).")
    price_category_sigma: float = opt(0.5, "Std of the categories' mean log prices.", min=0.0)
    price_item_sigma: float = opt(0.3, "Std of an item's log price around its category's mean.", min=0.0)
    sessions_per_day: float = opt(1.0, "Mean sessions per user and day (Poisson).", min=0.0)
    exposures_per_session: int = opt(8, "Organic feed items per session (identical across arms).", min=0)
    slots: int = opt(3, "Served slots per session, filled by the arm's policy (one category each).", min=1)
    explore_slots: int = opt(0, "The exploration budget, the same for every arm: how many of the slots come from "
                             "the arm's policy (its first ones); the rest show the user's base ranking (what the "
                             "exploitation arm serves). 0 = all slots are the arm's.", min=0)
    organic_core_share: float = opt(0.7, "Share of organic exposures drawn from the user's known interests "
                                    "(uniformly over its core and its latent interests discovered before the "
                                    "day: the feed follows what the user is known to like); the rest follow "
                                    "the popularity prior without the core.", min=0.0, max=1.0)
    organic_latent_weight: float = opt(0.5, "Multiplier of a latent interest's popularity weight in the "
                                       "organic feed (< 1: the feed rarely shows latent interests).", min=0.0)
    discover_prob: float = opt(0.3, "Probability that one exposure (organic or served) of an undiscovered "
                               "latent interest discovers it; it then stays discovered.", min=0.0, max=1.0)
    click_core: float = opt(0.5, "Click probability of a core category's item (before fatigue).",
                            min=0.0, max=1.0)
    click_latent: float = opt(0.5, "Click probability of a discovered latent interest's item (an undiscovered "
                              "one is never clicked). Default = click_core: a latent interest is a real interest "
                              "the user has not met yet.", min=0.0, max=1.0)
    click_other: float = opt(0.03, "Click probability of any other category's item.", min=0.0, max=1.0)
    fatigue: float = opt(0.75, "Content fatigue: an exposure's click probability is multiplied by fatigue^(n-1), "
                         "n = exposures of its category in the same session.", min=0.0, max=1.0)
    user_features: int = opt(2, "Sparse user features (users.parquet), each the group's typical value with "
                             "probability 0.8.", min=0)
    ucb_c: float = opt(0.5, "UCB arm: exploration weight c of UCB1 (clicks / pulls + c sqrt(ln N / pulls)).",
                       min=0.0)
    user_knn_k: int = opt(10, "user_knn arm: neighbours k (cosine on the users' category click vectors in the "
                          "arm's log; coea/exploration/knn.py).", min=1)
    item_knn_k: int = opt(0, "item_knn arm: co-occurring categories kept per category (0 = all).", min=0)
    linucb_alpha: float = opt(0.5, "linucb arm: exploration weight alpha of disjoint LinUCB on the user features "
                              "(theta_c . x + alpha sqrt(x' A_c^-1 x)).", min=0.0)
    tail_fraction: float = opt(0.2, "Long tail = this bottom share of categories by the popularity prior.",
                               min=0.0, max=1.0)
    niep_window: int = opt(7, "Days of the NIEP window (7 = 7D-NIEP, Eq. 23).", min=1)
    pref_min_clicks: int = opt(2, "A.4 metrics of the served lists: C_u^pref = categories the user clicked at "
                               "least this often before the day.", min=1)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    novelty: NoveltyConfig = field(default_factory=NoveltyConfig)
    relevance: RelevanceConfig = field(default_factory=RelevanceConfig)
    pco: PcoConfig = field(default_factory=PcoConfig)
    cycle: CycleConfig = field(default_factory=CycleConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sim: SimConfig = field(default_factory=SimConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Stable hash of the resolved config (recorded in state.json)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# ----------------------------------------------------------------------------------------------------- loading


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false; got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number; got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `--set eval.seeds=0` or `ks: 5` in YAML: a number where a string is expected
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string; got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - guards new field types


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping; got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{where}: unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw.get(name), key)
            continue
        if name not in raw:
            continue
        value = _coerce(raw[name], tp, key)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if lo is not None and value < lo:
            raise ConfigError(f"{key}: must be >= {lo}; got {value!r}")
        if hi is not None and value > hi:
            raise ConfigError(f"{key}: must be <= {hi}; got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else ""


def _check_cross_fields(cfg: Config) -> None:
    if cfg.encoder.d_model % cfg.encoder.n_heads:
        raise ConfigError(f"encoder.n_heads: must divide encoder.d_model ({cfg.encoder.d_model}); "
                          f"got {cfg.encoder.n_heads}")
    if cfg.backbone.hidden_size % cfg.backbone.num_heads:
        raise ConfigError(f"backbone.num_heads: must divide backbone.hidden_size ({cfg.backbone.hidden_size}); "
                          f"got {cfg.backbone.num_heads}")
    if cfg.data.source in ("movielens-100k", "movielens-1m", "parquet") and not cfg.data.path:
        raise ConfigError(f"data.path: required when data.source is {cfg.data.source!r}")
    if cfg.cycle.clock == "live" and cfg.data.source != "parquet":
        raise ConfigError(f"cycle.clock: live needs data.source: parquet (a log that grows); {cfg.data.source!r} "
                          "is a static data set, replayed with cycle.clock: replay")
    if cfg.data.engine == "spark" and cfg.data.source != "parquet":
        raise ConfigError(f"data.engine: spark reads Parquet logs (data.source: parquet); got {cfg.data.source!r}")
    sim = cfg.sim
    if sim.core_per_user + sim.latent_per_user + sim.knowledge_per_user > sim.n_categories:
        if sim.knowledge_per_user:
            raise ConfigError(f"sim.knowledge_per_user: core_per_user + latent_per_user + knowledge_per_user must "
                              f"be <= sim.n_categories ({sim.n_categories})")
        raise ConfigError(f"sim.latent_per_user: core_per_user + latent_per_user must be <= sim.n_categories "
                          f"({sim.n_categories}); got {sim.core_per_user} + {sim.latent_per_user}")
    if sim.explore_slots > sim.slots:
        raise ConfigError(f"sim.explore_slots: must be <= sim.slots ({sim.slots}); got {sim.explore_slots}")
    arms = [a.strip() for a in sim.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in SIM_ARMS]
    if not arms or unknown or len(set(arms)) != len(arms):
        raise ConfigError(f"sim.arms: expected distinct names from {', '.join(SIM_ARMS)}; got {sim.arms!r}")
    try:
        seeds = [int(t) for t in sim.seeds.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"sim.seeds: expected comma-separated non-negative integers; got {sim.seeds!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"sim.seeds: expected distinct non-negative integers; got {sim.seeds!r}")
    if sim.validation_seed in seeds:
        raise ConfigError(f"sim.validation_seed: {sim.validation_seed} is also in sim.seeds; settings are chosen "
                          "on a world that is never reported")
    for name in ("train_seeds", "train_seed_worlds"):
        try:
            values = [int(t) for t in getattr(sim, name).split(",") if t.strip()]
        except ValueError:
            raise ConfigError(f"sim.{name}: expected comma-separated non-negative integers; got "
                              f"{getattr(sim, name)!r}") from None
        if (name == "train_seeds" and not values) or any(v < 0 for v in values) or len(set(values)) != len(values):
            raise ConfigError(f"sim.{name}: expected distinct non-negative integers; got {getattr(sim, name)!r}")
    try:
        dt.date.fromisoformat(sim.start_date)
    except ValueError:
        raise ConfigError(f"sim.start_date: expected YYYY-MM-DD; got {sim.start_date!r}") from None
    if cfg.synthetic.categories_per_group > cfg.synthetic.n_categories:
        raise ConfigError("synthetic.categories_per_group: must be <= synthetic.n_categories")
    for name in ("ucb_c", "hucb_c", "phucb_c", "phucb_prior", "nlb_alpha", "kerec_beta", "tau_align", "ks", "seeds",
                 "user_knn_k", "item_knn_k"):
        text = getattr(cfg.eval, name)
        try:
            values = [float(t) for t in str(text).split(",") if t.strip()]
        except ValueError:
            raise ConfigError(f"eval.{name}: expected comma-separated numbers; got {text!r}") from None
        if (not values and name != "tau_align") or any(v < 0 for v in values):
            raise ConfigError(f"eval.{name}: expected non-negative comma-separated numbers; got {text!r}")
    for name, least in (("user_knn_k", 1), ("item_knn_k", 0)):
        if any(float(t) < least or float(t) != int(float(t)) for t in str(getattr(cfg.eval, name)).split(",")
               if t.strip()):
            raise ConfigError(f"eval.{name}: expected integers >= {least}; got {getattr(cfg.eval, name)!r}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config, apply ``key=value`` overrides, validate, and return a :class:`Config`.

    Relative ``data.path`` values are resolved against the directory of the YAML file's parent when they
    do not exist relative to the current directory (so ``configs/ml-100k.yaml`` works from the repo root).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            found = sorted(q.name for q in p.glob("*.y*ml"))
            hint = f" (YAML files there: {', '.join(found[:6])}{', ...' if len(found) > 6 else ''})" if found else ""
            raise ConfigError(f"config: {p} is a directory; give one YAML file, e.g. --config "
                              f"{p / (found[0] if found else 'demo.yaml')}{hint}")
        if not p.is_file():
            raise ConfigError(f"config: file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config: {p} is not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config: {p} must hold a mapping at top level")
    for text in overrides:
        keys, value = _parse_override(text)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: {k} is not a section")
        node[keys[-1]] = value
    cfg = _build(Config, raw, "")
    if cfg.data.path and path is not None and not Path(cfg.data.path).exists():
        alt = (Path(path).resolve().parent.parent / cfg.data.path).resolve()
        if alt.exists():
            cfg.data.path = str(alt)
    _check_cross_fields(cfg)
    return cfg


def explain(cls: type = Config, prefix: str = "") -> list[str]:
    """One line per field: ``key (type, default): help``."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            lines += explain(hints[f.name], key)
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"{key} = {default!r}: {f.metadata.get('help', '')}")
    return lines

"""``coea judge``: LLM-as-a-Judge serendipity of served or evaluated lists, top to bottom (docs/judge.md).

    inputs     a workdir's promoted round, an evaluation output directory, or a labels file (calibrate)
    prompts    Base / LS / CoT / LtM (coea/judge_prompts.py), few-shot from --shots or zero-shot (said so)
    backend    a local causal LM (``embedded``: an untrained one built here; or a Hugging Face path) or an
               OpenAI-compatible endpoint; every reply cached in OUT/cache.jsonl (a rerun makes no call)
    cost       calls and tokens (and dollars, with prices) per template before the first call; --estimate-only
    files      judgments.jsonl (per user, item and template: scores, reasoning), table.json / table.md (per
               method: serendipity precision@K, nDCG@K, average score with bootstrap intervals), calibration.json /
               .md (calibrate), meta.json, rejected.jsonl; one W&B run (offline) through coea.tracking
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from coea.backbones import build_word_tokenizer, load_causal_lm, load_tokenizer
from coea.config import Config, ConfigError, TrackingConfig
from coea.judge.backends import EndpointBackend, LocalBackend, ReplyCache, Request, run_cached
from coea.judge.inputs import JudgeInput
from coea.judge.metrics import agreement, calibration, method_table, paired_table
from coea.judge_prompts import ASPECTS, SERENDIPITOUS, TEMPLATES, Shot, calls, final_score
from coea.tracking import TableData, make_tracker
from coea.workdir import configure_threads, resolve_device, write_json

log = logging.getLogger("coea.judge")

UNTRAINED = ("UNTRAINED JUDGE: these scores come from the embedded backbone with random weights, built here; they "
             "are noise and say nothing about serendipity. A judge is only as good as its model: use --model with "
             "an instruct checkpoint or --endpoint (docs/judge.md).")


@dataclass
class JudgeOptions:
    """What one ``coea judge`` run does (every CLI flag; docs/judge.md, "Command")."""

    out: Path
    model: str = "embedded"
    endpoint: str = ""
    templates: list[str] = field(default_factory=lambda: list(TEMPLATES))
    shots: list[Shot] = field(default_factory=list)
    shots_path: str = ""
    unit: str = "category"
    k: int = 5
    max_users: int | None = None
    seed: int = 0
    history_len: int = 20
    batch_size: int = 8
    max_reasoning_tokens: int = 32
    concurrency: int = 4
    max_retries: int = 5
    timeout_s: float = 120.0
    max_tokens: int = 512
    price_in: float = 0.0
    price_out: float = 0.0
    bootstrap: int = 1000
    reference: str = ""
    confidence: float = 0.95
    estimate_only: bool = False
    tracking: str = "wandb"

    @property
    def untrained(self) -> bool:
        return not self.endpoint and self.model == "embedded"


# ------------------------------------------------------------------------------------------------- backends


def build_embedded_judge(cfg: Config, texts: Sequence[str], out_dir: Path):
    """An untrained Qwen2 judge with the configured ``backbone`` sizes and a word-level tokenizer trained on the
    prompts it will read (so nothing maps to ``<unk>``): (model dir, tokenizer dir) under ``out_dir``."""
    tok = build_word_tokenizer([*texts, "1 2 3 4 5 : ?"])
    tok_dir, model_dir = out_dir / "tokenizer", out_dir / "model"
    tok.save_pretrained(tok_dir)
    b = cfg.backbone
    torch.manual_seed(cfg.run.seed)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=b.hidden_size, num_hidden_layers=b.num_layers,
                         num_attention_heads=b.num_heads, num_key_value_heads=b.num_heads,
                         intermediate_size=b.intermediate_size, max_position_embeddings=8192,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id)
    Qwen2ForCausalLM(config).save_pretrained(model_dir)
    return model_dir, tok_dir


def make_backend(opts: JudgeOptions, cfg: Config, texts: Sequence[str]):
    """The judge the options ask for: endpoint, embedded (built into OUT/judge-model) or a local HF model."""
    if opts.endpoint:
        return EndpointBackend(opts.endpoint, opts.model, concurrency=opts.concurrency, max_retries=opts.max_retries,
                               timeout_s=opts.timeout_s, max_tokens=opts.max_tokens)
    if opts.model == "embedded":
        model_dir, tok_dir = build_embedded_judge(cfg, texts, opts.out / "judge-model")
        vocab = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]  # the texts fix the tokenizer
        identity = f"embedded:{cfg.run.seed}:{cfg.backbone.hidden_size}x{cfg.backbone.num_layers}:{vocab}"
    else:
        model_dir = tok_dir = Path(opts.model)
        identity = opts.model
    tok = load_tokenizer(tok_dir)
    model = load_causal_lm(model_dir, cfg, pad_token_id=tok.pad_token_id)
    return LocalBackend(model, tok, identity=identity, batch_size=opts.batch_size,
                        max_reasoning_tokens=opts.max_reasoning_tokens, device=resolve_device(cfg.run.device))


# --------------------------------------------------------------------------------------------------- judging


def cases_of(data: JudgeInput) -> list[tuple[str, str]]:
    """Unique (user, item) pairs over every method's lists: a category two methods both list is judged once."""
    return sorted({(u, c) for by_user in data.lists.values() for u, items in by_user.items() for c in items})


def judge_template(backend, cache: ReplyCache, template: str, data: JudgeInput, cases: list[tuple[str, str]],
                   shots: Sequence[Shot], unit: str = "category") -> tuple[list[dict[str, Any]], int, int]:
    """Every case judged with ``template``: one row per case, the calls sent (cache misses) and the calls made
    in all (sent + read from the cache).

    LtM's sub-prompts run turn by turn: turn t of every case is one batch, sent after turn t-1's answers.
    """
    plans = [calls(template, data.history.get(u, []), item, shots, unit=unit) for u, item in cases]
    convo: list[list[tuple[str, str]]] = [[] for _ in cases]
    replies: list[list] = [[] for _ in cases]
    sent = asked = 0
    for t in range(max((len(p) for p in plans), default=0)):
        who = [j for j, p in enumerate(plans) if t < len(p)]
        requests = [Request(tuple(convo[j] + [("user", plans[j][t].prompt)]), plans[j][t].aspects,
                            plans[j][t].reasoning) for j in who]
        got, n = run_cached(backend, requests, cache)
        sent += n
        asked += len(requests)
        for j, r, reply in zip(who, requests, got):
            convo[j] = [*r.messages, ("assistant", reply.text)]
            replies[j].append(reply)
    rows = []
    for (u, item), rs in zip(cases, replies):
        scores = {a: s for r in rs for a, s in r.scores.items()}
        score = final_score(scores)
        rows.append({"template": template, "user": u, "item": item, "score": score,
                     "serendipitous": None if score is None else score >= SERENDIPITOUS, "parsed": score is not None,
                     "scores": {a: scores.get(a) for a in ASPECTS if a in scores},
                     "reasoning": "\n".join(r.text for r in rs), "reasked": any(r.reasked for r in rs),
                     "prompt_tokens": sum(r.prompt_tokens for r in rs),
                     "completion_tokens": sum(r.completion_tokens for r in rs)})
    return rows, sent, asked


def token_counter(opts: JudgeOptions, texts: Sequence[str]):
    """How the estimate counts prompt tokens, without loading any weights: the judge's own tokenizer when it is
    local (the embedded one trained here on ``texts``, as :func:`build_embedded_judge` trains it), else
    :meth:`EndpointBackend.count_tokens` (characters / 4)."""
    if opts.endpoint:
        return EndpointBackend.count_tokens
    tok = build_word_tokenizer([*texts, "1 2 3 4 5 : ?"]) if opts.model == "embedded" else load_tokenizer(opts.model)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def estimate(count_tokens, template: str, data: JudgeInput, cases: list[tuple[str, str]], shots: Sequence[Shot],
             opts: JudgeOptions) -> dict[str, Any]:
    """Calls and tokens ``template`` will spend: prompt tokens counted exactly on a local model (its tokenizer)
    and as characters / 4 for an endpoint; completion tokens are the cap (local: the reason tokens plus one digit
    per aspect; endpoint: ``max_tokens``). LtM's later turns carry the earlier answers at their cap."""
    n_calls, prompt_tokens, completion = 0, 0, 0
    for u, item in cases:
        before = 0
        for c in calls(template, data.history.get(u, []), item, shots, unit=opts.unit):
            cap = (len(c.aspects) * ((opts.max_reasoning_tokens if c.reasoning else 0) + 1)
                   if not opts.endpoint else opts.max_tokens)
            before += count_tokens(c.prompt)
            n_calls += 1
            prompt_tokens += before
            completion += cap
            before += cap
    usd = (prompt_tokens * opts.price_in + completion * opts.price_out) / 1e6
    return {"template": template, "calls": n_calls, "prompt_tokens": prompt_tokens, "completion_tokens_max": completion,
            "usd_max": round(usd, 4)}


def _sample_prompts(data: JudgeInput, case: tuple[str, str], opts: JudgeOptions) -> str:
    """``prompts.md``: every template's user turns for the first case, exactly as sent (LtM's answers between
    them are the model's)."""
    u, item = case
    parts = [f"# coea judge prompts, as sent for user {u}, item {item!r} ({len(opts.shots)} shots)"]
    for t in opts.templates:
        cs = calls(t, data.history.get(u, []), item, opts.shots, unit=opts.unit)
        for i, c in enumerate(cs):
            parts += [f"## {t}" + (f" (turn {i + 1} of {len(cs)})" if len(cs) > 1 else ""), "```", c.prompt, "```"]
    return "\n".join(parts) + "\n"


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    tmp.replace(path)


def _fmt(v: dict[str, float]) -> str:
    if v["mean"] is None or (isinstance(v["mean"], float) and math.isnan(v["mean"])):
        return "-"
    return f"{v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]"


def table_markdown(table: dict[str, dict[str, dict]], meta: dict[str, Any], paired: dict | None = None) -> str:
    k = meta["k"]
    lines = [f"# coea judge: {meta['source']['kind']} {meta['source']['path']}", ""]
    if meta["untrained_judge"]:
        lines += [f"**{UNTRAINED}**", ""]
    lines += [f"Judge: {meta['judge']}; {meta['users']} users, top {k}; a score >= {SERENDIPITOUS} is serendipitous; "
              f"{int(meta['confidence'] * 100)}% bootstrap intervals over users ({meta['bootstrap']} resamples).",
              f"Shots: {meta['shots']} ({meta['shots_path'] or 'zero-shot'}).", "",
              f"| template | method | users | items | unparseable | precision@{k} | nDCG@{k} | avg score |",
              "|---|---|---|---|---|---|---|---|"]
    for template, by_method in table.items():
        for method, r in by_method.items():
            lines.append(f"| {template} | {method} | {r['users']} | {r['items']} | {r['unparseable']} | "
                         f"{_fmt(r[f'precision@{k}'])} | {_fmt(r[f'nDCG@{k}'])} | {_fmt(r['avg_score'])} |")
    if paired:
        lines += ["", f"{meta['reference']} minus each method, paired bootstrap over the users both list "
                  f"({int(meta['confidence'] * 100)}%):", "",
                  f"| template | method | users | precision@{k} | nDCG@{k} | avg score |", "|---|---|---|---|---|---|"]
        for template, by_method in paired.items():
            for method, r in by_method.items():
                cells = [_fmt({"mean": r[n]["delta"], "lo": r[n]["lo"], "hi": r[n]["hi"]})
                         for n in (f"precision@{k}", f"nDCG@{k}", "avg_score")]
                lines.append(f"| {template} | {method} | {r['users']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_judge(data: JudgeInput, opts: JudgeOptions, cfg: Config, *, calibrate: bool = False) -> dict[str, Any]:
    """Judge ``data`` with every template of ``opts`` and write the files (module docstring).

    Returns:
        A summary: the estimate, calls sent and cached, unparseable counts, the table (or calibration) and the
        files written. With ``opts.estimate_only`` nothing is called and only the estimate is returned.
    """
    t0 = time.perf_counter()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    configure_threads(cfg.run.num_threads)
    if data.rejected:
        _write_jsonl(out / "rejected.jsonl", data.rejected)
        log.warning("judge: %d malformed input rows rejected (kept in %s)", len(data.rejected), out / "rejected.jsonl")
    for note in data.notes:
        log.info("judge: %s", note)
    if opts.reference and opts.reference not in data.lists:
        raise ConfigError(f"--reference {opts.reference}: not a method of the input "
                          f"(there: {', '.join(sorted(data.lists))})")
    cases = cases_of(data)
    if not cases:
        raise ConfigError(f"judge: nothing to judge in {data.source['path']} (no user has a listed category)")
    if not opts.shots:
        log.info("judge: no --shots file: %s run zero-shot", ", ".join(opts.templates))
    texts = [c.prompt for t in opts.templates for u, item in cases
             for c in calls(t, data.history.get(u, []), item, opts.shots, unit=opts.unit)]
    (out / "prompts.md").write_text(_sample_prompts(data, cases[0], opts))
    count = token_counter(opts, texts)
    est = [estimate(count, t, data, cases, opts.shots, opts) for t in opts.templates]
    for e in est:
        log.info("judge estimate %s: %s calls, %s prompt tokens, <= %s completion tokens%s", e["template"],
                 f"{e['calls']:,}", f"{e['prompt_tokens']:,}", f"{e['completion_tokens_max']:,}",
                 f", <= ${e['usd_max']:.4f}" if opts.price_in or opts.price_out else "")
    meta = {"source": data.source, "judge": opts.endpoint and f"{opts.model} at {opts.endpoint}" or opts.model,
            "untrained_judge": opts.untrained, "templates": opts.templates, "k": opts.k, "users": len(data.history),
            "methods": sorted(data.lists), "cases": len(cases), "shots": len(opts.shots), "shots_path": opts.shots_path,
            "seed": opts.seed, "bootstrap": opts.bootstrap, "confidence": opts.confidence,
            "history_len": opts.history_len, "estimate": est, "rejected_rows": len(data.rejected),
            "options": {k: v for k, v in asdict(opts).items() if k not in ("shots", "out")}}
    if opts.estimate_only:
        return {"estimate": est, "cases": len(cases), "users": len(data.history), "untrained_judge": opts.untrained}
    backend = make_backend(opts, cfg, texts)
    if opts.untrained:
        log.warning("judge: %s", UNTRAINED)
    cache = ReplyCache(out / "cache.jsonl")
    rows: list[dict[str, Any]] = []
    sent: dict[str, int] = {}
    for t in opts.templates:
        got, sent[t], asked = judge_template(backend, cache, t, data, cases, opts.shots, opts.unit)
        rows += got
        log.info("judge %s: %d items, %d calls sent, %d read from the cache, %d unparseable", t, len(got), sent[t],
                 asked - sent[t], sum(not r["parsed"] for r in got))
    ranks = {(m, u, c): i + 1 for m, by_user in data.lists.items() for u, items in by_user.items()
             for i, c in enumerate(items)}
    by_case = {}
    for m, u, c in ranks:
        by_case.setdefault((u, c), {})[m] = ranks[(m, u, c)]
    for r in rows:
        r["ranks"] = by_case.get((r["user"], r["item"]), {})
        r["history"] = data.history.get(r["user"], [])
        r["untrained_judge"] = opts.untrained
    _write_jsonl(out / "judgments.jsonl", rows)
    scores = {t: {(r["user"], r["item"]): r["score"] for r in rows if r["template"] == t} for t in opts.templates}
    unparseable = {t: sum(v is None for v in s.values()) for t, s in scores.items()}
    meta.update({"calls_sent": sent, "unparseable": unparseable, "time_s": round(time.perf_counter() - t0, 1),
                 "http_retries": getattr(backend, "retries", 0), "torn_cache_lines": cache.torn})
    summary: dict[str, Any] = {"out": str(out), "untrained_judge": opts.untrained, "users": len(data.history),
                               "cases": len(cases), "calls_sent": sent, "unparseable": unparseable}
    if opts.untrained:
        summary["warning"] = UNTRAINED
    if calibrate:
        keys = sorted(data.labels)
        labels = [data.labels[key] for key in keys]
        judged = {t: [scores[t].get(key) for key in keys] for t in opts.templates}
        result = {"templates": {t: calibration(labels, judged[t]) for t in opts.templates},
                  "agreement": agreement(judged)}
        write_json(out / "calibration.json", {**result, "meta": meta})
        (out / "calibration.md").write_text(calibration_markdown(result, meta))
        summary["calibration"] = {t: {m: r[m] for m in ("mae", "accuracy_3class", "unparseable")}
                                  for t, r in result["templates"].items()}
        figures = {f"judge/calibration/{t}/{m}": r[m] for t, r in result["templates"].items()
                   for m in ("mae", "accuracy", "accuracy_3class", "unparseable")}
        table_rows = [[t, r["compared"], r["mae"], r["accuracy_3class"]] for t, r in result["templates"].items()]
        columns = ["template", "compared", "mae", "accuracy_3class"]
    else:
        table = {t: method_table(data.lists, scores[t], k=opts.k, n_boot=opts.bootstrap, seed=opts.seed,
                                 confidence=opts.confidence) for t in opts.templates}
        reference = opts.reference or ("coea" if "coea" in data.lists else "")
        paired = {t: paired_table(data.lists, scores[t], k=opts.k, reference=reference, n_boot=opts.bootstrap,
                                  seed=opts.seed, confidence=opts.confidence) for t in opts.templates} \
            if reference in data.lists and len(data.lists) > 1 else {}
        meta["reference"] = reference if paired else ""
        write_json(out / "table.json", {"table": table, "paired": paired, "meta": meta})
        (out / "table.md").write_text(table_markdown(table, meta, paired))
        summary["table"] = {t: {m: {n: round(v[n]["mean"], 4) if isinstance(v[n], dict) and v[n]["mean"] is not None
                                    and not math.isnan(v[n]["mean"]) else v[n]
                                    for n in (f"precision@{opts.k}", f"nDCG@{opts.k}", "avg_score")}
                                for m, v in by_method.items()} for t, by_method in table.items()}
        figures = {f"judge/{t}/{m}/{n}": v[n]["mean"] for t, by_method in table.items()
                   for m, v in by_method.items() for n in (f"precision@{opts.k}", f"nDCG@{opts.k}", "avg_score")}
        figures.update({f"judge/{t}/unparseable": n for t, n in unparseable.items()})
        table_rows = [[t, m, v["users"], v["unparseable"], v[f"precision@{opts.k}"]["mean"],
                       v[f"nDCG@{opts.k}"]["mean"], v["avg_score"]["mean"]]
                      for t, by_method in table.items() for m, v in by_method.items()]
        columns = ["template", "method", "users", "unparseable", f"precision@{opts.k}", f"nDCG@{opts.k}", "avg_score"]
    write_json(out / "meta.json", meta)
    _track(opts, out, meta, figures, TableData(columns, table_rows))
    summary["files"] = sorted(p.name for p in out.iterdir() if p.is_file())
    summary["time_s"] = meta["time_s"]
    return summary


def _track(opts: JudgeOptions, out: Path, meta: dict[str, Any], figures: dict[str, Any], table: TableData) -> None:
    """One W&B run (offline) named ``judge``, job type ``judge``: the figures, a Table, the summary."""
    tracker = make_tracker(TrackingConfig(backend=opts.tracking, mode="offline", project="coea", init_timeout_s=60.0),
                           out, 0, config=meta, name="judge", job_type="judge")
    try:
        tracker.log(figures, 0)
        tracker.log_table("judge/table", table, 0)
        tracker.summary({"untrained_judge": opts.untrained, "judge": meta["judge"], **figures})
    finally:
        tracker.finish()


def calibration_markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"# coea judge calibrate: {meta['source']['path']}", ""]
    if meta["untrained_judge"]:
        lines += [f"**{UNTRAINED}**", ""]
    lines += [f"Judge: {meta['judge']}; shots: {meta['shots']} ({meta['shots_path'] or 'zero-shot'}). 3-class: 1-2 "
              "low, 3 neutral, 4-5 high. Confusion rows = label, columns = judge.", "",
              "| template | labelled | compared | unparseable | MAE | exact | 3-class |",
              "|---|---|---|---|---|---|---|"]
    for t, r in result["templates"].items():
        lines.append(f"| {t} | {r['n']} | {r['compared']} | {r['unparseable']} | {r['mae']:.3f} | "
                     f"{r['accuracy']:.1%} | {r['accuracy_3class']:.1%} |")
    for t, r in result["templates"].items():
        lines += ["", f"{t} confusion (5x5): {r['confusion']}; 3-class: {r['confusion_3class']}"]
    if result["agreement"]:
        lines += ["", "| templates | items | exact | 3-class | mean abs diff | Cohen's kappa |",
                  "|---|---|---|---|---|---|"]
        for pair, a in result["agreement"].items():
            lines.append(f"| {pair} | {a['n']} | {a['exact']:.1%} | {a['three_class']:.1%} | {a['mean_abs_diff']:.3f} "
                         f"| {a['kappa']:.3f} |")
    return "\n".join(lines) + "\n"

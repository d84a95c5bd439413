"""Round 0 (`coea bootstrap`): DSIE if missing, then the embedded backbone, Novelty SFT and Relevance training.

    data        round-0 window (the first ``data.bootstrap_fraction`` of the timeline, fixed in state.json), rejects,
                vocabularies and sequence state (coea/round_data.py)
    dsie        encoder + RQ-VAE + CSIDs + portraits (docs/dsie.md)
    backbone    embedded: word-level tokenizer + Qwen2 model, pretrained on the round-0 corpus (full weights);
                a Hugging Face backbone: its tokenizer is saved here, the model is loaded by name
    novelty     SFT (Eq. 8-9), LoRA, loss on the completion only -> novelty/adapter
    relevance   Bradley-Terry reward model (Eq. 12-14) -> relevance/model (LoRA adapter + score head over the
                base), relevance/calibration.json (Platt scaling on held-out users, docs/llms.md)
    report.json SFT loss curve, Novelty hit@5 vs "most popular category not in C'_short", Relevance held-out
                pairwise accuracy, keys vs users, wall times

Each stage is restartable (docs/cycle.md). Validation users (coea.rounds.is_validation_user) are held out. With
``cycle.num_processes > 1`` (or ``cycle.deepspeed`` set) the pretraining, SFT and reward training run as launched
workers (loops/workers.py); this process keeps the stages.

Later rounds call :func:`grow_backbone` before their candidates: a category name the tokenizer cannot encode grows
the embedded tokenizer and base model into ``rounds/NNN/backbone`` (docs/llms.md "A growing catalogue").
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coea.backbones import (
    build_embedded_backbone, grow_embeddings, grow_word_tokenizer, is_word_level, load_causal_lm, load_tokenizer,
    read_growth, save_tokenizer, vocab_check,
)
from coea.candidates import rank_categories
from coea.config import Config
from coea.console import banner
from coea.data.sequences import click_categories_by_user, exposures_by_user
from coea.dsie import load_dsie, run_dsie
from coea.inference import load_models
from coea.prompts import completion_text, novelty_infer_prompt, novelty_train_example, recent_at
from coea.round_data import load_round
from coea.rounds import backbone_round, base_model_path, is_validation_user, tokenizer_path
from coea.workdir import (
    log_finished_stages, read_json, round_dir, setup_run, stage, stage_done, write_json, write_manifest,
)
from loops.launch import trains_in_workers
from loops.relevance_update import replay_buffer, report_model, write_replay
from loops.reward import finish_calibration, relevance_pairs, train_reward
from loops.sft import train_sft
from loops.workers import launch_reward, launch_sft
from storage.keys import canonical_recent

log = logging.getLogger("coea.bootstrap")


@dataclass
class BootstrapResult:
    novelty_hit_at_5: float
    popularity_hit_at_5: float
    relevance_accuracy: float
    sft_final_loss: float
    keys: int
    users: int
    relevance_ece: float = float("nan")
    relevance_brier: float = float("nan")
    report: dict[str, Any] = field(default_factory=dict)


def sft_examples(cfg: Config, clicks: dict[str, list[tuple[int, str]]], long_categories: dict[str, set[str]],
                 portraits_by_user: dict[str, str], users: list[str]) -> list[dict[str, str]]:
    """P_ft-nov examples: C'_short(t) -> S_short(t) at t >= 2, only where S_short(t) is absent from I_long (Eq. 8).

    C'_short(t) (coea.prompts.recent_at) is the user state the inference prompt renders; with ``data.short_k: 2``
    it is the paper's S_short(t-2:t-1).
    """
    out = []
    for u in users:
        cats = [c for _, c in clicks.get(u, [])]
        for t in range(2, len(cats)):
            if cats[t] in long_categories.get(u, set()):
                continue
            out.append(novelty_train_example(cfg.prompts, portraits_by_user.get(u, ""),
                                             recent_at(cats, t, cfg.data.short_k), cats[t]))
    return out


def _cap(rows: list, n: int, seed: int) -> list:
    if not n or len(rows) <= n:
        return rows
    idx = np.random.default_rng(seed).choice(len(rows), size=n, replace=False)
    return [rows[i] for i in sorted(idx)]


def run_bootstrap(cfg: Config, workdir: Path, *, until: int | None = None) -> BootstrapResult:
    workdir = Path(workdir)
    setup_run(cfg)
    rp = round_dir(workdir, 0)
    banner("round 0", "bootstrap: data, DSIE, backbone, Novelty SFT, Relevance reward model")
    log_finished_stages(rp, "round 0")  # a resume says what it skips
    times: dict[str, float] = {}
    t = time.perf_counter()
    # Round 0's cut-off is fixed here (state.json) and never recomputed (docs/cycle.md, "The clock").
    data = load_round(cfg, workdir, 0, until=until)
    inter, c0, seqs = data.inter, data.end, data.seqs
    if not stage_done(rp, "dsie"):
        run_dsie(cfg, rp, inter, seqs)
    dsie = load_dsie(rp / "dsie")
    csid_of = dict(zip(dsie.users["user_id"], dsie.users["csid"]))
    portraits = dsie.portraits
    portrait_of = {u: portraits.get(csid_of.get(u, "default"), portraits.get("default", "")) for u in seqs.user_ids}
    times["data_dsie_s"] = round(time.perf_counter() - t, 2)

    category_of = inter.item_category  # a property that builds the dict: once, not per item
    item_cat = {j + 1: category_of.get(i) for j, i in enumerate(seqs.item_vocab)}
    long_cats = {u: {item_cat[j] for j in items} for u, items in zip(seqs.user_ids, seqs.long_items)}
    clicks = click_categories_by_user(inter, end=c0)
    exposures = exposures_by_user(inter, end=c0)
    train_users = [u for u in seqs.user_ids if not is_validation_user(u)]
    val_users = [u for u in seqs.user_ids if is_validation_user(u)]
    examples = _cap(sft_examples(cfg, clicks, long_cats, portrait_of, train_users), cfg.novelty.max_train_examples,
                    cfg.run.seed)
    pairs = _cap(relevance_pairs(cfg, clicks, exposures, portrait_of, inter.categories, train_users,
                                 seed=cfg.run.seed), cfg.relevance.max_train_pairs, cfg.run.seed)
    val_pairs = _cap(relevance_pairs(cfg, clicks, exposures, portrait_of, inter.categories, val_users,
                                     seed=cfg.run.seed + 1), 2000, cfg.run.seed)
    if not examples or not pairs:
        raise RuntimeError(f"bootstrap: not enough round-0 data ({len(examples)} SFT examples, {len(pairs)} pairs); "
                           "raise data.bootstrap_fraction or lower data.tau")

    t = time.perf_counter()
    if not stage_done(rp, "backbone"):
        with stage(rp, "backbone") as tmp:
            _build_backbone(cfg, tmp, inter.categories, portraits, examples, pairs)
            write_manifest(tmp, cfg)
    times["backbone_s"] = round(time.perf_counter() - t, 2)
    tok = load_tokenizer(tokenizer_path(workdir), cfg)
    base = base_model_path(cfg, workdir)

    t = time.perf_counter()
    if not stage_done(rp, "novelty"):
        with stage(rp, "novelty") as tmp:
            sft = _sft(cfg, base, tok, tokenizer_path(workdir), examples, tmp)
            write_json(tmp / "metrics.json", {"loss_curve": sft.loss_curve, "train_examples": sft.train_examples})
            write_manifest(tmp, cfg)
    times["novelty_sft_s"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    if not stage_done(rp, "relevance"):
        with stage(rp, "relevance") as tmp:
            rew = _reward(cfg, base, tok, tokenizer_path(workdir), pairs, tmp, epochs=cfg.relevance.epochs,
                          eval_pairs=val_pairs)
            source = finish_calibration(tmp, None, None)
            # Held-out pairs beside the trivial scorers (popularity from the training users' round-0 clicks), the
            # figures later rounds are compared with (docs/cycle.md, "The Relevance update").
            popularity = dict(Counter(c for u in train_users for _, c in clicks.get(u, [])))
            val_new = _cap(relevance_pairs(cfg, clicks, exposures, portrait_of, inter.categories, val_users,
                                           seed=cfg.run.seed + 2, new_only=True), 2000, cfg.run.seed)
            heldout = report_model(cfg, tmp / "model", tmp / "model", tok, base, val_pairs, popularity, val_new) \
                if val_pairs else {}
            write_replay(tmp, replay_buffer([], pairs, cfg.relevance.replay_pairs, cfg.run.seed))
            write_json(tmp / "metrics.json", {"loss_curve": rew.loss_curve, "train_pairs": rew.train_pairs,
                                              "accuracy": rew.accuracy, "eval_pairs": len(val_pairs),
                                              "calibration": {**rew.calibration, "source": source},
                                              "heldout": heldout})
            write_manifest(tmp, cfg)
    times["relevance_s"] = round(time.perf_counter() - t, 2)

    if (rp / "report.json").exists():
        report = read_json(rp / "report.json")
    else:
        t = time.perf_counter()
        report = _report(cfg, workdir, inter, seqs, csid_of, portraits, c0, val_users)
        times["evaluation_s"] = round(time.perf_counter() - t, 2)
        report["wall_time_s"] = times
        write_json(rp / "report.json", report)
    return BootstrapResult(novelty_hit_at_5=report["novelty"]["hit@5"],
                           popularity_hit_at_5=report["novelty"]["popularity_hit@5"],
                           relevance_accuracy=report["relevance"]["pairwise_accuracy"],
                           sft_final_loss=report["novelty"]["sft_loss_curve"][-1], keys=report["keys"],
                           users=report["users"],
                           relevance_ece=report["relevance"].get("calibration", {}).get("ece", float("nan")),
                           relevance_brier=report["relevance"].get("calibration", {}).get("brier", float("nan")),
                           report=report)


def _build_backbone(cfg: Config, tmp: Path, categories: list[str], portraits: dict[str, str],
                    examples: list[dict[str, str]], pairs: list[dict[str, str]]) -> None:
    """Embedded: tokenizer + model, pretrained (full weights, loss on every token) on the round-0 corpus."""
    if cfg.backbone.name != "embedded":
        tok = load_tokenizer(cfg.backbone.name, cfg)
        tok.save_pretrained(tmp / "tokenizer")
        _record_vocab(tmp, tok, categories, 0)
        return
    p = cfg.prompts
    texts = [" ".join(categories), *portraits.values(), "none",
             p.novelty_train, p.novelty_infer, p.relevance,
             *(e["prompt"] + e["completion"] for e in examples[:2000]), *(r["chosen"] for r in pairs[:2000])]
    model_dir, tok_dir = build_embedded_backbone(cfg, texts, tmp)
    tok = load_tokenizer(tok_dir, cfg)
    _record_vocab(tmp, tok, categories, 0)
    # Click order kept (records' "sequence"): which category came last is what this stand-in pretraining teaches;
    # on ml-100k the canonical state texts instead cost Novelty hit@5 0.4915 -> 0.388 (docs/llms.md).
    corpus = examples + [{"prompt": "", "completion": r.get("sequence", r["chosen"])} for r in pairs]
    _sft(cfg, model_dir, tok, tok_dir, corpus, tmp / "pretrain", full_weights=True, completion_only=False, epochs=1,
         lr=max(cfg.novelty.sft_lr, 1e-3))
    import shutil

    shutil.rmtree(model_dir)
    (tmp / "pretrain" / "model").rename(model_dir)


def _record_vocab(stage_dir: Path, tok, categories: list[str], k: int, **extra: Any) -> dict[str, Any]:
    """``backbone/vocab.json``: how the stage's tokenizer encodes the round's catalogue (coea.backbones.vocab_check)."""
    import dataclasses

    check = vocab_check(tok, categories)
    if not check.faithful:
        log.warning("backbone: round %d: %d category names map to the unknown token (%s), %d share token ids with "
                    "another name", k, len(check.unknown), ", ".join(check.unknown[:5]), len(check.ambiguous))
    if check.not_round_trip:
        log.info("backbone: round %d: %d category names do not decode back verbatim (e.g. %r); scoring uses their "
                 "token ids, which are distinct", k, len(check.not_round_trip), check.not_round_trip[0])
    record = {"round": k, "vocab_size": len(tok), "check": dataclasses.asdict(check), **extra}
    write_json(stage_dir / "vocab.json", record)
    return record


def grow_backbone(cfg: Config, workdir: Path, k: int, categories: list[str]) -> dict[str, Any]:
    """Round k's catalogue into the LLMs' vocabulary; returns the round's ``backbone/*`` metrics.

    When a name of ``categories`` (the round's active catalogue) has a word the current word-level tokenizer maps to
    ``<unk>``, the stage ``rounds/NNN/backbone`` saves the grown tokenizer (old ids unchanged, coea.backbones.
    grow_word_tokenizer) and the base model with new embedding / LM-head rows (the mean of the category tokens'
    rows, coea.backbones.grow_embeddings); from then on ``coea.rounds.base_model_path`` / ``tokenizer_path`` point
    at it. Every earlier round's Novelty adapter and Relevance model loads on the grown base (LoRA never touches
    the embedding rows; a full-weights Relevance model is grown on load). A Hugging Face tokenizer is never grown:
    its names are checked, and a name it cannot encode is reported and left as it is.
    """
    rp = round_dir(workdir, k)
    if stage_done(rp, "backbone"):
        return read_json(rp / "backbone" / "vocab.json")["metrics"]
    prev = backbone_round(workdir, k - 1)
    tok_dir = tokenizer_path(workdir, prev)
    tok = load_tokenizer(tok_dir, cfg)
    check = vocab_check(tok, categories)
    metrics: dict[str, Any] = {"backbone/round": prev, "backbone/vocab_size": len(tok), "backbone/new_tokens": 0,
                               "backbone/new_categories": 0, "backbone/unknown_names": len(check.unknown),
                               "backbone/ambiguous_names": len(check.ambiguous),
                               "backbone/not_round_trip_names": len(check.not_round_trip)}
    if check.not_round_trip and not is_word_level(tok):
        log.warning("backbone: %d category names do not decode back verbatim with %s's tokenizer (e.g. %r)",
                    len(check.not_round_trip), cfg.backbone.name, check.not_round_trip[0])
    if not check.unknown:
        if check.ambiguous:
            log.warning("backbone: %d category names share token ids with another name (%s)", len(check.ambiguous),
                        ", ".join(check.ambiguous[:5]))
        return metrics
    if not is_word_level(tok):
        log.warning("backbone: %d category names map to the unknown token of %s's tokenizer (%s); a Hugging Face "
                    "tokenizer is not grown, so they score alike", len(check.unknown), cfg.backbone.name,
                    ", ".join(check.unknown[:5]))
        return metrics
    with stage(rp, "backbone") as tmp:
        grown, growth = grow_word_tokenizer(tok, categories, round_k=k, growth=read_growth(tok_dir))
        save_tokenizer(grown, growth, tmp / "tokenizer")
        model = load_causal_lm(base_model_path(cfg, workdir, prev), cfg, pad_token_id=grown.pad_token_id)
        grow_embeddings(model, growth)
        model.save_pretrained(tmp / "model")
        entry = growth["growth"][-1]
        metrics.update({"backbone/round": k, "backbone/vocab_size": len(grown),
                        "backbone/new_tokens": len(entry["tokens"]),
                        "backbone/new_categories": len(entry["categories"]),
                        "backbone/unknown_names": len(vocab_check(grown, categories).unknown)})
        _record_vocab(tmp, grown, categories, k, metrics=metrics, grown_from_round=prev, added=entry)
        write_manifest(tmp, cfg)
    log.info("backbone: round %d: %d new category names (%s) grew the tokenizer by %d tokens to %d (from round %d's)",
             k, len(entry["categories"]), ", ".join(entry["categories"][:5]), len(entry["tokens"]), len(grown), prev)
    return metrics


def _sft(cfg: Config, base: str | Path, tok, tok_dir: Path, examples: list[dict[str, str]], out_dir: Path,
         **options: Any):
    """:func:`loops.sft.train_sft` here, or on ``cycle.num_processes`` workers (which reload ``tok_dir``)."""
    if trains_in_workers(cfg):
        return launch_sft(cfg, base, tok_dir, examples, out_dir, **options)
    return train_sft(cfg, base, tok, examples, out_dir, **options)


def _reward(cfg: Config, base: str | Path, tok, tok_dir: Path, pairs: list[dict[str, str]], out_dir: Path, *,
            epochs: float, eval_pairs: list[dict[str, str]]):
    """:func:`loops.reward.train_reward` here, or on ``cycle.num_processes`` workers (which reload ``tok_dir``)."""
    if trains_in_workers(cfg):
        return launch_reward(cfg, base, tok_dir, pairs, out_dir, epochs=epochs, eval_pairs=eval_pairs)
    return train_reward(cfg, base, tok, pairs, out_dir, epochs=epochs, eval_pairs=eval_pairs)


def novelty_cases(cfg: Config, inter, seqs, users: list[str], c0: int,
                  limit: int = 2000) -> list[tuple[str, tuple[str, ...], str]]:
    """Held-out users' novel next clicks (Eq. 8's target): (user, C'_short at t, S_short(t)).

    A case is a click whose category is absent from the user's I_long and from C'_short at that moment (the
    canonical set of the previous ``data.short_k`` clicks), taken at every position of the held-out users' click
    history (they never trained), so there are enough cases to compare with the baseline.
    """
    clicks = click_categories_by_user(inter)
    category_of = inter.item_category  # a property that builds the dict: once, not per item
    item_cat = {j + 1: category_of.get(i) for j, i in enumerate(seqs.item_vocab)}
    row_of = {u: i for i, u in enumerate(seqs.user_ids)}
    k = cfg.data.short_k
    cases = []
    for u in users:
        long_cats = {item_cat[j] for j in seqs.long_items[row_of[u]]}
        cats = [c for _, c in clicks.get(u, [])]
        for t in range(k, len(cats)):
            recent = canonical_recent(cats[t - k:t])
            if cats[t] not in long_cats and cats[t] not in recent:
                cases.append((u, recent, cats[t]))
    if len(cases) > limit:
        idx = np.random.default_rng(cfg.run.seed).choice(len(cases), size=limit, replace=False)
        cases = [cases[i] for i in sorted(idx)]
    return cases


def _report(cfg: Config, workdir: Path, inter, seqs, csid_of: dict[str, str], portraits: dict[str, str], c0: int,
            val_users: list[str]) -> dict[str, Any]:
    """Novelty hit@5 vs popularity on validation users' next novel click; Relevance accuracy; keys vs users."""
    rp = round_dir(workdir, 0)
    before = inter.events[(inter.events["timestamp"] < c0) & (inter.events["event"] == "click")]
    popularity = before["item_id"].map(inter.item_category).value_counts().index.tolist()
    popularity += [c for c in inter.categories if c not in popularity]
    cases = novelty_cases(cfg, inter, seqs, val_users, c0)
    models = load_models(cfg, workdir, 0, 0, "cpu")
    prompts = [novelty_infer_prompt(cfg.prompts, portraits.get(csid_of.get(u, "default"), portraits.get("default", "")),
                                    cs) for u, cs, _ in cases]
    ranked = rank_categories(models.novelty, models.tokenizer, prompts, inter.categories,
                             exclude=[set(cs) for _, cs, _ in cases], top_m=5,
                             batch_size=cfg.novelty.inference_batch_size, completion_format=completion_text)
    top5 = [[c for c, _ in r] for r in ranked]
    pop5 = [[c for c in popularity if c not in cs][:5] for _, cs, _ in cases]
    hits = [t in r for (_, _, t), r in zip(cases, top5)]
    pop_hits = [t in r for (_, _, t), r in zip(cases, pop5)]
    catalogue = set(inter.categories)
    produced = [c for r in top5 for c in r]
    sft = read_json(rp / "novelty" / "metrics.json")
    rel = read_json(rp / "relevance" / "metrics.json")
    keys = {(csid_of.get(u, "default"), tuple(c)) for u, c in zip(seqs.user_ids, seqs.c_short)}
    return {
        "novelty": {"hit@5": float(np.mean(hits)) if hits else float("nan"),
                    "popularity_hit@5": float(np.mean(pop_hits)) if pop_hits else float("nan"),
                    "validation_cases": len(cases), "valid_candidate_rate": float(np.mean([c in catalogue for c in
                                                                                      produced])) if produced else 1.0,
                    "sft_loss_curve": sft["loss_curve"], "train_examples": sft["train_examples"]},
        "relevance": {"pairwise_accuracy": rel["accuracy"], "eval_pairs": rel["eval_pairs"],
                      "heldout": rel.get("heldout", {}),
                      "train_pairs": rel["train_pairs"], "loss_curve": rel["loss_curve"],
                      "calibration": rel.get("calibration", {})},
        "keys": len(keys), "users": len(seqs.user_ids),
    }

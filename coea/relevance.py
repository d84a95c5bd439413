"""Relevance LLM inference: reward logits r(x), calibrated probabilities s_i and C_align (Eq. 11-14).

A score is ``P(clicked | x) = sigmoid(a * r(x) + b)`` where r(x) is the reward model's logit for the text
``relevance_prompt(...) + EOS`` and (a, b) the round's :class:`Calibration` (Platt scaling, fitted on held-out
clicked vs unclicked categories; docs/llms.md "Calibration"). The identity calibration (a = 1, b = 0) is the
plain sigmoid of the Bradley-Terry logit, whose offset the pairwise loss leaves free -- which is why a threshold
on it drifts between rounds and a fitted calibration is applied before ``relevance.tau_align``.

Texts are tokenised exactly as trl's RewardTrainer tokenises them in training (:func:`encode`: the EOS string
appended, the tokenizer's own special tokens -- e.g. a Llama BOS -- added). Batches are right-padded (real tokens
keep positions 0..n-1 and the classifier reads the last non-pad token), so a text's score does not depend on what
else is in its batch or on the padding side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coea.console import iterate
from coea.workdir import write_json
log = logging.getLogger("coea.relevance")

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 10


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of Relevance texts as RewardTrainer builds them: ``text + eos`` with default special tokens."""
    eos = tokenizer.eos_token or ""
    return [list(tokenizer(t if t.endswith(eos) else t + eos)["input_ids"]) for t in texts]


@torch.no_grad()
def reward_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Raw Bradley-Terry rewards r(x), one float per text (float64)."""
    if not texts:
        return np.zeros(0, dtype=np.float64)
    device = next(model.parameters()).device
    ids = encode(tokenizer, texts)
    order = np.argsort([len(x) for x in ids], kind="stable")  # batch by length: less padding
    out = np.zeros(len(texts), dtype=np.float64)
    pad = model.config.pad_token_id
    was_training = model.training
    model.eval()
    for start in iterate(range(0, len(order), batch_size), "Relevance scores", unit="batches"):
        rows = order[start:start + batch_size]
        width = max(len(ids[r]) for r in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, :len(ids[r])] = torch.tensor(ids[r])
            mask[j, :len(ids[r])] = 1
        # The classifier reads the last non-pad token (right padding keeps positions exact).
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits  # (B, 1)
        out[rows] = logits.float().squeeze(-1).cpu().numpy()
    model.train(was_training)
    return out


def score(model, tokenizer, texts: Sequence[str], batch_size: int = 32,
          calibration: Calibration | None = None) -> np.ndarray:
    """Scores s_i in (0, 1), one per text: the calibrated probability (plain sigmoid when ``calibration`` is None)."""
    cal = calibration or Calibration()
    return cal.probability(reward_logits(model, tokenizer, texts, batch_size)).astype(np.float32)


def align(candidates: Sequence[str], scores: Sequence[float], tau_align: float) -> list[tuple[str, float]]:
    """C_align: candidates with s_i > tau_align, highest score first (ties keep the Novelty order)."""
    kept = [(c, float(s)) for c, s in zip(candidates, scores) if s > tau_align]
    return sorted(kept, key=lambda t: -t[1])


def pairwise_accuracy(model, tokenizer, pairs: Sequence[dict], batch_size: int = 32) -> float:
    """Share of (chosen, rejected) pairs where the chosen text scores higher (held-out Bradley-Terry accuracy)."""
    if not pairs:
        return float("nan")
    chosen, rejected = pair_logits(model, tokenizer, pairs, batch_size)
    return float((chosen > rejected).mean())


def pair_logits(model, tokenizer, pairs: Sequence[dict], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, rejected) reward logits of preference records (prompt "" + whole texts, loops/pairs.py)."""
    chosen = reward_logits(model, tokenizer, [p.get("prompt", "") + p["chosen"] for p in pairs], batch_size)
    rejected = reward_logits(model, tokenizer, [p.get("prompt", "") + p["rejected"] for p in pairs], batch_size)
    return chosen, rejected


# ------------------------------------------------------------------------------------------------ calibration


@dataclass(frozen=True)
class Calibration:
    """Platt scaling of the reward logit: ``P(clicked | x) = sigmoid(a * r(x) + b)``, with a >= 0.

    ``a`` is an inverse temperature, ``b`` the bias that pins the free Bradley-Terry offset. ``source`` says where
    it came from ("fit", "identity", "carried from round K").
    """

    a: float = 1.0
    b: float = 0.0
    source: str = "identity"

    def probability(self, logits: Sequence[float] | np.ndarray) -> np.ndarray:
        z = self.a * np.asarray(logits, dtype=np.float64) + self.b
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        write_json(path, {**asdict(self), **(extra or {})})

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        d = json.loads(Path(path).read_text())
        return cls(a=float(d["a"]), b=float(d["b"]), source=str(d.get("source", "fit")))


def load_calibration(model_dir: str | Path) -> Calibration:
    """The calibration saved next to a Relevance model (``<model_dir>/../calibration.json``); identity if absent.

    Workdirs written before calibration existed have none: their rounds keep the plain sigmoid (a warning says so).
    """
    path = Path(model_dir).parent / CALIBRATION_FILE
    if path.exists():
        return Calibration.load(path)
    log.warning("relevance: no %s next to %s; scores are the uncalibrated sigmoid(reward)", CALIBRATION_FILE,
                model_dir)
    return Calibration()


def fit_platt(logits: Sequence[float], labels: Sequence[int], *, iterations: int = 100) -> Calibration:
    """Maximum-likelihood Platt scaling (Platt 1999) by Newton's method, with Platt's smoothed targets.

    Targets are ``(N+ + 1) / (N+ + 2)`` for positives and ``1 / (N- + 2)`` for negatives (Platt's prior), so a
    separable set still gives a finite slope. The slope is constrained to a >= 0: a Relevance LLM that ranks
    held-out clicks *below* non-clicks is not inverted, it gets a = 0 (every candidate scores the base rate) and a
    warning, so the calibrated score never reverses the model's order.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if z.shape != y.shape or z.ndim != 1 or not len(z):
        raise ValueError("fit_platt: logits and labels must be equal-length, non-empty 1-D arrays")
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    t = np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = 1.0, math.log((n_pos + 1) / (n_neg + 1))

    def nll(a: float, b: float) -> float:
        s = a * z + b
        return float(np.sum(np.logaddexp(0.0, s) - t * s))

    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a * z + b)))
        g = np.array([np.sum((p - t) * z), np.sum(p - t)])  # gradient of nll
        w = p * (1 - p)
        h = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-12 * np.eye(2)
        step = np.linalg.solve(h, g)
        lr, current = 1.0, nll(a, b)
        while lr > 1e-8 and nll(a - lr * step[0], b - lr * step[1]) > current:
            lr /= 2  # backtracking keeps every step a descent step
        a, b = a - lr * step[0], b - lr * step[1]
        if np.max(np.abs(lr * step)) < 1e-10:
            break
    if a < 0:
        log.warning("calibration: the Relevance LLM ranks held-out clicks below non-clicks (fitted slope %.3f); "
                    "using slope 0 (every candidate scores the base rate)", a)
        p = float(t.mean())
        a, b = 0.0, math.log(p / (1 - p))
    return Calibration(a=float(a), b=float(b), source="fit")


def expected_calibration_error(probabilities: Sequence[float], labels: Sequence[int], bins: int = ECE_BINS) -> float:
    """ECE with ``bins`` equal-width bins on [0, 1]: sum over bins of (n_b / N) * |mean(y_b) - mean(p_b)|.

    Bin b holds b/B <= p < (b+1)/B; the last bin also holds p = 1. Empty bins contribute nothing.

    Hand check (B = 10): p = (0.15, 0.18, 0.85, 0.95), y = (0, 1, 1, 1): bin 1 holds 0.15, 0.18 (mean p 0.165,
    accuracy 0.5, gap 0.335), bin 8 holds 0.85 (gap 0.15), bin 9 holds 0.95 (gap 0.05);
    ECE = (2 * 0.335 + 0.15 + 0.05) / 4 = 0.2175.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if not len(p):
        return float("nan")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.sum() / len(p) * abs(y[sel].mean() - p[sel].mean())
    return float(total)


def brier_score(probabilities: Sequence[float], labels: Sequence[int]) -> float:
    """Mean squared error of the probabilities against the 0/1 labels."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean((p - y) ** 2)) if len(p) else float("nan")


def calibration_half(user_id: str) -> str:
    """``"A"`` or ``"B"``: a stable split of held-out users into the two folds of the calibration's cross-fit."""
    h = int.from_bytes(hashlib.blake2b(f"calibration|{user_id}".encode(), digest_size=4).digest(), "big")
    return "A" if h % 2 == 0 else "B"


def calibration_examples(pairs: Sequence[dict], chosen: np.ndarray,
                         rejected: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(logits, labels, user ids) of held-out categories: each click once (label 1), each negative once (label 0).

    ``pairs`` are relevance_pairs records (loops/reward.py) with ``user_id`` and ``click`` (one id per click, shared
    by its ``negatives_per_positive`` pairs), so a click with several negatives counts once.
    """
    logits, labels, users, seen = [], [], [], set()
    for i, (p, c, r) in enumerate(zip(pairs, chosen, rejected)):
        click = (p.get("user_id"), p.get("click", i))
        if click not in seen:
            seen.add(click)
            logits.append(c), labels.append(1), users.append(str(p.get("user_id", "")))
        logits.append(r), labels.append(0), users.append(str(p.get("user_id", "")))
    return np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64), users


def calibrate(pairs: Sequence[dict], chosen: np.ndarray, rejected: np.ndarray, tau_align: float,
              *, bins: int = ECE_BINS, min_examples: int = 20) -> tuple[Calibration | None, dict[str, float]]:
    """Platt scaling fitted on held-out users' clicked vs unclicked categories, with a cross-fitted report.

    The held-out users split into two folds (:func:`calibration_half`). The reported calibration error is out of
    fold: fold A's categories are scored by the calibration fitted on fold B and vice versa, so no example is judged
    by a fit that saw it. The calibration returned (and applied) is then fitted on both folds.

    Returns ``(calibration, metrics)``; calibration is None (the caller keeps the previous one) when the fit has
    slope 0 (``metrics["calibration_degenerate"]``: the model does not rank the held-out set), or when the held-out
    set has fewer than ``min_examples``
    clicked or unclicked categories, or a fold has fewer than half of that (the caller keeps the previous one).
    Metrics: ``ece`` / ``brier`` (calibrated, out of fold) and ``ece_raw`` / ``brier_raw`` (sigmoid of the raw
    reward), ``pass_rate`` / ``pass_rate_raw`` = share of held-out categories scoring above ``tau_align``,
    ``positive_rate`` (the clicked share, what a calibrated mean score should match), ``calibration_a`` /
    ``calibration_b`` and ``calibration_examples``.
    """
    z, y, users = calibration_examples(pairs, chosen, rejected)
    fold = np.array([calibration_half(u) for u in users]) if users else np.zeros(0, dtype=str)
    metrics: dict[str, float] = {"calibration_examples": int(len(y))}
    need_fold = math.ceil(min_examples / 2)
    enough = all(int((y == cls).sum()) >= min_examples for cls in (0, 1)) and all(
        int(((y == cls) & (fold == f)).sum()) >= need_fold for cls in (0, 1) for f in ("A", "B"))
    if not enough:
        log.warning("calibration: too few held-out categories (%d clicked, %d unclicked; need %d of each, %d per "
                    "fold); keeping the previous calibration", int(y.sum()), int(len(y) - y.sum()), min_examples,
                    need_fold)
        return None, metrics
    a_fold, b_fold = fold == "A", fold == "B"
    out_of_fold = np.zeros(len(y))
    out_of_fold[a_fold] = fit_platt(z[b_fold], y[b_fold]).probability(z[a_fold])
    out_of_fold[b_fold] = fit_platt(z[a_fold], y[a_fold]).probability(z[b_fold])
    cal = fit_platt(z, y)
    raw = Calibration().probability(z)
    metrics.update({
        "ece": expected_calibration_error(out_of_fold, y, bins), "brier": brier_score(out_of_fold, y),
        "ece_raw": expected_calibration_error(raw, y, bins), "brier_raw": brier_score(raw, y),
        "pass_rate": float((cal.probability(z) > tau_align).mean()), "pass_rate_raw": float((raw > tau_align).mean()),
        "positive_rate": float(y.mean()), "calibration_a": cal.a, "calibration_b": cal.b, "ece_bins": bins,
    })
    if cal.a == 0.0:
        # A slope-0 fit scores every candidate the base rate: C_align would be all keys' candidates or none, by
        # which side of tau_align the base rate falls (found by benchmarks/live.py: three days of empty tables).
        # The held-out set says this round's model carries no ranking signal on it, not that every candidate is
        # alike, so the previous round's calibration (or the identity) stays, and the metric says so.
        metrics["calibration_degenerate"] = 1
        log.warning("calibration: slope 0 on %d held-out categories (the Relevance LLM does not rank them); keeping "
                    "the previous calibration", len(y))
        return None, metrics
    log.info("calibration: a %.3f, b %.3f on %d held-out categories; ECE %.3f (uncalibrated %.3f), Brier %.3f "
             "(uncalibrated %.3f)", cal.a, cal.b, len(y), metrics["ece"], metrics["ece_raw"], metrics["brier"],
             metrics["brier_raw"])
    return cal, metrics


# ------------------------------------------------------------------------------------------- held-out report


def _pair_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
    """Share of pairs the chosen side wins; a tie counts one half (what a coin would get)."""
    if not len(chosen):
        return float("nan")
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def _side_scores(pairs: Sequence[dict], popularity: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) popularity and (N, 2) user click share of each pair's (clicked, unclicked) category."""
    pop = np.array([[popularity.get(p.get("pos"), 0), popularity.get(p.get("neg"), 0)] for p in pairs],
                   dtype=np.float64).reshape(-1, 2)
    share = np.array([[p.get("pos_share", 0.0), p.get("neg_share", 0.0)] for p in pairs],
                     dtype=np.float64).reshape(-1, 2)
    return pop, share


def heldout_report(pairs: Sequence[dict], chosen: np.ndarray, rejected: np.ndarray,
                   calibration: Calibration | None, popularity: dict[str, int],
                   new: tuple[Sequence[dict], np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """The Relevance LLM on held-out pairs beside two trivial scorers on the same pairs, overall and new-to-user.

    ``pairs`` are relevance_pairs records (loops/reward.py: ``pos`` / ``neg``, ``pos_new`` / ``neg_new``,
    ``pos_share`` / ``neg_share``); ``chosen`` / ``rejected`` the model's reward logits on them. The scorers:
    ``popularity`` (the category's clicks before the window, all users) and ``share`` (the category's share of
    the user's own earlier clicks). "new" = pairs whose clicked and unclicked categories are both new to the user,
    what the Relevance filter judges (the user's own share is 0 on both sides there, so it scores 0.5).
    Accuracy counts ties as one half. ``ece_applied`` / ``ece_applied_new``: expected calibration error of
    ``calibration`` (the applied one; identity when None) on the pairs' categories, each click once
    (:func:`calibration_examples`); in sample when the calibration was fitted on the same held-out users.
    ``new`` = (pairs, chosen, rejected) of dedicated new-to-user probes (loops/reward.py ``new_only``): the
    ``*_new`` figures then come from them instead of the few ``pairs`` whose negative happened to be new.
    """
    chosen, rejected = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    is_new = np.array([bool(p.get("pos_new")) and bool(p.get("neg_new")) for p in pairs], dtype=bool)
    pop, share = _side_scores(pairs, popularity)
    cal = calibration or Calibration()
    out: dict[str, float] = {"heldout_pairs": int(len(pairs))}
    groups = [("", pairs, chosen, rejected, pop, share)]
    if new is None:
        groups.append(("_new", [p for p, s in zip(pairs, is_new) if s], chosen[is_new], rejected[is_new],
                       pop[is_new], share[is_new]))
    else:
        new_pairs, new_chosen, new_rejected = new
        groups.append(("_new", list(new_pairs), np.asarray(new_chosen, dtype=np.float64),
                       np.asarray(new_rejected, dtype=np.float64), *_side_scores(new_pairs, popularity)))
    for suffix, group, c, r, pp, sh in groups:
        out[f"heldout_pairs{suffix}"] = int(len(group))
        out[f"accuracy{suffix}"] = _pair_accuracy(c, r)
        out[f"popularity_accuracy{suffix}"] = _pair_accuracy(pp[:, 0], pp[:, 1])
        out[f"share_accuracy{suffix}"] = _pair_accuracy(sh[:, 0], sh[:, 1])
        z, y, _ = calibration_examples(group, c, r)
        out[f"ece_applied{suffix}"] = expected_calibration_error(cal.probability(z), y) if len(y) else float("nan")
    best = max(out["popularity_accuracy"], out["share_accuracy"])
    out["beats_trivial"] = int(out["accuracy"] > best) if not math.isnan(out["accuracy"]) else 0
    return out

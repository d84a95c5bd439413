"""Relevance scoring sees the same token ids the RewardTrainer trained on, with or without a BOS-adding tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from coea.backbones import build_word_tokenizer
from coea.config import load_config
from coea.prompts import relevance_prompt
from coea.relevance import align, encode, score

CATS = ["Jazz", "Opera", "Chess"]


def _tokenizer(bos: bool):
    from tokenizers import processors

    tok = build_word_tokenizer([" ".join(CATS), load_config(None, []).prompts.relevance, "likes music"])
    if bos:  # like a Llama tokenizer: the post-processor prepends BOS to every text
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)])
    return tok


@pytest.mark.parametrize("bos", [False, True])
def test_scoring_ids_equal_the_reward_trainers(bos, tmp_path):
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tok = _tokenizer(bos)
    p = load_config(None, []).prompts
    chosen, rejected = (relevance_prompt(p, "likes music", ["Jazz"], c) for c in ("Opera", "Chess"))
    model = Qwen2ForSequenceClassification(Qwen2Config(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=32, num_labels=1, pad_token_id=tok.pad_token_id))
    trainer = RewardTrainer(model=model, processing_class=tok, train_dataset=Dataset.from_list(
        [{"chosen": chosen, "rejected": rejected}]), args=RewardConfig(output_dir=str(tmp_path), report_to=[],
                                                                      use_cpu=True))
    row = trainer.train_dataset[0]
    assert encode(tok, [chosen, rejected]) == [row["chosen_ids"], row["rejected_ids"]]
    assert (encode(tok, [chosen])[0][0] == tok.bos_token_id) == bos
    s = score(model, tok, [chosen, rejected, chosen], batch_size=2)
    assert s[0] == pytest.approx(s[2], abs=1e-6) and ((s > 0) & (s < 1)).all()


def test_align_is_strict_and_ordered():
    assert align(["A", "B", "C"], np.array([0.6, 0.4, 0.9]), 0.5) == [("C", pytest.approx(0.9)), ("A", 0.6)]
    assert align([], [], 0.5) == []


# ------------------------------------------------------------------------------------------------ calibration


def test_platt_scaling_recovers_a_known_scale_and_shift():
    from coea.relevance import fit_platt

    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 1.5, 40_000)
    y = rng.random(len(z)) < 1 / (1 + np.exp(-(2.0 * z - 1.0)))  # true P(clicked | r) = sigmoid(2 r - 1)
    cal = fit_platt(z, y.astype(int))
    assert cal.a == pytest.approx(2.0, abs=0.08) and cal.b == pytest.approx(-1.0, abs=0.05)
    np.testing.assert_allclose(cal.probability([0.5]), [0.5], atol=0.02)


def test_platt_scaling_never_inverts_the_order():
    from coea.relevance import fit_platt

    z = np.array([2.0, 1.5, 1.0, -1.0, -1.5, -2.0] * 10)
    y = np.array([0, 0, 0, 1, 1, 1] * 10)  # clicks score *lower*
    cal = fit_platt(z, y)
    assert cal.a == 0.0
    np.testing.assert_allclose(cal.probability(z), 0.5, atol=1e-9)  # the (smoothed) base rate, for every text


def test_ece_and_brier_by_hand():
    from coea.relevance import brier_score, expected_calibration_error

    p, y = [0.15, 0.18, 0.85, 0.95], [0, 1, 1, 1]
    # bin 1: mean p 0.165, accuracy 0.5 (gap 0.335, 2 of 4); bin 8: gap 0.15; bin 9: gap 0.05
    assert expected_calibration_error(p, y) == pytest.approx((2 * 0.335 + 0.15 + 0.05) / 4)
    assert brier_score(p, y) == pytest.approx((0.15**2 + 0.82**2 + 0.15**2 + 0.05**2) / 4)
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0  # p = 1 falls in the last bin
    assert expected_calibration_error([0.3, 0.3], [1, 0], bins=1) == pytest.approx(0.2)


def _held_out_pairs(n_users: int, shift: float, seed: int = 0):
    """relevance_pairs-like records and reward logits where clicks score ~ +1 above negatives, all shifted."""
    rng = np.random.default_rng(seed)
    pairs, chosen, rejected = [], [], []
    for u in range(n_users):
        for c in range(4):
            pairs.append({"user_id": f"u{u}", "click": u * 4 + c, "chosen": "x", "rejected": "y"})
            chosen.append(rng.normal(1.0, 1.0) + shift)
            rejected.append(rng.normal(0.0, 1.0) + shift)
    return pairs, np.array(chosen), np.array(rejected)


def test_calibrate_pins_the_free_offset_and_reports_out_of_fold():
    from coea.relevance import calibrate

    tau = 0.5
    cals = []
    for shift in (0.0, 3.0):  # two rounds whose Bradley-Terry offsets differ by 3
        pairs, chosen, rejected = _held_out_pairs(200, shift)
        cal, m = calibrate(pairs, chosen, rejected, tau)
        cals.append((cal, m))
        assert m["calibration_examples"] == 1600 and m["positive_rate"] == 0.5
        assert m["ece"] < 0.05
    (c0, m0), (c3, m3) = cals
    assert m3["pass_rate_raw"] > 0.95 and m0["pass_rate_raw"] < 0.7  # raw sigmoid: the shift lets everything pass
    assert m3["pass_rate"] == pytest.approx(m0["pass_rate"], abs=0.05)  # calibrated: the same share passes
    assert m3["ece_raw"] > 0.3 and m3["ece"] < 0.05
    assert c3.b == pytest.approx(c0.b - 3 * c0.a, abs=0.3)


def test_calibrate_declines_with_too_few_examples():
    from coea.relevance import calibrate

    pairs, chosen, rejected = _held_out_pairs(3, 0.0)
    cal, m = calibrate(pairs, chosen, rejected, 0.5, min_examples=20)
    assert cal is None and m == {"calibration_examples": 24}


def test_calibrate_keeps_the_previous_calibration_on_a_slope_0_fit():
    """Held-out clicks ranked below non-clicks: a slope-0 fit would score every candidate the base rate (C_align all
    or nothing), so calibrate declines it, reports why, and the caller keeps the previous calibration."""
    from coea.relevance import calibrate

    pairs, chosen, rejected = _held_out_pairs(200, 0.0)
    cal, m = calibrate(pairs, rejected, chosen, 0.5)  # chosen and rejected swapped: clicks score lower
    assert cal is None and m["calibration_degenerate"] == 1 and m["calibration_a"] == 0.0
    cal, m = calibrate(pairs, chosen, rejected, 0.5)
    assert cal is not None and "calibration_degenerate" not in m


def test_a_click_with_several_negatives_counts_once():
    from coea.relevance import calibration_examples

    pairs = [{"user_id": "u", "click": 0}, {"user_id": "u", "click": 0}, {"user_id": "u", "click": 1}]
    z, y, users = calibration_examples(pairs, np.array([5.0, 5.0, 6.0]), np.array([1.0, 2.0, 3.0]))
    assert z.tolist() == [5.0, 1.0, 2.0, 6.0, 3.0] and y.tolist() == [1, 0, 0, 1, 0] and users == ["u"] * 5


def test_scores_are_the_calibrated_probability_of_the_reward(tmp_path):
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from coea.relevance import Calibration, load_calibration, reward_logits

    tok = _tokenizer(False)
    model = Qwen2ForSequenceClassification(Qwen2Config(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=32, num_labels=1, pad_token_id=tok.pad_token_id))
    p = load_config(None, []).prompts
    texts = [relevance_prompt(p, "likes music", ["Jazz"], c) for c in CATS]
    z = reward_logits(model, tok, texts)
    cal = Calibration(a=2.0, b=-1.0, source="fit")
    np.testing.assert_allclose(score(model, tok, texts, calibration=cal), 1 / (1 + np.exp(-(2 * z - 1))), rtol=1e-6)
    np.testing.assert_allclose(score(model, tok, texts), 1 / (1 + np.exp(-z)), rtol=1e-6)  # identity: as before
    (tmp_path / "model").mkdir()
    cal.save(tmp_path / "calibration.json", {"metrics": {"ece": 0.1}})
    assert load_calibration(tmp_path / "model") == cal
    assert load_calibration(tmp_path / "elsewhere" / "model") == Calibration()  # old workdirs: identity

"""DPO + KL trainer (Eq. 16-17): loss terms on hand-computed values, equality with trl, the reference, training.

Everything runs on a tiny random Qwen2 (hidden 32, 2 layers) and a word-level tokenizer built here, saved to a
temporary directory and loaded back by path like a real checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from coea.config import LoraConfig as CoeaLoraConfig
from coea.config import PcoConfig
from loops.dpo import (
    AlertMonitor, DPOKLConfig, DPOKLTrainer, chosen_nll, completion_windows, ipo_loss, last_token_values,
    load_policy_and_reference, reward_metrics, run_dpo, sigmoid_dpo_loss, token_kl,
)

LN2 = math.log(2)
CATEGORIES = ["Comedy", "Drama", "Horror", "Action", "Romance", "Western", "Musical", "Crime"]
WORDS = ["Group", "portrait", ":", "likes", "Recent", "categories", "Next", "category", ","] + CATEGORIES


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """A tiny tokenizer, a random base model and a non-zero LoRA adapter on it, all saved to disk."""
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    root = tmp_path_factory.mktemp("dpo_assets")
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tokenizer.save_pretrained(root / "tokenizer")

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    Qwen2ForCausalLM(config).save_pretrained(root / "base")

    for name, seed in (("adapter", 1), ("round0", 2)):
        base = Qwen2ForCausalLM.from_pretrained(root / "base")
        peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                     lora_dropout=0.0, task_type="CAUSAL_LM"))
        torch.manual_seed(seed)
        with torch.no_grad():
            for pname, param in peft_model.named_parameters():
                if "lora_B" in pname:  # fresh LoRA has B = 0; make the adapter actually change the model
                    param.normal_(0, 0.3)
        peft_model.save_pretrained(root / name)
    return {"tokenizer": root / "tokenizer", "base": root / "base", "adapter": root / "adapter",
            "round0": root / "round0"}


@pytest.fixture(scope="module")
def tokenizer(assets):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(assets["tokenizer"])


def make_pairs(n: int, *, separable: bool = False) -> Dataset:
    """trl-format preference pairs; ``separable`` makes every pair the same trivially separable choice."""
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for i in range(n):
        recent = ", ".join(CATEGORIES[(i + j) % 4] for j in range(1 + i % 3))
        rows["prompt"].append(f"Group portrait: likes {CATEGORIES[i % 4]} Recent categories: {recent} Next category:")
        if separable:
            rows["chosen"].append(" Western")
            rows["rejected"].append(" Crime")
        else:  # chosen of varying length to exercise masks
            rows["chosen"].append(" " + " ".join(CATEGORIES[4 + (i + j) % 4] for j in range(1 + i % 2)))
            rows["rejected"].append(" " + CATEGORIES[(i + 1) % 4])
    return Dataset.from_dict(rows)


TRAIN_KWARGS = dict(per_device_train_batch_size=4, bf16=False, use_cpu=True, gradient_checkpointing=False,
                    report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, max_steps=1)


def dpo_args(tmp_path: Path, **overrides) -> DPOKLConfig:
    return DPOKLConfig(output_dir=str(tmp_path / "trainer"), **(TRAIN_KWARGS | overrides))


def plain_trl_args(tmp_path: Path, **overrides):
    from trl import DPOConfig

    return DPOConfig(output_dir=str(tmp_path / "plain"), **(TRAIN_KWARGS | overrides))


def first_batch(trainer) -> dict[str, torch.Tensor]:
    return next(iter(trainer.get_train_dataloader()))


def trainer_loss(trainer, batch) -> torch.Tensor:
    trainer.model.eval()
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch)


def logged(trainer, name: str, mode: str = "eval") -> float:
    return trainer._metrics[mode][name][-1]


# ---------------------------------------------------------------------------------------- loss terms by hand


def test_sigmoid_dpo_loss_hand_values():
    loss, m = sigmoid_dpo_loss(torch.tensor([1.0]), torch.tensor([-1.0]), beta=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)  # 0.313262
    loss, _ = sigmoid_dpo_loss(torch.zeros(3), torch.zeros(3), beta=0.1)
    assert loss.item() == pytest.approx(LN2, abs=1e-7)
    assert m["dpo_loss"].shape == (1,)


def test_token_kl_hand_value_and_non_negative():
    p = torch.log(torch.tensor([[[0.5, 0.5]]]))  # (B=1, T=1, V=2)
    q = torch.log(torch.tensor([[[0.25, 0.75]]]))
    kl, m = token_kl(p, q, torch.ones(1, 1))
    assert kl.item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)  # 0.143841
    # masked tokens do not count; identical distributions give exactly 0
    kl_masked, _ = token_kl(p.expand(1, 2, 2), torch.cat([q, p], 1), torch.tensor([[0.0, 1.0]]))
    assert kl_masked.item() == pytest.approx(0.0, abs=1e-7)
    torch.manual_seed(0)
    a, b = torch.randn(64, 5, 11).log_softmax(-1), (3 * torch.randn(64, 5, 11)).log_softmax(-1)
    _, m = token_kl(a, b, torch.ones(64, 5))
    assert (m["kl"] >= 0).all() and (m["kl"] > 0).all()
    # the single-sample log-ratio, by contrast, goes negative: sampling token 1 from p gives log(0.5/0.75) < 0
    assert (p[0, 0, 1] - q[0, 0, 1]).item() == pytest.approx(math.log(2 / 3), abs=1e-6)


def test_ipo_and_sft_hand_values():
    loss, m = ipo_loss(torch.tensor([2.0]), torch.tensor([-1.0]), torch.tensor([2]), torch.tensor([1]), beta=0.5)
    assert loss.item() == pytest.approx(1.0, abs=1e-7)
    nll, _ = chosen_nll(torch.tensor([[-1.0, -2.0], [-3.0, 0.0]]), torch.tensor([[1, 1], [1, 0]]))
    assert nll.item() == pytest.approx(2.0, abs=1e-7)


def test_reward_metrics_hand_values():
    m = reward_metrics(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), beta=0.1)
    assert m["rewards/margins"].tolist() == pytest.approx([0.1, 0.0])
    assert m["rewards/accuracies"].tolist() == [1.0, 0.0]


def test_window_helpers():
    targets, mask = completion_windows(torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1]]))
    assert targets.tolist() == [[3, 4, 3, 3], [2, 3, 4, 5]]
    assert mask.tolist() == [[True, True, False, False], [True, True, True, True]]
    assert last_token_values(torch.arange(8.0).reshape(2, 4), mask).tolist() == [1.0, 7.0]


# ------------------------------------------------------------------------------------------------ alerts


def test_alert_monitor_rules():
    mon = AlertMonitor()
    assert mon.update(1, 100, {"rewards/accuracies": 1.0, "rewards/margins": 1e-6, "kl": 0.0}) == []  # a hair
    assert [a.kind for a in mon.update(2, 100, {"rewards/accuracies": 1.0, "rewards/margins": 0.8})] == ["saturation"]
    assert mon.update(3, 100, {"rewards/accuracies": 1.0, "rewards/margins": 0.8}) == []  # once per run
    late = AlertMonitor()
    assert late.update(60, 100, {"rewards/accuracies": 1.0, "rewards/margins": 0.8}) == []  # not early
    for step, kl in enumerate([0.0, 0.0005, 0.002, 0.003], 1):  # rising from 0 is no spike (floor)
        assert mon.update(step, 100, {"kl": kl}) == []
    assert [a.kind for a in mon.update(5, 100, {"kl": 0.5})] == ["kl_spike"]
    drift = AlertMonitor()
    assert drift.update(1, 10, {"length/eos_logratio": -0.3}) == []
    (alert,) = drift.update(2, 10, {"length/eos_logratio": -0.9})
    assert alert.kind == "length_drift" and "longer" in alert.message


# ------------------------------------------------------------------------------------------ trainer vs trl


def test_alpha_zero_equals_trl_dpo_loss(assets, tokenizer, tmp_path):
    """(a) with alpha = 0 the loss is trl's sigmoid DPO loss on the same batch."""
    from trl import DPOTrainer

    pairs = make_pairs(4)
    policy, ref = load_policy_and_reference(assets["base"], assets["adapter"], anchor_adapter=assets["round0"])
    ours = DPOKLTrainer(policy, ref, dpo_args(tmp_path, alpha=0.0), train_dataset=pairs, processing_class=tokenizer)
    batch = first_batch(ours)
    loss = trainer_loss(ours, batch)

    policy, ref = load_policy_and_reference(assets["base"], assets["adapter"], anchor_adapter=assets["round0"])
    plain = DPOTrainer(model=policy, ref_model=ref, args=plain_trl_args(tmp_path), train_dataset=pairs,
                       processing_class=tokenizer)
    expected = trainer_loss(plain, first_batch(plain))
    assert abs(loss.item() - LN2) > 1e-3  # policy != reference here, so the comparison is not trivially ln 2
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert logged(ours, "kl") > 0  # KL still logged, just not weighted
    # and alpha > 0 adds exactly alpha * KL
    policy, ref = load_policy_and_reference(assets["base"], assets["adapter"], anchor_adapter=assets["round0"])
    weighted = DPOKLTrainer(policy, ref, dpo_args(tmp_path, alpha=0.4), train_dataset=pairs,
                            processing_class=tokenizer)
    loss_kl = trainer_loss(weighted, batch)
    assert loss_kl.item() == pytest.approx(expected.item() + 0.4 * logged(weighted, "kl"), abs=1e-5)


def test_step0_policy_equals_reference(assets, tokenizer, tmp_path):
    """(b) at step 0 with the previous round as anchor: DPO loss ln 2, margin 0, KL 0."""
    policy, ref = load_policy_and_reference(assets["base"], assets["adapter"])
    trainer = DPOKLTrainer(policy, ref, dpo_args(tmp_path), train_dataset=make_pairs(4), processing_class=tokenizer)
    loss = trainer_loss(trainer, first_batch(trainer))
    assert loss.item() == pytest.approx(LN2, abs=1e-5)  # KL 0 adds nothing
    assert logged(trainer, "dpo_loss") == pytest.approx(LN2, abs=1e-5)
    assert logged(trainer, "rewards/margins") == pytest.approx(0.0, abs=1e-5)
    assert logged(trainer, "kl") == pytest.approx(0.0, abs=1e-5)
    evaluated = trainer.evaluate(make_pairs(4))  # the eval loop reports the same figures
    assert evaluated["eval_loss"] == pytest.approx(LN2, abs=1e-5)
    assert evaluated["eval_kl"] == pytest.approx(0.0, abs=1e-5)


def test_reference_is_previous_adapter_not_bare_base(assets, tokenizer, tmp_path):
    """(d) the reference is base + the saved adapter, not the adapter-disabled base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = tokenizer("Group portrait: likes Drama Next category: Horror", return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained(assets["base"]).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(assets["base"]), assets["adapter"])
        adapted_logits = adapted.eval()(ids).logits
        round0 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(assets["base"]), assets["round0"])
        round0_logits = round0.eval()(ids).logits

    policy, ref = load_policy_and_reference(assets["base"], assets["adapter"])
    with torch.no_grad():
        ref_logits = ref(ids).logits
    torch.testing.assert_close(ref_logits, adapted_logits, atol=1e-5, rtol=0)
    assert (ref_logits - base_logits).abs().max() > 1e-2
    assert not any(p.requires_grad for p in ref.parameters())
    assert any(p.requires_grad for n, p in policy.named_parameters() if "lora_" in n)

    _, ref0 = load_policy_and_reference(assets["base"], assets["adapter"], anchor_adapter=assets["round0"])
    with torch.no_grad():
        torch.testing.assert_close(ref0(ids).logits, round0_logits, atol=1e-5, rtol=0)

    # the trainer scores the reference through that model, and refuses to run without one
    trainer = DPOKLTrainer(policy, ref, dpo_args(tmp_path), train_dataset=make_pairs(2), processing_class=tokenizer)
    batch = first_batch(trainer)
    scores = trainer.reference_scores(batch)
    with torch.no_grad():
        expected = trainer.window_scores(adapted, batch, full_chosen=False).logps
        bare = trainer.window_scores(base, batch, full_chosen=False).logps
    torch.testing.assert_close(scores.logps, expected, atol=1e-5, rtol=0)
    assert (scores.logps - bare).abs().max() > 1e-3
    policy, _ = load_policy_and_reference(assets["base"], assets["adapter"])
    with pytest.raises(ValueError, match="ref_model"):
        DPOKLTrainer(policy, None, dpo_args(tmp_path), train_dataset=make_pairs(2), processing_class=tokenizer)


def test_ipo_variant_matches_hand_and_trl(assets, tokenizer, tmp_path):
    """(f) ipo + alpha * SFT equals the pure terms on the batch's log-probs and trl's ipo + weighted sft."""
    from trl import DPOTrainer

    pairs = make_pairs(4)
    policy, ref = load_policy_and_reference(assets["base"], assets["adapter"], anchor_adapter=assets["round0"])
    ours = DPOKLTrainer(policy, ref, dpo_args(tmp_path, loss_type="ipo", alpha=0.4), train_dataset=pairs,
                        processing_class=tokenizer)
    batch = first_batch(ours)
    loss = trainer_loss(ours, batch)

    # by hand from the two models' per-token log-probs
    with torch.no_grad():
        pol = ours.window_scores(ours.model, batch, full_chosen=False)
        ref_scores = ours.reference_scores(batch)
    ratios = pol.logps - ref_scores.logps
    lengths = pol.mask.sum(-1).float()
    c, r = ratios.chunk(2)
    lc, lr = lengths.chunk(2)
    h = c / lc - r / lr
    ipo_hand = ((h - 1 / (2 * 0.1)) ** 2).mean()
    nll_hand = -pol.token_logps[:4].sum() / pol.mask[:4].sum()
    assert loss.item() == pytest.approx((ipo_hand + 0.4 * nll_hand).item(), abs=1e-5)

    policy, ref = load_policy_and_reference(assets["base"], assets["adapter"], anchor_adapter=assets["round0"])
    plain_args = plain_trl_args(tmp_path, loss_type=["ipo", "sft"], loss_weights=[1.0, 0.4])
    plain = DPOTrainer(model=policy, ref_model=ref, args=plain_args, train_dataset=pairs, processing_class=tokenizer)
    assert loss.item() == pytest.approx(trainer_loss(plain, first_batch(plain)).item(), abs=1e-5)


def test_config_rejects_unsupported():
    with pytest.raises(ValueError, match="loss_type"):
        DPOKLConfig(output_dir="/tmp/x", loss_type="hinge", use_cpu=True, bf16=False)
    with pytest.raises(ValueError, match="precompute_ref_log_probs"):
        DPOKLConfig(output_dir="/tmp/x", precompute_ref_log_probs=True, use_cpu=True, bf16=False)


# ------------------------------------------------------------------------------------------------- training


def test_run_dpo_trains_and_saves(assets, tokenizer, tmp_path):
    """(e) a few steps: LoRA weights changed, loss finite, KL > 0 afterwards; adapter + metrics.json saved."""
    from safetensors.torch import load_file

    cfg = PcoConfig(lr=0.05, per_device_batch_size=2, gradient_accumulation_steps=1, epochs=1.0)
    result = run_dpo(cfg, CoeaLoraConfig(), assets["base"], assets["adapter"], None, assets["tokenizer"],
                     make_pairs(8), tmp_path / "pco")
    before = load_file(assets["adapter"] / "adapter_model.safetensors")
    after = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)  # every LoRA matrix moved (A and B)
    assert result.metrics["steps"] == 4 and math.isfinite(result.metrics["train_loss"])
    assert result.metrics["kl"] > 0  # the last step's KL, measured after three updates

    saved = json.loads((tmp_path / "pco" / "metrics.json").read_text())
    assert set(saved["versions"]) == {"torch", "transformers", "trl", "peft"} and all(saved["versions"].values())
    assert saved["history"][0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy == reference
    assert saved["history"][0]["dpo_loss"] == pytest.approx(LN2, abs=1e-5)
    assert saved["reference"] == str(assets["adapter"])
    # the new adapter loads back onto the base and differs from the previous round
    policy, ref = load_policy_and_reference(assets["base"], result.adapter_dir, anchor_adapter=assets["adapter"])
    ids = tokenizer("Group portrait: likes Drama Next category: Horror", return_tensors="pt").input_ids
    with torch.no_grad():
        assert (policy.eval()(ids).logits - ref(ids).logits).abs().max() > 1e-4


@pytest.mark.parametrize("separable", [True, False], ids=["separable", "contradictory"])
def test_saturation_alert_on_separable_toy(assets, tokenizer, tmp_path, separable):
    """(g) trivially separable pairs saturate pair accuracy early and raise the alert; contradictory ones do not."""
    pairs = make_pairs(8, separable=True)
    if not separable:  # the same prompts with the preference flipped on every other pair: nothing to separate
        pairs = pairs.map(lambda row, i: row if i % 2 else
                          {**row, "chosen": row["rejected"], "rejected": row["chosen"]}, with_indices=True)
    cfg = PcoConfig(beta=1.0, lr=0.1, per_device_batch_size=4, gradient_accumulation_steps=1, epochs=8.0)
    result = run_dpo(cfg, CoeaLoraConfig(), assets["base"], assets["adapter"], None, tokenizer, pairs,
                     tmp_path / "pco")
    kinds = [line.split("]")[0].lstrip("[") for line in result.alerts]
    saved = json.loads((tmp_path / "pco" / "metrics.json").read_text())
    assert saved["alerts"] == result.alerts
    if not separable:
        assert "saturation" not in kinds, result.alerts
        return
    assert "saturation" in kinds, result.alerts
    step = int(result.alerts[kinds.index("saturation")].split("step ")[1].split(":")[0])
    assert step <= 0.25 * result.metrics["steps"]

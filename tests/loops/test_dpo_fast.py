"""The fast DPO + KL path (issue 7): packed shared-prompt rows and the once-per-round reference cache.

Both must compute what the plain two-row trainer with a live reference computes: the same log-probabilities, the
same loss and metrics, the same gradients, and so the same adapter after training. Tiny models from
tests/loops/test_dpo.py's fixtures (random Qwen2, word-level tokenizer, saved and loaded by path).
"""

from __future__ import annotations

import pytest
import torch

from loops.dpo import DPOKLTrainer, load_policy_and_reference
from loops.dpo_fast import ReferenceCache, block_causal_mask, pack_pairs, pair_keys
from tests.loops.test_dpo import assets, dpo_args, first_batch, make_pairs, tokenizer  # noqa: F401 (fixtures)

ATOL = 1e-5


def batch_of(prompt: list[int], chosen: list[int], rejected: list[int], pad: int = 0, extra_pad: int = 1):
    """A trl-collated batch of one pair: rows prompt+chosen and prompt+rejected, right-padded."""
    rows = [prompt + chosen, prompt + rejected]
    width = max(map(len, rows)) + extra_pad
    ids = torch.full((2, width), pad)
    att = torch.zeros((2, width), dtype=torch.long)
    comp = torch.zeros((2, width), dtype=torch.long)
    for r, (row, completion) in enumerate(zip(rows, (chosen, rejected))):
        ids[r, :len(row)] = torch.tensor(row)
        att[r, :len(row)] = 1
        comp[r, len(prompt):len(row)] = 1
    return {"input_ids": ids, "attention_mask": att, "completion_mask": comp}


# ------------------------------------------------------------------------------------------- packing by hand


def test_pack_pairs_hand_example():
    packed = pack_pairs(batch_of([5, 6], [7], [8, 9]))
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 2, 3]]
    # chosen token 7 is predicted at position 1 (token 6); rejected 8 also at 1, rejected 9 at 3 (token 8)
    assert packed.predictors.tolist() == [[1, 0, 1, 3]]  # L = 2: chosen [1, pad], rejected [1, 3]
    assert packed.mask.tolist() == [[True, False], [True, True]]
    assert packed.labels.tolist() == [[7, 0], [8, 9]]
    a = packed.attention[0].int().tolist()
    assert a[3] == [1, 1, 0, 1, 0]  # token 8 sees the prompt and itself, not the chosen token 7
    assert a[4] == [1, 1, 0, 1, 1]
    assert a[2] == [1, 1, 1, 0, 0]  # token 7: causal over the prompt


def test_block_causal_mask_pads_attend_to_themselves_only():
    attention = block_causal_mask(torch.tensor([[0, 1, 2, -1]]))[0].int().tolist()
    assert attention == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]


def test_pack_pairs_refuses_pairs_whose_prompts_differ():
    batch = batch_of([5, 6], [7], [8])
    batch["input_ids"][1, 1] = 4  # truncation or a collator change made the rejected row's prompt differ
    assert pack_pairs(batch) is None


def test_pair_keys_depend_on_every_token():
    keys = {pair_keys(batch_of([5, 6], [7], [8]))[0], pair_keys(batch_of([5, 6], [7], [9]))[0],
            pair_keys(batch_of([5, 6], [8], [7]))[0], pair_keys(batch_of([5], [6, 7], [8]))[0]}
    assert len(keys) == 4
    assert pair_keys(batch_of([5, 6], [7], [8], extra_pad=3)) == pair_keys(batch_of([5, 6], [7], [8]))


# ------------------------------------------------------------------------------ equal to the plain trainer


def make_trainer(assets, tokenizer, tmp_path, pairs, *, attn="sdpa", **flags) -> DPOKLTrainer:
    # anchor = round 0, so policy != reference: the KL, its gradient and the log-ratios are all non-zero
    policy, ref = load_policy_and_reference(assets["base"], assets["adapter"], anchor_adapter=assets["round0"],
                                            attn_implementation=attn)
    return DPOKLTrainer(policy, ref, dpo_args(tmp_path / str(sorted(flags.items())), **flags), train_dataset=pairs,
                        processing_class=tokenizer)


def loss_and_grads(trainer, batch) -> tuple[float, dict[str, float], dict[str, torch.Tensor]]:
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return float(loss.detach()), metrics, grads


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_forward_equals_two_row_forward(assets, tokenizer, tmp_path, attn):
    pairs = make_pairs(6)
    fast = make_trainer(assets, tokenizer, tmp_path, pairs, attn=attn, shared_prompt=True)
    assert fast.use_packing
    batch = first_batch(fast)
    fast.model.eval()
    with torch.no_grad():
        packed = fast.window_scores(fast.model, batch, full_chosen=True)
        fast.use_packing = False
        plain = fast.window_scores(fast.model, batch, full_chosen=True)
    assert torch.equal(packed.mask, plain.mask)
    torch.testing.assert_close(packed.token_logps, plain.token_logps, atol=ATOL, rtol=0)
    real = plain.mask[:plain.chosen_logprobs.size(0)]  # (B, L): padding slots hold whatever, both are masked
    torch.testing.assert_close(packed.chosen_logprobs[real], plain.chosen_logprobs[real], atol=ATOL, rtol=0)
    assert packed.logps.abs().min() > 0  # real completions were scored


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_fast_loss_metrics_and_gradients_equal_plain(assets, tokenizer, tmp_path, loss_type):
    pairs = make_pairs(8)
    kwargs = {"loss_type": loss_type, "alpha": 0.4}
    plain = make_trainer(assets, tokenizer, tmp_path, pairs, **kwargs)
    fast = make_trainer(assets, tokenizer, tmp_path, pairs, shared_prompt=True, precompute_reference=True, **kwargs)
    assert fast.ref_model is None and len(fast.reference_cache) == len(pairs)
    for model in (plain.model, fast.model):  # LoRA dropout would draw different masks in the two layouts
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    batch = first_batch(plain)
    loss_p, metrics_p, grads_p = loss_and_grads(plain, batch)
    loss_f, metrics_f, grads_f = loss_and_grads(fast, batch)
    assert loss_f == pytest.approx(loss_p, abs=ATOL)
    for name in ("kl", "rewards/margins", "rewards/chosen", "logps/chosen", "length/eos_logratio"):
        assert metrics_f[name] == pytest.approx(metrics_p[name], abs=ATOL), name
    assert metrics_p["kl"] > 1e-4  # policy != reference: the comparison is not of zeros
    assert grads_p.keys() == grads_f.keys() and len(grads_p) > 0
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], atol=1e-5, rtol=1e-4)


def test_fast_training_ends_at_the_same_adapter(assets, tokenizer, tmp_path):
    pairs = make_pairs(12)
    start, trained = None, {}
    for label, flags in (("plain", {}), ("fast", {"shared_prompt": True, "precompute_reference": True})):
        trainer = make_trainer(assets, tokenizer, tmp_path, pairs, max_steps=3, learning_rate=1e-2, **flags)
        start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
        trainer.train()
        trained[label] = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
        history = [h for h in trainer.state.log_history if "loss" in h]
        assert len(history) == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert all(not torch.equal(trained["plain"][n], start[n]) for n in start)  # every LoRA matrix trained
    for name, value in trained["plain"].items():
        torch.testing.assert_close(trained["fast"][name], value, atol=1e-4, rtol=1e-3)


def test_reference_cache_rebuilds_the_reference_distributions(assets, tokenizer, tmp_path):
    pairs = make_pairs(5)
    live = make_trainer(assets, tokenizer, tmp_path, pairs, shared_prompt=True)
    batch = first_batch(live)
    with torch.no_grad():
        expected = live.reference_scores(batch)  # a forward of the live reference
    cache = live.precompute_reference(live.train_dataset)
    assert isinstance(cache, ReferenceCache) and len(cache) == len(pairs)
    live.reference_cache = cache
    got = live.reference_scores(batch)
    torch.testing.assert_close(got.token_logps, expected.token_logps, atol=ATOL, rtol=0)
    real = expected.mask[:expected.chosen_logprobs.size(0)]
    torch.testing.assert_close(got.chosen_logprobs[real], expected.chosen_logprobs[real], atol=ATOL, rtol=0)


def test_cache_miss_is_a_clear_error(assets, tokenizer, tmp_path):
    fast = make_trainer(assets, tokenizer, tmp_path, make_pairs(3), precompute_reference=True)
    other = make_trainer(assets, tokenizer, tmp_path, make_pairs(6, separable=True))
    with pytest.raises(KeyError, match="not precomputed"):
        fast.reference_scores(first_batch(other))


def test_precompute_refuses_a_trained_lm_head(assets, tokenizer, tmp_path):
    policy, ref = load_policy_and_reference(assets["base"], assets["adapter"])
    policy.get_output_embeddings().weight.requires_grad_(True)
    with pytest.raises(ValueError, match="LM head"):
        DPOKLTrainer(policy, ref, dpo_args(tmp_path, precompute_reference=True), train_dataset=make_pairs(2),
                     processing_class=tokenizer)


def test_attention_without_custom_masks_falls_back_to_two_rows(assets, tokenizer, tmp_path, caplog):
    policy, ref = load_policy_and_reference(assets["base"], assets["adapter"])
    policy.config._attn_implementation = "flash_attention_2"  # never run here: only the construction-time choice
    with caplog.at_level("WARNING", logger="coea.dpo"):
        trainer = DPOKLTrainer(policy, ref, dpo_args(tmp_path, shared_prompt=True), train_dataset=make_pairs(2),
                               processing_class=tokenizer)
    assert not trainer.use_packing
    assert "two-row forward" in caplog.text

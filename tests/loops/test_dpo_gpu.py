"""GPU checks of the fast DPO + KL path and of DeepSpeed ZeRO-2 (marked ``gpu``: skipped with a reason without CUDA).

On CPU, tests/loops/test_dpo_fast.py shows the fast path equal to the plain one in float32; here the same holds in
bf16 on a GPU (to bf16 tolerance), and one round of run_dpo trains under configs/deepspeed/zero2.json.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from coea.config import LoraConfig as CoeaLoraConfig
from coea.config import PcoConfig
from loops.dpo import DPOKLTrainer, load_policy_and_reference, run_dpo
from tests.loops.test_dpo import assets, dpo_args, first_batch, make_pairs, tokenizer  # noqa: F401 (fixtures)

pytestmark = pytest.mark.gpu
ZERO2 = Path(__file__).resolve().parents[2] / "configs" / "deepspeed" / "zero2.json"


def _trainer(assets, tokenizer, tmp_path, **flags):
    policy, ref = load_policy_and_reference(assets["base"], assets["adapter"], anchor_adapter=assets["round0"],
                                            dtype="bfloat16", attn_implementation="sdpa")
    args = dpo_args(tmp_path / str(sorted(flags.items())), use_cpu=False, bf16=True, **flags)
    return DPOKLTrainer(policy, ref, args, train_dataset=make_pairs(8), processing_class=tokenizer)


def test_fast_path_equals_plain_in_bf16_on_cuda(assets, tokenizer, tmp_path):
    plain = _trainer(assets, tokenizer, tmp_path)
    fast = _trainer(assets, tokenizer, tmp_path, shared_prompt=True, precompute_reference=True)
    assert fast.model.device.type == "cuda" and fast.use_packing and fast.ref_model is None
    batch = plain._prepare_inputs(first_batch(plain))
    losses = []
    for trainer in (plain, fast):
        trainer.model.eval()
        with torch.no_grad(), trainer.compute_loss_context_manager():
            losses.append(float(trainer.compute_loss(trainer.model, batch)))
    assert losses[1] == pytest.approx(losses[0], rel=2e-2, abs=2e-3)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed: not installed (extra [deepspeed])")
def test_run_dpo_under_deepspeed_zero2(assets, tokenizer, tmp_path, monkeypatch):
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0", "LOCAL_RANK": "0",
                       "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, os.environ.get(key, value))
    cfg = PcoConfig(per_device_batch_size=2, gradient_accumulation_steps=1, lr=1e-3)
    result = run_dpo(cfg, CoeaLoraConfig(), assets["base"], assets["adapter"], None, assets["tokenizer"],
                     make_pairs(8), tmp_path / "pco", deepspeed=str(ZERO2), max_steps=2)
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    assert result.metrics["steps"] == 2 and torch.isfinite(torch.tensor(result.metrics["train_loss"]))

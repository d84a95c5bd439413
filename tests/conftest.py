"""Shared fixtures. Tests build tiny models and data; nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
ML100K = REPO.parent / "shared" / "data" / "ml-100k"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--runslow"):
        skip = pytest.mark.skip(reason="slow: pass --runslow to run")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)
    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(reason="gpu: CUDA is not available on this machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    if not (ML100K / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {ML100K}")
    return ML100K


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("scale")`` imports ``benchmarks/scale.py`` (the benchmarks are scripts, not a package).

    The module is registered in ``sys.modules`` under ``bench_<name>`` before it runs: dataclasses resolve their
    annotations through it."""
    import importlib.util
    import sys

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    return load


# A tiny demo world and tiny models: one bootstrap + cycle takes seconds on one core.
TINY = [
    "synthetic.n_users=80", "synthetic.n_groups=3", "synthetic.n_categories=8", "synthetic.items_per_category=5",
    "synthetic.n_days=16", "synthetic.categories_per_group=2",
    "data.tau=2", "data.short_k=3", "data.max_long_len=30", "data.bootstrap_fraction=0.6",
    "encoder.d_model=16", "encoder.n_layers=1", "encoder.n_heads=2", "encoder.epochs=1",
    "quantizer.levels=2", "quantizer.codebook_size=4", "quantizer.code_dim=8", "quantizer.epochs=3",
    "quantizer.max_groups=6",
    "backbone.hidden_size=32", "backbone.num_layers=1", "backbone.num_heads=2", "backbone.intermediate_size=64",
    "novelty.sft_epochs=1", "novelty.max_train_examples=120", "novelty.per_device_batch_size=16",
    "relevance.epochs=1", "relevance.max_train_pairs=120", "relevance.per_device_batch_size=16",
    "pco.sample_fraction=0.5", "pco.per_device_batch_size=8", "pco.gradient_accumulation_steps=1",
    "cycle.replay_days=2", "tracking.backend=local", "run.num_threads=1",
]


@pytest.fixture(scope="session")
def tiny_cfg():
    from coea.config import load_config

    return load_config(REPO / "configs" / "demo.yaml", TINY)

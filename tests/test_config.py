"""Configs load, validate and fail with one line naming the key (exit status 2 from the CLI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from coea.config import Config, ConfigError, explain, load_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_file_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_paper_settings_in_ml_1m():
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "ml-1m.yaml")
    assert (cfg.data.tau, cfg.encoder.d_model, cfg.encoder.n_layers, cfg.encoder.n_heads) == (5, 128, 4, 4)
    assert (cfg.quantizer.levels, cfg.quantizer.codebook_size, cfg.quantizer.max_groups) == (4, 16, 50)
    assert cfg.profile.k_representatives == 8
    assert (cfg.lora.r, cfg.pco.lr, cfg.pco.per_device_batch_size, cfg.pco.gradient_accumulation_steps) == (
        8, 5e-6, 2, 8)
    assert (cfg.novelty.sft_lr, cfg.novelty.per_device_batch_size, cfg.novelty.gradient_accumulation_steps) == (
        1e-4, 2, 2)


def test_overrides_apply_with_types():
    cfg = load_config(None, ["encoder.d_model=64", "tracking.backend=none", "quantizer.kmeans_init=false"])
    assert cfg.encoder.d_model == 64 and cfg.tracking.backend == "none" and cfg.quantizer.kmeans_init is False


@pytest.mark.parametrize("override, needle", [
    (["encoder.bogus=1"], "encoder.bogus: unknown key"),
    (["nosuch.x=1"], "nosuch: unknown key"),
    (["data.tau=zero"], "data.tau: expected an integer"),
    (["data.tau=0"], "data.tau: must be >= 1"),
    (["data.source=csv"], "data.source: must be one of"),
    (["pco.sample_fraction=2"], "pco.sample_fraction: must be <= 1.0"),
    (["encoder.n_heads=3"], "encoder.n_heads: must divide"),
    (["data.source=movielens-100k"], "data.path: required"),
    (["quantizer.kmeans_init=maybe"], "quantizer.kmeans_init: expected true or false"),
    (["quantizer.merge_search=nearest"], "quantizer.merge_search: must be one of"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["run.seed=7", "encoder.d_model=32"])
    cfg.save(tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again.fingerprint() == cfg.fingerprint()


def test_every_field_is_documented():
    lines = explain()
    assert lines and all(line.split(": ", 1)[1].strip() for line in lines)


def test_cli_config_error_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "coea.cli", "config", "--config", "configs/demo.yaml", "--set", "data.tau=-3"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "data.tau" in proc.stderr


def test_deepspeed_zero2_has_paper_settings():
    import json

    ds = json.loads((Path(__file__).resolve().parent.parent / "configs" / "deepspeed" / "zero2.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["allgather_bucket_size"] == ds["zero_optimization"]["reduce_bucket_size"] == 5e8
    assert ds["zero_optimization"]["overlap_comm"] and ds["zero_optimization"]["contiguous_gradients"]
    assert (ds["fp16"]["initial_scale_power"], ds["fp16"]["loss_scale_window"], ds["fp16"]["min_loss_scale"]) == (
        16, 1000, 1)
    assert ds["bf16"]["enabled"] == "auto"


def test_cycle_under_a_launcher_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from coea.cli import main

    monkeypatch.setenv("WORLD_SIZE", "8")  # `accelerate launch ... coea cycle`: eight orchestrators
    code = main(["cycle", "--config", str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"), "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "WORLD_SIZE=8" in err and "cycle.num_processes" in err
    assert not (tmp_path / "w").exists()  # refused before touching the workdir

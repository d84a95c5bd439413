"""benchmarks/gpu.py on CPU (``--smoke``): every measurement runs, prints its JSON line, and the losses agree.

The GPU figures themselves are measured on a GPU (docs/gpu.md); this checks the code path that produces them.
"""

from __future__ import annotations

import json

import pytest



@pytest.fixture(scope="module")
def gpu_bench(load_benchmark):
    return load_benchmark("gpu")


def test_smoke_run_prints_every_measurement(gpu_bench, tmp_path, capsys):
    out = tmp_path / "gpu.jsonl"
    gpu_bench.main(["--smoke", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert printed == rows  # stdout is the JSON lines alone
    by = {(r["benchmark"], r.get("method")): r for r in rows}
    assert by[("machine", None)]["command"].startswith("python benchmarks/gpu.py --smoke")
    for method in ("trl_dpo", "dpo_kl", "dpo_kl_fast"):
        row = by[("dpo", method)]
        assert row["pairs_per_s"] > 0 and row["step_s"] > 0 and row["x_vs_trl"] > 0
    fast = by[("dpo", "dpo_kl_fast")]
    assert fast["precompute_s"] > 0 and fast["steady_pairs_per_s"] >= fast["pairs_per_s"]
    # alpha 0: coea's loss is trl's; alpha 0.4: the fast path's loss is the plain path's
    assert by[("dpo", "dpo_kl")]["loss_abs_diff"] < 1e-5 and fast["loss_abs_diff"] < 1e-5
    score, generate = by[("candidates", "rank_categories")], by[("candidates", "hf_generate_sample")]
    assert score["keys_per_s"] > 0 and generate["x_vs_hf_generate"] == 1.0
    assert score["mfu"] is None  # no peak figure on a CPU


def test_refuses_unknown_shape_and_missing_cuda(gpu_bench, capsys):
    with pytest.raises(SystemExit) as err:
        gpu_bench.parse_args(["--shapes", "qwen9-huge", "--device", "cpu"])
    assert err.value.code == 2 and "qwen9-huge" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_bench.parse_args(["--device", "cuda"])

"""benchmarks/judge.py runs end to end at a toy size and reports a positive throughput per template."""

from __future__ import annotations

import json


def test_judge_benchmark_smoke(load_benchmark, tmp_path):
    bench = load_benchmark("judge")
    out = tmp_path / "judge.json"
    lines = bench.main(["--shapes", "embedded", "--items", "embedded=2", "--batch-size", "2", "--reasoning-tokens",
                        "2", "--templates", "base,ltm", "--out", str(out)])
    assert [x["template"] for x in lines] == ["base", "ltm"]
    assert all(x["items_timed"] == 2 and x["items_per_s"] > 0 and x["prompt_tokens_mean"] > 100 for x in lines)
    saved = json.loads(out.read_text())
    assert saved["rows"] == lines and saved["commit"] and "load_avg_end" in saved

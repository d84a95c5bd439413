"""benchmarks/scale.py's arithmetic: growth exponents, the power-law fit the plan extrapolates with, FLOP counts."""

from __future__ import annotations

import math

import pytest



@pytest.fixture(scope="module")
def scale(load_benchmark):
    return load_benchmark("scale")


def test_exponent_is_the_log_log_slope(scale):
    assert scale.fit_exponent([(10, 3.0), (100, 30.0), (1000, 300.0)]) == pytest.approx(1.0)
    assert scale.fit_exponent([(10, 1.0), (100, 100.0)]) == pytest.approx(2.0)
    assert scale.fit_exponent([(10, 5.0)]) is None  # one size: no slope
    a, b = scale.power_fit([(1e4, 2e3), (1e5, 1e4), (1e6, 5e4)])  # keys = 2e3 * (users / 1e4)^0.699
    assert b == pytest.approx(math.log10(5), abs=1e-3)
    assert a * 1e6 ** b == pytest.approx(5e4, rel=1e-6)


def test_body_params_match_the_qwen_shapes(scale):
    # Qwen2.5-0.5B has 494M parameters, 136M of them the tied embedding; 7B has 7.6B, 1.09B of them embeddings
    assert scale.body_params(*scale.QWEN["0.5B"][:5]) == pytest.approx(358e6, rel=0.01)
    assert scale.body_params(*scale.QWEN["7B"][:5]) == pytest.approx(6.53e9, rel=0.01)


def test_scoring_flops_count_the_prompt_once_and_every_fed_completion_token(scale):
    shape = (8, 16, 1, 2, 2, 100)  # hidden 8, MLP 16, 1 layer: body = 2*64 + 2*64 + 3*128 = 640
    assert scale.body_params(*shape[:5]) == 640
    # 10 prompt tokens + 3 categories x (3 - 1) fed tokens = 16 tokens; LM head on 1 + 6 positions
    assert scale.scoring_flops(shape, 10, 3, 3) == 2 * 640 * 16 + 2 * 8 * 100 * 7


def test_full_size_grows_the_largest_point_by_the_slope_at_the_top(scale):
    # a fixed 40 s start-up plus 1 ms/user: the all-sizes slope is flattened by the start-up, the top one is not
    pts = [(n, 40.0 + 1e-3 * n) for n in (10_000, 100_000, 1_000_000)]
    step = scale.top_step(pts)
    local = math.log(1040.0 / 140.0) / math.log(10)
    assert step["exponent_top"] == pytest.approx(local, abs=1e-3)
    assert step["exponent_all_sizes"] < step["exponent_top"]
    assert step["full_size_s_2_cores"] == pytest.approx(1040.0 * (scale.MTREC_USERS / 1e6) ** local, rel=1e-3)
    # a stage on a fixed sample does not get cheaper with users: the slope is floored at 0
    assert scale.top_step([(1e5, 65.0), (1e6, 61.0)])["full_size_s_2_cores"] == 61.0
    assert scale.top_step([(1e6, 61.0)]) is None

"""The judge templates render (the 10 shots, CoT's steps, LtM's three sub-prompts) and answers parse strictly."""

from __future__ import annotations

from pathlib import Path

import pytest

from coea.judge_prompts import (
    ASPECTS,
    TEMPLATES,
    calls,
    load_shots,
    parse_scores,
    parse_templates,
    render_judge_sample,
    shot_balance,
)

SHOTS = Path(__file__).parent / "shots.jsonl"
HISTORY = ["Jazz", "Hiking"]


def test_shots_file_has_two_per_score():
    shots = load_shots(SHOTS)
    assert len(shots) == 10 and shot_balance(shots) == {1: 2, 2: 2, 3: 2, 4: 2, 5: 2}
    assert shots[0].steps["relevance"] == ("same family", 5)


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_renders_the_ten_shots_and_the_case(template):
    shots = load_shots(SHOTS)
    cs = calls(template, HISTORY, "Astronomy", shots)
    first = cs[0].prompt
    for i in range(1, 11):
        assert f"Example {i}\n" in first
    assert "Example 11" not in first
    assert "User history: Jazz, Hiking\nRecommended category: Astronomy" in first
    assert cs[-1].aspects[-1] == "serendipity"
    if template in ("base", "ls"):
        assert len(cs) == 1 and "Serendipity score: 5" in first and "Relevance" not in first
        assert ("strongly agree" in first) == (template == "ls")


def test_cot_has_three_steps_and_shot_steps():
    (c,) = calls("cot", HISTORY, "Astronomy", load_shots(SHOTS))
    assert c.aspects == ASPECTS and c.reasoning
    for i, step in enumerate(("Relevance", "Unexpectedness", "Serendipity")):
        assert f"Step {i + 1}. {step}:" in c.prompt
        assert f"{step} score: <1-5>" in c.prompt
    # the shot with steps shows them; the others only their final score
    assert "Relevance: same family\nRelevance score: 5\nUnexpectedness: expected\nUnexpectedness score: 1" in c.prompt
    assert "Serendipity: a pleasant surprise\nSerendipity score: 5" in c.prompt


def test_ltm_is_three_chained_subprompts():
    cs = calls("ltm", HISTORY, "Astronomy", load_shots(SHOTS))
    assert [c.aspects for c in cs] == [(a,) for a in ASPECTS]
    assert [c.prompt.count("Question") for c in cs] == [1, 1, 1]
    assert "Example 10" in cs[0].prompt and "Example" not in cs[1].prompt  # the shots travel in the conversation
    assert cs[2].prompt.startswith("Question 3 of 3. Serendipity")


def test_zero_shot_and_sample_rendering():
    assert "Example" not in calls("base", HISTORY, "X")[0].prompt
    text = render_judge_sample(HISTORY, "X")
    assert text.count("## judge/") == 6 and "sub-prompt 3 of 3" in text


@pytest.mark.parametrize("text,aspects,expected", [
    ("Serendipity score: 4", ("serendipity",), {"serendipity": 4}),
    ("**Serendipity score:** 5/5", ("serendipity",), {"serendipity": 5}),
    ("Score: 2", ("serendipity",), {"serendipity": 2}),
    ("3", ("serendipity",), {"serendipity": 3}),
    ("Serendipity score: 2\nOn reflection:\nSerendipity score: 3", ("serendipity",), {"serendipity": 3}),
    ("Relevance: fits\nRelevance score: 4\nUnexpectedness: yes\nUnexpectedness score: 5\nSerendipity score = 4",
     ASPECTS, {"relevance": 4, "unexpectedness": 5, "serendipity": 4}),
    ("Relevance score: 4\nSerendipity score: 4", ASPECTS, {"relevance": 4, "unexpectedness": None, "serendipity": 4}),
    ("I think it is quite serendipitous.", ("serendipity",), {"serendipity": None}),
    ("Serendipity score: 7", ("serendipity",), {"serendipity": None}),
    ("Serendipity score: 3.5", ("serendipity",), {"serendipity": None}),
    ("Score: 4", ASPECTS, {"relevance": None, "unexpectedness": None, "serendipity": None}),
    ("", ("serendipity",), {"serendipity": None}),
])
def test_parse_scores(text, aspects, expected):
    assert parse_scores(text, aspects) == expected


def test_bad_shots_and_templates_are_named(tmp_path):
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"history": ["A"], "item": "B", "score": 6}\n')
    with pytest.raises(ValueError, match=r"s.jsonl:1: score must be an integer from 1 to 5"):
        load_shots(bad)
    bad.write_text("{oops\n")
    with pytest.raises(ValueError, match="s.jsonl:1: not JSON"):
        load_shots(bad)
    assert parse_templates("cot, base,cot") == ["cot", "base"]
    with pytest.raises(ValueError, match="unknown"):
        parse_templates("base,fancy")


def test_coea_prompts_renders_the_judge_templates():
    from coea.config import load_config
    from coea.prompts import render_sample

    cfg = load_config(Path(__file__).parents[2] / "configs" / "demo.yaml", ["synthetic.n_users=60", "synthetic.n_days=10"])
    text = render_sample(cfg)
    for t in TEMPLATES:
        assert f"## judge/{t}" in text
    assert "Relevance score: <1-5>" in text and "Question 3 of 3" in text

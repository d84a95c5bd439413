"""The prompt module: the inference prompt is a function of exactly the KV key's inputs, training matches it."""

from __future__ import annotations

from coea.config import load_config
from coea.prompts import completion_text, novelty_infer_prompt, novelty_train_example, relevance_prompt
from storage.keys import canonical_recent, kv_key


def test_users_sharing_a_key_share_the_novelty_prompt():
    p = load_config(None, []).prompts
    a, b = ["Opera", "Jazz", "Jazz"], ["Jazz", "Opera"]  # different order and duplicates, one key
    assert kv_key("1-2", a) == kv_key("1-2", b)
    assert novelty_infer_prompt(p, "D", canonical_recent(a)) == novelty_infer_prompt(p, "D", canonical_recent(b))
    assert novelty_infer_prompt(p, "D", ("Jazz",)) != novelty_infer_prompt(p, "D", ("Jazz", "Opera"))


def test_training_renders_recent_categories_as_inference_does():
    """P_ft-nov's S_short(t-2:t-1) and P_infer-nov's C'_short render the same text for the same two categories."""
    p = load_config(None, []).prompts
    train = novelty_train_example(p, "D", ["Opera", "Jazz"], "Chess")["prompt"]
    infer = novelty_infer_prompt(p, "D", canonical_recent(["Opera", "Jazz"]))
    line = "Recent categories: Jazz, Opera"
    assert line in train and line in infer
    assert completion_text("Chess") == " Chess"


def test_empty_recent_and_relevance_prompt():
    p = load_config(None, []).prompts
    assert "Recent categories: none" in novelty_infer_prompt(p, "D", ())
    text = relevance_prompt(p, "likes music", ["Jazz"], "Opera")
    assert text.startswith("Group portrait: likes music") and text.endswith("Candidate category: Opera")


def test_render_sample_shows_a_novel_training_step(tiny_cfg):
    from coea.prompts import render_sample

    text = render_sample(tiny_cfg)
    for header in ("## P_ft-nov", "## P_infer-nov", "## P_ft-rel / P_infer-rel", "# KV key"):
        assert header in text
    train = text.split("## P_ft-nov (prompt + completion)\n", 1)[1].split("\n## ", 1)[0]
    recent = train.split("Recent categories: ", 1)[1].split("\n", 1)[0].split(", ")
    target = train.rsplit("Next category: ", 1)[1]
    assert target not in recent

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


def test_relevance_training_renders_the_canonical_state_not_the_click_order():
    """The issue's case: clicks Zeta then Alpha train on "Alpha, Zeta", the text inference renders for that state."""
    from loops.reward import relevance_pairs

    cfg = load_config(None, ["data.short_k=2"])
    clicks = {"u": [(10, "Zeta"), (20, "Alpha"), (30, "Alpha"), (40, "Beta")]}
    pairs = relevance_pairs(cfg, clicks, {}, {"u": "D"}, ["Alpha", "Beta", "Gamma", "Zeta"], ["u"], seed=0)
    assert [p["chosen"].split("Recent categories: ")[1].split("\n")[0] for p in pairs] == ["Alpha, Zeta", "Alpha"]
    infer = relevance_prompt(cfg.prompts, "D", canonical_recent(["Zeta", "Alpha"]), "Alpha")
    assert pairs[0]["chosen"] == infer


def _window_users(inter, cutoff):
    """Users whose first click at or after ``cutoff`` is strictly later than their clicks before it (clean state)."""
    from coea.data.sequences import click_categories_by_user

    out = {}
    for u, seq in click_categories_by_user(inter, start=cutoff).items():
        before = click_categories_by_user(inter, end=cutoff).get(u, [])
        if len(before) >= 2 and seq[0][0] > before[-1][0]:
            out[u] = seq[0]
    return out


def test_one_user_state_renders_one_prompt_in_training_and_inference(tiny_cfg, tmp_path, monkeypatch):
    """Relevance: the pair relevance_pairs trains on for a click and the text propose_and_score scores for the same
    user state (sequences at a cut-off just before the click, as the cycle builds them) are one string. Novelty: the
    SFT prompt and the inference / DPO prompt render the same recent line for that state."""
    import coea.inference
    from coea.backbones import build_embedded_backbone, load_causal_lm, load_reward_model, load_tokenizer
    from coea.data.loaders import load_interactions
    from coea.data.sequences import build_sequences, click_categories_by_user
    from coea.inference import Models, propose_and_score, user_keys
    from coea.prompts import recent_at
    from loops.reward import relevance_pairs

    cfg = tiny_cfg
    inter = load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)
    start, end = int(inter.events["timestamp"].min()), int(inter.events["timestamp"].max())
    cutoff = start + (end - start) // 2
    first = _window_users(inter, cutoff)
    assert len(first) >= 5
    portraits = {"default": "a portrait"}
    pairs = relevance_pairs(cfg, click_categories_by_user(inter, start=cutoff),
                            {}, {u: "a portrait" for u in first}, inter.categories, sorted(first),
                            history=click_categories_by_user(inter, end=cutoff), seed=0)
    trained = {}
    for p in pairs:  # the first pair of each user is its first window click
        trained.setdefault(p["user_id"], p["chosen"])

    seqs = build_sequences(inter, cfg.data, cutoff=cutoff)
    keys = user_keys(seqs, {})  # every user in the default group: the portrait is the same one
    model_dir, tok_dir = build_embedded_backbone(cfg, [" ".join(inter.categories), cfg.prompts.relevance,
                                                       cfg.prompts.novelty_infer, "a portrait none"], tmp_path)
    from peft import get_peft_model

    from coea.backbones import lora_config

    tok = load_tokenizer(tok_dir)
    models = Models(novelty=get_peft_model(load_causal_lm(model_dir, cfg), lora_config(cfg.lora, "CAUSAL_LM")),
                    relevance=load_reward_model(model_dir, cfg, pad_token_id=tok.pad_token_id), tokenizer=tok)
    scored: list[str] = []
    real_score = coea.inference.score

    def spy(model, tokenizer, texts, *args, **kwargs):
        scored.extend(texts)
        return real_score(model, tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(coea.inference, "score", spy)  # the name inference calls
    cfg_all = load_config(None, [f"novelty.num_candidates={len(inter.categories)}", "novelty.exclude_recent=false",
                                 f"data.short_k={cfg.data.short_k}"])
    users = sorted(first)
    rows = propose_and_score(cfg_all, models, [keys[u] for u in users], portraits, inter.categories)
    clicks = click_categories_by_user(inter)
    for u, row in zip(users, rows):
        _, clicked = first[u]
        assert clicked in row["candidates"]
        text = trained[u]
        assert text in scored, f"{u}: training text never scored at inference"
        # Novelty: SFT's prompt for that click and the inference prompt share the recent line.
        cats = [c for _, c in clicks[u]]
        t = len(click_categories_by_user(inter, end=cutoff)[u])
        assert recent_at(cats, t, cfg.data.short_k) == keys[u].recent
        sft = novelty_train_example(cfg.prompts, "a portrait", recent_at(cats, t, cfg.data.short_k), clicked)
        line = sft["prompt"].split("\n")[1]
        assert line in novelty_infer_prompt(cfg.prompts, "a portrait", keys[u].recent).split("\n")

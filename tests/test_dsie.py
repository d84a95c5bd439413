"""run_dsie end to end on a tiny hand-built world; later-round assignment; rerun safety."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from coea.config import Config
from coea.data.schema import Interactions, Sequences
from coea.dsie import assign_csids, figure3, group_size_stats, intra_inter_similarity, load_dsie, run_dsie
from coea.workdir import InjectedFault

N_GROUPS, PER_GROUP, N_COLD, N_CATS, ITEMS_PER_CAT = 4, 15, 3, 12, 3


def tiny_world(seed: int = 0) -> tuple[Interactions, Sequences]:
    """4 latent groups with 3 core categories each (90% of clicks); 3 cold-start users at the end."""
    rng = np.random.default_rng(seed)
    cats = [f"Cat{c:02d}" for c in range(N_CATS)]
    items = pd.DataFrame({"item_id": [f"i{c}_{j}" for c in range(N_CATS) for j in range(ITEMS_PER_CAT)],
                          "category": [cats[c] for c in range(N_CATS) for _ in range(ITEMS_PER_CAT)], "title": ""})
    vocab = list(items["item_id"])
    n_warm = N_GROUPS * PER_GROUP
    user_ids = [f"u{u:03d}" for u in range(n_warm + N_COLD)]
    long_items, groups = [], []
    for u in range(n_warm):
        g = u % N_GROUPS
        core = [3 * g, 3 * g + 1, 3 * g + 2]
        seq = []
        for _ in range(int(rng.integers(10, 18))):
            c = int(rng.choice(core)) if rng.random() < 0.9 else int(rng.integers(N_CATS))
            seq.append(1 + c * ITEMS_PER_CAT + int(rng.integers(ITEMS_PER_CAT)))
        long_items.append(seq)
        groups.append(g)
    long_items += [[] for _ in range(N_COLD)]
    features = np.array([[1 + u % N_GROUPS] for u in range(n_warm)] + [[0]] * N_COLD, dtype=np.int64)
    events = pd.DataFrame([{"user_id": user_ids[u], "item_id": vocab[i - 1], "timestamp": t, "event": "click",
                            "rating": np.nan} for u, seq in enumerate(long_items) for t, i in enumerate(seq)])
    inter = Interactions(
        events=events, items=items, users=pd.DataFrame({"user_id": user_ids, "f0": "x"}), categories=cats,
        ground_truth=pd.DataFrame({"user_id": user_ids[:n_warm], "latent_group": groups,
                                   "latent_interests": [[] for _ in range(n_warm)]}),
    )
    seqs = Sequences(user_ids=user_ids, item_vocab=vocab, long_items=long_items,
                     short_categories=[[] for _ in user_ids], c_short=[() for _ in user_ids], features=features,
                     feature_cardinalities=[N_GROUPS + 1], cutoff=10**9)
    return inter, seqs


def tiny_config() -> Config:
    cfg = Config()
    cfg.run.device = "cpu"
    cfg.data.max_long_len = 20
    e = cfg.encoder
    e.d_model, e.n_layers, e.n_heads, e.dropout, e.epochs, e.batch_size, e.lr = 16, 1, 2, 0.0, 8, 16, 1e-2
    q = cfg.quantizer
    q.levels, q.codebook_size, q.code_dim, q.hidden_dim, q.max_groups = 2, 4, 8, 32, 6
    q.epochs, q.batch_size, q.lr = 30, 32, 3e-3
    cfg.profile.k_representatives, cfg.profile.top_categories = 4, 3
    return cfg


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    inter, seqs = tiny_world()
    cfg = tiny_config()
    round_path = tmp_path_factory.mktemp("work") / "rounds" / "000"
    return cfg, round_path, inter, seqs, run_dsie(cfg, round_path, inter, seqs)


def test_every_user_has_a_csid_and_cold_users_are_default(finished):
    cfg, round_path, inter, seqs, res = finished
    users = pd.read_parquet(round_path / "dsie" / "users.parquet")
    assert list(users.columns) == ["user_id", "csid"] and list(users["user_id"]) == seqs.user_ids
    assert (users["csid"].iloc[-N_COLD:] == "default").all()
    warm = users["csid"].iloc[:-N_COLD]
    assert (warm != "default").all() and warm.str.fullmatch(r"\d+-\d+").all()
    assert 1 < warm.nunique() <= cfg.quantizer.max_groups == 6
    assert res.n_groups == warm.nunique() and res.n_cold == N_COLD


def test_groups_file_and_artifacts(finished):
    cfg, round_path, inter, seqs, res = finished
    out = round_path / "dsie"
    for name in ("encoder.pt", "rqvae.pt", "csid_map.json", "u_long.npy", "report.json", "manifest.json",
                 "config.yaml", "portrait_cache.json", "checkpoints/last.ckpt", "checkpoints/rqvae/last.ckpt"):
        assert (out / name).exists(), name
    assert not (round_path / ".dsie.tmp").exists()
    groups = [json.loads(line) for line in (out / "groups.jsonl").read_text().splitlines()]
    users = pd.read_parquet(out / "users.parquet")
    assert {g["csid"] for g in groups} == set(users["csid"]) | {"default"}
    sizes = {g["csid"]: g["size"] for g in groups}
    assert sizes == users["csid"].value_counts().to_dict()
    for g in groups:
        assert set(g) == {"csid", "size", "portrait", "representatives", "top_categories"} and g["portrait"]
        member_ids = set(users.loc[users["csid"] == g["csid"], "user_id"])
        assert set(g["representatives"]) <= member_ids
        assert len(g["representatives"]) == (0 if g["csid"] == "default" else min(4, g["size"]))
    assert np.load(out / "u_long.npy").shape == (len(seqs.user_ids), 16)


def test_report_fields_and_figure3_intra_above_inter(finished):
    report = finished[4].report
    assert set(report) >= {"code_utilisation", "group_sizes", "reconstruction_error", "figure3", "ground_truth",
                           "wall_time_s", "encoder"}
    assert len(report["code_utilisation"]) == 2 and report["code_utilisation"][0]["used"] > 1
    history = report["rqvae_history"]  # per epoch, from the Lightning module
    assert len(history) == 30 and [h["total"] for h in history] == report["epoch_losses"]
    assert all(len(h["code_usage"]) == 2 and h["commitment"] >= 0 for h in history)
    assert report["group_sizes"]["count"] == report["n_groups"] and report["group_sizes"]["min"] >= 1
    assert set(report["wall_time_s"]) == {"encoder", "embed", "rqvae", "csid", "portraits"}
    assert report["encoder"]["epoch_losses"][-1] < report["encoder"]["epoch_losses"][0]
    fig3 = report["figure3"]
    assert fig3["cosine"] == "centred" and fig3["intra"] > fig3["inter"] + 0.3
    assert fig3["raw"]["intra"] > fig3["raw"]["inter"]
    assert report["ground_truth"]["purity"] > 0.9 and 0 <= report["ground_truth"]["nmi"] <= 1


def test_rerun_is_safe_and_later_rounds_assign_with_the_saved_map(finished):
    cfg, round_path, inter, seqs, res = finished
    again = run_dsie(cfg, round_path, inter, seqs)  # finished stage: read back, not recomputed
    assert again.report == json.loads((round_path / "dsie" / "report.json").read_text())
    art = load_dsie(round_path / "dsie")
    mapping = assign_csids(art, seqs)
    users = pd.read_parquet(round_path / "dsie" / "users.parquet")
    assert mapping == dict(zip(users["user_id"], users["csid"]))
    assert set(art.portraits) == set(users["csid"]) | {"default"}


def test_crash_before_commit_leaves_no_stage_and_rerun_finishes(tmp_path, monkeypatch):
    inter, seqs = tiny_world(seed=1)
    cfg = tiny_config()
    cfg.encoder.epochs, cfg.quantizer.epochs = 1, 2
    round_path = tmp_path / "rounds" / "001"
    monkeypatch.setenv("COEA_FAULT", "dsie:before_commit")
    with pytest.raises(InjectedFault):
        run_dsie(cfg, round_path, inter, seqs)
    assert not (round_path / "dsie").exists() and (round_path / ".dsie.tmp").exists()
    monkeypatch.delenv("COEA_FAULT")
    res = run_dsie(cfg, round_path, inter, seqs)
    assert (round_path / "dsie" / "users.parquet").exists() and not (round_path / ".dsie.tmp").exists()
    assert res.n_users == len(seqs.user_ids)


def test_report_helpers_by_hand():
    assert group_size_stats([1, 3, 5])["median"] == 3.0
    emb = np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])
    fig3 = intra_inter_similarity(emb, ["a", "a", "b", "b"])
    assert fig3["intra"] == pytest.approx(1.0) and fig3["inter"] == pytest.approx(0.0)


def test_figure3_centres_before_cosine():
    """Two groups on top of a large shared offset: raw cosine is ~1 everywhere; centred it is +1 within, -1 across."""
    emb = np.array([[1.0, 0], [1.0, 0], [-1.0, 0], [-1.0, 0]]) + np.array([0, 100.0])
    fig3 = figure3(emb, ["a", "a", "b", "b"])
    assert fig3["raw"]["intra"] == pytest.approx(1.0) and fig3["raw"]["inter"] > 0.99
    assert fig3["intra"] == pytest.approx(1.0) and fig3["inter"] == pytest.approx(-1.0)


def test_merge_search_setting_reaches_the_merge_rule(tmp_path, monkeypatch):
    import coea.dsie as dsie_mod

    seen = []
    real = dsie_mod.build_csid_map

    def spy(*args, **kwargs):
        seen.append(kwargs.get("search"))
        return real(*args, **kwargs)

    monkeypatch.setattr(dsie_mod, "build_csid_map", spy)
    inter, seqs = tiny_world(seed=2)
    cfg = tiny_config()
    cfg.encoder.epochs, cfg.quantizer.epochs, cfg.quantizer.merge_search = 1, 2, "prefix"
    res = run_dsie(cfg, tmp_path / "rounds" / "000", inter, seqs)
    assert seen == ["prefix"] and 1 < res.n_groups <= cfg.quantizer.max_groups

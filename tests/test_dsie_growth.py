"""A DSIE that is not refreshed keeps working as the catalogue grows: new items get encoder rows (their
category's mean), a user's CSID stays put unless their history changed, a shifted vocabulary is refused."""

from __future__ import annotations

import copy
import datetime as dt

import numpy as np
import pandas as pd
import pytest
import torch

from coea.data.partitions import DAY, EPOCH, write_day, write_interactions, write_table
from coea.data.synthetic import generate_world
from coea.dsie import assign_csids, load_dsie, run_dsie
from coea.encoder import grow_item_embeddings
from coea.round_data import load_round
from coea.rounds import previous_csids, round_dir



@pytest.fixture(scope="module")
def grown(tmp_path_factory, tiny_cfg):
    root = tmp_path_factory.mktemp("growth")
    cfg = copy.deepcopy(tiny_cfg)
    cfg.data.source, cfg.data.path, cfg.data.bootstrap_fraction = "parquet", str(root / "log"), 1.0
    world = generate_world(cfg.synthetic, cfg.run.seed)
    write_interactions(world, root / "log", through=EPOCH + dt.timedelta(days=9))
    r0 = load_round(cfg, root / "wd", 0)
    run_dsie(cfg, round_dir(root / "wd", 0), r0.inter, r0.seqs)
    # day 10: two new items (one of an existing category, one of a new one) that a few users click twice
    cat = world.items["category"].iloc[0]
    items = pd.concat([world.items, pd.DataFrame({"item_id": ["i000a", "z-new"], "category": [cat, "Zorbing"],
                                                  "title": ""})], ignore_index=True)
    write_table(root / "log", "items.parquet", items)
    clickers = sorted(r0.inter.events["user_id"].unique())[:6]
    t0 = 10 * DAY
    rows = [(u, it, t0 + 60 * j + 7 * i, "click") for i, u in enumerate(clickers)
            for j, it in enumerate(["i000a", "z-new", "i000a", "z-new"])]
    write_day(root / "log", EPOCH + dt.timedelta(days=10),
              pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event"]))
    r1 = load_round(cfg, root / "wd", 1)
    return cfg, root / "wd", world, r0, r1, clickers


def test_new_items_get_their_categorys_mean_row(grown):
    _, wd, world, r0, r1, _ = grown
    dsie = load_dsie(round_dir(wd, 0) / "dsie")
    trained = dsie.encoder.hparams["n_items"]
    assert trained == len(r0.seqs.item_vocab) and len(r1.seqs.item_vocab) == trained + 2
    rows = dsie.encoder.item_emb.weight.detach().clone()
    assert grow_item_embeddings(dsie.encoder, r1.seqs.item_categories) == 2
    w = dsie.encoder.item_emb.weight.detach()
    assert torch.equal(w[: trained + 1], rows) and dsie.encoder.hparams["n_items"] == trained + 2
    cats = np.asarray(r1.seqs.item_categories[:trained])
    same = np.flatnonzero(cats == r1.seqs.item_categories[trained]) + 1
    assert torch.allclose(w[trained + 1], rows[same].mean(dim=0))  # i000a: its category's trained rows
    assert torch.allclose(w[trained + 2], rows[1:].mean(dim=0))  # Zorbing is new: every trained row
    assert grow_item_embeddings(dsie.encoder, r1.seqs.item_categories) == 0  # idempotent


def test_csid_changes_only_for_users_whose_history_changed(grown):
    _, wd, _, r0, r1, clickers = grown
    dsie_dir = round_dir(wd, 0) / "dsie"
    dsie = load_dsie(dsie_dir)
    before = previous_csids(wd, 1, dsie_dir)
    assert before == dict(zip(dsie.users["user_id"], dsie.users["csid"]))
    after = assign_csids(dsie, r1.seqs, previous=(r1.seqs_prev, before))
    row_prev = {u: i for i, u in enumerate(r1.seqs_prev.user_ids)}
    unchanged = [u for i, u in enumerate(r1.seqs.user_ids)
                 if r1.seqs.long_items[i] == r1.seqs_prev.long_items[row_prev[u]]]
    assert set(unchanged).isdisjoint(clickers) and len(unchanged) > 20
    assert all(after[u] == before[u] for u in unchanged)
    # the users whose I_long now holds new items are encoded through the grown rows (no index error)
    fresh = assign_csids(load_dsie(dsie_dir), r1.seqs)
    assert set(fresh) == set(r1.seqs.user_ids) and all(after[u] == fresh[u] for u in clickers)
    # and without the shortcut the unchanged users get the same CSIDs (same history, same DSIE)
    assert all(fresh[u] == before[u] for u in unchanged)


def test_a_shifted_vocabulary_is_refused(grown):
    _, wd, _, _, r1, _ = grown
    dsie = load_dsie(round_dir(wd, 0) / "dsie")
    shifted = r1.seqs
    shifted = type(shifted)(**{**shifted.__dict__, "item_vocab": sorted(shifted.item_vocab)})
    with pytest.raises(ValueError, match="shifted"):
        assign_csids(dsie, shifted)

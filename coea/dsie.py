"""Dual-Stable Interest Exploration, long-term side: users -> u_long -> CSID groups -> portraits D_s.

One entry, :func:`run_dsie`, tells the story (docs/dsie.md)::

    encoder   train the causal self-attention encoder on I_long (next-item prediction)   coea/encoder.py
    embed     u_long for every user (cold-start users: sparse features only)
    rqvae     train the RQ-VAE on warm users' u_long; code tuples (i_1..i_l)           quantizer/rqvae.py
    csid      cap groups at M_N by merging; cold-start users -> DEFAULT_CSID             quantizer/csid.py
    portraits k representatives per group (Eq. 7) -> statistical or llm portrait        coea/groups.py
    report    code utilisation, group sizes, reconstruction error, Figure-3 check, purity / NMI

Later rounds assign new users with :func:`assign_csids` (saved encoder + RQ-VAE + merge map).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from coea.config import Config
from coea.console import banner
from coea.data.schema import Interactions, Sequences
from coea.encoder import UserEncoder, encode_users, grow_item_embeddings, load_encoder, save_encoder, train_encoder
from coea.groups import GroupPortrait, PortraitCache, build_portraits, category_counts
from coea.workdir import read_json, setup_run, stage, stage_done, write_json, write_manifest
from quantizer import RQVAE, CsidMap, build_csid_map, train_rqvae
from storage.keys import DEFAULT_CSID

log = logging.getLogger("coea")

STAGE = "dsie"
FILES = {
    "users": "users.parquet", "groups": "groups.jsonl", "encoder": "encoder.pt", "rqvae": "rqvae.pt",
    "csid_map": "csid_map.json", "u_long": "u_long.npy", "report": "report.json", "cache": "portrait_cache.json",
    "items": "items.parquet",
}


@dataclass
class DsieResult:
    """What :func:`run_dsie` produced: the stage directory and headline numbers (the rest is in report.json)."""

    path: Path
    n_users: int
    n_groups: int  # surviving CSID groups, not counting "default"
    n_cold: int
    report: dict[str, Any]


@dataclass
class DsieArtifacts:
    """Everything in a finished dsie directory, loaded (see :func:`load_dsie`)."""

    path: Path
    encoder: UserEncoder
    rqvae: RQVAE | None  # None when no user had a long-term history
    csid_map: CsidMap
    users: pd.DataFrame  # user_id, csid
    groups: list[GroupPortrait]
    u_long: np.ndarray  # (N, d) in users.parquet row order

    @property
    def portraits(self) -> dict[str, str]:
        return {g.csid: g.portrait for g in self.groups}


# ------------------------------------------------------------------------------------------------ entry


def run_dsie(cfg: Config, round_path: Path, inter: Interactions, seqs: Sequences) -> DsieResult:
    """Train encoder and RQ-VAE, assign every user a CSID, write portraits and a report to round_path/dsie.

    Idempotent: when the stage already finished it is not recomputed; its result is read back.
    """
    round_path = Path(round_path)
    if stage_done(round_path, STAGE):
        log.info("dsie already finished in %s; reading it back", round_path)
        return _result_from_dir(round_path / STAGE)
    device = setup_run(cfg)
    banner("DSIE", f"{len(seqs.user_ids):,} users", "encoder, RQ-VAE, CSID groups, portraits")
    times: dict[str, float] = {}
    cache = PortraitCache.load(_previous_cache(round_path))
    with stage(round_path, STAGE) as out, torch_threads(cfg.encoder.num_threads if device == "cpu" else 0):
        t = time.perf_counter()
        encoder, enc_metrics = train_encoder(seqs, cfg.encoder, out_dir=out, max_len=cfg.data.max_long_len,
                                             device=device, seed=cfg.run.seed)
        save_encoder(encoder, out / FILES["encoder"])
        # the item vocabulary the encoder was trained on (its rows 1..V): later rounds check they extend it
        pd.DataFrame({"item_id": list(seqs.item_vocab), "category": list(seqs.item_categories) or
                      [""] * len(seqs.item_vocab)}).to_parquet(out / FILES["items"], index=False)
        times["encoder"] = time.perf_counter() - t

        t = time.perf_counter()
        u_long = encode_users(encoder, seqs, batch_size=cfg.encoder.batch_size, device=device)  # (N, d)
        np.save(out / FILES["u_long"], u_long)
        warm = np.array([len(s) > 0 for s in seqs.long_items], dtype=bool)  # (N,)
        times["embed"] = time.perf_counter() - t

        t = time.perf_counter()
        rq_report: dict[str, Any] = {"reconstruction_error": None, "code_utilisation": [], "epoch_losses": [],
                                     "rqvae_history": []}
        indices = np.zeros((0, cfg.quantizer.levels), dtype=np.int64)
        space = u_long  # (N, d) what the merge rule, representatives and Figure 3 compare: standardised u_long
        if warm.any():
            q = cfg.quantizer
            torch.manual_seed(cfg.run.seed)
            rqvae = RQVAE(input_dim=u_long.shape[1], code_dim=q.code_dim, levels=q.levels,
                          codebook_size=q.codebook_size, hidden_dim=q.hidden_dim,
                          commitment_weight=q.commitment_weight, kmeans_init=q.kmeans_init,
                          threshold_ema_dead_code=q.threshold_ema_dead_code, decay=q.ema_decay,
                          standardize=q.standardize)
            res = train_rqvae(rqvae, torch.from_numpy(u_long[warm]), epochs=q.epochs, batch_size=q.batch_size,
                              lr=q.lr, seed=cfg.run.seed, device=device,
                              checkpoint_dir=out / "checkpoints" / "rqvae")
            rqvae.cpu().save(out / FILES["rqvae"])
            indices = rqvae.encode(torch.from_numpy(u_long[warm])).numpy()  # (N_warm, l)
            with torch.no_grad():
                space = rqvae.prepare(torch.from_numpy(u_long)).numpy()  # (N, d)
            rq_report = {"reconstruction_error": res.reconstruction_error, "code_utilisation": res.utilisation,
                         "epoch_losses": res.epoch_losses, "rqvae_history": res.history}
        times["rqvae"] = time.perf_counter() - t

        t = time.perf_counter()
        csid_map = build_csid_map(indices, space[warm], max_groups=cfg.quantizer.max_groups,
                                  min_group_size=cfg.quantizer.min_group_size, search=cfg.quantizer.merge_search)
        csid_map.save(out / FILES["csid_map"])
        csids = np.full(len(seqs.user_ids), DEFAULT_CSID, dtype=object)
        csids[warm] = csid_map.assign(indices)
        pd.DataFrame({"user_id": list(seqs.user_ids), "csid": csids.astype(str)}).to_parquet(
            out / FILES["users"], index=False)
        times["csid"] = time.perf_counter() - t

        t = time.perf_counter()
        counts = category_counts(seqs, inter.item_category, inter.categories)  # (N, C)
        groups = build_portraits(csids=list(csids), embeddings=space, user_ids=list(seqs.user_ids), counts=counts,
                                 categories=list(inter.categories), profile=cfg.profile, backbone=cfg.backbone,
                                 default_csid=DEFAULT_CSID, cache=cache, device=device)
        (out / FILES["groups"]).write_text("".join(json.dumps(asdict(g)) + "\n" for g in groups))
        cache.save(out / FILES["cache"])
        times["portraits"] = time.perf_counter() - t

        report = {
            "n_users": len(seqs.user_ids), "n_warm": int(warm.sum()), "n_cold": int((~warm).sum()),
            "n_groups": len(csid_map.survivors), "n_code_tuples": len(csid_map.merge),
            "encoder": enc_metrics, **rq_report,
            "group_sizes": group_size_stats(csid_map.sizes),
            "figure3": figure3(u_long[warm], list(csids[warm]), seed=cfg.run.seed),
            "ground_truth": ground_truth_agreement(list(seqs.user_ids), list(csids), inter.ground_truth),
            "portrait_cache_hits": cache.hits, "wall_time_s": times,
        }
        write_json(out / FILES["report"], report)
        write_manifest(out, cfg, {"stage": STAGE, "files": FILES})
    log.info("DSIE: %d groups (from %d code tuples), %d cold-start users", len(csid_map.survivors),
             len(csid_map.merge), int((~warm).sum()))
    return DsieResult(round_path / STAGE, len(seqs.user_ids), len(csid_map.survivors), int((~warm).sum()), report)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch.set_num_threads(n) inside the block (n = 0: leave it), restored afterwards."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _result_from_dir(path: Path) -> DsieResult:
    report = read_json(path / FILES["report"])
    return DsieResult(path, report["n_users"], report["n_groups"], report["n_cold"], report)


def _previous_cache(round_path: Path) -> Path | None:
    """The newest earlier round's portrait cache (rounds are sibling folders named by number)."""
    earlier = sorted(p for p in round_path.parent.glob("*/" + STAGE + "/" + FILES["cache"])
                     if p.parent.parent.name < round_path.name)
    return earlier[-1] if earlier else None


# -------------------------------------------------------------------------------------------- report parts


def group_size_stats(sizes: list[int], bins: int = 10) -> dict[str, Any]:
    """count, min / median / max and a histogram (``bins`` equal-width bins over [min, max]) of group sizes."""
    if not sizes:
        return {"count": 0, "min": None, "median": None, "max": None, "histogram": {"counts": [], "edges": []}}
    counts, edges = np.histogram(sizes, bins=min(bins, max(len(set(sizes)), 1)))
    return {"count": len(sizes), "min": int(min(sizes)), "median": float(np.median(sizes)), "max": int(max(sizes)),
            "histogram": {"counts": counts.tolist(), "edges": edges.tolist()}}


def figure3(u_long: np.ndarray, csids: list[str], *, seed: int = 0) -> dict[str, Any]:
    """Figure-3 check on warm users: :func:`intra_inter_similarity` of *centred* u_long (``intra``, ``inter``:
    cosine after subtracting the warm users' mean, the standard correction for anisotropic embeddings, where
    every raw cosine is close to 1) and of raw u_long (``raw.intra``, ``raw.inter``). Same sampled users."""
    centred = intra_inter_similarity(u_long - u_long.mean(axis=0, keepdims=True), csids, seed=seed) \
        if len(u_long) else intra_inter_similarity(u_long, csids, seed=seed)
    raw = intra_inter_similarity(u_long, csids, seed=seed)
    return {**centred, "cosine": "centred", "raw": {"intra": raw["intra"], "inter": raw["inter"]}}


def intra_inter_similarity(embeddings: np.ndarray, csids: list[str], *, n_groups: int = 10, n_users: int = 30,
                           seed: int = 0) -> dict[str, Any]:
    """Figure-3 check: mean cosine of u_long within vs between groups.

    Takes the ``n_groups`` largest groups (ties by csid) and up to ``n_users`` random members of each; intra =
    mean over groups of the mean pairwise cosine among a group's sampled members (groups with one sampled member
    are skipped), inter = mean cosine over pairs of sampled users from different groups.
    """
    rng = np.random.default_rng(seed)
    arr = np.asarray(csids, dtype=object)
    names, sizes = np.unique(arr, return_counts=True) if len(arr) else (np.array([]), np.array([]))
    chosen = [names[i] for i in sorted(range(len(names)), key=lambda i: (-sizes[i], names[i]))[:n_groups]]
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    samples = [rng.permutation(np.flatnonzero(arr == g))[:n_users] for g in chosen]
    intra = []
    for rows in samples:
        if len(rows) > 1:
            s = unit[rows] @ unit[rows].T  # (n, n)
            intra.append((s.sum() - np.trace(s)) / (len(rows) * (len(rows) - 1)))
    if len(samples) > 1:
        rows = np.concatenate(samples)
        label = np.concatenate([[g] * len(r) for g, r in enumerate(samples)])
        s = unit[rows] @ unit[rows].T
        inter = float(s[label[:, None] != label[None, :]].mean())
    else:
        inter = None
    return {"groups": len(chosen), "users_per_group": [int(len(r)) for r in samples],
            "intra": float(np.mean(intra)) if intra else None, "inter": inter}


def ground_truth_agreement(user_ids: list[str], csids: list[str], truth: pd.DataFrame | None) -> dict | None:
    """Purity and NMI of CSIDs vs the synthetic world's latent_group (None without ground truth)."""
    if truth is None or "latent_group" not in truth:
        return None
    from sklearn.metrics import normalized_mutual_info_score

    df = pd.DataFrame({"user_id": user_ids, "csid": csids}).merge(truth[["user_id", "latent_group"]], on="user_id")
    if df.empty:
        return None
    purity = df.groupby("csid")["latent_group"].agg(lambda s: s.value_counts().iloc[0]).sum() / len(df)
    return {"users": len(df), "purity": float(purity),
            "nmi": float(normalized_mutual_info_score(df["latent_group"], df["csid"]))}


# ------------------------------------------------------------------------------------------ later rounds


def load_dsie(dsie_dir: str | Path) -> DsieArtifacts:
    """Load a finished dsie directory (round_path/dsie)."""
    path = Path(dsie_dir)
    rq = path / FILES["rqvae"]
    groups = [GroupPortrait(**json.loads(line)) for line in (path / FILES["groups"]).read_text().splitlines()
              if line.strip()]
    return DsieArtifacts(path=path, encoder=load_encoder(path / FILES["encoder"]),
                         rqvae=RQVAE.load(rq) if rq.exists() else None, csid_map=CsidMap.load(path / FILES["csid_map"]),
                         users=pd.read_parquet(path / FILES["users"]), groups=groups,
                         u_long=np.load(path / FILES["u_long"]))


def assign_csids(dsie_dir: str | Path | DsieArtifacts, seqs: Sequences, batch_size: int = 256, *,
                 previous: tuple[Sequences | None, dict[str, str]] | None = None) -> dict[str, str]:
    """CSID of every user of ``seqs`` under a saved DSIE (new and known users alike; the encoding is recomputed
    from the user's current I_long). Empty I_long -> DEFAULT_CSID; unseen code tuples -> nearest surviving
    centroid in u_long space (quantizer/csid.py).

    Items the vocabulary gained after the DSIE was trained get encoder rows first
    (:func:`coea.encoder.grow_item_embeddings`). ``previous = (sequences, csids)`` of the last round under the
    same DSIE: a user whose I_long and sparse features are unchanged keeps that CSID exactly (no re-encoding,
    so no floating-point drift can move them); only the others are encoded.
    """
    art = dsie_dir if isinstance(dsie_dir, DsieArtifacts) else load_dsie(dsie_dir)
    _check_vocabulary(art, seqs)
    if previous is not None and previous[0] is not None:
        prev_seqs, prev_csids = previous
        row = {u: i for i, u in enumerate(prev_seqs.user_ids)}
        kept: dict[str, str] = {}
        changed: list[int] = []
        for i, u in enumerate(seqs.user_ids):
            j = row.get(u)
            if (j is not None and u in prev_csids and seqs.long_items[i] == prev_seqs.long_items[j]
                    and np.array_equal(seqs.features[i], prev_seqs.features[j])):
                kept[u] = prev_csids[u]
            else:
                changed.append(i)
        fresh = assign_csids(art, _rows(seqs, changed), batch_size) if changed else {}
        return {u: kept[u] if u in kept else fresh[u] for u in seqs.user_ids}
    u_long = encode_users(art.encoder, seqs, batch_size=batch_size)  # (N, d)
    warm = np.array([len(s) > 0 for s in seqs.long_items], dtype=bool)
    csids = np.full(len(seqs.user_ids), DEFAULT_CSID, dtype=object)
    if warm.any() and art.rqvae is not None and art.csid_map.survivors:
        x = torch.from_numpy(u_long[warm])
        indices = art.rqvae.encode(x).numpy()  # (N_warm, l)
        with torch.no_grad():
            csids[warm] = art.csid_map.assign(indices, embeddings=art.rqvae.prepare(x).numpy())
    return dict(zip(seqs.user_ids, csids.tolist()))


def _check_vocabulary(art: DsieArtifacts, seqs: Sequences) -> None:
    """The encoder's item rows must be a prefix of today's vocabulary; grow rows for the items added since."""
    trained = art.encoder.hparams["n_items"]
    saved = art.path / FILES["items"]
    if saved.exists():
        ids = pd.read_parquet(saved, columns=["item_id"])["item_id"].astype(str).tolist()
        if list(seqs.item_vocab[:len(ids)]) != ids:
            raise ValueError(f"{art.path}: the item vocabulary shifted since this DSIE was trained (item ids must "
                             "only be appended; docs/data.md, 'Vocabularies')")
    elif len(seqs.item_vocab) < trained:
        raise ValueError(f"{art.path}: encoder has {trained} item rows but the vocabulary only {len(seqs.item_vocab)}")
    if len(seqs.item_vocab) > trained:
        cats = list(seqs.item_categories) or [""] * len(seqs.item_vocab)
        added = grow_item_embeddings(art.encoder, cats)
        log.info("dsie: %d item(s) new since %s got encoder rows (their category's mean)", added, art.path)


def _rows(seqs: Sequences, rows: list[int]) -> Sequences:
    """The sub-Sequences of ``rows`` (same vocabulary and features layout)."""
    return Sequences(user_ids=[seqs.user_ids[i] for i in rows], item_vocab=seqs.item_vocab,
                     long_items=[seqs.long_items[i] for i in rows],
                     short_categories=[seqs.short_categories[i] for i in rows],
                     c_short=[seqs.c_short[i] for i in rows], features=seqs.features[rows],
                     feature_cardinalities=seqs.feature_cardinalities, cutoff=seqs.cutoff,
                     feature_names=seqs.feature_names, item_categories=seqs.item_categories)

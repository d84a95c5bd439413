"""Causal self-attention user encoder for long-term interests (DSIE, paper Eq. 1, 4, 5).

Input of user u: the sparse-feature token and the embeddings of I_long, right-padded::

    x_u = [e_sparse, e_1, ..., e_T, pad, ...] + positions       e_sparse = b + sum_f E_f[S_u,f]   (Eq. 4)

L transformer blocks (residual + LayerNorm around causal multi-head attention and an MLP, Eq. 5; pre-norm with a
final LayerNorm by default, ``norm_first``); u_long is the last layer's output at the last real position (index T;
the sparse token when I_long is empty, so cold-start users still get an embedding). Right padding means no query
ever sees a pad key under the causal mask, so no padding mask is needed and no attention row is empty.

Positions (``positions``): ``recency`` (default) indexes the table by 1 + the number of items after a token (the
newest item is 1, e_sparse 0), so the position added at u_long is the same for every user; ``absolute`` indexes
from the oldest item (u_long then sits at a length-dependent position); ``none`` relies on the causal mask alone.

Embeddings start at N(0, 0.02): the logits are tied to the item table, and N(0, 1) rows made the untrained loss
~30 on the demo world (log V = 5.9), which 8 epochs never worked off, leaving u_long collapsed (docs/dsie.md).

Objective (next-item prediction over I_long, docs/dsie.md): position t (0 = e_sparse) predicts item t+1 with a
full softmax over the item vocabulary, logits tied to the item embedding table::

    L = - mean_{u, t < T} log softmax(h_t W_item^T)[i_{t+1}]
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from coea.config import EncoderConfig
from coea.console import lightning_progress
from coea.data.schema import Sequences

POSITIONS = ("recency", "absolute", "none")
log = logging.getLogger("coea")


class UserEncoder(nn.Module):
    """The encoder of Eq. 5; ``forward`` returns all hidden states, :meth:`user_embedding` returns u_long."""

    def __init__(
        self,
        *,
        n_items: int,
        feature_cardinalities: list[int],
        d_model: int,
        n_layers: int,
        n_heads: int,
        dropout: float = 0.1,
        max_len: int = 200,
        norm_first: bool = True,
        positions: str = "recency",
    ) -> None:
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}; got {positions!r}")
        self.hparams: dict[str, Any] = dict(
            n_items=n_items, feature_cardinalities=[int(c) for c in feature_cardinalities], d_model=d_model,
            n_layers=n_layers, n_heads=n_heads, dropout=dropout, max_len=max_len, norm_first=norm_first,
            positions=positions,
        )
        self.max_len = max_len
        self.positions = positions
        self.item_emb = nn.Embedding(n_items + 1, d_model, padding_idx=0)  # index 0 = padding
        self.feature_emb = nn.ModuleList(nn.Embedding(max(int(c), 1), d_model) for c in feature_cardinalities)
        self.sparse_bias = nn.Parameter(torch.zeros(d_model))  # e_sparse is defined even with no features
        # absolute: index = position (0 = e_sparse); recency: index = 1 + items after this one (0 = e_sparse)
        self.pos_emb = nn.Embedding(max_len + 1, d_model) if positions != "none" else None
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=4 * d_model, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=norm_first)
        # pre-norm blocks leave the residual stream un-normalised: a final LayerNorm closes the stack
        self.blocks = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(d_model) if norm_first else None,
                                            enable_nested_tensor=False)
        # small embeddings (GPT-style): with logits tied to item_emb, N(0, 1) rows give logits of scale sqrt(d) and
        # a starting loss far above log(V)
        for emb in [self.item_emb, *self.feature_emb, *([self.pos_emb] if self.pos_emb is not None else [])]:
            nn.init.normal_(emb.weight, std=0.02)
        self.item_emb.weight.data[0].zero_()

    def sparse_token(self, features: Tensor) -> Tensor:
        """(B, F) int64 codes -> (B, d) e_sparse (Eq. 4); codes outside a feature's range count as unknown (0)."""
        e = self.sparse_bias.expand(features.shape[0], -1)  # (B, d)
        for f, emb in enumerate(self.feature_emb):
            codes = features[:, f]  # (B,)
            codes = torch.where((codes >= 0) & (codes < emb.num_embeddings), codes, torch.zeros_like(codes))
            e = e + emb(codes)  # (B, d)
        return e

    def position_index(self, items: Tensor) -> Tensor:
        """(B, T) right-padded items -> (B, T+1) position-table rows (module docstring, "Positions")."""
        B, T = items.shape
        t = torch.arange(T + 1, device=items.device).expand(B, -1)  # (B, T+1)
        if self.positions == "absolute":
            return t.clamp(max=self.max_len)
        lengths = (items > 0).sum(dim=1, keepdim=True)  # (B, 1)
        recency = (lengths - t + 1).clamp(min=1, max=self.max_len)  # (B, T+1): last item -> 1; pads clamp to 1
        return torch.where(t == 0, torch.zeros_like(t), recency)

    def forward(self, items: Tensor, features: Tensor) -> Tensor:
        """items (B, T) right-padded indices (0 = pad), features (B, F) -> hidden states (B, T+1, d)."""
        B, T = items.shape
        x = torch.cat([self.sparse_token(features)[:, None], self.item_emb(items)], dim=1)  # (B, T+1, d)
        if self.pos_emb is not None:
            x = x + self.pos_emb(self.position_index(items))  # (B, T+1, d)
        x = self.drop(x)
        causal = nn.Transformer.generate_square_subsequent_mask(T + 1, device=items.device)  # (T+1, T+1)
        return self.blocks(x, mask=causal, is_causal=True)  # (B, T+1, d)

    def user_embedding(self, items: Tensor, lengths: Tensor, features: Tensor) -> Tensor:
        """u_long (B, d): last layer at position ``lengths`` (the last item; 0 = e_sparse for cold start)."""
        h = self(items, features)  # (B, T+1, d)
        return h[torch.arange(h.shape[0], device=h.device), lengths]  # (B, d)

    def next_item_loss(self, items: Tensor, features: Tensor) -> Tensor:
        """Mean cross-entropy of predicting item t+1 from position t over real targets (module docstring)."""
        h = self(items, features)[:, :-1]  # (B, T, d): positions 0..T-1 predict items 1..T
        logits = h @ self.item_emb.weight.T  # (B, T, V+1)
        logits[..., 0] = float("-inf")  # never predict padding
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), items.reshape(-1), ignore_index=0)


# ---------------------------------------------------------------------------------------------------- data


class _UserRows(Dataset):
    def __init__(self, seqs: Sequences, rows: np.ndarray, max_len: int) -> None:
        self.seqs, self.rows, self.max_len = seqs, rows, max_len

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[list[int], np.ndarray]:
        r = int(self.rows[i])
        return list(self.seqs.long_items[r])[-self.max_len:], self.seqs.features[r]


def _collate(batch: list[tuple[list[int], np.ndarray]]) -> tuple[Tensor, Tensor, Tensor]:
    """-> items (B, T) right-padded, lengths (B,), features (B, F)."""
    lengths = torch.tensor([len(items) for items, _ in batch], dtype=torch.long)  # (B,)
    items = torch.zeros(len(batch), max(int(lengths.max()), 1), dtype=torch.long)  # (B, T)
    for b, (seq, _) in enumerate(batch):
        items[b, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    features = torch.as_tensor(np.stack([f for _, f in batch]).astype(np.int64)).reshape(len(batch), -1)  # (B, F)
    return items, lengths, features


# ----------------------------------------------------------------------------------------------- training


class EncoderModule(L.LightningModule):
    """Lightning wrapper: next-item prediction over I_long with AdamW."""

    def __init__(self, *, encoder_kwargs: dict[str, Any], lr: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = UserEncoder(**encoder_kwargs)
        self.lr = lr

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        items, _, features = batch
        loss = self.encoder.next_item_loss(items, features)
        self.log("train/next_item_loss", loss, prog_bar=True, on_epoch=True, on_step=False, batch_size=len(items))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def build_encoder(seqs: Sequences, cfg: EncoderConfig, *, max_len: int) -> UserEncoder:
    return UserEncoder(n_items=len(seqs.item_vocab), feature_cardinalities=list(seqs.feature_cardinalities),
                       d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, dropout=cfg.dropout,
                       max_len=max_len, norm_first=cfg.norm_first, positions=cfg.positions)


def train_encoder(
    seqs: Sequences,
    cfg: EncoderConfig,
    *,
    out_dir: str | Path,
    max_len: int = 200,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[UserEncoder, dict[str, Any]]:
    """Train the encoder on users with a non-empty I_long; checkpoints go to ``out_dir/checkpoints``.

    Returns the trained encoder (eval mode, on CPU) and metrics: first/last epoch loss, users trained on.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    model = EncoderModule(encoder_kwargs=build_encoder(seqs, cfg, max_len=max_len).hparams, lr=cfg.lr)
    rows = np.array([i for i, s in enumerate(seqs.long_items) if len(s) > 0], dtype=np.int64)
    metrics: dict[str, Any] = {"users_trained": int(len(rows)), "epoch_losses": []}
    if len(rows) == 0:
        log.warning("no user has a long-term history; the encoder stays at its initialisation")
        return model.encoder.eval(), metrics
    loader = DataLoader(_UserRows(seqs, rows, max_len), batch_size=cfg.batch_size, shuffle=True,
                        collate_fn=_collate, generator=torch.Generator().manual_seed(seed))

    class _EpochLoss(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            metrics["epoch_losses"].append(float(trainer.callback_metrics["train/next_item_loss"]))

    interactive = sys.stderr.isatty()
    callbacks: list[L.Callback] = [
        _EpochLoss(),
        L.pytorch.callbacks.ModelCheckpoint(dirpath=Path(out_dir) / "checkpoints", filename="encoder-{epoch}",
                                            save_last=True, save_top_k=1),
    ]
    callbacks.append(lightning_progress("DSIE encoder", what=f"{len(rows):,} users"))  # coea/console.py
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    quiet = logging.getLogger("lightning.pytorch")  # "GPU available: ..." banners are noise in cron logs
    level = quiet.level
    if not interactive:
        quiet.setLevel(logging.WARNING)
    try:
        trainer = L.Trainer(
            max_epochs=cfg.epochs, accelerator=accelerator,
            devices=[int(device.split(":")[1])] if ":" in device else 1, logger=False, callbacks=callbacks,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out_dir),
            deterministic=accelerator == "cpu", num_sanity_val_steps=0,
        )
        trainer.fit(model, loader)
    finally:
        quiet.setLevel(level)
    return model.encoder.cpu().eval(), metrics


@torch.no_grad()
def encode_users(model: UserEncoder, sequences: Sequences, batch_size: int = 256,
                 device: str = "cpu") -> np.ndarray:
    """u_long for every user of ``sequences``, in row order: (N, d) float32. Empty I_long -> sparse-only."""
    was_training = model.training
    model.eval().to(device)
    rows = np.arange(len(sequences.user_ids))
    loader = DataLoader(_UserRows(sequences, rows, model.max_len), batch_size=batch_size, collate_fn=_collate)
    out = [model.user_embedding(items.to(device), lengths.to(device), features.to(device)).cpu()  # (B, d)
           for items, lengths, features in loader]
    model.train(was_training)
    d = model.hparams["d_model"]
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, d), np.float32)


def grow_item_embeddings(model: UserEncoder, item_categories: list[str]) -> int:
    """Give items added to the vocabulary after training their own rows (in place); returns how many were added.

    ``item_categories`` is the (V,) category of every vocabulary item, trained ones first (the vocabulary is
    append-only, coea/data/vocab.py). A new item's row is the mean of the trained rows of its category, or of
    every trained row when the category is new (docs/data.md, "Vocabularies"): a deterministic function of the
    trained encoder and the item's fixed category, so a DSIE that is not refreshed encodes the same history the
    same way every round. The logits of next-item prediction are tied to this table, which growth does not
    train. Padding (row 0) stays zero.
    """
    trained = model.hparams["n_items"]
    total = len(item_categories)
    if total <= trained:
        return 0
    with torch.no_grad():
        old = model.item_emb.weight.data  # (trained + 1, d)
        rows = old[1:]  # (trained, d)
        overall = rows.mean(dim=0) if trained else torch.zeros(old.shape[1])
        by_cat: dict[str, list[int]] = {}
        for j, c in enumerate(item_categories[:trained]):
            by_cat.setdefault(c, []).append(j)
        new = torch.stack([rows[by_cat[c]].mean(dim=0) if c in by_cat else overall
                           for c in item_categories[trained:]])  # (total - trained, d)
        emb = nn.Embedding(total + 1, old.shape[1], padding_idx=0)
        emb.weight.data.copy_(torch.cat([old, new]))
    model.item_emb = emb
    model.hparams["n_items"] = total
    return total - trained


def save_encoder(model: UserEncoder, path: str | Path) -> None:
    torch.save({"hparams": model.hparams, "state_dict": model.state_dict()}, path)


def load_encoder(path: str | Path, map_location: str = "cpu") -> UserEncoder:
    blob = torch.load(path, map_location=map_location, weights_only=True)
    model = UserEncoder(**blob["hparams"])
    model.load_state_dict(blob["state_dict"])
    return model.eval()

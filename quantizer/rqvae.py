"""RQ-VAE over long-term user embeddings u_long (DSIE, paper Sec. 3.2).

An MLP encoder maps u_long (d) to a latent z (code_dim); ``vector_quantize_pytorch.ResidualVQ`` quantizes z with
``levels`` codebooks of ``codebook_size`` codes each (residual quantization: level j quantizes what levels < j left
over); an MLP decoder reconstructs u_long from the summed codes. The code indices (i_1..i_l) are the user's CSID
before group capping (quantizer/csid.py).

Loss (per batch)::

    L = MSE(decoder(quantized), x) + sum_j commitment_j

With ``standardize`` the model first maps its input to ``x = unit(u - center)`` (``center`` = the training rows'
mean, a buffer saved with the model, so later rounds quantize new users the same way; :meth:`RQVAE.prepare`).
Long-term embeddings share a large common component (post-LayerNorm outputs are anisotropic); without centring
that component dominates MSE and cosine, and the codes split on noise.

where ``commitment_j = commitment_weight * ||z_j - sg(q_j)||^2`` is the ResidualVQ's own per-level loss (it only
exists in training mode; codebooks are updated by EMA, not by gradients). Collapse defences are flags passed through
to ResidualVQ: ``kmeans_init`` (codebooks start at k-means centroids of the first batch, which
:func:`train_rqvae` makes the whole data set, up to 4096 rows) and ``threshold_ema_dead_code`` (codes whose EMA
cluster size falls below the threshold are replaced by random batch vectors).

This package imports nothing from ``coea`` or ``loops``: plain tensors in, NamedTuples out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vector_quantize_pytorch import ResidualVQ


class RQVAELosses(NamedTuple):
    """Scalar losses of one forward pass; ``commitment`` is 0 in eval mode (ResidualVQ computes it in training)."""

    total: Tensor
    reconstruction: Tensor
    commitment: Tensor


class RQVAEOutput(NamedTuple):
    """reconstruction: (B, d); indices: (B, l) int64 in [0, codebook_size); quantized: (B, code_dim)."""

    reconstruction: Tensor
    indices: Tensor
    losses: RQVAELosses
    quantized: Tensor


class RQVAETrainResult(NamedTuple):
    """epoch_losses: mean total loss per epoch; reconstruction_error: final eval MSE over all rows;
    utilisation: one dict per level (see :func:`code_utilisation`)."""

    epoch_losses: list[float]
    reconstruction_error: float
    utilisation: list[dict[str, float]]


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class RQVAE(nn.Module):
    """Residual-quantized autoencoder; see the module docstring for the objective."""

    def __init__(
        self,
        *,
        input_dim: int,
        code_dim: int,
        levels: int,
        codebook_size: int,
        hidden_dim: int = 64,
        commitment_weight: float = 0.25,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        threshold_ema_dead_code: int = 2,
        decay: float = 0.8,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = dict(
            input_dim=input_dim, code_dim=code_dim, levels=levels, codebook_size=codebook_size,
            hidden_dim=hidden_dim, commitment_weight=commitment_weight, kmeans_init=kmeans_init,
            kmeans_iters=kmeans_iters, threshold_ema_dead_code=threshold_ema_dead_code, decay=decay,
            standardize=standardize,
        )
        self.standardize = standardize
        self.register_buffer("center", torch.zeros(input_dim))  # (d,) set by train_rqvae when standardize
        self.levels = levels
        self.codebook_size = codebook_size
        self.encoder = _mlp(input_dim, hidden_dim, code_dim)
        self.rq = ResidualVQ(
            dim=code_dim, num_quantizers=levels, codebook_size=codebook_size, commitment_weight=commitment_weight,
            kmeans_init=kmeans_init, kmeans_iters=kmeans_iters, threshold_ema_dead_code=threshold_ema_dead_code,
            decay=decay,
        )
        self.decoder = _mlp(code_dim, hidden_dim, input_dim)

    def prepare(self, x: Tensor) -> Tensor:
        """(B, d) raw input -> (B, d) what the model quantizes and reconstructs: ``unit(x - center)`` when
        ``standardize`` (removes the component every row shares, so cosine / MSE see what tells rows apart),
        else ``x``."""
        if not self.standardize:
            return x
        return F.normalize(x - self.center, dim=-1)

    def forward(self, x: Tensor) -> RQVAEOutput:
        """x: (B, d) raw input; the reconstruction target is :meth:`prepare` (x)."""
        x = self.prepare(x)  # (B, d)
        z = self.encoder(x)  # (B, code_dim)
        quantized, indices, commit = self.rq(z)  # (B, code_dim), (B, l), (l,)
        reconstruction = self.decoder(quantized)  # (B, d)
        rec = F.mse_loss(reconstruction, x)
        commitment = commit.sum()
        return RQVAEOutput(reconstruction, indices, RQVAELosses(rec + commitment, rec, commitment), quantized)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """(B, d) -> (B, l) code indices. Runs in eval mode (no EMA update, no dead-code replacement)."""
        was_training = self.training
        self.eval()
        _, indices, _ = self.rq(self.encoder(self.prepare(x)))  # (B, l)
        self.train(was_training)
        return indices

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        """(B, l) code indices -> (B, d) reconstruction (of :meth:`prepare` (x), i.e. standardised when
        ``standardize``)."""
        return self.decoder(self.rq.get_output_from_indices(indices))  # (B, d)

    def save(self, path: str | Path) -> None:
        torch.save({"hparams": self.hparams, "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> RQVAE:
        blob = torch.load(path, map_location=map_location, weights_only=True)
        model = cls(**blob["hparams"])
        blob["state_dict"].setdefault("center", model.center)  # files saved before standardize existed
        model.load_state_dict(blob["state_dict"])
        return model.eval()


def code_utilisation(indices: Tensor, codebook_size: int) -> list[dict[str, float]]:
    """Per level: codes used, the used fraction of the codebook, and the perplexity of the code histogram.

    Perplexity = exp(entropy of the empirical code distribution); it equals ``used`` when usage is uniform.
    """
    out = []
    for level in range(indices.shape[1]):
        counts = torch.bincount(indices[:, level].cpu(), minlength=codebook_size).double()  # (C,)
        p = counts[counts > 0] / counts.sum()
        used = int((counts > 0).sum())
        out.append({"level": level, "used": used, "fraction": used / codebook_size,
                    "perplexity": float(math.exp(float(-(p * p.log()).sum()))) if used else 0.0})
    return out


def train_rqvae(
    model: RQVAE,
    x: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    device: str = "cpu",
    progress: Any = None,
) -> RQVAETrainResult:
    """Train ``model`` on rows of ``x`` (N, d) with Adam; returns per-epoch losses and final diagnostics.

    Args:
        progress: optional ``rich.progress.Progress`` (already started or not); a task is added to it.
    """
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    x = x.to(device).float()
    n = x.shape[0]
    if model.standardize:
        model.center.copy_(x.mean(dim=0))  # (d,)
    with torch.no_grad():  # k-means initialisation on (up to) the whole data set rather than the first batch
        init_rows = torch.randperm(n, generator=gen)[:4096].to(device)
        model(x[init_rows])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    task = progress.add_task("RQ-VAE", total=epochs) if progress is not None else None
    epoch_losses: list[float] = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            batch = x[perm[start:start + batch_size]]  # (b, d)
            out = model(batch)
            opt.zero_grad(set_to_none=True)
            out.losses.total.backward()
            opt.step()
            total += float(out.losses.total.detach()) * len(batch)
            seen += len(batch)
        epoch_losses.append(total / max(seen, 1))
        if task is not None:
            progress.advance(task)
    model.eval()
    with torch.no_grad():
        out = model(x)
    return RQVAETrainResult(epoch_losses, float(out.losses.reconstruction),
                            code_utilisation(out.indices, model.codebook_size))

"""RQ-VAE over long-term user embeddings u_long (DSIE, paper Sec. 3.2).

An MLP encoder maps u_long (d) to a latent z (code_dim); ``vector_quantize_pytorch.ResidualVQ`` quantizes z with
``levels`` codebooks of ``codebook_size`` codes each (residual quantization: level j quantizes what levels < j left
over); an MLP decoder reconstructs u_long from the summed codes. The code indices (i_1..i_l) are the user's CSID
before group capping (quantizer/csid.py).

Loss (per batch)::

    L = MSE(decoder(quantized), x) + sum_j commitment_j

where ``commitment_j = commitment_weight * ||z_j - sg(q_j)||^2`` is the ResidualVQ's own per-level loss (it only
exists in training mode; codebooks are updated by EMA, not by gradients). Collapse defences are flags passed through
to ResidualVQ: ``kmeans_init`` (codebooks start at k-means centroids of the first batch, which
:func:`train_rqvae` makes the whole data set, up to 4096 rows) and ``threshold_ema_dead_code`` (codes whose EMA
cluster size falls below the threshold are replaced by random batch vectors).

With ``standardize`` the model first maps its input to ``x = unit(u - center)`` (``center`` = the training rows'
mean, a buffer saved with the model, so later rounds quantize new users the same way; :meth:`RQVAE.prepare`).
Long-term embeddings share a large common component (post-LayerNorm outputs are anisotropic); without centring
that component dominates MSE and cosine, and the codes split on noise.

Training (:func:`train_rqvae`) runs through a Lightning Trainer with the encoder's conventions (coea/encoder.py):
a LightningModule (:class:`RQVAEModule`) with ``training_step`` / ``configure_optimizers``, per-epoch logged losses
and code usage, checkpoints, a rich progress bar on a terminal.

This package imports nothing from ``coea`` or ``loops``: plain tensors in, NamedTuples out (Lightning, torch and
vector-quantize-pytorch are its only dependencies).
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler, TensorDataset
from vector_quantize_pytorch import ResidualVQ

KMEANS_INIT_ROWS = 4096  # rows of the one k-means initialisation pass (a random subset when there are more)


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
    utilisation: one dict per level (see :func:`code_utilisation`) of the final eval pass; history: per epoch
    ``{epoch, total, reconstruction, commitment, code_usage}`` (training rows, training mode; see
    :class:`RQVAEModule`)."""

    epoch_losses: list[float]
    reconstruction_error: float
    utilisation: list[dict[str, float]]
    history: list[dict[str, Any]]


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


# ----------------------------------------------------------------------------------------------- training


class EpochPermutations(Sampler[int]):
    """Row order of epoch e = the (e+1)-th ``torch.randperm(n, generator=generator)`` draw, however many times
    the loader is iterated per epoch (Lightning creates iterators ahead of time and calls ``set_epoch`` before
    each epoch). A plain shuffled DataLoader would tie the order to Lightning's iteration internals."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator = n, generator
        self.epoch = 0
        self._drawn = -1  # index of the last permutation drawn from the generator
        self._perm: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if self.epoch < self._drawn:
            raise RuntimeError(f"epoch {self.epoch} comes after epoch {self._drawn}: epochs only go forward")
        while self._drawn < self.epoch:
            self._perm = torch.randperm(self.n, generator=self.generator).tolist()
            self._drawn += 1
        return iter(self._perm)


class RQVAEModule(L.LightningModule):
    """Lightning wrapper of :class:`RQVAE` (the encoder's conventions, coea/encoder.py): Adam on the loss of the
    module docstring, one optimizer step per mini-batch.

    Logged per epoch (``self.log``, so any Lightning logger receives them; means weighted by batch size):
    ``train/total``, ``train/reconstruction``, ``train/commitment`` and, per level j, ``train/code_usage/level_j``
    (fraction of the codebook used by the epoch's training rows) and ``train/code_perplexity/level_j``. The same
    figures are kept in :attr:`history`, one dict per epoch.

    Before the first step (``on_fit_start``) the centre is set to the mean training row (``standardize``) and one
    no-grad training-mode forward over ``init_rows`` runs ResidualVQ's k-means initialisation on (up to) the whole
    data set rather than on the first mini-batch.

    Args:
        rqvae_kwargs: :class:`RQVAE` constructor arguments (``RQVAE.hparams``); saved in checkpoints, so
            ``RQVAEModule.load_from_checkpoint(path).rqvae`` rebuilds the model.
        lr: Adam learning rate.
        model: an already constructed RQVAE to train (its initialisation is the caller's); built from
            ``rqvae_kwargs`` when None.
    """

    def __init__(self, *, rqvae_kwargs: dict[str, Any], lr: float, model: RQVAE | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.rqvae = model if model is not None else RQVAE(**rqvae_kwargs)
        self.lr = lr
        self.train_x: Tensor | None = None  # (N, d) set by train_rqvae: the centre and the k-means init read it
        self.init_rows: Tensor | None = None  # (n_init,) rows of train_x for the k-means initialisation
        self.history: list[dict[str, Any]] = []
        self._epoch: dict[str, Any] = {}

    def on_fit_start(self) -> None:
        if self.train_x is None:
            return
        x = self.train_x.to(self.device)
        with torch.no_grad():
            if self.rqvae.standardize:
                self.rqvae.center.copy_(x.mean(dim=0))  # (d,)
            if self.init_rows is not None:  # ResidualVQ k-means-initialises on its first training forward
                self.rqvae(x[self.init_rows.to(self.device)])

    def on_train_epoch_start(self) -> None:
        self._epoch = {"total": 0.0, "reconstruction": 0.0, "commitment": 0.0, "rows": 0, "indices": []}

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        (x,) = batch  # (b, d)
        out = self.rqvae(x)
        n = len(x)
        acc = self._epoch
        for name in ("total", "reconstruction", "commitment"):
            acc[name] += float(getattr(out.losses, name).detach()) * n
        acc["rows"] += n
        acc["indices"].append(out.indices.detach().cpu())  # (b, l)
        return out.losses.total

    def on_train_epoch_end(self) -> None:
        acc = self._epoch
        rows = max(acc["rows"], 1)
        entry: dict[str, Any] = {"epoch": self.current_epoch,
                                 **{k: acc[k] / rows for k in ("total", "reconstruction", "commitment")}}
        usage = code_utilisation(torch.cat(acc["indices"]), self.rqvae.codebook_size) if acc["indices"] else []
        entry["code_usage"] = usage
        self.history.append(entry)
        self.log("train/total", entry["total"], prog_bar=True)
        self.log("train/reconstruction", entry["reconstruction"])
        self.log("train/commitment", entry["commitment"])
        for u in usage:
            self.log(f"train/code_usage/level_{u['level']}", u["fraction"])
            self.log(f"train/code_perplexity/level_{u['level']}", u["perplexity"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.rqvae.parameters(), lr=self.lr)


def train_rqvae(
    model: RQVAE,
    x: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    device: str = "cpu",
    checkpoint_dir: str | Path | None = None,
    progress_bar: bool | None = None,
    logger: Any = False,
) -> RQVAETrainResult:
    """Train ``model`` in place on the rows of ``x`` (N, d) with a Lightning Trainer; returns per-epoch losses,
    the per-epoch history and final diagnostics (eval mode, all rows).

    Deterministic given ``seed`` and the global RNG state the caller left (ResidualVQ's k-means and dead-code
    replacement draw from it): ``seed`` drives the k-means rows and the mini-batch order.

    Args:
        checkpoint_dir: Lightning checkpoints of the last epoch (``rqvae-epoch=N.ckpt``, ``last.ckpt``; load with
            ``RQVAEModule.load_from_checkpoint``); None: no checkpoints.
        progress_bar: a rich progress bar; default: when stderr is a terminal.
        logger: a Lightning logger (or False, the default: the figures are in the returned history).
    """
    gen = torch.Generator().manual_seed(seed)
    x = x.detach().float().cpu()
    n = x.shape[0]
    module = RQVAEModule(rqvae_kwargs=model.hparams, lr=lr, model=model)
    module.train_x = x
    module.init_rows = torch.randperm(n, generator=gen)[:KMEANS_INIT_ROWS]
    # epoch e visits the rows in the order of the (e+1)-th torch.randperm(n, generator=gen) after the k-means rows
    loader = DataLoader(TensorDataset(x), batch_size=batch_size, sampler=EpochPermutations(n, gen),
                        generator=torch.Generator().manual_seed(seed + 1))  # the loader's own draws stay apart
    model.train()  # Lightning keeps the mode it finds (a loaded model is in eval mode: no EMA, no dead codes)

    interactive = sys.stderr.isatty() if progress_bar is None else progress_bar
    callbacks: list[L.Callback] = []
    if checkpoint_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=Path(checkpoint_dir), filename="rqvae-{epoch}", save_last=True,
                                         save_top_k=1))
    if interactive:
        callbacks.append(RichProgressBar())
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    quiet = logging.getLogger("lightning.pytorch")  # "GPU available: ..." banners are noise in cron logs
    level = quiet.level
    if not interactive:
        quiet.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # one in-memory tensor: worker processes would only add start-up time
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer = L.Trainer(
                max_epochs=epochs, accelerator=accelerator,
                devices=[int(device.split(":")[1])] if ":" in device else 1, logger=logger, callbacks=callbacks,
                enable_progress_bar=interactive, enable_model_summary=False, enable_checkpointing=checkpoint_dir is not None,
                default_root_dir=str(checkpoint_dir) if checkpoint_dir is not None else None,
                deterministic=accelerator == "cpu", num_sanity_val_steps=0, log_every_n_steps=1,
            )
            trainer.fit(module, loader)
    finally:
        quiet.setLevel(level)
    module.train_x = None
    model.eval()
    with torch.no_grad():
        out = model(x.to(model.center.device))
    return RQVAETrainResult([h["total"] for h in module.history], float(out.losses.reconstruction),
                            code_utilisation(out.indices, model.codebook_size), module.history)

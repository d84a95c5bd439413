"""RQ-VAE invariants on small clustered tensors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from quantizer import RQVAE, code_utilisation, train_rqvae


def clustered(n_per: int = 40, k: int = 6, d: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 3
    return (centers[:, None] + 0.2 * torch.randn(k, n_per, d, generator=g)).reshape(-1, d)  # (k*n_per, d)


def model(**kw) -> RQVAE:
    torch.manual_seed(0)
    return RQVAE(**{"input_dim": 12, "code_dim": 8, "levels": 3, "codebook_size": 8, "hidden_dim": 32, **kw})


def test_forward_shapes_and_index_range():
    x = clustered()
    out = model()(x)
    assert out.reconstruction.shape == x.shape
    assert out.indices.shape == (len(x), 3) and out.indices.dtype == torch.long
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < 8
    assert torch.isfinite(out.losses.total) and out.losses.commitment >= 0


def test_encode_decode_round_trip():
    x = clustered()
    m = model()
    train_rqvae(m, x, epochs=2, batch_size=64, lr=1e-3)
    idx = m.encode(x)  # (N, 3)
    assert idx.shape == (len(x), 3)
    with torch.no_grad():
        torch.testing.assert_close(m.decode(idx), m(x).reconstruction)


def test_training_lowers_reconstruction_and_uses_codes(tmp_path: Path):
    x = clustered()
    m = model()
    with torch.no_grad():
        before = float(m.eval()(x).losses.reconstruction)
    res = train_rqvae(m, x, epochs=40, batch_size=64, lr=3e-3, seed=0)
    assert res.reconstruction_error < 0.5 * before
    assert res.epoch_losses[-1] < res.epoch_losses[0]
    assert [u["used"] > 1 for u in res.utilisation] == [True, True, True]
    m.save(tmp_path / "rq.pt")
    again = RQVAE.load(tmp_path / "rq.pt")
    assert torch.equal(again.encode(x), m.encode(x))


def test_code_utilisation_counts():
    idx = torch.tensor([[0, 1], [0, 1], [2, 1], [3, 1]])
    u = code_utilisation(idx, 4)
    assert u[0]["used"] == 3 and u[0]["fraction"] == 0.75
    assert u[1]["used"] == 1 and abs(u[1]["perplexity"] - 1.0) < 1e-9


def test_quantizer_imports_nothing_from_coea_or_loops():
    for path in Path(__file__).resolve().parents[2].joinpath("quantizer").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("coea", "loops") for n in names), path


def test_standardize_centres_on_training_mean_and_survives_save_load(tmp_path: Path):
    x = clustered() + 50.0  # a large shared offset: raw rows are all nearly parallel
    m = model(standardize=True)
    train_rqvae(m, x, epochs=5, batch_size=64, lr=3e-3, seed=0)
    torch.testing.assert_close(m.center, x.mean(dim=0))
    with torch.no_grad():
        z = m.prepare(x)  # (N, d)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(len(x)))
    assert int(m.encode(x)[:, 0].unique().numel()) > 1  # the offset does not collapse the first level
    m.save(tmp_path / "rq.pt")
    again = RQVAE.load(tmp_path / "rq.pt")
    torch.testing.assert_close(again.center, m.center)
    assert torch.equal(again.encode(x), m.encode(x))


def _plain_loop(m: RQVAE, x: torch.Tensor, *, epochs: int, batch_size: int, lr: float, seed: int) -> list[float]:
    """The hand-written loop train_rqvae replaced (Adam, one permutation of `seed`'s generator per epoch after the
    k-means rows): the Lightning path must reproduce it step for step."""
    gen = torch.Generator().manual_seed(seed)
    m.train()
    if m.standardize:
        m.center.copy_(x.mean(dim=0))
    with torch.no_grad():
        m(x[torch.randperm(len(x), generator=gen)[:4096]])
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), batch_size):
            out = m(x[perm[start:start + batch_size]])
            opt.zero_grad(set_to_none=True)
            out.losses.total.backward()
            opt.step()
            total += float(out.losses.total.detach()) * len(perm[start:start + batch_size])
        losses.append(total / len(x))
    return losses


def test_lightning_training_equals_the_plain_loop_step_for_step():
    x = clustered() + 5.0
    a, b = model(standardize=True), model(standardize=True)  # same initial weights (seeded in model())
    torch.manual_seed(1)
    ref = _plain_loop(a, x, epochs=4, batch_size=64, lr=3e-3, seed=7)
    torch.manual_seed(1)  # ResidualVQ's k-means and dead-code replacement draw from the global RNG
    res = train_rqvae(b, x, epochs=4, batch_size=64, lr=3e-3, seed=7, progress_bar=False)
    assert res.epoch_losses == ref
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_history_logger_and_checkpoints(tmp_path: Path):
    from lightning.pytorch.loggers import CSVLogger

    from quantizer import RQVAEModule

    x = clustered()
    m = model()
    res = train_rqvae(m, x, epochs=3, batch_size=64, lr=3e-3, seed=0, checkpoint_dir=tmp_path / "ckpt",
                      progress_bar=False, logger=CSVLogger(tmp_path, name="logs", version=0))
    assert [h["epoch"] for h in res.history] == [0, 1, 2]
    assert [h["total"] for h in res.history] == res.epoch_losses
    for h in res.history:
        assert h["total"] == pytest.approx(h["reconstruction"] + h["commitment"])
        assert h["commitment"] > 0 and len(h["code_usage"]) == 3
        assert all(1 <= u["used"] <= 8 and 0 < u["fraction"] <= 1 for u in h["code_usage"])
    # the same figures reach a Lightning logger, one row per epoch
    import csv

    rows = [r for r in csv.DictReader((tmp_path / "logs" / "version_0" / "metrics.csv").open())
            if r.get("train/reconstruction")]
    assert len(rows) == 3
    assert float(rows[-1]["train/reconstruction"]) == pytest.approx(res.history[-1]["reconstruction"])
    assert {f"train/code_usage/level_{j}" for j in range(3)} <= set(rows[0])
    # the last checkpoint rebuilds the trained model
    assert (tmp_path / "ckpt" / "last.ckpt").exists() and (tmp_path / "ckpt" / "rqvae-epoch=2.ckpt").exists()
    again = RQVAEModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", map_location="cpu").rqvae
    assert torch.equal(again.encode(x), m.encode(x))


def test_training_starts_from_a_model_left_in_eval_mode():
    """Lightning keeps the mode it finds; a loaded (eval-mode) model must still train (EMA updates, commitment)."""
    x = clustered()
    m = model().eval()
    res = train_rqvae(m, x, epochs=2, batch_size=64, lr=3e-3, seed=0, progress_bar=False)
    assert all(h["commitment"] > 0 for h in res.history)
    assert not m.training  # left in eval mode afterwards, as before

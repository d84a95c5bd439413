"""RQ-VAE invariants on small clustered tensors."""

from __future__ import annotations

import ast
from pathlib import Path

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

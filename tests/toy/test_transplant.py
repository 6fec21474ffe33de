"""Transplant math: projections keep the Fourier outliers, synthetic controls, row freezing,
rows written at the right numbers, frozen rows bit-identical through real training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_fourier.commands.demo import planted_embeddings
from llm_fourier.errors import UserError
from llm_fourier.finetune import RowFreezer, embedding_params
from probes import FourierBasis, spectrum
from toy.adders import AdderConfig, build_adder
from toy.transplant import project_rows, rescale_rows, synthetic_embeddings

P = 121
BASIS = FourierBasis(P)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def outlier_periods(rows: np.ndarray) -> set[float]:
    return {round(o.period, 3) for o in spectrum(rows, BASIS, axis=0).outliers()}


@pytest.mark.parametrize("method", ["pca", "random"])
def test_projection_keeps_source_outlier_periods(method):
    # independent source: the demo's planted embeddings (random-walk background + noise)
    source = planted_embeddings(P, 256, (2, 2.5, 5, 10), seed=3)
    assert outlier_periods(source) == {2.0, 2.5, 5.0, 10.0}
    projected = project_rows(source, 48, method, seed=1)
    assert projected.shape == (P, 48)
    assert outlier_periods(projected) == {2.0, 2.5, 5.0, 10.0}


def test_pca_projection_is_the_top_principal_subspace():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((50, 20)) * np.linspace(5, 0.1, 20)  # decaying variances
    proj = project_rows(rows, 5, "pca")
    centred = rows - rows.mean(0)
    # variance kept equals the sum of the 5 largest eigenvalues of the covariance
    eig = np.sort(np.linalg.eigvalsh(centred.T @ centred))[::-1]
    kept = ((proj - proj.mean(0)) ** 2).sum()
    assert kept == pytest.approx(eig[:5].sum(), rel=1e-9)
    # equal width is a copy, a narrower source keeps its pairwise distances
    assert np.array_equal(project_rows(rows, 20), rows)
    for method in ("pca", "random"):
        wide = project_rows(rows, 32, method)
        assert wide.shape == (50, 32)
        d0 = np.linalg.norm(rows[:, None] - rows[None], axis=-1)
        d1 = np.linalg.norm(wide[:, None] - wide[None], axis=-1)
        assert np.allclose(d0, d1)
    with pytest.raises(UserError):
        project_rows(rows, 5, "umap")


def test_synthetic_controls():
    fourier = synthetic_embeddings(P, 64, "fourier", periods=(2, 2.5, 5, 10), norm=2.0)
    low = synthetic_embeddings(P, 64, "low", norm=2.0)
    rand = synthetic_embeddings(P, 64, "random", norm=2.0, seed=5)
    assert outlier_periods(fourier) == {2.0, 2.5, 5.0, 10.0}
    assert not {2.0, 2.5, 5.0, 10.0} & outlier_periods(low)
    assert spectrum(low, BASIS, axis=0).low_high(10)["low_fraction"] > 0.95
    # matched norms: the random control has the Fourier rows' norms, mean 2
    assert np.allclose(np.linalg.norm(rand, axis=1), np.linalg.norm(fourier, axis=1))
    assert np.linalg.norm(fourier, axis=1).mean() == pytest.approx(2.0)
    # every number gets its own embedding (the smooth components break n ~ n + 10)
    for e in (fourier, low):
        d = np.linalg.norm(e[:, None] - e[None], axis=-1) + np.eye(P)
        assert d.min() > 1e-3
    # other periods are honoured
    assert outlier_periods(synthetic_embeddings(P, 64, periods=(3, 8))) == {3.0, 8.0}
    with pytest.raises(UserError):
        synthetic_embeddings(P, 8, "fourier")  # 15 features do not fit 8 dims
    assert rescale_rows(fourier, None) is fourier


def test_row_freezer_survives_adamw_weight_decay():
    model, tok = build_adder(AdderConfig(max_number=20, n_layer=1, d_model=16, n_head=2), seed=0)
    frozen = np.array([5, 6, 7, 12])
    W = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is W  # tied
    before = W.detach().clone()
    freezer = RowFreezer(embedding_params(model), frozen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    x = torch.randint(0, len(tok), (8, 6))
    for _ in range(3):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        assert W.grad[frozen].abs().max() == 0
        opt.step()
        opt.zero_grad()
        freezer.restore()
    freezer.remove()
    assert torch.equal(W[frozen], before[frozen])
    others = np.setdiff1d(np.arange(len(tok)), frozen)
    assert (W[others] != before[others]).any(dim=1).float().mean() > 0.5


def test_without_restore_weight_decay_would_move_frozen_rows():
    # the reason RowFreezer restores rows: zero gradient alone does not stop AdamW's decay
    model, _ = build_adder(AdderConfig(max_number=20, n_layer=1, d_model=16, n_head=2), seed=0)
    W = model.get_input_embeddings().weight
    before = W.detach().clone()
    freezer = RowFreezer([W], [5])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    x = torch.randint(0, W.shape[0], (4, 5))
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    assert not torch.equal(W[5], before[5])
    assert torch.allclose(W[5], before[5] * (1 - 1e-2 * 0.5))
    freezer.restore()
    assert torch.equal(W[5], before[5])

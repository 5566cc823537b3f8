"""Low-rank EMA: exact at full rank, close to the dense EMA on low-rank streams."""

from __future__ import annotations

import pytest
import torch

from congrad import LowRankEMA
from congrad.core.reference import DenseEMA


def _stream(shape, steps, seed, signal_rank=3, noise=0.0):
    g = torch.Generator().manual_seed(seed)
    left = torch.randn(shape[0], signal_rank, generator=g)
    right = torch.randn(shape[1], signal_rank, generator=g)
    for _ in range(steps):
        coeff = torch.randn(signal_rank, generator=g).abs() + 0.5
        yield (left * coeff) @ right.T + noise * torch.randn(*shape, generator=g)


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (7, 7)])
def test_exact_at_full_rank(shape):
    low, dense = LowRankEMA(shape, rank=64, iters=1, gamma=0.8, seed=1), DenseEMA(shape, 0.8)
    assert low.rank == min(shape)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        grad = torch.randn(*shape, generator=g)
        low.update(grad)
        dense.update(grad)
        torch.testing.assert_close(low.dense().double(), dense.dense(), rtol=1e-5, atol=1e-5)


def test_first_update_is_the_gradient_after_bias_correction():
    grad = torch.randn(9, 6, generator=torch.Generator().manual_seed(3))
    ema = LowRankEMA((9, 6), rank=6, gamma=0.9)
    ema.update(grad)
    # One update: EMA = (1 - gamma) g, corrected by 1 / (1 - gamma) -> g exactly.
    torch.testing.assert_close(ema.dense(), grad, rtol=1e-5, atol=1e-5)
    assert ema.bias_correction == pytest.approx(0.1)


def test_bias_correction_by_hand():
    ema = LowRankEMA((2, 2), rank=2, gamma=0.5)
    ones = torch.ones(2, 2)
    ema.update(ones)
    ema.update(3 * ones)
    # raw = 0.5 * (0.5 * 1) + 0.5 * 3 = 1.75; corrected by 1 - 0.25 -> 7/3
    torch.testing.assert_close(ema.dense(), torch.full((2, 2), 7 / 3))


def test_exact_when_signal_rank_fits():
    low = LowRankEMA((40, 30), rank=4, iters=3, gamma=0.9, seed=0)
    dense = DenseEMA((40, 30), 0.9)
    for grad in _stream((40, 30), 8, seed=5, signal_rank=3):
        low.update(grad)
        dense.update(grad)
    torch.testing.assert_close(low.dense().double(), dense.dense(), rtol=1e-4, atol=1e-4)


def test_noisy_stream_cosine_is_high():
    """Rank-4 EMA of a rank-3 signal plus noise: compressed vs full EMA cosine."""
    low = LowRankEMA((64, 48), rank=4, iters=3, gamma=0.9, seed=0)
    dense = DenseEMA((64, 48), 0.9)
    for grad in _stream((64, 48), 30, seed=7, signal_rank=3, noise=0.3):
        low.update(grad)
        dense.update(grad)
    full = dense.dense().flatten()
    cosine = torch.nn.functional.cosine_similarity(low.dense().double().flatten(), full, dim=0)
    assert cosine > 0.97, f"cosine {cosine:.4f}"
    # The compression cannot beat the best rank-4 approximation of the dense EMA.
    u, s, vh = torch.linalg.svd(dense.dense())
    best = torch.nn.functional.cosine_similarity((u[:, :4] * s[:4] @ vh[:4]).flatten(), full, dim=0)
    assert cosine <= best + 1e-6


def test_inner_is_factored_frobenius_product():
    a, b = LowRankEMA((20, 15), rank=5, seed=1), LowRankEMA((20, 15), rank=3, seed=2)
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        a.update(torch.randn(20, 15, generator=g))
        b.update(torch.randn(20, 15, generator=g))
    expected = (a.dense().double() * b.dense().double()).sum()
    torch.testing.assert_close(a.inner(b).double(), expected, rtol=1e-5, atol=1e-6)


def test_zero_gradient_gives_zero_ema_without_nan():
    ema = LowRankEMA((6, 4), rank=2)
    ema.update(torch.zeros(6, 4))
    assert torch.isfinite(ema.P).all() and torch.isfinite(ema.Q).all()
    assert ema.dense().abs().max() == 0
    assert ema.inner(ema) == 0


def test_nbytes_and_validation():
    assert LowRankEMA((100, 50), rank=8).nbytes == 4 * 8 * 150
    with pytest.raises(ValueError, match="rank"):
        LowRankEMA((3, 3), rank=0)
    with pytest.raises(ValueError, match="gamma"):
        LowRankEMA((3, 3), gamma=1.0)
    with pytest.raises(ValueError, match="shape"):
        LowRankEMA((3, 3)).update(torch.zeros(3, 4))


def test_same_seed_same_factors():
    grads = list(_stream((30, 20), 3, seed=1, noise=1.0))
    first, second = LowRankEMA((30, 20), rank=4, seed=9), LowRankEMA((30, 20), rank=4, seed=9)
    for grad in grads:
        first.update(grad)
        second.update(grad)
    assert torch.equal(first.P, second.P) and torch.equal(first.Q, second.Q)

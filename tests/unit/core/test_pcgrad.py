"""PCGrad in Gram space: docs/design.md reference values and the flattened algorithm."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from congrad import pcgrad_weights, seeded_orders
from congrad.core.pcgrad import pcgrad_coefficients
from congrad.core.reference import flat_pcgrad


def _consensus(vectors, orders=None):
    vectors = torch.tensor(vectors, dtype=torch.float64)
    weights = pcgrad_weights(vectors @ vectors.T, orders)
    return weights @ vectors


def test_two_language_reference():
    torch.testing.assert_close(
        _consensus([[1, 0], [-1, 1]]), torch.tensor([0.5, 1.5], dtype=torch.float64)
    )


def test_three_language_reference_both_orders():
    g = [[1, 0, 0], [-1, 1, 0], [-1, -1, 1]]
    ascending = torch.tensor([-2 / 3, 1 / 3, 5 / 3], dtype=torch.float64)
    torch.testing.assert_close(_consensus(g), ascending)
    descending = [[2, 1], [2, 0], [1, 0]]
    expected = torch.tensor([1 / 6, 1 / 6, 4 / 3], dtype=torch.float64)
    torch.testing.assert_close(_consensus(g, descending), expected)


def test_no_conflict_means_plain_sum():
    vectors = torch.tensor([[1.0, 0.2], [0.5, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(
        pcgrad_weights(vectors @ vectors.T), torch.ones(2, dtype=torch.float64)
    )


@pytest.mark.parametrize("count", [1, 2, 3, 5, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_flattened_pcgrad(count, seed):
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(count, 17, generator=g, dtype=torch.float64)
    orders = seeded_orders([f"l{i}" for i in range(count)], seed)
    for visit in (None, orders):
        weights = pcgrad_weights(vectors @ vectors.T, visit)
        torch.testing.assert_close(
            weights @ vectors, flat_pcgrad(vectors, visit), rtol=1e-10, atol=1e-10
        )


def test_zero_language_produces_no_nan():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    weights = pcgrad_weights(vectors @ vectors.T)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights @ vectors, flat_pcgrad(vectors))


def test_rejects_bad_orders_and_gram():
    gram = torch.eye(3)
    with pytest.raises(ValueError, match="exactly once"):
        pcgrad_weights(gram, [[1, 2], [0, 0], [0, 1]])
    with pytest.raises(ValueError, match="entries"):
        pcgrad_weights(gram, [[1, 2]])
    with pytest.raises(ValueError, match="square"):
        pcgrad_weights(torch.ones(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        pcgrad_weights(torch.tensor([[float("nan")]]))


def test_seeded_orders_are_reproducible_permutations():
    langs = ["en", "de", "fr", "zh", "ar"]
    assert seeded_orders(langs, 3) == seeded_orders(langs, 3)
    assert seeded_orders(langs, 3) != seeded_orders(langs, 4)
    for index, order in enumerate(seeded_orders(langs, 3)):
        assert sorted(order) == [i for i in range(len(langs)) if i != index]


@settings(max_examples=60, deadline=None)
@given(count=st.integers(2, 6), dim=st.integers(2, 8), seed=st.integers(0, 10_000))
def test_last_projection_leaves_no_conflict(count, dim, seed):
    """After its last projection, g_l does not conflict with that language's G."""
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(count, dim, generator=g, dtype=torch.float64)
    orders = seeded_orders([str(i) for i in range(count)], seed)
    projected = pcgrad_coefficients(vectors @ vectors.T, orders) @ vectors
    for lang in range(count):
        last = orders[lang][-1]
        assert projected[lang] @ vectors[last] >= -1e-9 * (1 + vectors[last].norm() ** 2)
    torch.testing.assert_close(projected.sum(dim=0), flat_pcgrad(vectors, orders))

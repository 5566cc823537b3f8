"""PCGrad consensus of the per-language gradient EMAs, computed in Gram space.

In: the ``L x L`` Gram matrix ``K`` of the language EMAs (``K_ab = <G_a, G_b>``) and,
optionally, the order in which each language visits the others. Out: weights ``w``
``(L,)`` such that the PCGrad consensus is ``c = sum_l w_l G_l`` (docs/design.md section 5).

PCGrad (Yu et al. 2020) projects each language's gradient ``g_l`` (starting at ``G_l``)
off every other language's ``G_l'`` it conflicts with, in turn, and sums the results.
Each ``g_l`` stays a linear combination of the ``G``'s, so we track its coefficient row
``C_l`` instead of the vector: ``<g_l, G_l'> = C_l K e_l'`` and the projection subtracts
``(C_l K e_l') / K_l'l'`` from coefficient ``l'``. This costs ``O(L^3)`` scalar work and
equals the flattened algorithm up to float rounding. A language whose EMA is zero has
``K_l'l' = 0`` and conflicts with nothing, so it never causes a division by zero.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def _validate_orders(orders: Sequence[Sequence[int]], num: int) -> list[list[int]]:
    if len(orders) != num:
        raise ValueError(f"orders has {len(orders)} entries for {num} languages")
    checked = []
    for lang, order in enumerate(orders):
        expected = set(range(num)) - {lang}
        if sorted(order) != sorted(expected):
            raise ValueError(
                f"orders[{lang}] = {list(order)} must visit every other language index "
                f"{sorted(expected)} exactly once"
            )
        checked.append([int(i) for i in order])
    return checked


def pcgrad_coefficients(
    gram: torch.Tensor, orders: Sequence[Sequence[int]] | None = None
) -> torch.Tensor:
    """Coefficient rows ``C`` ``(L, L)``: language ``l``'s projected gradient is
    ``g_l = sum_j C[l, j] G_j``. Arguments as for :func:`pcgrad_weights`."""
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be square (L, L), got {tuple(gram.shape)}")
    num = gram.shape[0]
    if num == 0:
        raise ValueError("PCGrad needs at least one language")
    if not torch.isfinite(gram).all():
        raise ValueError("gram contains NaN or infinite entries")
    kernel = gram.detach().to(device="cpu", dtype=torch.float64)
    visit = (
        [[other for other in range(num) if other != lang] for lang in range(num)]
        if orders is None
        else _validate_orders(orders, num)
    )
    coefficients = torch.eye(num, dtype=torch.float64)
    for lang in range(num):
        row = coefficients[lang]  # a view: updated in place
        for other in visit[lang]:
            conflict = torch.dot(row, kernel[:, other])  # <g_lang, G_other>
            if conflict < 0 and kernel[other, other] > 0:
                row[other] -= conflict / kernel[other, other]
    return coefficients


def pcgrad_weights(
    gram: torch.Tensor, orders: Sequence[Sequence[int]] | None = None
) -> torch.Tensor:
    """PCGrad weights ``w`` ``(L,)`` with consensus ``c = sum_l w_l G_l``.

    Args:
        gram: ``(L, L)`` symmetric Gram matrix of the language EMAs.
        orders: ``orders[l]`` lists the other language indices in the order language
            ``l`` is projected against them; default ascending index order.

    Returns:
        float64 ``(L,)`` weights (column sums of :func:`pcgrad_coefficients`).
        ``|c|^2 = w @ gram @ w``.

    >>> gram = torch.tensor([[1.0, -1.0], [-1.0, 2.0]])   # G = [1, 0], [-1, 1]
    >>> pcgrad_weights(gram).tolist()                    # c = 2 G_0 + 1.5 G_1 = [0.5, 1.5]
    [2.0, 1.5]
    """
    return pcgrad_coefficients(gram, orders).sum(dim=0)


def seeded_orders(languages: Sequence[str], seed: int) -> list[list[int]]:
    """Visiting orders for :func:`pcgrad_weights`, shuffled reproducibly per language.

    The shuffle of language ``l`` depends only on ``seed`` and the language codes, not on
    any global RNG, so the same EMA and seed always give the same consensus.
    """
    orders = []
    for index, lang in enumerate(languages):
        others = [other for other in range(len(languages)) if other != index]
        digest = hashlib.sha256(f"pcgrad:{seed}:{lang}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        permutation = torch.randperm(len(others), generator=generator).tolist()
        orders.append([others[i] for i in permutation])
    return orders

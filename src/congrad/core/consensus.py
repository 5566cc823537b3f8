"""The cross-lingual consensus direction, in factored form, per tracked matrix.

In: a :class:`~congrad.core.gradient_ema.GradientEMA` (and optional PCGrad visiting orders).
Out: :class:`Consensus`: the PCGrad weights ``w`` ``(L,)``, ``|c|`` and, for each
tracked matrix, factors ``A`` ``(m, k)`` and ``B`` ``(n, k)`` with ``C = A B^T =
sum_l w_l EMA_l`` and ``k = r L`` (docs/design.md sections 5 and 6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from congrad.core.gradient_ema import GradientEMA
from congrad.core.pcgrad import pcgrad_weights


@dataclass(frozen=True)
class Consensus:
    """``c = sum_l weights[l] * EMA_{languages[l]}`` over all tracked matrices."""

    languages: list[str]
    weights: torch.Tensor
    norm: float
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def from_ema(cls, ema: GradientEMA, orders: Sequence[Sequence[int]] | None = None) -> Consensus:
        languages = ema.languages
        if not languages:
            raise ValueError(
                "the GradientEMA holds no language yet: it is filled by a training round "
                "(or a gradient pass over a dataset) before pairs can be scored"
            )
        gram = ema.gram()
        weights = pcgrad_weights(gram, orders)
        norm = math.sqrt(max(float(weights @ gram @ weights), 0.0))
        factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in ema.tracked_names:
            lefts, rights = [], []
            for weight, lang in zip(weights.tolist(), languages, strict=True):
                p, q = ema.matrices(lang)[name].corrected_factors()
                lefts.append(p)
                rights.append(q * weight)
            factors[name] = (torch.cat(lefts, dim=1), torch.cat(rights, dim=1))
        return cls(languages=languages, weights=weights, norm=norm, factors=factors)

    def dense(self, name: str) -> torch.Tensor:
        """The consensus of one tracked matrix as a dense ``(m, n)`` float32 matrix."""
        left, right = self.factors[name]
        return left @ right.T

"""Slow, obviously-correct references for the fast math, used by tests and benchmarks.

In/out mirror the fast versions: flattened PCGrad on explicit vectors (vs.
:func:`congrad.core.pcgrad.pcgrad_weights` in Gram space), a dense EMA (vs.
:class:`congrad.core.lowrank.LowRankEMA`), and per-pair autograd scores that materialise each
pair's full gradient (vs. :func:`congrad.core.scoring.score_pairs`). None of these is meant
for production sizes; each is written for the reader, not for speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from congrad.core.gradient_ema import GradientEMA, tracked_linears
from congrad.core.losses import lp_dpo_loss, sequence_logps
from congrad.data.encoding import encode_pair
from congrad.data.records import PreferencePair


def flat_pcgrad(
    vectors: torch.Tensor, orders: Sequence[Sequence[int]] | None = None
) -> torch.Tensor:
    """PCGrad (Yu et al. 2020) on explicit ``(L, D)`` vectors; returns the summed ``(D,)``."""
    count = vectors.shape[0]
    projected = []
    for lang in range(count):
        g = vectors[lang].clone()
        visit = orders[lang] if orders is not None else [o for o in range(count) if o != lang]
        for other in visit:
            conflict = torch.dot(g, vectors[other])
            norm_sq = torch.dot(vectors[other], vectors[other])
            if conflict < 0 and norm_sq > 0:
                g = g - conflict / norm_sq * vectors[other]
        projected.append(g)
    return torch.stack(projected).sum(dim=0)


class DenseEMA:
    """Full-rank EMA of one matrix with the same decay and bias correction."""

    def __init__(self, shape: tuple[int, int], gamma: float) -> None:
        self.value = torch.zeros(shape, dtype=torch.float64)
        self.gamma = gamma
        self.count = 0

    def update(self, grad: torch.Tensor) -> None:
        self.value = self.gamma * self.value + (1 - self.gamma) * grad.double()
        self.count += 1

    def dense(self) -> torch.Tensor:
        return self.value / (1 - self.gamma**self.count) if self.count else self.value


def flat_consensus(ema: GradientEMA, orders: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    """The PCGrad consensus over decompressed, flattened language EMAs ``(D,)``."""
    vectors = torch.stack(
        [
            torch.cat(
                [ema.matrices(lang)[name].dense().double().flatten() for name in ema.tracked_names]
            )
            for lang in ema.languages
        ]
    )
    return flat_pcgrad(vectors, orders)


def pair_loss(
    model: nn.Module,
    tokenizer: Any,
    pair: PreferencePair,
    *,
    beta: float,
    alpha: float,
    max_length: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pair's LP-DPO loss with reference = the current weights (the loss the filter
    scores), from two separate unpadded forwards; and its chosen/rejected summed log-probs."""
    encoded = encode_pair(tokenizer, pair, max_length)
    logps = []
    for ids, mask in (
        (encoded.chosen_input_ids, encoded.chosen_response_mask),
        (encoded.rejected_input_ids, encoded.rejected_response_mask),
    ):
        logits = model(input_ids=ids[None], use_cache=False).logits
        logps.append(sequence_logps(logits, ids[None], mask[None]))
    chosen, rejected = logps
    loss = lp_dpo_loss(
        chosen,
        rejected,
        chosen.detach(),
        rejected.detach(),
        torch.tensor([encoded.chosen_length]),
        torch.tensor([encoded.rejected_length]),
        beta=beta,
        alpha=alpha,
    ).sum()
    return loss, chosen.detach(), rejected.detach()


def per_pair_gradient(
    model: nn.Module,
    tokenizer: Any,
    pair: PreferencePair,
    names: Sequence[str],
    *,
    beta: float,
    alpha: float,
    max_length: int,
) -> tuple[torch.Tensor, float, float]:
    """Flattened gradient of one pair's LP-DPO loss (reference = current weights) over
    the weights ``names``, and the pair's chosen/rejected summed log-probs."""
    parameters = dict(model.named_parameters())
    loss, chosen, rejected = pair_loss(
        model, tokenizer, pair, beta=beta, alpha=alpha, max_length=max_length
    )
    grads = torch.autograd.grad(loss, [parameters[name] for name in names])
    flat = torch.cat([g.double().flatten() for g in grads])
    return flat, float(chosen), float(rejected)


def per_pair_scores(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    ema: GradientEMA,
    *,
    beta: float,
    alpha: float,
    max_length: int,
    orders: Sequence[Sequence[int]] | None = None,
) -> list[dict[str, float]]:
    """One backward per pair, full gradient materialised: ``cosine, dot, grad_norm``."""
    consensus = flat_consensus(ema, orders)
    names = list(tracked_linears(model, ema.include))
    model.eval()
    rows = []
    for pair in pairs:
        grad, chosen, rejected = per_pair_gradient(
            model, tokenizer, pair, names, beta=beta, alpha=alpha, max_length=max_length
        )
        dot = float(grad @ consensus)
        norm = float(grad.norm())
        denominator = norm * float(consensus.norm())
        rows.append(
            {
                "cosine": dot / denominator if denominator > 0 else 0.0,
                "dot": dot,
                "grad_norm": norm,
                "ref_chosen_logps": chosen,
                "ref_rejected_logps": rejected,
            }
        )
    return rows

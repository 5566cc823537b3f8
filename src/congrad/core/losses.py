"""Sequence log-probabilities and the length-penalised DPO loss (paper eq. 3).

In: model logits and token labels with a response mask, or summed log-probs of chosen
and rejected responses under the policy and the reference. Out: per-sequence summed
log-probs ``(B,)`` and per-pair losses ``(B,)``.

This is the one implementation of the loss: training and the filter's scoring pass both
call :func:`lp_dpo_loss`, so "the filter's gradient is the gradient of the training loss"
holds by construction (docs/design.md section 3, docs/architecture.md, design note 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """Summed log-probabilities of the response tokens of each sequence.

    Args:
        logits: ``(B, T, V)`` logits of a causal LM run on ``labels``; the logits at
            position ``t - 1`` score the token at position ``t`` (shifted here).
        labels: ``(B, T)`` token ids of the full sequences (prompt + response + padding).
        loss_mask: ``(B, T)`` true exactly at response tokens (never prompt or padding).
            Position 0 cannot be scored (nothing precedes it) and must be false.

    Returns:
        ``(B,)`` float32 (or float64 for float64 logits) sums of ``log p(token | prefix)``
        over the masked tokens.

    >>> logits = torch.zeros(1, 3, 4)          # uniform over 4 tokens
    >>> labels = torch.tensor([[0, 1, 2]])
    >>> mask = torch.tensor([[False, True, True]])
    >>> round(sequence_logps(logits, labels, mask).item(), 6)  # 2 * log(1/4)
    -2.772589
    """
    if logits.shape[:2] != labels.shape or labels.shape != loss_mask.shape:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}, "
            f"loss_mask {tuple(loss_mask.shape)}; expected (B, T, V), (B, T), (B, T)"
        )
    mask = loss_mask.bool()
    if mask[:, 0].any():
        raise ValueError("loss_mask is true at position 0, which no logit can score")
    shifted_logits = logits[:, :-1, :]
    if shifted_logits.dtype not in (torch.float32, torch.float64):
        shifted_logits = shifted_logits.float()
    target = labels[:, 1:]
    target_mask = mask[:, 1:]
    # Masked positions may hold padding ids such as -100: point them at token 0.
    safe_target = torch.where(target_mask, target, torch.zeros_like(target))
    target_logits = shifted_logits.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)
    token_logps = target_logits - torch.logsumexp(shifted_logits, dim=-1)
    return (token_logps * target_mask).sum(dim=-1)


def lp_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float,
    alpha: float,
) -> torch.Tensor:
    """Per-pair length-penalised DPO loss, ``-log sigmoid(beta * p_m + alpha * l_m)``.

    ``p_m = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)`` and
    ``l_m = chosen_lengths - rejected_lengths`` in response tokens (paper eq. 3).
    ``alpha = 0`` is the standard sigmoid DPO loss. All inputs are ``(B,)``; returns
    ``(B,)``. Computed with ``logsigmoid``, so large margins neither overflow nor
    round to zero.

    >>> zero = torch.zeros(1)
    >>> round(lp_dpo_loss(zero, zero, zero, zero, zero, zero, beta=0.1, alpha=0.0).item(), 6)
    0.693147
    >>> four = torch.tensor([4.0])
    >>> round(lp_dpo_loss(four, zero, zero, zero, zero, zero, beta=0.1, alpha=0.0).item(), 6)
    0.513015
    """
    policy_margin = (policy_chosen_logps - ref_chosen_logps) - (
        policy_rejected_logps - ref_rejected_logps
    )
    length_margin = chosen_lengths.to(policy_margin.dtype) - rejected_lengths.to(
        policy_margin.dtype
    )
    return -F.logsigmoid(beta * policy_margin + alpha * length_margin)

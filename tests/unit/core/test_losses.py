"""LP-DPO and sequence log-probs: hand-computed values and slow references."""

from __future__ import annotations

import math

import pytest
import torch

from congrad import lp_dpo_loss, sequence_logps


def _loss(pc, pr, rc, rr, lc, lr, beta, alpha):
    t = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
    return lp_dpo_loss(t(pc), t(pr), t(rc), t(rr), t(lc), t(lr), beta=beta, alpha=alpha).item()


def test_hand_computed_values():
    # docs/design.md section 3.
    assert _loss(0, 0, 0, 0, 5, 5, 0.1, 0.01) == pytest.approx(math.log(2), abs=1e-12)
    assert _loss(0, 0, 0, 0, 0, 0, 0.1, 0.0) == pytest.approx(0.693147, abs=5e-7)
    # p_m = (-1 - -5) - (-3 - -3) = 4
    assert _loss(-1, -3, -5, -3, 0, 0, 0.1, 0.0) == pytest.approx(0.513015, abs=5e-7)
    assert _loss(-1, -3, -5, -3, 10, 40, 0.1, 0.01) == pytest.approx(0.644397, abs=5e-7)
    # By hand: -log sigmoid(0.4 - 0.3) = log(1 + e^-0.1)
    assert _loss(-1, -3, -5, -3, 10, 40, 0.1, 0.01) == pytest.approx(
        math.log1p(math.exp(-0.1)), abs=1e-12
    )


def test_alpha_zero_is_textbook_dpo():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(32, generator=g, dtype=torch.float64) * 20 for _ in range(4))
    lengths = torch.randint(1, 200, (2, 32), generator=g)
    ours = lp_dpo_loss(pc, pr, rc, rr, lengths[0], lengths[1], beta=0.3, alpha=0.0)
    logits = 0.3 * ((pc - rc) - (pr - rr))
    textbook = -torch.log(1 / (1 + torch.exp(-logits)))
    torch.testing.assert_close(ours, textbook, rtol=1e-10, atol=1e-10)


def test_stable_for_huge_margins():
    big = torch.tensor([1e4, -1e4], dtype=torch.float32)
    zero = torch.zeros(2)
    loss = lp_dpo_loss(big, zero, zero, zero, zero, zero, beta=1.0, alpha=0.0)
    assert torch.isfinite(loss).all()
    assert loss[0].item() == 0.0
    assert loss[1].item() == pytest.approx(1e4)


def test_gradient_matches_closed_form():
    g = torch.Generator().manual_seed(1)
    pc, pr = (torch.randn(8, generator=g, dtype=torch.float64, requires_grad=True) for _ in "ab")
    rc, rr = (torch.randn(8, generator=g, dtype=torch.float64) for _ in "ab")
    lc, lr = torch.randint(1, 50, (2, 8), generator=g)
    beta, alpha = 0.2, 0.01
    lp_dpo_loss(pc, pr, rc, rr, lc, lr, beta=beta, alpha=alpha).sum().backward()
    z = beta * ((pc - rc) - (pr - rr)) + alpha * (lc - lr)
    # d/dz -log sigmoid(z) = -sigmoid(-z); dz/dpc = beta, dz/dpr = -beta
    expected = -torch.sigmoid(-z.detach()) * beta
    torch.testing.assert_close(pc.grad, expected)
    torch.testing.assert_close(pr.grad, -expected)


def test_sequence_logps_matches_loop():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, 3:] = True
    mask[1, 1:5] = True  # padding after position 4
    mask[2, 6] = True
    labels[1, 5:] = -100  # padding ids are never gathered
    expected = torch.zeros(3, dtype=torch.float64)
    for b in range(3):
        for t in range(1, 7):
            if mask[b, t]:
                expected[b] += torch.log_softmax(logits[b, t - 1], dim=-1)[labels[b, t]]
    torch.testing.assert_close(sequence_logps(logits, labels, mask), expected)


def test_sequence_logps_rejects_bad_input():
    with pytest.raises(ValueError, match="shape mismatch"):
        sequence_logps(torch.zeros(1, 3, 4), torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3))
    mask = torch.tensor([[True, True, False]])
    with pytest.raises(ValueError, match="position 0"):
        sequence_logps(torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), mask)

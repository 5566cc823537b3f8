"""One matrix's gradient EMA, stored as low-rank factors (docs/design.md section 4).

In: a stream of gradients ``g`` ``(m, n)`` of one weight matrix. Out: factors ``P``
``(m, r)`` with orthonormal columns and ``Q`` ``(n, r)`` with ``EMA ~= P Q^T``, the
bias-corrected dense matrix on request, and factored inner products.

Update (reconstructed; the paper's Algorithm 1 is not available):
``M = gamma * P Q^T + (1 - gamma) * g`` is never formed. Subspace iteration warm-started
from the old ``Q`` needs only products with ``M``::

    M X   = gamma * P (Q^T X) + (1 - gamma) * g X
    M^T Y = gamma * Q (P^T Y) + (1 - gamma) * g^T Y
    repeat iters times:  P <- orth(M Q);  Q <- M^T P

so memory stays ``r (m + n)`` floats beside the gradient itself. The first update
starts from a seeded Gaussian ``Q``. With ``r >= min(m, n)`` the factors are exact:
``P P^T`` then projects onto a space holding every column of ``M``.

Bias correction divides by ``1 - gamma^count`` (as Adam does), so a language seen in few
minibatches is not shrunk towards zero relative to one seen in many.
"""

from __future__ import annotations

import torch

from congrad.util.seeds import stable_seed


class LowRankEMA:
    """Exponential moving average of one matrix's gradients in factored form.

    Args:
        shape: ``(m, n)`` of the tracked matrix.
        rank: factor rank ``r``; capped at ``min(m, n)``, where it is exact.
        iters: subspace iterations per update.
        gamma: EMA decay in ``[0, 1)``.
        seed: seeds the Gaussian start of the first update.
        device: where the factors live (default CPU); gradients are moved there.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        *,
        rank: int = 64,
        iters: int = 3,
        gamma: float = 0.9,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be (m, n) with m, n >= 1, got {shape}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"gamma must lie in [0, 1), got {gamma}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.rank = min(rank, *self.shape)
        self.iters = iters
        self.gamma = gamma
        self.seed = seed
        self.count = 0
        rows, cols = self.shape
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.P = torch.zeros(rows, self.rank, dtype=torch.float32, device=self.device)
        self.Q = torch.zeros(cols, self.rank, dtype=torch.float32, device=self.device)

    @property
    def bias_correction(self) -> float:
        """``1 - gamma^count``; 0 before the first update."""
        return 1.0 - self.gamma**self.count

    @property
    def nbytes(self) -> int:
        return self.P.numel() * self.P.element_size() + self.Q.numel() * self.Q.element_size()

    def _initial_q(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(stable_seed("lowrank-init", self.seed))
        start = torch.randn(self.shape[1], self.rank, generator=generator)
        return start.to(self.device)

    @torch.no_grad()
    def update(self, grad: torch.Tensor) -> None:
        """Fold ``grad`` ``(m, n)`` into the EMA (see the module docstring)."""
        if tuple(grad.shape) != self.shape:
            raise ValueError(f"gradient shape {tuple(grad.shape)} != EMA shape {self.shape}")
        g = grad.detach().to(device=self.device, dtype=torch.float32)
        old_p, old_q = self.P, self.Q
        decay, fresh = self.gamma, 1.0 - self.gamma

        def apply_m(x: torch.Tensor) -> torch.Tensor:  # M x, x: (n, r)
            return decay * (old_p @ (old_q.T @ x)) + fresh * (g @ x)

        def apply_mt(y: torch.Tensor) -> torch.Tensor:  # M^T y, y: (m, r)
            return decay * (old_q @ (old_p.T @ y)) + fresh * (g.T @ y)

        q = old_q if self.count > 0 else self._initial_q()
        p = old_p
        for _ in range(self.iters):
            p, _ = torch.linalg.qr(apply_m(q))
            q = apply_mt(p)
        self.P, self.Q = p.contiguous(), q.contiguous()
        self.count += 1

    def corrected_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, Q / (1 - gamma^count))``: the bias-corrected EMA is ``P @ Q'^T``."""
        if self.count == 0:
            return self.P, self.Q
        return self.P, self.Q / self.bias_correction

    def dense(self) -> torch.Tensor:
        """The bias-corrected EMA as a dense ``(m, n)`` matrix (zeros before any update)."""
        p, q = self.corrected_factors()
        return p @ q.T

    def inner(self, other: LowRankEMA) -> torch.Tensor:
        """Frobenius inner product of the two bias-corrected EMAs, never decompressed.

        ``<P1 Q1^T, P2 Q2^T> = sum((P1^T P2) * (Q1^T Q2))``: ``O(r^2 (m + n))``.
        """
        if other.shape != self.shape:
            raise ValueError(f"shapes differ: {self.shape} vs {other.shape}")
        p1, q1 = self.corrected_factors()
        p2, q2 = other.corrected_factors()
        return ((p1.T @ p2.to(p1.device)) * (q1.T @ q2.to(q1.device))).sum()

    def state(self) -> dict[str, torch.Tensor]:
        """Raw (uncorrected) factors, for saving."""
        return {"P": self.P, "Q": self.Q}

    def load_state(self, state: dict[str, torch.Tensor], count: int) -> None:
        """Restore factors saved by :meth:`state` after ``count`` updates."""
        p, q = state["P"], state["Q"]
        if tuple(p.shape) != tuple(self.P.shape) or tuple(q.shape) != tuple(self.Q.shape):
            raise ValueError(
                f"saved factors {tuple(p.shape)}, {tuple(q.shape)} do not fit "
                f"{tuple(self.P.shape)}, {tuple(self.Q.shape)}"
            )
        self.P = p.to(device=self.device, dtype=torch.float32).contiguous()
        self.Q = q.to(device=self.device, dtype=torch.float32).contiguous()
        self.count = int(count)

"""Float32 error budgets for tests that compare two float32 computations of the same thing.

Why not an element-wise ``rtol``: a gradient entry is a sum over tokens of products that
mostly cancel, so a small entry can carry the rounding error of the large terms it was
summed from. Its relative error is unbounded, and which entry trips a per-element check
changes with the kernels of each torch / transformers release. What floating-point error
analysis does bound is the error *relative to the matrix's norm* (Higham, Accuracy and
Stability of Numerical Algorithms, 2nd ed.: section 3.1 for sums and inner products,
section 19.3 for Householder QR):

- a sum of ``n`` float32 terms is off by at most ``gamma(n) = n u / (1 - n u)`` times the
  sum of the terms' magnitudes, ``u = 2**-24`` the unit roundoff;
- a matrix product with inner dimension ``n`` is off by at most ``gamma(n)`` in norm;
- Householder QR of an ``m x n`` matrix is backward stable with ``||dA|| <= gamma(c m n)
  ||A||``; the subspace iteration of the low-rank EMA runs one per iteration.

The budgets below add these first-order bounds over the operations a test's two paths run
(:func:`float32_budget`). They are worst cases: rounding errors are random in sign and
typically grow like ``sqrt(n) u``, so a correct result sits orders of magnitude inside
them, while any real defect (a missing scale, the wrong minibatch, a stale gradient)
gives an error of order one.
"""

from __future__ import annotations

import torch

UNIT_ROUNDOFF = 2.0**-24  # float32: half the spacing of floats in [1, 2)


def gamma(n: int) -> float:
    """Higham's ``gamma_n``: the relative bound of ``n`` rounded float32 operations."""
    if n * UNIT_ROUNDOFF >= 1:
        raise ValueError(f"gamma({n}) is undefined in float32")
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


def float32_budget(*operation_lengths: int) -> float:
    """Relative norm-wise budget of a float32 pipeline: the sum of ``gamma(n)`` over the
    lengths of its reductions (first order, which is all that matters at these sizes)."""
    return sum(gamma(n) for n in operation_lengths)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected||_F / ||expected||_F`` in float64."""
    difference = (actual.double() - expected.double()).norm()
    scale = expected.double().norm()
    return float(difference / scale) if scale > 0 else float(difference)


def assert_close_in_norm(
    actual: torch.Tensor, expected: torch.Tensor, budget: float, msg: str = ""
) -> None:
    """The Frobenius-norm error of ``actual`` relative to ``expected`` is within ``budget``."""
    assert actual.shape == expected.shape, f"{msg}: shape {actual.shape} != {expected.shape}"
    error = relative_error(actual, expected)
    assert error <= budget, f"{msg}: relative error {error:.3g} exceeds the budget {budget:.3g}"

"""The benchmark's metrics: separation AUC, precision of a kept set, preference accuracy,
and seeded intervals over seeds.

In: plain numbers (scores, labels, rewards, per-seed values). Out: floats. Pure numpy.

* :func:`separation_auc`: the probability that a random clean pair scores above a random
  planted one, ties counting 1/2 (the Mann-Whitney U statistic over ``n_clean *
  n_planted``), computed from average ranks in ``O(n log n)``.
* :func:`kept_precision`: the share of kept pairs that are clean.
* :func:`preference_accuracy`: the share of pairs whose chosen reward exceeds the
  rejected one, equal rewards counting 1/2 (an untrained model, whose implicit rewards
  are all 0, scores exactly 0.5).
* :func:`mean_interval`: the mean over seeds with a seeded percentile bootstrap interval.
  With few seeds a bootstrap interval is narrower than a t interval would be; report
  the seed count beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from congrad.util.seeds import stable_seed


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with tied values given the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def separation_auc(scores: Sequence[float], planted: Sequence[bool]) -> float:
    """``P(score_clean > score_planted) + 1/2 P(equal)``: 1 when every clean pair outranks
    every planted one, 0.5 for a score blind to the labels.

    >>> separation_auc([3.0, 2.0, 1.0, 2.0], [False, False, True, True])
    0.875
    """
    values = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(planted, dtype=bool)
    if values.shape != labels.shape or values.ndim != 1:
        raise ValueError("scores and planted must be 1-D and of equal length")
    if not np.isfinite(values).all():
        raise ValueError("scores must be finite")
    clean = int((~labels).sum())
    dirty = int(labels.sum())
    if clean == 0 or dirty == 0:
        raise ValueError("separation_auc needs at least one clean and one planted pair")
    rank_sum = float(_average_ranks(values)[~labels].sum())
    return (rank_sum - clean * (clean + 1) / 2) / (clean * dirty)


def kept_precision(kept: Sequence[bool], planted: Sequence[bool]) -> float:
    """Share of the kept pairs that are clean (not planted).

    >>> kept_precision([True, True, False, True], [False, True, True, False])
    0.6666666666666666
    """
    keep = np.asarray(kept, dtype=bool)
    labels = np.asarray(planted, dtype=bool)
    if keep.shape != labels.shape:
        raise ValueError("kept and planted must have equal length")
    if not keep.any():
        raise ValueError("kept_precision needs at least one kept pair")
    return float((keep & ~labels).sum() / keep.sum())


def preference_accuracy(
    chosen_rewards: Sequence[float], rejected_rewards: Sequence[float]
) -> float:
    """Share with ``chosen > rejected``, ties 1/2.

    >>> preference_accuracy([1.0, 0.0, -1.0, 2.0], [0.0, 0.0, 1.0, 1.0])
    0.625
    """
    chosen = np.asarray(chosen_rewards, dtype=np.float64)
    rejected = np.asarray(rejected_rewards, dtype=np.float64)
    if chosen.shape != rejected.shape or chosen.size == 0:
        raise ValueError("chosen and rejected rewards must be non-empty and of equal length")
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def mean_interval(
    values: Sequence[float],
    *,
    seed: int,
    label: str,
    resamples: int = 2000,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """``(mean, low, high)``: percentile bootstrap of the mean over ``values`` (one per
    seed), its generator seeded by ``stable_seed(seed, label)``. One value: ``(v, v, v)``.

    >>> mean_interval([0.5, 0.5], seed=0, label="x")
    (0.5, 0.5, 0.5)
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("mean_interval needs at least one value")
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError("confidence must lie in (0, 1) and resamples be >= 1")
    mean = float(data.mean())
    if data.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(stable_seed(seed, "mean_interval", label))
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return mean, float(min(low, mean)), float(max(high, mean))

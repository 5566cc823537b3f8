"""Stage 5: keep a share of each language's pairs by a strategy's score (docs/design.md s. 7).

In: preference pairs, a :class:`~congrad.config.run.Strategy`, the keep fraction ``rho`` and,
for the CONGRAD strategies, each pair's cosine to the consensus. Out: per pair a
:class:`Selection` row (its score, its rank within its language, kept or not), so users
can inspect why a pair was kept.

Each language keeps exactly ``ceil(rho * n)`` of its ``n`` pairs: the largest scores for
``max-*``, the smallest for ``min-*``, a seeded uniform choice for ``rand`` (seed from
hashlib over the run seed and the pair id), everything for ``full``. Equal scores are
ordered by ``pair_id`` so the result never depends on record order.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from congrad.config.run import Strategy
from congrad.data.records import PreferencePair


@dataclass(frozen=True, slots=True)
class Selection:
    pair_id: str
    lang: str
    score: float | None
    """The strategy's score (None for ``full``)."""
    rank: int
    """0 = first choice within the language."""
    kept: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def keep_count(total: int, keep_fraction: float) -> int:
    """``ceil(rho * n)``, guarded against float noise (0.3 * 10 is 3.0000000000000004).

    >>> keep_count(10, 0.3), keep_count(7, 0.5), keep_count(0, 0.5)
    (3, 4, 0)
    """
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must lie in (0, 1], got {keep_fraction}")
    return min(total, math.ceil(round(total * keep_fraction, 9)))


def _uniform(seed: int, pair_id: str) -> float:
    digest = hashlib.sha256(f"rand:{seed}:{pair_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def strategy_scores(
    pairs: Sequence[PreferencePair],
    strategy: Strategy,
    *,
    seed: int,
    congrad_cosines: Mapping[str, float] | None = None,
    lengths: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, float | None]:
    """The score of every pair under ``strategy``.

    ``lengths`` maps pair ids to (chosen, rejected) response lengths in tokens for the
    length strategies (default: characters of the texts, when no tokenizer is at hand).
    """
    if strategy is Strategy.FULL:
        return {p.pair_id: None for p in pairs}
    if strategy is Strategy.RAND:
        return {p.pair_id: _uniform(seed, p.pair_id) for p in pairs}
    if strategy in (Strategy.MAX_LEN, Strategy.MIN_LEN):
        scores: dict[str, float | None] = {}
        for p in pairs:
            chosen, rejected = (
                lengths[p.pair_id] if lengths is not None else (len(p.chosen), len(p.rejected))
            )
            scores[p.pair_id] = float(chosen - rejected)
        return scores
    if strategy in (Strategy.MAX_REWARD, Strategy.MIN_REWARD):
        margins = {p.pair_id: p.reward_margin for p in pairs}
        missing = [pid for pid, margin in margins.items() if margin is None]
        if missing:
            raise ValueError(
                f"{strategy} needs judge scores, but pair {missing[0]!r} has none "
                "(a dataset without chosen_score/rejected_score columns?)"
            )
        return dict(margins)
    if congrad_cosines is None:
        raise ValueError(f"{strategy} needs CONGRAD cosines from the scoring pass")
    absent = [p.pair_id for p in pairs if p.pair_id not in congrad_cosines]
    if absent:
        raise ValueError(f"no CONGRAD score for pair {absent[0]!r}")
    return {p.pair_id: congrad_cosines[p.pair_id] for p in pairs}


def select_pairs(
    pairs: Sequence[PreferencePair],
    scores: Mapping[str, float | None],
    strategy: Strategy,
    keep_fraction: float,
) -> list[Selection]:
    """Rank each language's pairs by ``scores`` and keep ``ceil(rho * n)`` of them.

    ``full`` keeps everything whatever ``keep_fraction`` says. Output follows ``pairs``.
    """
    by_lang: dict[str, list[PreferencePair]] = defaultdict(list)
    for pair in pairs:
        by_lang[pair.lang].append(pair)
    decided: dict[str, Selection] = {}
    for lang, group in by_lang.items():
        if strategy is Strategy.FULL:
            ordered = sorted(group, key=lambda p: p.pair_id)
            kept = len(group)
        else:
            sign = -1.0 if strategy.keeps_largest or strategy is Strategy.RAND else 1.0
            values: dict[str, float] = {}
            for pair in group:
                value = scores.get(pair.pair_id)
                if value is None:
                    raise ValueError(f"{strategy} has no score for pair {pair.pair_id!r}")
                values[pair.pair_id] = value
            ordered = sorted(group, key=lambda p: (sign * values[p.pair_id], p.pair_id))
            kept = keep_count(len(group), keep_fraction)
        for rank, pair in enumerate(ordered):
            decided[pair.pair_id] = Selection(
                pair.pair_id, lang, scores.get(pair.pair_id), rank, rank < kept
            )
    return [decided[p.pair_id] for p in pairs]

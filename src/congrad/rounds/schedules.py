"""Minibatch schedules of one training epoch: the order in which single-language
minibatches are trained (docs/design.md sections 2 and 7).

In: the round's kept preference pairs, the minibatch size and a seed, plus what a
schedule ranks languages by. Out: a list of minibatches, each a list of pair indices of
ONE language, which :func:`congrad.rounds.train.train_round` trains in order.

- ``mixed`` (:func:`congrad.rounds.train.language_schedule`): every pair exactly once, each
  language's minibatches interleaved in a seeded order. CONGRAD and every filtering
  baseline train this way.
- ``uab`` (:func:`uab_schedule`), the paper's uncertainty-aware baseline with the full
  data. Reconstruction (the paper gives no formula): uncertainty is proxied by the
  language's mean judge margin ``m_l`` (chosen minus rejected score: a small margin means
  the judge barely separates the answers), and each minibatch draws its language with
  probability ``softmax(-m_l)`` (margins in rubric points, temperature 1 point: a language
  whose pairs are one point closer is e times as likely). The epoch keeps the ``mixed``
  schedule's number of minibatches; a drawn language takes its next minibatch, cycling
  through its own when exhausted, so frequent languages repeat pairs and rare ones skip some.
- ``lcl`` (:func:`lcl_schedule`), the curriculum baseline with the full data: languages are
  ranked by the seed model's multiple-choice accuracy; the top half (rounded up) are the
  dominant ones. Phase 1 trains the first half (rounded up) of each dominant language's
  minibatches; phase 2 everything left, all languages interleaved. Every pair exactly once.
  Languages without an accuracy rank last.

Seeds come from hashlib (``stable_seed``), never the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from congrad.data.records import PreferencePair
from congrad.rounds.train import language_schedule
from congrad.util.seeds import stable_seed


def _by_language(pairs: Sequence[PreferencePair], schedule: list[list[int]]) -> dict[str, list]:
    chunks: dict[str, list[list[int]]] = {}
    for batch in schedule:
        chunks.setdefault(pairs[batch[0]].lang, []).append(batch)
    return chunks


def uab_probabilities(pairs: Sequence[PreferencePair]) -> dict[str, float]:
    """``softmax(-mean margin)`` over the languages of ``pairs``, sorted by language.

    >>> pairs = [PreferencePair("a", "en", "q", "x", "y", 5.0, 1.0),
    ...          PreferencePair("b", "de", "q", "x", "y", 3.0, 2.0)]
    >>> {k: round(v, 4) for k, v in uab_probabilities(pairs).items()}
    {'de': 0.9526, 'en': 0.0474}
    """
    margins: dict[str, list[float]] = {}
    for pair in pairs:
        margin = pair.reward_margin
        if margin is None:
            raise ValueError(
                f"train.schedule=uab needs judge scores, but pair {pair.pair_id!r} has none"
            )
        margins.setdefault(pair.lang, []).append(margin)
    means = {lang: math.fsum(values) / len(values) for lang, values in sorted(margins.items())}
    top = max(-m for m in means.values())
    weights = {lang: math.exp(-m - top) for lang, m in means.items()}
    total = math.fsum(weights.values())
    return {lang: w / total for lang, w in weights.items()}


def uab_schedule(pairs: Sequence[PreferencePair], batch_size: int, seed: int) -> list[list[int]]:
    """Minibatches whose languages are drawn by :func:`uab_probabilities` (see module doc)."""
    base = language_schedule(pairs, batch_size, seed)
    chunks = _by_language(pairs, base)
    probabilities = uab_probabilities(pairs)
    languages = list(probabilities)
    bounds = []
    running = 0.0
    for lang in languages:
        running += probabilities[lang]
        bounds.append(running)
    taken = dict.fromkeys(languages, 0)
    schedule = []
    for slot in range(len(base)):
        draw = stable_seed("uab", seed, slot) / 2**63 * bounds[-1]
        lang = next(
            (lg for lg, b in zip(languages, bounds, strict=True) if draw < b), languages[-1]
        )
        own = chunks[lang]
        schedule.append(own[taken[lang] % len(own)])
        taken[lang] += 1
    return schedule


def lcl_schedule(
    pairs: Sequence[PreferencePair],
    batch_size: int,
    seed: int,
    accuracy: Mapping[str, float],
) -> list[list[int]]:
    """The curriculum of the module docstring: dominant languages' first half, then the rest.

    ``accuracy`` maps languages to the seed model's multiple-choice accuracy.
    """
    base = language_schedule(pairs, batch_size, seed)
    chunks = _by_language(pairs, base)
    dominant = set(dominant_languages(list(chunks), accuracy))
    early: set[int] = set()
    for lang in dominant:
        own = chunks[lang]
        early.update(id(batch) for batch in own[: math.ceil(len(own) / 2)])
    first = [batch for batch in base if id(batch) in early]
    return first + [batch for batch in base if id(batch) not in early]


def dominant_languages(languages: Sequence[str], accuracy: Mapping[str, float]) -> list[str]:
    """The top half (rounded up) of ``languages`` by accuracy, best first; ties by code.

    >>> dominant_languages(["en", "de", "zh"], {"en": 0.8, "de": 0.5, "zh": 0.6})
    ['en', 'zh']
    """
    ranked = sorted(languages, key=lambda lang: (-accuracy.get(lang, -math.inf), lang))
    return ranked[: math.ceil(len(ranked) / 2)]

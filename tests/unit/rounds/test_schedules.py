"""Training schedules: mixed, uab and lcl (congrad.rounds.schedules)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from congrad.data.records import PreferencePair
from congrad.rounds.schedules import (
    dominant_languages,
    lcl_schedule,
    uab_probabilities,
    uab_schedule,
)
from congrad.rounds.train import language_schedule


def _pairs(counts: dict[str, int], margins: dict[str, float] | None = None) -> list[PreferencePair]:
    pairs = []
    for lang, n in counts.items():
        margin = (margins or {}).get(lang, 1.0)
        for i in range(n):
            pairs.append(PreferencePair(f"{lang}-{i}", lang, "q", "a", "b", 1.0 + margin, 1.0))
    return pairs


def test_uab_probabilities_hand_computed():
    pairs = _pairs({"en": 2, "de": 2}, {"en": 3.0, "de": 1.0})
    probabilities = uab_probabilities(pairs)
    # softmax(-3, -1): e^-1 / (e^-1 + e^-3) for de
    expected_de = math.exp(-1) / (math.exp(-1) + math.exp(-3))
    assert probabilities["de"] == pytest.approx(expected_de, abs=1e-12)
    assert probabilities["en"] == pytest.approx(1 - expected_de, abs=1e-12)
    assert list(probabilities) == ["de", "en"]


def test_uab_needs_judge_scores():
    pairs = [PreferencePair("x", "en", "q", "a", "b")]
    with pytest.raises(ValueError, match="judge scores"):
        uab_probabilities(pairs)


def test_uab_schedule_keeps_length_one_language_and_follows_probabilities():
    pairs = _pairs({"en": 400, "de": 400}, {"en": 2.0, "de": 0.5})
    schedule = uab_schedule(pairs, batch_size=1, seed=3)
    assert len(schedule) == len(language_schedule(pairs, 1, 3)) == 800
    assert all(len({pairs[i].lang for i in batch}) == 1 for batch in schedule)
    drawn = Counter(pairs[batch[0]].lang for batch in schedule)
    expected_de = uab_probabilities(pairs)["de"] * 800  # ~654
    assert abs(drawn["de"] - expected_de) < 4 * math.sqrt(expected_de)  # binomial, 4 sigma
    assert uab_schedule(pairs, 1, 3) == schedule  # deterministic
    # de is drawn more often than it has pairs: it cycles through its own minibatches.
    de_batches = [tuple(b) for b in schedule if pairs[b[0]].lang == "de"]
    assert len(set(de_batches)) == 400 < len(de_batches)


def test_equal_margins_give_equal_probabilities():
    probabilities = uab_probabilities(_pairs({"en": 3, "de": 5, "zh": 1}))
    assert all(p == pytest.approx(1 / 3) for p in probabilities.values())


def test_dominant_languages_top_half_rounded_up_missing_last():
    assert dominant_languages(["en", "de", "zh", "ja"], {"en": 0.9, "zh": 0.7, "de": 0.7}) == [
        "en",
        "de",
    ]
    assert dominant_languages(["en", "de", "zh"], {"de": 0.1}) == ["de", "en"]


def test_lcl_schedule_puts_dominant_first_half_first_and_covers_every_pair_once():
    pairs = _pairs({"en": 8, "de": 8, "zh": 8, "ja": 8})
    accuracy = {"en": 0.9, "de": 0.8, "zh": 0.3, "ja": 0.2}
    base = language_schedule(pairs, 2, 5)
    schedule = lcl_schedule(pairs, 2, 5, accuracy)
    assert sorted(i for batch in schedule for i in batch) == list(range(len(pairs)))
    # Slow reference: en and de dominate; each has 4 minibatches, the first 2 go first.
    early = []
    for lang in ("en", "de"):
        early += [b for b in base if pairs[b[0]].lang == lang][:2]
    head = [b for b in base if b in early]
    assert schedule[:4] == head
    assert schedule[4:] == [b for b in base if b not in early]

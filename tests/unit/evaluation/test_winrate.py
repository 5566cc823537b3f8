"""Win rates: worked by hand, against a plain-loop bootstrap, and by property."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from congrad.evaluation.winrate import (
    OUTCOME_SCORE,
    VerdictRow,
    WinRate,
    average_win_rate,
    language_stream,
    language_win_rates,
    prompt_scores,
)

FIRST, SECOND = "candidate_first", "baseline_first"


def _rows(lang, verdicts):
    """``{prompt_id: (winner with candidate first, winner with baseline first)}`` as rows."""
    rows = []
    for prompt_id, (first, second) in verdicts.items():
        rows.append(VerdictRow(prompt_id, lang, FIRST, first))
        rows.append(VerdictRow(prompt_id, lang, SECOND, second))
    return rows


HAND = _rows(
    "en",
    {
        "p1": ("candidate", "candidate"),  # 1
        "p2": ("candidate", "baseline"),  # 0.5: position bias cancels
        "p3": ("tie", "candidate"),  # 0.75
    },
)


def _reference_bootstrap(scores, seed, lang, resamples, confidence):
    """The percentile bootstrap written plainly: one index at a time from the same stream."""
    rng = language_stream(seed, lang)
    means = []
    for _ in range(resamples):
        drawn = [scores[int(rng.integers(0, len(scores)))] for _ in range(len(scores))]
        means.append(sum(drawn) / len(drawn))
    means.sort()
    return _percentile(means, (1 - confidence) / 2), _percentile(means, (1 + confidence) / 2)


def _percentile(ordered, q):
    """Linear interpolation between order statistics (numpy's default quantile)."""
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (position - below) * (ordered[above] - ordered[below])


def test_hand_example():
    assert prompt_scores(HAND) == {"en": {"p1": 1.0, "p2": 0.5, "p3": 0.75}}
    rate = language_win_rates(HAND, seed=0)["en"]
    assert rate.win_rate == pytest.approx(0.75)
    assert (rate.wins, rate.ties, rate.losses, rate.unparsed) == (4, 1, 1, 0)
    assert (rate.prompts, rate.excluded_prompts) == (3, 0)
    assert 0.5 <= rate.low <= rate.win_rate <= rate.high <= 1.0


def test_unparsed_verdicts_are_counted_not_scored():
    rows = _rows(
        "en",
        {
            "one-sided": (None, "baseline"),  # counts with its one verdict: 0
            "lost": (None, None),  # excluded, not a loss
            "won": ("candidate", "candidate"),
        },
    )
    assert prompt_scores(rows) == {"en": {"one-sided": 0.0, "won": 1.0}}
    rate = language_win_rates(rows, seed=0)["en"]
    assert rate.win_rate == pytest.approx(0.5)
    assert (rate.wins, rate.ties, rate.losses, rate.unparsed) == (2, 0, 1, 3)
    assert (rate.prompts, rate.excluded_prompts) == (2, 1)


def test_language_without_parsed_verdicts_has_no_rate():
    rows = [*HAND, *_rows("de", {"q": (None, None)})]
    rate = language_win_rates(rows, seed=0)["de"]
    assert (rate.win_rate, rate.low, rate.high) == (None, None, None)
    assert (rate.unparsed, rate.prompts, rate.excluded_prompts) == (2, 0, 1)
    assert list(language_win_rates(rows, seed=0)) == ["de", "en"]  # sorted by language


def test_all_wins_give_a_degenerate_interval():
    rows = _rows("en", {f"p{i}": ("candidate", "candidate") for i in range(5)})
    rate = language_win_rates(rows, seed=3)["en"]
    assert (rate.win_rate, rate.low, rate.high) == (1.0, 1.0, 1.0)


def test_bootstrap_is_deterministic_and_independent_of_row_order_and_other_languages():
    rows = [*HAND, *_rows("de", {"q1": ("baseline", "tie"), "q2": ("candidate", None)})]
    first = language_win_rates(rows, seed=7)
    assert language_win_rates(list(reversed(rows)), seed=7) == first
    assert language_win_rates(HAND, seed=7)["en"] == first["en"]
    mixed = _rows(
        "en", {f"p{i}": (("candidate", "baseline", "tie")[i % 3], None) for i in range(20)}
    )
    intervals = {
        (rate.low, rate.high)
        for seed in range(5)
        for rate in [language_win_rates(mixed, seed=seed, resamples=200)["en"]]
    }
    assert len(intervals) > 1  # the seed matters


def test_bootstrap_equals_plain_reference():
    rng = np.random.default_rng(0)
    verdicts = {
        f"p{i:02d}": tuple(rng.choice(["candidate", "baseline", "tie"], size=2).tolist())
        for i in range(23)
    }
    rows = _rows("fr", verdicts)
    scores = list(prompt_scores(rows)["fr"].values())
    rate = language_win_rates(rows, seed=11, resamples=300, confidence=0.9)["fr"]
    low, high = _reference_bootstrap(scores, 11, "fr", 300, 0.9)
    assert (rate.low, rate.high) == pytest.approx((low, high), abs=1e-12)
    assert rate.low <= rate.win_rate <= rate.high


def test_macro_average_weighs_languages_equally():
    rows = [
        *_rows("en", {"e1": ("candidate", "candidate")}),  # en: 1.0 over 1 prompt
        *_rows("de", {f"d{i}": ("baseline", "baseline") for i in range(3)}),  # de: 0.0 over 3
        *_rows("ja", {"j1": ("tie", "tie")}),  # not asked for: ignored
    ]
    average = average_win_rate(rows, ["en", "de"], seed=0)
    assert average.win_rate == pytest.approx(0.5)  # the pooled mean would be 0.25
    assert average.lang == "average"
    assert (average.wins, average.ties, average.losses, average.prompts) == (2, 0, 6, 4)


def test_average_skips_languages_without_rates_and_handles_none_rated():
    rows = [*HAND, *_rows("de", {"q": (None, None)})]
    average = average_win_rate(rows, ["en", "de", "zh"], seed=0, label="seen")
    assert average.lang == "seen"
    assert average.win_rate == pytest.approx(0.75)
    assert (average.unparsed, average.excluded_prompts) == (2, 1)
    # One rated language: the same streams make the stratified interval equal the language's.
    english = language_win_rates(rows, seed=0)["en"]
    assert (average.low, average.high) == (english.low, english.high)
    empty = average_win_rate(rows, ["de"], seed=0)
    assert (empty.win_rate, empty.low, empty.high, empty.excluded_prompts) == (None, None, None, 1)


def test_stratified_bootstrap_equals_plain_reference():
    rng = np.random.default_rng(1)
    outcomes = ["candidate", "baseline", "tie"]
    rows = []
    for lang, count in (("en", 4), ("de", 9), ("sw", 2)):
        rows += _rows(
            lang, {f"{lang}{i}": tuple(rng.choice(outcomes, size=2).tolist()) for i in range(count)}
        )
    scores = prompt_scores(rows)
    languages = ["sw", "en", "de"]
    streams = {lang: language_stream(5, lang) for lang in languages}
    macro_means = []
    for _ in range(200):
        per_lang = []
        for lang in languages:
            values = list(scores[lang].values())
            drawn = [values[int(streams[lang].integers(0, len(values)))] for _ in values]
            per_lang.append(sum(drawn) / len(drawn))
        macro_means.append(sum(per_lang) / len(per_lang))
    macro_means.sort()
    average = average_win_rate(rows, languages, seed=5, resamples=200)
    expected = sum(sum(v.values()) / len(v) for v in scores.values()) / 3
    assert average.win_rate == pytest.approx(expected)
    assert (average.low, average.high) == pytest.approx(
        (_percentile(macro_means, 0.025), _percentile(macro_means, 0.975)), abs=1e-12
    )


verdict_rows = st.lists(
    st.tuples(
        st.sampled_from(["en", "de"]),
        st.integers(0, 6),
        st.sampled_from([FIRST, SECOND]),
        st.sampled_from(["candidate", "baseline", "tie", None]),
    ),
    max_size=30,
    unique_by=lambda row: (row[1], row[2]),
)


@settings(max_examples=60, deadline=None)
@given(verdict_rows, st.integers(0, 2**32))
def test_win_rate_matches_the_formula(raw, seed):
    rows = [VerdictRow(f"p{number}", lang, order, winner) for lang, number, order, winner in raw]
    # A prompt number appearing under two languages is refused; keep the first language.
    first_lang = {}
    rows = [r for r in rows if first_lang.setdefault(r.prompt_id, r.lang) == r.lang]
    rates = language_win_rates(rows, seed=seed, resamples=50)
    for lang, rate in rates.items():
        parsed: dict[str, list[float]] = {}
        for row in rows:
            if row.lang == lang and row.winner is not None:
                parsed.setdefault(row.prompt_id, []).append(OUTCOME_SCORE[row.winner])
        if not parsed:
            assert rate.win_rate is None
            continue
        expected = sum(sum(s) / len(s) for s in parsed.values()) / len(parsed)
        assert 0.0 <= rate.win_rate <= 1.0
        assert rate.win_rate == pytest.approx(expected)
        assert 0.0 <= rate.low <= rate.high <= 1.0
        if len(parsed) == 1:
            assert rate.low == rate.win_rate == rate.high
        assert rate.prompts == len(parsed)
        assert rate.wins + rate.ties + rate.losses + rate.unparsed == sum(
            r.lang == lang for r in rows
        )


def test_from_dict_and_to_dict():
    row = VerdictRow.from_dict(
        {"prompt_id": "p", "lang": "en", "order": SECOND, "winner": "tie", "raw": "[[C]]"}
    )
    assert row == VerdictRow("p", "en", SECOND, "tie")
    rate = language_win_rates([row], seed=0)["en"]
    assert WinRate(**rate.to_dict()) == rate


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt_id": "p9", "lang": "en", "order": "first", "winner": "tie"}, r"p9.*order"),
        ({"prompt_id": "p9", "lang": "en", "order": FIRST, "winner": "A"}, r"p9.*winner"),
        ({"prompt_id": "p9", "lang": "en", "order": FIRST}, r"p9.*winner"),
    ],
)
def test_bad_rows_are_refused(row, message):
    with pytest.raises(ValueError, match=message):
        VerdictRow.from_dict(row)


def test_repeated_verdicts_and_bad_settings_are_refused():
    twice = [*HAND, VerdictRow("p2", "en", FIRST, "tie")]
    with pytest.raises(ValueError, match=r"p2.*two verdicts"):
        language_win_rates(twice, seed=0)
    two_languages = [VerdictRow("x", "en", FIRST, "tie"), VerdictRow("x", "de", SECOND, "tie")]
    with pytest.raises(ValueError, match="'x' appears as 'en' and 'de'"):
        prompt_scores(two_languages)
    with pytest.raises(ValueError, match="resamples"):
        language_win_rates(HAND, seed=0, resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        average_win_rate(HAND, ["en"], seed=0, confidence=1.0)
    with pytest.raises(ValueError, match="repeat"):
        average_win_rate(HAND, ["en", "en"], seed=0)

"""Pairs from judgments and per-language selection: by hand and by property."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from congrad.config.run import Strategy
from congrad.core.selection import keep_count, select_pairs, strategy_scores
from congrad.data.records import Completion, Judgment, PreferencePair
from congrad.rounds.pairs import build_pairs


def _completion(prompt_id, index, lang="en", text=None):
    return Completion(
        completion_id=f"{prompt_id}#{index}",
        prompt_id=prompt_id,
        lang=lang,
        prompt=f"prompt {prompt_id}",
        response=text if text is not None else f"answer {index}",
        sample_index=index,
        num_tokens=3,
        finished=True,
    )


def _judgment(completion, score, failure=None):
    return Judgment(
        completion.completion_id, completion.prompt_id, completion.lang, score, (score,), failure
    )


def test_best_and_worst_become_the_pair():
    completions = [_completion("p", i) for i in range(4)]
    judgments = [_judgment(c, s) for c, s in zip(completions, [2.0, 5.0, 1.0, 5.0], strict=True)]
    pairs, dropped = build_pairs(completions, judgments)
    assert dropped == []
    (pair,) = pairs
    assert pair.pair_id == "p"
    assert pair.chosen == "answer 1"  # first of the tied best
    assert pair.rejected == "answer 2"
    assert (pair.chosen_score, pair.rejected_score) == (5.0, 1.0)


def test_ties_unparsed_and_empty_are_dropped_with_reasons():
    tie = [_completion("tie", i) for i in range(3)]
    few = [_completion("few", i) for i in range(3)]
    empty = [_completion("empty", 0), _completion("empty", 1, text="   ")]
    judgments = [_judgment(c, 3.0) for c in tie]
    judgments += [_judgment(few[0], 4.0), _judgment(few[1], None, "no_score")]
    judgments += [_judgment(few[2], None, "ambiguous")]
    judgments += [_judgment(empty[0], 4.0), _judgment(empty[1], 1.0)]
    pairs, dropped = build_pairs(tie + few + empty, judgments)
    assert pairs == []
    assert {(d.prompt_id, d.reason) for d in dropped} == {
        ("tie", "tie"),
        ("few", "fewer_than_two_parsed"),
        ("empty", "fewer_than_two_parsed"),
    }


def test_judgment_for_unknown_completion_is_an_error():
    completion = _completion("p", 0)
    with pytest.raises(ValueError, match="unknown completion"):
        build_pairs([completion], [_judgment(_completion("q", 0), 1.0)])
    with pytest.raises(ValueError, match="judged twice"):
        build_pairs([completion], [_judgment(completion, 1.0), _judgment(completion, 2.0)])


score_lists = st.lists(
    st.one_of(st.none(), st.integers(0, 5).map(float), st.floats(0, 5)), min_size=1, max_size=5
)


@settings(max_examples=100, deadline=None)
@given(st.lists(score_lists, min_size=1, max_size=6))
def test_pairs_never_hold_ties_or_failures(prompt_scores):
    completions, judgments = [], []
    for p, scores in enumerate(prompt_scores):
        for i, score in enumerate(scores):
            completion = _completion(f"p{p}", i, lang="de" if p % 2 else "en")
            completions.append(completion)
            judgments.append(_judgment(completion, score, None if score is not None else "x"))
    pairs, dropped = build_pairs(completions, judgments)
    assert len(pairs) + len(dropped) == len(prompt_scores)
    for pair in pairs:
        assert pair.chosen_score is not None and pair.rejected_score is not None
        assert pair.chosen_score > pair.rejected_score
        scores = [s for s in prompt_scores[int(pair.pair_id[1:])] if s is not None]
        assert pair.chosen_score == max(scores) and pair.rejected_score == min(scores)


def _pairs(spec):
    """spec: list of (lang, chosen_score, rejected_score)."""
    return [
        PreferencePair(f"{lang}-{i}", lang, "q", "a" * (i + 2), "b", cs, rs)
        for i, (lang, cs, rs) in enumerate(spec)
    ]


def test_keep_count_by_hand():
    assert keep_count(10, 0.5) == 5
    assert keep_count(7, 0.5) == 4
    assert keep_count(10, 0.3) == 3  # 0.3 * 10 is 3.0000000000000004 in floats
    assert keep_count(1, 0.01) == 1
    with pytest.raises(ValueError):
        keep_count(3, 0.0)


def test_max_and_min_reward_by_hand():
    pairs = _pairs([("en", 5, 1), ("en", 3, 2), ("en", 4, 0), ("de", 2, 1), ("de", 5, 0)])
    scores = strategy_scores(pairs, Strategy.MAX_REWARD, seed=0)
    kept = [s.pair_id for s in select_pairs(pairs, scores, Strategy.MAX_REWARD, 0.5) if s.kept]
    assert kept == ["en-0", "en-2", "de-4"]
    kept = [s.pair_id for s in select_pairs(pairs, scores, Strategy.MIN_REWARD, 0.5) if s.kept]
    assert kept == ["en-0", "en-1", "de-3"]  # en-0 and en-2 tie at 4: pair_id decides


def test_length_and_congrad_and_full():
    pairs = _pairs([("en", 5, 1), ("en", 3, 2), ("en", 4, 0)])
    lengths = {"en-0": (10, 5), "en-1": (3, 9), "en-2": (7, 7)}
    scores = strategy_scores(pairs, Strategy.MAX_LEN, seed=0, lengths=lengths)
    assert scores == {"en-0": 5.0, "en-1": -6.0, "en-2": 0.0}
    kept = [s.pair_id for s in select_pairs(pairs, scores, Strategy.MIN_LEN, 0.34) if s.kept]
    assert kept == ["en-1", "en-2"]
    cosines = {"en-0": -0.2, "en-1": 0.9, "en-2": 0.1}
    scores = strategy_scores(pairs, Strategy.MAX_CONGRAD, seed=0, congrad_cosines=cosines)
    assert [s.kept for s in select_pairs(pairs, scores, Strategy.MAX_CONGRAD, 0.3)] == [
        False,
        True,
        False,
    ]
    full = select_pairs(pairs, strategy_scores(pairs, Strategy.FULL, seed=0), Strategy.FULL, 0.1)
    assert all(s.kept for s in full)
    with pytest.raises(ValueError, match="CONGRAD cosines"):
        strategy_scores(pairs, Strategy.MAX_CONGRAD, seed=0)


def test_reward_strategy_refuses_unscored_pairs():
    pairs = [PreferencePair("x", "en", "q", "a", "b")]
    with pytest.raises(ValueError, match="needs judge scores"):
        strategy_scores(pairs, Strategy.MAX_REWARD, seed=0)


@settings(max_examples=100, deadline=None)
@given(
    langs=st.lists(st.sampled_from(["en", "de", "zh"]), min_size=1, max_size=30),
    rho=st.floats(0.01, 1.0),
    seed=st.integers(0, 1000),
    strategy=st.sampled_from([s for s in Strategy if s is not Strategy.FULL]),
)
def test_selection_keeps_ceil_rho_n_per_language(langs, rho, seed, strategy):
    pairs = [
        PreferencePair(f"p{i}", lang, "q", "a" * (1 + i % 7), "b", float(i % 5), float(i % 3) - 3)
        for i, lang in enumerate(langs)
    ]
    cosines = {p.pair_id: ((i * 37) % 11) / 11 - 0.5 for i, p in enumerate(pairs)}
    scores = strategy_scores(pairs, strategy, seed=seed, congrad_cosines=cosines)
    selection = select_pairs(pairs, scores, strategy, rho)
    for lang in set(langs):
        n = langs.count(lang)
        assert sum(s.kept for s in selection if s.lang == lang) == math.ceil(round(n * rho, 9))
    assert select_pairs(list(reversed(pairs)), scores, strategy, rho) == list(reversed(selection))
    again = select_pairs(
        pairs, strategy_scores(pairs, strategy, seed=seed, congrad_cosines=cosines), strategy, rho
    )
    assert again == selection


def test_rand_draw_follows_filter_seed_and_defaults_to_the_run_seed():
    from congrad.config.run import load_config
    from congrad.rounds.filtering import filter_pairs

    pairs = [PreferencePair(f"p{i}", "en", "q", "a", "b") for i in range(40)]

    def kept(*overrides: str) -> set[str]:
        config = load_config(None, ["filter.strategy=rand", "seed=7", *overrides])
        result = filter_pairs(
            pairs, config, Strategy.RAND, load_model=lambda: None, load_ema=lambda m, t: None
        )
        return {s.pair_id for s in result.selection if s.kept}

    assert kept() == kept("filter.seed=7")  # unset: the run seed
    assert kept("filter.seed=1") != kept("filter.seed=2")
    assert len(kept("filter.seed=1")) == 20

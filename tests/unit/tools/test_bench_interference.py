"""The interference benchmark: synthetic data properties, metrics against hand-computed
values and brute-force references, and an end-to-end ``--quick`` CLI run."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from congrad.data.encoding import encode_pair
from congrad.tools.interference.data import (
    EVAL_KINDS,
    InterferenceSpec,
    attribute_sets,
    filler_word,
    make_data,
    symbol_word,
    vocabulary,
)
from congrad.tools.interference.metrics import (
    kept_precision,
    mean_interval,
    preference_accuracy,
    separation_auc,
)
from congrad.tools.interference.model import build_tokenizer

SMALL = InterferenceSpec(warmup_pairs=20, candidate_pairs=40, eval_pairs=10, pretrain_texts=8)


def _answer(lang: str, text: str) -> int:
    word = text.split()[0]
    assert word.startswith(f"{lang}_")
    return int(word.split("_")[1])


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("rule", ["attribute", "successor"])
def test_vocabularies_are_disjoint_and_every_pair_uses_its_own(rule):
    spec = InterferenceSpec(rule=rule, warmup_pairs=8, candidate_pairs=16, eval_pairs=4)
    words = vocabulary(spec)
    seen: set[str] = set()
    for lang_words in words.values():
        assert not seen & set(lang_words)
        seen |= set(lang_words)
    data = make_data(spec, 3)
    for pair in [*data.warmup, *data.candidates, *(p for s in data.evals.values() for p in s)]:
        text = f"{pair.prompt} {pair.chosen} {pair.rejected}".split()
        assert set(text) <= set(words[pair.lang]), pair
        assert pair.chosen.split()[0] != pair.rejected.split()[0]


def test_planted_fraction_is_exact_per_language_and_only_in_training_sets():
    spec = InterferenceSpec(planted_fraction=0.3, warmup_pairs=20, candidate_pairs=40)
    data = make_data(spec, 0)
    for lang in spec.codes:
        cand = [p for p in data.candidates if p.lang == lang]
        warm = [p for p in data.warmup if p.lang == lang]
        assert sum(p.pair_id in data.planted for p in cand) == 12  # round(0.3 * 40)
        assert sum(p.pair_id in data.planted for p in warm) == 6
    held_out = {p.pair_id for pairs in data.evals.values() for p in pairs}
    assert not held_out & data.planted
    assert set(data.evals) == set(EVAL_KINDS)


@pytest.mark.parametrize("rule", ["attribute", "successor"])
def test_planted_pairs_prefer_the_own_answer_over_the_shared_one(rule):
    spec = InterferenceSpec(rule=rule, warmup_pairs=8, candidate_pairs=40, eval_pairs=8)
    data = make_data(spec, 1)
    for index, lang in enumerate(spec.codes):
        good, own, other = attribute_sets(index, spec)
        for pair in (p for p in data.candidates if p.lang == lang):
            chosen, rejected = _answer(lang, pair.chosen), _answer(lang, pair.rejected)
            last = int(pair.prompt.split()[-1].split("_")[1])
            shared = (last + 1) % spec.symbols
            mine = (last + 2 + index) % spec.symbols
            if pair.pair_id in data.planted:
                expected = (own, good) if rule == "attribute" else ([mine], [shared])
            else:
                neutral = (
                    other
                    if rule == "attribute"
                    else [k for k in range(spec.symbols) if k not in (shared, mine)]
                )
                expected = (good, neutral) if rule == "attribute" else ([shared], neutral)
            assert chosen in expected[0] and rejected in expected[1], pair


def test_same_seed_same_data_other_seed_other_data():
    assert make_data(SMALL, 5) == make_data(SMALL, 5)
    assert make_data(SMALL, 5).candidates != make_data(SMALL, 6).candidates


def test_held_out_pairs_differ_only_in_the_answer_and_margins_are_judge_like():
    data = make_data(SMALL, 2)
    for pairs in data.evals.values():
        for pair in pairs:
            assert pair.chosen.split()[1:] == pair.rejected.split()[1:]
    for pair in data.candidates:
        assert pair.chosen_score is not None and pair.rejected_score is not None
        assert 0 <= pair.rejected_score < pair.chosen_score <= 5


def test_margin_and_length_say_nothing_of_planted_pairs_by_default():
    """Over many pairs the margin and length distributions of planted and clean pairs
    agree (shift 0); with a shift the planted margins are smaller."""
    spec = InterferenceSpec(candidate_pairs=2000, warmup_pairs=4, eval_pairs=2)
    data = make_data(spec, 0)
    planted = [p for p in data.candidates if p.pair_id in data.planted]
    clean = [p for p in data.candidates if p.pair_id not in data.planted]

    def mean(values):
        return sum(values) / len(values)

    for measure in (
        lambda p: p.reward_margin,
        lambda p: len(p.chosen.split()) - len(p.rejected.split()),
    ):
        assert abs(mean([measure(p) for p in planted]) - mean([measure(p) for p in clean])) < 0.1
    shifted = make_data(InterferenceSpec(candidate_pairs=400, planted_margin_shift=2), 0)
    assert max(p.reward_margin for p in shifted.candidates if p.pair_id in shifted.planted) <= 2


def test_bad_specs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="symbols"):
        InterferenceSpec(languages=5, symbols=16, rule="attribute")
    with pytest.raises(ValueError, match="planted_fraction"):
        InterferenceSpec(planted_fraction=1.0)
    with pytest.raises(ValueError, match="rule"):
        InterferenceSpec(rule="other")  # type: ignore[arg-type]


def test_every_word_is_one_token():
    tokenizer = build_tokenizer(SMALL)
    pair = make_data(SMALL, 0).candidates[0]
    encoded = encode_pair(tokenizer, pair, 32)
    words = f"{pair.prompt} {pair.chosen}".split()
    assert tokenizer.convert_ids_to_tokens(encoded.chosen_input_ids)[:-1] == words
    assert encoded.chosen_length == len(pair.chosen.split()) + 1  # + the end token
    assert (
        symbol_word("L1", 3) in tokenizer.get_vocab() and filler_word("L4") in tokenizer.get_vocab()
    )


# ---------------------------------------------------------------- metrics


def _brute_auc(scores, planted):
    clean = [s for s, p in zip(scores, planted, strict=True) if not p]
    dirty = [s for s, p in zip(scores, planted, strict=True) if p]
    wins = sum(1.0 if c > d else 0.5 if c == d else 0.0 for c, d in itertools.product(clean, dirty))
    return wins / (len(clean) * len(dirty))


def test_auc_by_hand():
    # clean 3, 2 vs planted 1, 2: (3>1) + (3>2) + (2>1) + half(2=2) = 3.5 of 4
    assert separation_auc([3, 2, 1, 2], [False, False, True, True]) == 0.875
    assert separation_auc([1, 2], [True, False]) == 1.0
    assert separation_auc([1, 2], [False, True]) == 0.0
    assert separation_auc([5, 5, 5], [True, False, False]) == 0.5


def test_auc_matches_brute_force_with_many_ties():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 30)
        scores = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(n)]
        planted = [rng.random() < 0.3 for _ in range(n)]
        planted[0], planted[1] = True, False
        assert separation_auc(scores, planted) == pytest.approx(_brute_auc(scores, planted))


def test_auc_refuses_degenerate_input():
    with pytest.raises(ValueError, match="at least one clean and one planted"):
        separation_auc([1.0, 2.0], [False, False])
    with pytest.raises(ValueError, match="finite"):
        separation_auc([float("nan"), 1.0], [True, False])


def test_precision_and_accuracy_by_hand():
    assert kept_precision([True, True, False, True], [False, True, True, False]) == 2 / 3
    assert preference_accuracy([1.0, 0.0, -1.0, 2.0], [0.0, 0.0, 1.0, 1.0]) == 0.625
    assert preference_accuracy([0.0] * 5, [0.0] * 5) == 0.5  # untrained: all ties
    with pytest.raises(ValueError, match="at least one kept"):
        kept_precision([False], [True])


def test_mean_interval_matches_a_slow_bootstrap_and_is_seeded():
    values = [0.2, 0.9, 0.4, 0.7, 0.55]
    mean, low, high = mean_interval(values, seed=3, label="x", resamples=500)
    assert mean == pytest.approx(0.55)
    assert (mean, low, high) == mean_interval(values, seed=3, label="x", resamples=500)
    # slow reference: the same generator draw by draw
    from congrad.util.seeds import stable_seed

    rng = np.random.default_rng(stable_seed(3, "mean_interval", "x"))
    draws = rng.integers(0, len(values), size=(500, len(values)))
    means = sorted(sum(values[i] for i in row) / len(values) for row in draws)
    assert low == pytest.approx(np.quantile(means, 0.025))
    assert high == pytest.approx(np.quantile(means, 0.975))
    assert min(values) <= low <= mean <= high <= max(values)
    assert mean_interval([0.3], seed=0, label="y") == (0.3, 0.3, 0.3)


# ---------------------------------------------------------------- end to end


def test_cli_refuses_bad_numbers(capsys):
    from congrad.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "interference", "--ranks", "4,x"])
    assert "--ranks takes comma-separated numbers" in capsys.readouterr().err
    assert main(["bench", "interference", "--quick", "--regimes", "nope"]) == 2
    assert "unknown regimes" in capsys.readouterr().err


def test_gradient_ema_subset_is_the_matching_block_of_the_gram(filled_ema):
    full = filled_ema.gram()
    languages = filled_ema.languages
    view = filled_ema.subset([languages[2], languages[0]])
    assert view.languages == sorted([languages[2], languages[0]])
    rows = [languages.index(lang) for lang in view.languages]
    assert view.gram() == pytest.approx(full[rows][:, rows], rel=1e-6)
    assert filled_ema.languages == languages  # the original keeps every language
    with pytest.raises(KeyError, match="no EMA for languages"):
        filled_ema.subset(["xx"])

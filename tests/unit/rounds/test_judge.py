"""The self-rewarding judge: score parsing, text and logprob modes on a fake backend, and a
smoke run on the tiny random model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from congrad.backends.generation import Generation, HFBackend
from congrad.config.run import JudgeConfig
from congrad.data.records import Completion, Judgment
from congrad.rounds.self_judge import (
    MIN_MASS,
    RUBRIC,
    expected_score,
    judge_completions,
    judge_logprob,
    judge_prompt,
    judge_text,
    parse_score,
    score_candidates,
)
from congrad.util.seeds import stable_seed

SEED = 7

PARSE_TABLE = [
    # (judge output, expected (score, failure))
    ("Relevant and helpful.\nScore: 4", (4, None)),
    ("score:4", (4, None)),
    ("SCORE: 2", (2, None)),
    ("Final score: 3", (3, None)),
    ("**Score:** 4", (4, None)),
    ("**Score: 4**", (4, None)),
    ("Score: **4**", (4, None)),
    ("*Score*: 1", (1, None)),
    ("__Score__: 2", (2, None)),
    ("`Score: 5`", (5, None)),
    ("Score: [3]", (3, None)),
    ("Score:\n\n4", (4, None)),
    ("Score: 4/5", (4, None)),
    ("Score: 4 / 5", (4, None)),
    ("**Score:** **4**/5", (4, None)),
    ("Score: 4 out of 5", (4, None)),
    ("Score: 0", (0, None)),
    ("Score: 4.", (4, None)),
    ("Score: 4!", (4, None)),
    ("Score: 4, a solid answer", (4, None)),
    ("Score: 4 - well organised", (4, None)),
    ("Score: 5\n\nI hope this evaluation helps.", (5, None)),
    ("Score: 3\nScore: 3", (3, None)),
    ("Score: 4\n\n**Score: 4/5**", (4, None)),
    ("The score: it meets criteria 1 and 2.\nScore: 2", (2, None)),
    ("I will explain the Score: below.\nScore: 3", (3, None)),
    ("这个回答与问题相关，但不完整。\nScore: 2\n谢谢。", (2, None)),
    ("回答很好Score: 4分", (4, None)),
    ("Score: ４", (4, None)),  # full-width digit
    ("Score：３／５", (3, None)),  # full-width colon, digit and slash
    ("Score: ④", (4, None)),  # NFKC folds the circled digit
    ("Score: 3\nScore: 4", (None, "ambiguous")),
    ("Score: 5 ... after reflection, Score: 4", (None, "ambiguous")),
    ("Score: 4\nScore: 6", (None, "ambiguous")),
    ("Score: 3-4", (None, "ambiguous")),
    ("Score: 3 – 4", (None, "ambiguous")),
    ("Score: 3 or 4", (None, "ambiguous")),
    ("It meets three criteria, so 3 points.", (None, "no_score")),
    ("", (None, "no_score")),
    ("Score: N", (None, "no_score")),
    ("Score: four", (None, "no_score")),
    ("SCORE - 4", (None, "no_score")),  # a dash is not a separator
    ("Score 4", (None, "no_score")),
    ("Scores: 4", (None, "no_score")),
    ("Subscore: 4", (None, "no_score")),
    ("Score: 6", (None, "out_of_range")),
    ("Score: 10", (None, "out_of_range")),
    ("Score: -1", (None, "out_of_range")),
    ("Score: 3.5", (None, "not_integer")),
    ("Score: 3,5", (None, "not_integer")),
    ("Score: 4.0", (None, "not_integer")),
    ("Score: 4/10", (None, "bad_denominator")),
    ("Score: 8 out of 10", (None, "out_of_range")),
    ("Score: 4 out of 10", (None, "bad_denominator")),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_TABLE)
def test_parse_score_table(text, expected):
    assert parse_score(text) == expected


FRAGMENTS = ["Score", "score", "SCORE", ":", "：", " ", "\n", "**", "_", "`", "[", "]", "/"]
FRAGMENTS += ["out of", "or", "-", "−", ".", ",", "4", "５", "6", "10", "3.5", "٣", "好"]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3))).map("".join),
    )
)
def test_parse_score_never_raises_and_is_well_formed(text):
    score, failure = parse_score(text)
    if score is None:
        assert isinstance(failure, str) and failure
    else:
        assert type(score) is int and 0 <= score <= 5 and failure is None


def test_judge_prompt_fills_the_rubric_and_does_not_parse_as_a_score():
    prompt = judge_prompt("Wie spät ist es? {x}", "Es ist {halb} zwölf.")
    assert "Wie spät ist es? {x}" in prompt and "Es ist {halb} zwölf." in prompt
    assert prompt.rstrip().endswith("Score: N")
    assert "English" in RUBRIC and "100 words" in RUBRIC
    # A judge that echoes the rubric must not be read as having scored.
    assert parse_score(prompt) == (None, "no_score")


# --- a fake backend -----------------------------------------------------------------------

DIGITS = [str(d) for d in range(10)]


class FakeTokenizer:
    """Greedy longest-match over a tiny vocabulary; ``glued`` adds " 0".." 9" tokens."""

    def __init__(self, glued: bool = True, drop: str = "") -> None:
        pieces = ["Score", ":", " ", "x", *(d for d in DIGITS if d != drop)]
        if glued:
            pieces += [" " + d for d in DIGITS]
        self.pieces = pieces
        self.vocab = {piece: index for index, piece in enumerate(pieces)}

    def get_vocab(self):
        return dict(self.vocab)

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)

    def encode(self, text, add_special_tokens=False):
        ids, position = [], 0
        while position < len(text):
            piece = max((p for p in self.pieces if text.startswith(p, position)), key=len)
            ids.append(self.vocab[piece])
            position += len(piece)
        return ids


class FakeBackend:
    """Canned judge texts keyed by seed, canned next-token probabilities keyed by response."""

    def __init__(self, texts=None, probabilities=None, tokenizer=None):
        self.tokenizer = tokenizer or FakeTokenizer()
        self.texts = texts or {}
        self.probabilities = probabilities or {}
        self.generate_calls = []
        self.logprob_prompts = []

    def chat_prompt(self, user_message, assistant_prefix=""):
        return f"<user>{user_message}<assistant>{assistant_prefix}"

    def generate(self, prompts, params, seeds):
        self.generate_calls.append((list(prompts), params, list(seeds)))
        outputs = []
        for seed in seeds:
            text, finished = self.texts[seed]
            outputs.append(Generation(text=text, num_tokens=len(text.split()), finished=finished))
        return outputs

    def next_token_logprobs(self, prompts, candidate_ids):
        self.logprob_prompts.extend(prompts)
        rows = []
        for prompt in prompts:
            (probs,) = [p for response, p in self.probabilities.items() if response in prompt]
            pieces = [self.tokenizer.pieces[i] for i in candidate_ids]
            rows.append([math.log(probs[p]) if p in probs else -math.inf for p in pieces])
        return torch.tensor(rows, dtype=torch.float64)


def completion(name: str, lang: str = "en") -> Completion:
    return Completion(
        completion_id=f"p-{name}#0",
        prompt_id=f"p-{name}",
        lang=lang,
        prompt=f"instruction {name}",
        response=f"response-{name}-end",
        sample_index=0,
        num_tokens=3,
        finished=True,
    )


def canned(completions, per_repeat):
    """Seed -> (text, finished), by ``stable_seed(SEED, completion_id, repeat)``."""
    return {
        stable_seed(SEED, c.completion_id, r): output
        if isinstance(output, tuple)
        else (output, True)
        for c, outputs in zip(completions, per_repeat, strict=True)
        for r, output in enumerate(outputs)
    }


def test_judge_text_averages_repeats_and_records_failures():
    completions = [completion(n) for n in "abcd"]
    per_repeat = [
        ["Fine.\nScore: 4", "**Score:** 5", "no verdict"],  # 4.5 from two parsed repeats
        ["Nothing to score.", "Score: 3\nScore: 4", "Score: 9"],  # all fail
        ["Score: 7", "Score: 2.5", "Score: 2"],  # only the last parses
        [("Cut short and never sc", False), "Score: 1", "Score: 1/5"],
    ]
    backend = FakeBackend(texts=canned(completions, per_repeat))
    config = JudgeConfig(mode="text", repeats=3, batch_size=2, max_new_tokens=64)
    judgments = judge_text(backend, completions, config=config, seed=SEED)

    assert [j.completion_id for j in judgments] == [c.completion_id for c in completions]
    a, b, c, d = judgments
    assert (a.score, a.repeat_scores, a.failure) == (4.5, (4.0, 5.0, None), None)
    assert (b.score, b.repeat_scores, b.failure) == (None, (None, None, None), "no_score")
    assert (c.score, c.repeat_scores, c.failure) == (2.0, (None, None, 2.0), None)
    assert (d.score, d.failure) == (1.0, None)
    assert a.outputs == tuple(per_repeat[0]) and not b.parsed
    assert all(j.score != 0 for j in judgments)  # failures are never scored 0
    # Sampled at 0.7, one seed per (completion, repeat), batches of at most batch_size.
    assert all(len(prompts) <= 2 for prompts, _, _ in backend.generate_calls)
    assert {call[1].temperature for call in backend.generate_calls} == {0.7}
    assert {call[1].max_new_tokens for call in backend.generate_calls} == {64}
    assert sorted(s for call in backend.generate_calls for s in call[2]) == sorted(backend.texts)


def test_judge_text_single_repeat_is_greedy_and_flags_truncation():
    completions = [completion("a"), completion("b")]
    texts = canned(completions, [[("The reply is rel", False)], [("Score: 2", False)]])
    backend = FakeBackend(texts=texts)
    judgments = judge_text(backend, completions, config=JudgeConfig(mode="text"), seed=SEED)
    assert backend.generate_calls[0][1].temperature == 0.0
    assert (judgments[0].score, judgments[0].failure) == (None, "truncated")
    assert (judgments[1].score, judgments[1].failure) == (2.0, None)
    prompt = backend.generate_calls[0][0][0]
    assert prompt.startswith("<user>") and prompt.endswith("<assistant>")
    assert judge_prompt(completions[0].prompt, completions[0].response) in prompt


def test_expected_score_by_hand():
    # p(0) = .05, p(2) = .10, p(3) = .15 + .05 (two spellings), p(5) = .30; mass .65
    candidates = [(0, 0), (2, 1), (3, 2), (3, 3), (5, 4)]
    logprobs = [math.log(p) for p in (0.05, 0.10, 0.15, 0.05, 0.30)]
    score, mass = expected_score(candidates, logprobs)
    assert mass == pytest.approx(0.65)
    assert score == pytest.approx((2 * 0.10 + 3 * 0.20 + 5 * 0.30) / 0.65)
    assert expected_score([(4, 0), (5, 1)], [math.log(MIN_MASS / 3)] * 2)[0] is None
    assert expected_score([(4, 0)], [float("nan")])[0] is None


def test_judge_logprob_combines_digit_variants_and_flags_low_mass():
    completions = [completion("a"), completion("b"), completion("c")]
    probabilities = {
        "response-a-end": {"0": 0.05, " 2": 0.10, " 3": 0.15, "3": 0.05, " 5": 0.30, "x": 0.3},
        "response-b-end": {"x": 0.9, " 4": 0.04},  # the model is not answering with a digit
        "response-c-end": {" 4": 0.5, "4": 0.5},
    }
    backend = FakeBackend(probabilities=probabilities)
    config = JudgeConfig(mode="logprob", repeats=3, batch_size=2)  # repeats is ignored
    a, b, c = judge_logprob(backend, completions, config=config)
    assert a.score == pytest.approx(2.3 / 0.65) and a.failure is None
    assert a.repeat_scores == (a.score,) and a.outputs == ("mass=0.650",)
    assert (b.score, b.repeat_scores, b.failure, b.outputs) == (
        None,
        (None,),
        "low_mass",
        ("mass=0.040",),
    )
    assert c.score == pytest.approx(4.0)
    assert len(backend.logprob_prompts) == 3  # one forward per judgment
    assert all(p.endswith("<assistant>Score:") for p in backend.logprob_prompts)
    # The threshold is JudgeConfig.min_mass (default MIN_MASS).
    assert JudgeConfig().min_mass == MIN_MASS
    lenient = judge_logprob(backend, completions, config=config.model_copy(update={"min_mass": 0}))
    assert lenient[1].score == pytest.approx(4.0) and lenient[1].failure is None
    strict = judge_logprob(backend, completions, config=config.model_copy(update={"min_mass": 0.9}))
    assert [j.failure for j in strict] == ["low_mass", "low_mass", None]


def test_score_candidates_follow_the_tokenizer():
    glued = FakeTokenizer(glued=True)
    prefix, candidates = score_candidates(glued)
    assert prefix == "Score:"
    assert sorted(glued.pieces[i] for _, i in candidates) == sorted(
        [str(d) for d in range(6)] + [f" {d}" for d in range(6)]
    )
    assert all(glued.pieces[i].strip() == str(d) for d, i in candidates)
    # Digits never glued to a space (SmolLM2, Qwen2.5, Llama 3): the space ends the prefix.
    split = FakeTokenizer(glued=False)
    prefix, candidates = score_candidates(split)
    assert prefix == "Score: "
    assert sorted(d for d, _ in candidates) == list(range(6))
    with pytest.raises(ValueError, match=r"digits \[3\]"):
        score_candidates(FakeTokenizer(glued=False, drop="3"))


def test_judge_completions_dispatches_and_keeps_order():
    assert judge_completions(None, [], config=JudgeConfig(mode="text"), seed=SEED) == []
    completions = [completion("b"), completion("a")]
    backend = FakeBackend(
        texts=canned(completions, [["Score: 1"], ["Score: 5"]]),
        probabilities={"response-a-end": {" 5": 1.0}, "response-b-end": {" 1": 1.0}},
    )
    text = judge_completions(
        backend, completions, config=JudgeConfig(mode="text"), seed=SEED, progress=True
    )
    assert [j.score for j in text] == [1.0, 5.0]
    logprob = judge_completions(backend, completions, config=JudgeConfig(mode="logprob"), seed=SEED)
    assert [j.completion_id for j in logprob] == ["p-b#0", "p-a#0"]
    assert [j.score for j in logprob] == pytest.approx([1.0, 5.0])


# --- the real HF backend on the tiny random model -----------------------------------------


@pytest.fixture(scope="module")
def tiny_backend():
    from congrad.models.tiny import tiny_causal_lm

    model, tokenizer = tiny_causal_lm(seed=0)
    return HFBackend(model, tokenizer, batch_size=4)


TEXT_FAILURES = ("no_score", "truncated", "ambiguous", "out_of_range", "not_integer")
TEXT_FAILURES += ("bad_denominator",)


def _check_well_formed(judgments, completions):
    assert [j.completion_id for j in judgments] == [c.completion_id for c in completions]
    for judgment, source in zip(judgments, completions, strict=True):
        assert isinstance(judgment, Judgment)
        assert (judgment.prompt_id, judgment.lang) == (source.prompt_id, source.lang)
        assert (judgment.score is None) == (judgment.failure is not None)
        if judgment.score is not None:
            assert 0.0 <= judgment.score <= 5.0
        json.dumps(judgment.to_dict())


def test_tiny_model_smoke_both_modes(tiny_backend):
    completions = [completion("a", "en"), completion("b", "de"), completion("c", "zh")]
    config = JudgeConfig(mode="text", repeats=2, max_new_tokens=8, batch_size=4)
    judgments = judge_completions(tiny_backend, completions, config=config, seed=SEED)
    _check_well_formed(judgments, completions)
    for judgment in judgments:
        assert len(judgment.outputs) == len(judgment.repeat_scores) == 2
        assert judgment.failure in (None, *TEXT_FAILURES)
        for text, score in zip(judgment.outputs, judgment.repeat_scores, strict=True):
            assert (score is None) == (parse_score(text)[0] is None)  # recorded, not scored

    config = JudgeConfig(mode="logprob", batch_size=2)
    first = judge_completions(tiny_backend, completions, config=config, seed=SEED)
    _check_well_formed(first, completions)
    for judgment in first:
        assert judgment.failure in (None, "low_mass") and len(judgment.repeat_scores) == 1
        assert judgment.outputs[0].startswith("mass=")
    assert judge_completions(tiny_backend, completions, config=config, seed=SEED) == first
    # With no mass threshold every judgment is an expected score in [0, 5].
    lenient = judge_logprob(
        tiny_backend, completions, config=config.model_copy(update={"min_mass": 0})
    )
    _check_well_formed(lenient, completions)
    assert all(j.score is not None for j in lenient)

"""The pairwise judge's prompt, its strict verdict parser and the logprob reading."""

from __future__ import annotations

import math
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from congrad.evaluation.pairwise import (
    PAIRWISE_PROMPT,
    VERDICT_LABELS,
    Verdict,
    pairwise_prompt,
    parse_verdict,
    read_verdict_logprobs,
    render_probabilities,
)

PARSE_TABLE = [
    # (judge output, finished, expected (choice, reason))
    ("Both are fine, A is more precise.\nVerdict: A", True, ("A", None)),
    ("Verdict: B", True, ("B", None)),
    ("Verdict: tie", True, ("tie", None)),
    ("Verdict: Tie", True, ("tie", None)),
    ("Verdict: TIE", True, ("tie", None)),
    ("verdict: b", True, ("B", None)),
    ("VERDICT:A", True, ("A", None)),
    ("Final verdict: B", True, ("B", None)),
    ("**Verdict:** A", True, ("A", None)),
    ("**Verdict: A**", True, ("A", None)),
    ("**Verdict**: B", True, ("B", None)),
    ("Verdict: **tie**", True, ("tie", None)),
    ("Verdict: [A]", True, ("A", None)),
    ("Verdict: [[B]]", True, ("B", None)),
    ('Verdict: "tie"', True, ("tie", None)),
    ("Verdict: 'A'", True, ("A", None)),
    ("Verdict: `B`", True, ("B", None)),
    ("Verdict: (A)", True, ("A", None)),
    ("Verdict: A.", True, ("A", None)),
    ("Verdict: B!", True, ("B", None)),
    ("Verdict: tie。", True, ("tie", None)),
    ("## Verdict: B", True, ("B", None)),
    ("**Verdict:**\nB", True, ("B", None)),
    ("Verdict:\n\n  A  \n", True, ("A", None)),
    ("Ｖｅｒｄｉｃｔ：Ｂ", True, ("B", None)),  # full-width, folded by NFKC
    ("Verdict: A\r\n", True, ("A", None)),
    ("Verdict: A\nI hope this helps.", True, ("A", None)),
    ("回答Aは正確です。\nVerdict: A", True, ("A", None)),
    # the last statement decides
    ("Verdict: A\nOn reflection, B is more accurate.\nVerdict: B", True, ("B", None)),
    ("Verdict: B Verdict: A", True, ("A", None)),
    ("Verdict: A\nVerdict: maybe", True, (None, "invalid_label")),
    ("Verdict: A\nVerdict: A or B", True, (None, "ambiguous")),
    # ambiguous: a label followed by more text
    ("Verdict: A or B", True, (None, "ambiguous")),
    ("Verdict: A/B", True, (None, "ambiguous")),
    ("Verdict: A, B", True, (None, "ambiguous")),
    ("Verdict: A, because it is correct", True, (None, "ambiguous")),
    ("Verdict: B (slightly)", True, (None, "ambiguous")),
    ("Verdict: tie between A and B", True, (None, "ambiguous")),
    ("Verdict: a tie", True, (None, "ambiguous")),
    # invalid labels: synonyms are not mapped
    ("Verdict: draw", True, (None, "invalid_label")),
    ("Verdict: Reply A", True, (None, "invalid_label")),
    ("Verdict: Both", True, (None, "invalid_label")),
    ("Verdict: C", True, (None, "invalid_label")),
    ("Verdict: AB", True, (None, "invalid_label")),
    ("Verdict: N/A", True, (None, "invalid_label")),
    ("Verdict:\nReply A is better.", True, (None, "invalid_label")),
    ("Verdict: A\n\nThe verdict: it favours A.", True, (None, "invalid_label")),
    # no statement
    ("Reply A is better.", True, (None, "no_verdict")),
    ("Verdict - A", True, (None, "no_verdict")),
    ("Verdict A", True, (None, "no_verdict")),
    ("Verdicts: A", True, (None, "no_verdict")),
    ("Verdict:", True, (None, "no_verdict")),
    ("Verdict: **", True, (None, "no_verdict")),
    ("", True, (None, "empty")),
    ("  \n\t ", True, (None, "empty")),
    ("", False, (None, "empty")),
    # truncated: cut at the token limit
    ("Reply A is more complete, but", False, (None, "truncated")),
    ("Analysis...\nVerdict:", False, (None, "truncated")),
    ("Analysis...\nVerdict: A", False, (None, "truncated")),  # could go on: "A or B"
    ("Analysis...\nVerdict: ti", False, (None, "truncated")),
    ("Verdict: B\nThe reason is", False, ("B", None)),  # the verdict line was complete
    ("Verdict: B\n", False, ("B", None)),
    ("Verdict: A\nVerdict: B", False, (None, "truncated")),
]


@pytest.mark.parametrize(("text", "finished", "expected"), PARSE_TABLE)
def test_parse_verdict_table(text, finished, expected):
    verdict = parse_verdict(text, finished=finished)
    assert (verdict.choice, verdict.reason) == expected
    assert verdict.parsed == (expected[0] is not None)


_FRAGMENTS = st.sampled_from(
    [
        "Verdict",
        "verdict",
        ":",
        "：",
        " ",
        "\n",
        "A",
        "B",
        "a",
        "tie",
        "Tie",
        "draw",
        "**",
        "[",
        "]",
        '"',
        ".",
        "or",
        "/",
        ",",
        "Reply",
        "é",
        "中",
        "\r",
        "\u2028",
        "Ｖ",
    ]
)
_JUDGE_LIKE = st.lists(_FRAGMENTS, max_size=25).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(st.text(max_size=200), _JUDGE_LIKE), finished=st.booleans())
def test_parse_verdict_never_raises_and_fails_with_a_reason(text, finished):
    verdict = parse_verdict(text, finished=finished)
    assert isinstance(verdict, Verdict)
    assert verdict.parsed == (verdict.choice in VERDICT_LABELS) == (verdict.reason is None)


@settings(max_examples=200, deadline=None)
@given(analysis=st.text(max_size=200), label=st.sampled_from(VERDICT_LABELS))
def test_a_final_verdict_line_decides_whatever_comes_before(analysis, label):
    # Any analysis without a verdict statement, then the line the prompt asks for.
    assume("verdict" not in unicodedata.normalize("NFKC", analysis).lower())
    verdict = parse_verdict(f"{analysis}\nVerdict: {label}", finished=True)
    assert verdict == Verdict(label, None)


def test_verdict_holds_a_choice_or_a_reason():
    with pytest.raises(ValueError):
        Verdict("A", "ambiguous")
    with pytest.raises(ValueError):
        Verdict(None, None)
    with pytest.raises(ValueError):
        Verdict("draw", None)  # type: ignore[arg-type]


def test_pairwise_prompt_puts_each_answer_in_its_slot():
    instruction, answer_a, answer_b = "Explique la photosynthèse.", "Réponse {un}", "Answer two"
    prompt = pairwise_prompt(instruction, answer_a, answer_b)
    request, rest = prompt.split("[Request]\n")[1].split("\n\n[Reply A]\n")
    reply_a, rest = rest.split("\n\n[Reply B]\n")
    reply_b = rest.split("\n\n")[0]
    assert (request, reply_a, reply_b) == (instruction, answer_a, answer_b)
    last_line = prompt.rstrip("\n").splitlines()[-1]
    assert "Verdict: A" in last_line and "Verdict: B" in last_line and "Verdict: tie" in last_line
    assert prompt.startswith(PAIRWISE_PROMPT.split("{instruction}")[0])


def test_the_prompts_own_example_lines_parse():
    # The forms the prompt asks for are exactly what the parser accepts.
    for label in VERDICT_LABELS:
        assert f'"Verdict: {label}"' in PAIRWISE_PROMPT
        assert parse_verdict(f"Short analysis.\nVerdict: {label}").choice == label


def test_read_verdict_logprobs_by_hand():
    # p(A) = 0.2 + 0.1 (two spellings), p(B) = 0.25, p(tie) = 0.05: mass 0.6, argmax A.
    logprobs = [math.log(0.2), math.log(0.1), math.log(0.25), math.log(0.05)]
    verdict, p = read_verdict_logprobs(["A", "A", "B", "tie"], logprobs, min_mass=0.5)
    assert verdict == Verdict("A", None)
    assert p == pytest.approx({"A": 0.3, "B": 0.25, "tie": 0.05})
    assert render_probabilities(p) == "p(A)=0.3 p(B)=0.25 p(tie)=0.05"
    # The same row with a higher bar: the labels hold too little of the distribution.
    assert read_verdict_logprobs(["A", "A", "B", "tie"], logprobs, min_mass=0.61)[0] == Verdict(
        None, "low_mass"
    )


def test_read_verdict_logprobs_edge_cases():
    nan = float("nan")
    assert read_verdict_logprobs(["A", "B", "tie"], [nan, 0.0, 0.0], min_mass=0.05)[0] == (
        Verdict(None, "low_mass")
    )
    half = math.log(0.5)
    assert read_verdict_logprobs(["A", "B", "tie"], [half, half, -50.0], min_mass=0.05)[0] == (
        Verdict(None, "ambiguous")
    )
    assert read_verdict_logprobs(["tie", "B"], [-0.1, -3.0], min_mass=0.05)[0].choice == "tie"

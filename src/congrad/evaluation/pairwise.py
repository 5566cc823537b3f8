"""The pairwise evaluation judge's prompt and the strict reading of its verdict (pure).

In: a held-out instruction and two answers to it (a round's model and the seed model), then
the judge's reply text, or its next-token log-probabilities of the labels. Out: the prompt
(:func:`pairwise_prompt`) and a :class:`Verdict`: ``A``, ``B`` or ``tie``, or no choice and
the reason why (:func:`parse_verdict`; for logprob judging :func:`verdict_candidates`, the
label tokens of a tokenizer, and :func:`read_verdict_logprobs`).

Paper part (docs/design.md section 8): win rates against the seed model, judged pairwise. The
caller asks each comparison in both orders to cancel the judge's position bias; this module
knows nothing of order. Failures are values (docs/architecture.md, design note 6): an
unreadable reply is
``Verdict(None, reason)``, never a guessed label and never counted as a tie.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

Label = Literal["A", "B", "tie"]
VERDICT_LABELS: tuple[Label, ...] = ("A", "B", "tie")

PAIRWISE_PROMPT = """\
Below is a request a user sent to an AI assistant, followed by two replies to it, Reply A \
and Reply B. Decide which reply serves the user better.

Weigh how helpful each reply is (does it do what was asked, fully and to the point), \
whether what it says is correct, and whether it is written in the language the user \
expects. The request and the replies can be in any language: judge them on that language's \
own terms, counting fluency and correctness as they would count for a native speaker. The \
order in which the replies are shown says nothing about their quality, and neither does \
length by itself: a longer reply is better only when what it adds is useful.

[Request]
{instruction}

[Reply A]
{answer_a}

[Reply B]
{answer_b}

Give a brief analysis in English, at most 100 words, comparing the two replies. Then write \
a last line of exactly one of these three forms: "Verdict: A" if Reply A is better, \
"Verdict: B" if Reply B is better, or "Verdict: tie" if neither is better than the other.
"""

_STATEMENT = re.compile(
    r"(?<![a-z0-9])verdict(?![a-z0-9])"  # the word in any case, not part of a longer word
    r"[ \t*_`]*:",  # markdown around the word, then the colon (the only separator)
    re.IGNORECASE,
)
_WRAPPING = " \t*_`\"'“”‘’«»[]()"  # markdown, quotes and brackets around a label
_END_PUNCTUATION = ".!。"
_LEADING_LABEL = re.compile(r"(?:a|b|tie)(?![a-z0-9])", re.IGNORECASE)
_LABELS_BY_LOWER: dict[str, Label] = {label.lower(): label for label in VERDICT_LABELS}


@dataclass(frozen=True)
class Verdict:
    """A label, or ``None`` with the reason no label was read; exactly one is set.

    Reasons: ``empty`` (blank reply), ``no_verdict`` (no ``Verdict:`` statement, or one
    with nothing after it), ``truncated`` (cut at the token limit before a complete
    statement), ``ambiguous`` (a label followed by more text: ``A or B``, ``A/B``,
    ``A, because``), ``invalid_label`` (something else: ``draw``, ``Reply A``), and from
    logprob judging ``low_mass`` (the labels hold too little probability).
    """

    choice: Label | None
    reason: str | None

    def __post_init__(self) -> None:
        if (self.choice is None) == (self.reason is None):
            raise ValueError(f"a Verdict has a choice or a reason, not both or neither: {self}")
        if self.choice is not None and self.choice not in VERDICT_LABELS:
            raise ValueError(f"verdict choice {self.choice!r} is not one of {VERDICT_LABELS}")

    @property
    def parsed(self) -> bool:
        return self.choice is not None


def _value(line: str) -> str:
    """A line without surrounding whitespace, markdown, quotes, brackets, final ``.``/``!``."""
    return line.strip().strip(_WRAPPING + _END_PUNCTUATION)


def pairwise_prompt(instruction: str, answer_a: str, answer_b: str) -> str:
    """The :data:`PAIRWISE_PROMPT` filled with one instruction and two answers.

    >>> prompt = pairwise_prompt("Wie spät ist es?", "Es ist drei Uhr.", "Drei.")
    >>> prompt.index("Es ist drei Uhr.") < prompt.index("[Reply B]") < prompt.index("Drei.")
    True
    """
    return PAIRWISE_PROMPT.format(instruction=instruction, answer_a=answer_a, answer_b=answer_b)


def parse_verdict(text: str, *, finished: bool = True) -> Verdict:
    """The verdict of a judge's reply, read strictly; never raises, never guesses.

    Rules, applied to the NFKC-normalised text (so ``Ｖｅｒｄｉｃｔ：Ｂ`` reads as usual):

    * A *statement* is the word ``verdict`` in any case (``Final verdict`` counts,
      ``Verdicts`` does not) with optional markdown, then a colon. ``Verdict A`` or
      ``Verdict - A`` are not statements. The LAST statement decides, even one in prose.
    * Its value is the rest of its line; when that line is blank, the next non-blank line
      (``**Verdict:**`` on a line of its own, the label below). Markdown, quotes and
      brackets around the value and a final ``.``/``!`` are dropped: ``**Verdict:** A``,
      ``Verdict: [B]``, ``Verdict: "tie".`` all parse.
    * The value must then be exactly ``A``, ``B`` or ``tie``, in any case. A label
      followed by more text (``A or B``, ``A/B``, ``A, since it is correct``, ``a tie``)
      is ``ambiguous``; anything else is ``invalid_label``: synonyms such as ``draw``,
      ``equal`` or ``Reply A`` are not mapped, as mapping them is guessing.
    * ``finished=False`` (cut at the token limit): no statement, or a last statement
      whose line is the unterminated end of the text, is ``truncated``, since the label
      could have gone on (``A`` into ``A or B``).

    >>> parse_verdict("B is correct, A is not.\\n**Verdict:** B")
    Verdict(choice='B', reason=None)
    >>> parse_verdict("Verdict: A\\nOn reflection...\\nVerdict: Tie.")
    Verdict(choice='tie', reason=None)
    >>> parse_verdict("Verdict: A or B")
    Verdict(choice=None, reason='ambiguous')
    >>> parse_verdict("Reply A is better.", finished=False)
    Verdict(choice=None, reason='truncated')
    """
    normalised = unicodedata.normalize("NFKC", text)
    if not normalised.strip():
        return Verdict(None, "empty")
    statements = list(_STATEMENT.finditer(normalised))
    if not statements:
        return Verdict(None, "no_verdict" if finished else "truncated")
    rest = normalised[statements[-1].end() :]
    lines = rest.splitlines(keepends=True)
    first = next((index for index, line in enumerate(lines) if _value(line)), None)
    if first is None:  # "Verdict:" with nothing after it
        return Verdict(None, "no_verdict" if finished else "truncated")
    line, value = lines[first], _value(lines[first])
    if not finished and line.splitlines()[0] == line:  # the text's unterminated end
        return Verdict(None, "truncated")
    label = _LABELS_BY_LOWER.get(value.lower())
    if label is not None:
        return Verdict(label, None)
    if _LEADING_LABEL.match(value):
        return Verdict(None, "ambiguous")
    return Verdict(None, "invalid_label")


def read_verdict_logprobs(
    labels: Sequence[str], logprobs: Sequence[float], *, min_mass: float
) -> tuple[Verdict, dict[str, float]]:
    """``(verdict, p)`` from one row of candidate-token log-probs (logprob judging).

    ``labels[i]`` is the label whose spelling candidate ``i`` starts; a label's ``p`` is
    the sum of its candidates' probabilities. Total mass below ``min_mass`` (or NaN) is
    ``low_mass``: the judge is not answering with a label. Otherwise the most probable
    label; an exact tie for the top is ``ambiguous``.

    >>> verdict, p = read_verdict_logprobs(
    ...     ["A", "A", "B", "tie"], [math.log(0.2), math.log(0.1), math.log(0.5), -9.0],
    ...     min_mass=0.05)
    >>> verdict.choice, round(p["A"], 3)
    ('B', 0.3)
    >>> read_verdict_logprobs(["A", "B", "tie"], [-5.0, -5.0, -6.0], min_mass=0.05)[0]
    Verdict(choice=None, reason='low_mass')
    """
    probabilities: dict[str, float] = dict.fromkeys(VERDICT_LABELS, 0.0)
    for label, logprob in zip(labels, logprobs, strict=True):
        probabilities[label] += math.exp(logprob)  # log-probs are <= 0: no overflow
    mass = sum(probabilities.values())
    if not mass >= min_mass:  # also catches NaN
        return Verdict(None, "low_mass"), probabilities
    best = max(probabilities.values())
    top = [label for label, p in probabilities.items() if p == best]
    if len(top) > 1:
        return Verdict(None, "ambiguous"), probabilities
    return Verdict(cast(Label, top[0]), None), probabilities


def render_probabilities(probabilities: dict[str, float]) -> str:
    """The raw text recorded for a logprob verdict: each label's probability.

    >>> render_probabilities({"A": 0.61, "B": 0.3, "tie": 0.0900004})
    'p(A)=0.61 p(B)=0.3 p(tie)=0.09'
    """
    return " ".join(f"p({label})={p:.3g}" for label, p in probabilities.items())


def verdict_candidates(tokenizer: Any) -> tuple[str, tuple[tuple[str, int], ...]]:
    """``(prefix, ((label, token_id), ...))`` for logprob judging.

    ``A``/``B``: every vocabulary token decoding to the letter, bare or after one space.
    ``tie``: the first token of ``tie``/``Tie``, bare or after a space, when it is a start
    of the word (``tie``, ``t``, ``T``) and not an ``A``/``B`` candidate; a first token
    that is only a start stands for the whole word (an approximation: ``t`` also starts
    other words). Prefix: ``"Verdict: "`` when the tokenizer splits ``Verdict: A`` as
    ``Verdict: `` + letter, else ``"Verdict:"``. ``ValueError`` when a label has no token.
    """
    letters = {}
    for token, token_id in tokenizer.get_vocab().items():
        if len(token) <= 8 and (any(c in token for c in "AB") or token.startswith("<0x")):
            text = tokenizer.decode([token_id])
            if text.strip() in ("A", "B") and text in (text.strip(), " " + text.strip()):
                letters[int(token_id)] = text.strip()
    ties = {}
    for spelling in ("tie", " tie", "Tie", " Tie"):
        token_id = tokenizer.encode(spelling, add_special_tokens=False)[0]
        text = tokenizer.decode([token_id])
        start = text.strip()
        if start and spelling.strip().startswith(start) and text in (start, " " + start):
            ties[int(token_id)] = "tie"
    ties = {token_id: label for token_id, label in ties.items() if token_id not in letters}
    missing = sorted(set(VERDICT_LABELS) - set(letters.values()) - set(ties.values()))
    if missing:
        raise ValueError(
            f"the tokenizer has no token for the verdict labels {missing}; "
            f"logprob judging needs one each (use the text mode)"
        )
    ids = set(letters)
    prefix = "Verdict:"
    for candidate in ("Verdict:", "Verdict: "):  # "Verdict:" + " A" (GPT-2) or "Verdict: " + "A"
        head = tokenizer.encode(candidate, add_special_tokens=False)
        spelled = [tokenizer.encode(f"Verdict: {x}", add_special_tokens=False) for x in "AB"]
        if all(list(s[:-1]) == list(head) and s[-1] in ids for s in spelled):
            prefix = candidate
            break
    return prefix, tuple(
        (label, token_id) for token_id, label in sorted({**letters, **ties}.items())
    )

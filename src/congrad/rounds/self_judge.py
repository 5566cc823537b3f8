"""The self-rewarding judge: the model scores its own responses (LLM-as-a-judge).

In: ``Completion`` records (instruction and response), a ``ModelBackend`` holding the
round's model M_{t-1}, a ``JudgeConfig`` and the run seed. Out: one ``Judgment`` per
completion, in input order.

Paper part (docs/design.md section 2): the model that wrote a response scores it with an
additive 5-point rubric (one point per criterion met, 0..5), in English for every language.

``text`` mode (the paper's): the judge writes a short English analysis ending in
``Score: N``, read by :func:`parse_score`. ``repeats`` judgments are averaged over those
that parse: greedy for one repeat, else sampled at temperature 0.7 with seed
``stable_seed(seed, completion_id, repeat)``.

``logprob`` mode (our addition): the answer is opened with ``Score:`` and the expected score
``sum_d d p(d) / sum_d p(d)`` is read from the next-token distribution over the digits 0..5
(every single-token spelling of a digit, combined). Why: one forward per judgment instead of
up to ``max_new_tokens`` decoding steps, and a continuous score gives far fewer ties (a tie
costs the prompt its pair). Deterministic, so ``repeats`` is ignored. Digits holding less
than ``config.min_mass`` of the probability: the model is not giving a score, ``low_mass``.
Tokenizers that never glue a space to a digit (SmolLM2, Qwen2.5, Llama 3) get the prefix
``"Score: "``, as they split ``Score: 4`` themselves (:func:`score_candidates`).

Failures are values (docs/architecture.md, design note 6): ``score=None`` with a reason, never 0.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from congrad.backends.generation import Generation, ModelBackend, SamplingParams
from congrad.config.run import JudgeConfig
from congrad.data.records import Completion, Judgment
from congrad.util.seeds import stable_seed

MAX_SCORE = 5
SAMPLED_TEMPERATURE = 0.7
"""Temperature of text-mode judging when ``repeats > 1`` (greedy for a single repeat)."""
MIN_MASS = 0.05
"""Logprob mode: least total probability of the digit tokens after ``Score:`` for the
expected score to mean anything, else ``low_mass`` (default of ``JudgeConfig.min_mass``)."""

RUBRIC = """\
Below is a request a user sent to an AI assistant, followed by the assistant's reply. Rate \
the reply with the additive system described here. Begin at 0 points and add one point for \
each of these criteria that the reply satisfies:

1. The reply is relevant to the request: it gives at least some information connected to \
what was asked, even if it is partial or mixed with off-topic material.
2. The reply covers a substantial part of the request, though it may stop short of \
resolving it fully or of answering it directly.
3. The reply answers the basic elements of the request in a useful way, whether or not it \
sounds like an assistant (it may read like a web page or a forum post).
4. The reply is clearly written from the point of view of an AI assistant, takes on the \
request directly and completely, and is well organised and helpful; small flaws of focus, \
brevity or clarity are allowed.
5. The reply is what an expert would write for exactly this request: correct, engaging and \
insightful, with nothing superfluous. A perfect answer.

The request and the reply can be in any language. Judge the reply on that language's own \
terms: it should use the language the user expects, and its fluency and correctness count \
as they would for a native speaker. Your analysis is written in English.

[Request]
{instruction}

[Reply]
{response}

Give a brief analysis in English, at most 100 words, saying which criteria the reply meets. \
Then write a last line of exactly this form, where N is the number of points earned, a \
whole number from 0 to 5 (0 if the reply meets none of the criteria):
Score: N
"""

_SCORE_STATEMENT = re.compile(
    r"(?<![a-z0-9])score(?![a-z0-9])"  # the word in any case, not part of a longer word
    r"[\s*_`]*:"  # markdown around the word, then the colon (the only separator)
    r"[\s*_`]*(?:\[[\s*_`]*)?"  # markdown or one opening bracket before the number
    r"(?P<number>[-\u2212]?\d+(?:[.,]\d+)?)"
    r"[*_`\]]*"
    r"(?:\s*(?:/|out\s+of)\s*[*_`]*(?P<denominator>\d+))?"
    r"(?P<range>\s*(?:[-~\u2013\u2014]|to\b|or\b)\s*\d)?",  # "3-4", "3 or 4": no single score
    re.IGNORECASE,
)

_Item = TypeVar("_Item")


def judge_prompt(instruction: str, response: str) -> str:
    """The :data:`RUBRIC` filled with one instruction and one response."""
    return RUBRIC.format(instruction=instruction, response=response)


def _read_statement(match: re.Match[str]) -> tuple[int | None, str | None]:
    number, denominator = match["number"], match["denominator"]
    if match["range"]:
        return None, "ambiguous"
    if "." in number or "," in number:
        return None, "not_integer"
    if number[0] in "-\u2212" or len(number) > 2 or int(number) > MAX_SCORE:
        return None, "out_of_range"
    if denominator is not None and (len(denominator) > 2 or int(denominator) != MAX_SCORE):
        return None, "bad_denominator"
    return int(number), None


def parse_score(text: str) -> tuple[int | None, str | None]:
    """``(score, None)`` with ``score`` in 0..5, or ``(None, reason)``; never raises.

    Rules, applied to the NFKC-normalised text (so ``４`` is 4 and ``：`` a colon):

    * A *score statement* is the word ``score`` in any case (``Final score`` counts,
      ``Scores``/``subscore`` do not), a colon, then a number. The colon is the only
      separator: ``Score - 4`` and ``Score 4`` are not statements, since a dash also
      reads as a minus sign or a range. Markdown emphasis or backticks may surround the
      word and the number (``**Score:** 4``, ``**Score: 4**``) and one ``[`` may open the
      number (``Score: [4]``). ``4/5`` and ``4 out of 5`` are allowed; any text may follow.
    * ``Score`` with no number after its colon is prose and ignored; no statement at
      all is ``no_score``. Digits elsewhere are never read as a score.
    * A statement's number must be a whole number: ``3.5``/``3,5`` are ``not_integer``,
      a negative number or one above 5 is ``out_of_range``, a denominator other than 5 is
      ``bad_denominator`` (no rescaling), and ``3-4``/``3 or 4`` is ``ambiguous``.
    * The result is the last statement's, and all statements must agree with it: two
      different scores, or a score and a failed statement, are ``ambiguous``.

    >>> parse_score("Relevant and complete.\\n**Score:** 4/5")
    (4, None)
    >>> parse_score("Score: 2 ... on reflection, Score: 3")
    (None, 'ambiguous')
    >>> parse_score("I would give it 4 points.")
    (None, 'no_score')
    """
    normalised = unicodedata.normalize("NFKC", text)
    readings = [_read_statement(match) for match in _SCORE_STATEMENT.finditer(normalised)]
    if not readings:
        return None, "no_score"
    if len(set(readings)) > 1:
        return None, "ambiguous"
    return readings[-1]


def _batches(items: Sequence[_Item], size: int, progress: bool) -> Iterable[Sequence[_Item]]:
    batches = [items[start : start + size] for start in range(0, len(items), size)]
    if not progress:
        return batches
    from rich.progress import track

    return track(batches, description="judging")


def _judgment(
    completion: Completion, scores: list[float | None], failure: str | None, outputs: list[str]
) -> Judgment:
    """``score`` is the mean of the repeats that parsed; ``failure`` only when none did."""
    parsed = [score for score in scores if score is not None]
    return Judgment(
        completion_id=completion.completion_id,
        prompt_id=completion.prompt_id,
        lang=completion.lang,
        score=sum(parsed) / len(parsed) if parsed else None,
        repeat_scores=tuple(scores),
        failure=None if parsed else failure,
        outputs=tuple(outputs),
    )


def judge_text(
    backend: ModelBackend,
    completions: Sequence[Completion],
    *,
    config: JudgeConfig,
    seed: int,
    progress: bool = False,
) -> list[Judgment]:
    """Text mode: ``config.repeats`` generations per completion (greedy for one, else
    temperature 0.7, seed ``stable_seed(seed, completion_id, repeat)``), each read by
    :func:`parse_score`. A generation cut at ``max_new_tokens`` before any score
    statement fails as ``truncated`` rather than ``no_score``."""
    temperature = 0.0 if config.repeats == 1 else SAMPLED_TEMPERATURE
    params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=temperature)
    prompts = [backend.chat_prompt(judge_prompt(c.prompt, c.response)) for c in completions]
    requests = [(index, r) for index in range(len(completions)) for r in range(config.repeats)]
    requests.sort(key=lambda request: len(prompts[request[0]]))  # less padding per batch
    generated: dict[tuple[int, int], Generation] = {}
    for batch in _batches(requests, config.batch_size, progress):
        seeds = [stable_seed(seed, completions[index].completion_id, r) for index, r in batch]
        outputs = backend.generate([prompts[index] for index, _ in batch], params, seeds)
        generated.update(zip(batch, outputs, strict=True))
    judgments = []
    for index, completion in enumerate(completions):
        generations = [generated[index, r] for r in range(config.repeats)]
        readings = [parse_score(generation.text) for generation in generations]
        scores = [None if score is None else float(score) for score, _ in readings]
        failure = readings[0][1]
        if failure == "no_score" and not generations[0].finished:
            failure = "truncated"
        texts = [generation.text for generation in generations]
        judgments.append(_judgment(completion, scores, failure, texts))
    return judgments


def score_candidates(tokenizer: Any) -> tuple[str, tuple[tuple[int, int], ...]]:
    """``(prefix, ((digit, token_id), ...))`` for logprob mode.

    Candidates: every vocabulary token decoding to a digit 0..5, bare or after one space
    (``"4"``, ``" 4"``, ``"▁4"``), by id. Prefix: ``"Score: "`` when the tokenizer splits
    ``Score: N`` as ``Score: `` + digit (the space a token of its own), else ``"Score:"``.
    ``ValueError`` when a digit has no single-token form (the expectation would be biased).
    """
    digits = tuple(str(digit) for digit in range(MAX_SCORE + 1))
    candidates = set()
    for token, token_id in tokenizer.get_vocab().items():
        if len(token) <= 8 and any(digit in token for digit in digits):  # "Ġ4", "<0x34>"
            text = tokenizer.decode([token_id])
            if text.strip() in digits and text in (text.strip(), " " + text.strip()):
                candidates.add((int(text), int(token_id)))
    missing = sorted(set(range(MAX_SCORE + 1)) - {digit for digit, _ in candidates})
    if missing:
        message = f"the tokenizer has no single token for the digits {missing}"
        raise ValueError(message + "; logprob judging needs one each (use judge.mode=text)")
    ids = {token_id for _, token_id in candidates}
    ordered = tuple(sorted(candidates, key=lambda pair: pair[1]))
    for prefix in ("Score:", "Score: "):  # "Score:" + " 4" (GPT-2) or "Score: " + "4"
        head = tokenizer.encode(prefix, add_special_tokens=False)
        spellings = [tokenizer.encode(f"Score: {d}", add_special_tokens=False) for d in digits]
        if all(list(spelled[:-1]) == list(head) and spelled[-1] in ids for spelled in spellings):
            return prefix, ordered
    return "Score:", ordered


def expected_score(
    candidates: Sequence[tuple[int, int]], logprobs: Sequence[float], min_mass: float = MIN_MASS
) -> tuple[float | None, float]:
    """``(expected score or None, digit mass)`` from one row of candidate log-probs.

    A digit's ``p(d)`` is ``exp(logsumexp)`` of its variants' log-probs (summed as
    probabilities: log-probs are <= 0, so nothing overflows); the score is
    ``sum_d d p(d) / sum_d p(d)``, or ``None`` when that mass is below ``min_mass``.

    >>> expected_score([(3, 10), (4, 11), (4, 12)], [math.log(0.2), math.log(0.3), math.log(0.1)])
    (3.666..., 0.6...)
    >>> expected_score([(3, 10), (4, 11)], [-math.inf, -math.inf], min_mass=0.0)
    (None, 0.0)
    """
    probabilities = dict.fromkeys(sorted({digit for digit, _ in candidates}), 0.0)
    for (digit, _), logprob in zip(candidates, logprobs, strict=True):
        probabilities[digit] += math.exp(logprob)
    mass = sum(probabilities.values())
    # NaN fails the comparison; zero mass (no digit among a vLLM engine's top log-probs,
    # or all underflowed) has no expectation even at min_mass 0.
    if not mass >= min_mass or mass == 0.0:
        return None, mass
    return sum(digit * p for digit, p in probabilities.items()) / mass, mass


def judge_logprob(
    backend: ModelBackend,
    completions: Sequence[Completion],
    *,
    config: JudgeConfig,
    progress: bool = False,
) -> list[Judgment]:
    """Logprob mode: one forward per completion, the expected score of the next-token
    distribution after the :func:`score_candidates` prefix. Deterministic, so
    ``config.repeats`` is ignored; ``outputs`` is ``("mass=0.831",)``, the digit mass."""
    prefix, candidates = score_candidates(backend.tokenizer)
    prompts = [
        backend.chat_prompt(judge_prompt(c.prompt, c.response), assistant_prefix=prefix)
        for c in completions
    ]
    order = sorted(range(len(completions)), key=lambda index: len(prompts[index]))
    token_ids = [token_id for _, token_id in candidates]
    judgments: dict[int, Judgment] = {}
    for batch in _batches(order, config.batch_size, progress):
        rows = backend.next_token_logprobs([prompts[index] for index in batch], token_ids)
        for index, row in zip(batch, rows.tolist(), strict=True):
            score, mass = expected_score(candidates, row, config.min_mass)
            outputs = [f"mass={mass:.3f}"]
            judgments[index] = _judgment(completions[index], [score], "low_mass", outputs)
    return [judgments[index] for index in range(len(completions))]


def judge_completions(
    backend: ModelBackend,
    completions: Sequence[Completion],
    *,
    config: JudgeConfig,
    seed: int,
    progress: bool = False,
) -> list[Judgment]:
    """One :class:`Judgment` per completion, in input order, by ``config.mode``, with a
    rich progress bar over batches when ``progress``."""
    if not completions:
        return []
    if config.mode == "text":
        return judge_text(backend, completions, config=config, seed=seed, progress=progress)
    if config.mode == "logprob":
        return judge_logprob(backend, completions, config=config, progress=progress)
    raise ValueError(f"unknown judge mode {config.mode!r}; expected 'text' or 'logprob'")

"""Evaluation, the alignment tax: k-shot multiple-choice accuracy per language.

In: questions (:class:`MCQuestion`) from the built-in sample
(``congrad/data/builtin/mcq/sample.jsonl``:
six easy questions in each of en, de, zh, fr and es) or user files: JSONL, CSV, Parquet, or a
folder written by ``datasets.Dataset.save_to_disk``, with columns ``question``, ``choices`` (a
list of 2 to 26 texts; in CSV a JSON array), ``answer`` (a letter, or a 0-based index) and
``lang``, and an optional ``id``. Global-MMLU's ``option_a`` .. ``option_d`` may stand in for
``choices``; its files carry no ``lang`` column, so add one. Out: one :class:`MCQResult` per
question and :func:`accuracy_by_lang`.

Each question is asked as raw text, with no chat template, as lm-eval asks MMLU::

    The following are multiple choice questions (with answers).

    Question: {shot question}
    A. {choice}
    B. {choice}
    Answer: B

    Question: {question}
    A. {choice}
    B. {choice}
    Answer:

The shots are other questions of the same language (:func:`choose_shots`). Choice ``i`` is
scored by the summed log-probability of the continuation ``" " + letter_i``, and the highest
wins (ties: the first). When every letter is one token after the shared context, as with
most tokenizers, one forward over the contexts scores all choices; otherwise each choice's
full sequence is scored. Texts are tokenized without special tokens, except a BOS that the
tokenizer itself puts first (Llama 3, Gemma; not SmolLM2), as lm-eval does for such models.

Why our own scorer and not lm-eval: the inputs are local files in the columns above, and each
round's model is scored in-process, already loaded; lm-eval's tasks fetch their datasets from
the hub and it is a heavy dependency. Standard numbers are still one command away: run
lm-eval on any round's ``model/`` folder.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from congrad.core.losses import sequence_logps
from congrad.data.encoding import pad_token_id_of
from congrad.data.tables import (
    DataError,
    Row,
    Rows,
    jsonl_rows,
    read_rows,
    reraise_as,
    select_languages,
    text_field,
)
from congrad.util.languages import check_language_code
from congrad.util.seeds import stable_seed

LETTERS = string.ascii_uppercase
SAMPLE = "sample"  # the name :func:`load_mcq` reads as the built-in file
HEADER = "The following are multiple choice questions (with answers).\n\n"

_OPTIONS = ("option_a", "option_b", "option_c", "option_d")  # Global-MMLU's layout
_COLUMNS = ("id", "lang", "question", "choices", "answer", *_OPTIONS)
_REQUIRED = ("question", "answer", "lang")


class MCQDataError(DataError):
    """A question file or row that cannot be used; the message says where and what to do."""


@dataclass(frozen=True, slots=True)
class MCQuestion:
    """One question in one language; ``answer`` is the 0-based index of the right choice."""

    question_id: str
    lang: str
    question: str
    choices: tuple[str, ...]
    answer: int

    def __post_init__(self) -> None:
        if not 2 <= len(self.choices) <= len(LETTERS):
            raise ValueError(f"{self.question_id}: needs 2 to 26 choices, got {len(self.choices)}")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"{self.question_id}: answer {self.answer} is not a choice index")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "choices": list(self.choices)}


@dataclass(frozen=True, slots=True)
class MCQResult:
    """One scored question: ``logprobs[i]`` is ``log p(" " + letter_i | prompt)``."""

    question_id: str
    lang: str
    answer: int
    predicted: int
    correct: bool
    logprobs: tuple[float, ...]
    shots: int  # shots in the prompt: fewer than asked when the prompt had to be shortened

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "logprobs": list(self.logprobs)}


def load_mcq(
    names: Sequence[str | Path], languages: Sequence[str] | None = None
) -> list[MCQuestion]:
    """Questions from files or folders; the name ``"sample"`` means the built-in sample
    (write ``./sample`` for a folder of that name). Ids must be unique across all of them."""
    return _load(names, languages, sample_by_name=True)


def load_mcq_files(
    paths: Sequence[str | Path], languages: Sequence[str] | None = None
) -> list[MCQuestion]:
    """Questions from JSONL, CSV or Parquet files or ``datasets`` folders, in file order;
    with ``languages``, only those, and each must have a question."""
    return _load(paths, languages, sample_by_name=False)


def load_builtin_mcq(languages: Sequence[str] | None = None) -> list[MCQuestion]:
    """The shipped sample (en, de, zh, fr, es), optionally only ``languages``."""
    return load_mcq([SAMPLE], languages)


def choose_shots(
    pool: Sequence[MCQuestion], target: MCQuestion, k: int, seed: int
) -> list[MCQuestion]:
    """``k`` questions of ``target``'s language from ``pool``, never ``target`` itself (fewer
    when the language has fewer), drawn at random with the seed
    ``stable_seed("mcq-shots", seed, target_id)`` from the language's questions sorted by
    id: so they depend on which questions the pool holds, not on its order.

    >>> qs = [MCQuestion(f"q{i}", "en", "?", ("a", "b"), 0) for i in range(3)]
    >>> sorted(q.question_id for q in choose_shots(qs, qs[0], k=5, seed=0))
    ['q1', 'q2']
    """
    return _draw_shots(_by_lang(pool).get(target.lang, []), target, k, seed)


def mcq_prompt(target: MCQuestion, shots: Sequence[MCQuestion]) -> str:
    """The k-shot prompt (module docstring), ending in ``"Answer:"``.

    >>> print(mcq_prompt(MCQuestion("q", "en", "1+1?", ("1", "2"), 1), []))
    The following are multiple choice questions (with answers).
    <BLANKLINE>
    Question: 1+1?
    A. 1
    B. 2
    Answer:
    """
    solved = "".join(f"{_block(shot)} {LETTERS[shot.answer]}\n\n" for shot in shots)
    return HEADER + solved + _block(target)


def score_mcq(
    model: Any,
    tokenizer: Any,
    questions: Sequence[MCQuestion],
    *,
    shots: int,
    seed: int,
    batch_size: int = 8,
    max_length: int = 2048,
    progress: bool = False,
) -> list[MCQResult]:
    """Score each question with ``shots`` examples drawn from ``questions`` (its language).

    A prompt longer than ``max_length`` tokens (with its longest answer) loses shots from the
    front, one at a time; without shots, its context is cut from the left. Batches hold
    ``batch_size`` questions and take one forward (left-padded, float32 log-softmax) for
    those whose letters are single tokens and one for the rest. Results follow input order.
    """
    if shots < 0 or batch_size < 1:
        raise ValueError(f"shots must be >= 0 and batch_size >= 1, got {shots}, {batch_size}")
    model.eval()
    device = next(model.parameters()).device
    pad_id = pad_token_id_of(tokenizer)
    prefix = _special_prefix(tokenizer)
    starts: Any = range(0, len(questions), batch_size)
    if progress:
        from rich.progress import track

        starts = track(starts, description="multiple choice")
    groups = _by_lang(questions)
    results: list[MCQResult] = []
    for start in starts:
        batch = questions[start : start + batch_size]
        encoded = [
            _encode(tokenizer, q, _draw_shots(groups[q.lang], q, shots, seed), prefix, max_length)
            for q in batch
        ]
        scores = _score(model, encoded, pad_id, device)
        for question, done, logprobs in zip(batch, encoded, scores, strict=True):
            predicted = max(range(len(logprobs)), key=logprobs.__getitem__)  # first of ties
            results.append(
                MCQResult(
                    question_id=question.question_id,
                    lang=question.lang,
                    answer=question.answer,
                    predicted=predicted,
                    correct=predicted == question.answer,
                    logprobs=tuple(logprobs),
                    shots=done.shots,
                )
            )
    return results


def accuracy_by_lang(results: Iterable[MCQResult]) -> dict[str, dict[str, float | int]]:
    """``{lang: {"accuracy", "correct", "total"}}``, languages sorted.

    >>> r = [MCQResult("a", "en", 0, 0, True, (0.0, -1.0), 0), MCQResult("b", "en", 1, 0, False,
    ...      (0.0, -1.0), 0)]
    >>> accuracy_by_lang(r)
    {'en': {'accuracy': 0.5, 'correct': 1, 'total': 2}}
    """
    correct: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for result in results:
        total[result.lang] += 1
        correct[result.lang] += result.correct
    return {
        lang: {"accuracy": correct[lang] / total[lang], "correct": correct[lang], "total": n}
        for lang, n in sorted(total.items())
    }


# --- scoring ---------------------------------------------------------------------------


def _by_lang(pool: Sequence[MCQuestion]) -> dict[str, list[MCQuestion]]:
    """Each language's questions sorted by id: the order shots are drawn from."""
    groups: dict[str, list[MCQuestion]] = {}
    for question in sorted(pool, key=lambda q: q.question_id):
        groups.setdefault(question.lang, []).append(question)
    return groups


def _draw_shots(group: list[MCQuestion], target: MCQuestion, k: int, seed: int) -> list[MCQuestion]:
    """:func:`choose_shots` from one language's sorted questions, in O(k) per target
    (ordering the whole pool by a hash per target would take O(n^2) for n questions)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    rng = random.Random(stable_seed("mcq-shots", seed, target.question_id))
    drawn = rng.sample(range(len(group)), min(len(group), k + 1))  # one more, for the target
    return [group[i] for i in drawn if group[i].question_id != target.question_id][:k]


@dataclass(frozen=True, slots=True)
class _Encoded:
    """One question as token ids: per choice, the full sequence and how many of its last ids
    are the continuation " X" (the rest is the context)."""

    shots: int
    sequences: list[list[int]]
    scored: list[int]

    @property
    def one_token(self) -> bool:
        """Every choice is one shared context plus one token: the fast path applies."""
        context = self.sequences[0][:-1]
        pairs = zip(self.sequences, self.scored, strict=True)
        return all(s == 1 and seq[:-1] == context for seq, s in pairs)


def _block(question: MCQuestion) -> str:
    lines = [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(question.choices)]
    return "\n".join([f"Question: {question.question}", *lines, "Answer:"])


def _special_prefix(tokenizer: Any) -> list[int]:
    """The BOS id when the tokenizer puts one before every text by default, else nothing."""
    ids = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id
    return [int(bos)] if bos is not None and ids and ids[0] == bos else []


def _encode(
    tokenizer: Any, target: MCQuestion, shots: list[MCQuestion], prefix: list[int], max_length: int
) -> _Encoded:
    """Token ids per choice, with as many shots (kept from the back) as fit ``max_length``."""

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    for used in range(len(shots), -1, -1):
        text = mcq_prompt(target, shots[len(shots) - used :])
        context = len(ids(text))
        wholes = [ids(f"{text} {LETTERS[i]}") for i in range(len(target.choices))]
        # lm-eval's split: the continuation is what follows the context's token count.
        scored = [max(len(whole) - context, 1) for whole in wholes]
        if len(prefix) + max(len(w) for w in wholes) <= max_length:
            return _Encoded(used, [prefix + w for w in wholes], scored)
    kept = max_length - len(prefix) - max(scored)  # context tokens left for every choice
    if kept < 1:
        raise ValueError(f"max_length={max_length} cannot hold a context and an answer letter")
    cut = [prefix + w[-(kept + s) :] for w, s in zip(wholes, scored, strict=True)]
    return _Encoded(0, cut, scored)


def _score(
    model: Any, encoded: list[_Encoded], pad_id: int, device: torch.device
) -> list[list[float]]:
    """Per question, the log-probability of each choice's continuation."""
    scores: list[list[float]] = [[] for _ in encoded]
    fast = [i for i, e in enumerate(encoded) if e.one_token]
    slow = [i for i, e in enumerate(encoded) if not e.one_token]
    if fast:  # one row per question: the context's last logits score every letter
        contexts = [encoded[i].sequences[0][:-1] for i in fast]
        _, last = _logps(model, contexts, 1, pad_id, device)
        for i, row in zip(fast, last[:, -1].cpu(), strict=True):
            scores[i] = row[[seq[-1] for seq in encoded[i].sequences]].tolist()
    if slow:  # one row per choice, summed over its continuation tokens
        rows = [seq for i in slow for seq in encoded[i].sequences]
        counts = [s for i in slow for s in encoded[i].scored]
        keep = max(counts) + 1  # from the logits before the first scored token
        ids, logps = _logps(model, rows, keep, pad_id, device)
        scored = torch.zeros_like(ids, dtype=torch.bool)
        for row, count in enumerate(counts):
            scored[row, keep - count :] = True
        sums = iter(sequence_logps(logps, ids, scored).cpu().tolist())
        for i in slow:
            scores[i] = [next(sums) for _ in encoded[i].sequences]
    return scores


@torch.no_grad()
def _logps(
    model: Any, rows: list[list[int]], keep: int, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``keep`` ids ``(B, keep)`` of the left-padded ``rows`` and float32
    log-softmax of the model's logits there ``(B, keep, V)``. Position ids start at 0 on
    each row's first token, so padding shifts nothing; ``logits_to_keep`` skips the
    vocabulary projection everywhere else."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[index, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    logits = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=False,
        logits_to_keep=keep,
    ).logits[:, -keep:]
    return ids[:, -keep:], torch.log_softmax(logits.float(), dim=-1)


# --- loading ---------------------------------------------------------------------------


def _load(
    names: Sequence[str | Path], languages: Sequence[str] | None, *, sample_by_name: bool
) -> list[MCQuestion]:
    if isinstance(languages, str):
        raise TypeError(f"languages must be a list of codes such as [{languages!r}], not a str")
    if isinstance(names, str | Path) or not names:
        raise MCQDataError("pass a non-empty list of question files, e.g. [path]")
    seen: dict[str, str] = {}  # id -> where it was first read, across all files
    questions: list[MCQuestion] = []
    with reraise_as(MCQDataError):
        for name in names:
            if sample_by_name and str(name) == SAMPLE:
                sample = resources.files("congrad.data.builtin") / "mcq" / "sample.jsonl"
                text = sample.read_text("utf-8")
                rows = jsonl_rows(
                    text, "built-in mcq/sample.jsonl", columns=_COLUMNS, required=_REQUIRED
                )
            else:
                rows = read_rows(name, columns=_COLUMNS, required=_REQUIRED)
            questions.extend(_to_questions(rows, seen))
    if languages is None:
        return questions
    wanted = [lang.strip() for lang in languages]
    with reraise_as(MCQDataError):
        return select_languages(questions, wanted, ", ".join(map(str, names)), "question")


def _to_questions(rows: Rows, seen: dict[str, str]) -> list[MCQuestion]:
    questions = []
    for where, row in rows:
        question = text_field(row, "question", where).strip()
        lang = text_field(row, "lang", where).strip()
        if problem := check_language_code(lang):  # as the prompt and pair loaders check it
            raise MCQDataError(f"{where}, field 'lang': {problem}")
        choices = _choices(row, where)
        answer = _answer(row, where, len(choices))
        if "id" in row:
            question_id = text_field(row, "id", where, "or drop the id column").strip()
            what = f"id {question_id!r}"
        else:
            question_id = derive_question_id(lang, question, choices)
            what = f"question (derived id {question_id!r})"
        if question_id in seen:
            raise MCQDataError(
                f"{where}: duplicate {what}, first seen at {seen[question_id]}; "
                "give each question its own id, or delete the repeated row."
            )
        seen[question_id] = where
        questions.append(MCQuestion(question_id, lang, question, choices, answer))
    return questions


def derive_question_id(lang: str, question: str, choices: Sequence[str]) -> str:
    """A stable id for a row without one: ``<lang>-`` and 12 hex digits of SHA-256 of the
    question and its choices (MMLU repeats stems such as "Which of the following is true?").

    >>> derive_question_id("en", "2+2?", ["3", "4"])
    'en-502250d2b57f'
    """
    text = "\n".join([lang, question, *choices])
    return f"{lang}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _choices(row: Row, where: str) -> tuple[str, ...]:
    options = [name for name in _OPTIONS if name in row]
    if "choices" in row and options:
        raise MCQDataError(f"{where}: has both 'choices' and {options[0]!r}; keep one layout")
    if options:
        if len(options) < 2 or options != list(_OPTIONS[: len(options)]):
            raise MCQDataError(
                f"{where}: option columns {', '.join(options)} leave a gap or give one choice; "
                "fill option_a, option_b, ... in order."
            )
        return tuple(text_field(row, name, where).strip() for name in options)
    if "choices" not in row:
        raise MCQDataError(
            f"{where}: field 'choices' is missing; give a list of choices such as "
            '["Paris", "Rome"], or Global-MMLU\'s columns option_a to option_d.'
        )
    value = row["choices"]
    if isinstance(value, str):  # a CSV cell holds a JSON array
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # not JSON, a 5000-digit number, "[[[[..."
            value = None
    if not isinstance(value, list | tuple) or not 2 <= len(value) <= len(LETTERS):
        raise MCQDataError(
            f"{where}, field 'choices': expected a list of 2 to 26 texts (in CSV, a JSON array "
            f'such as ["Paris", "Rome"]), got {str(row["choices"])[:60]!r}.'
        )
    named = {f"choice {LETTERS[i]}": text for i, text in enumerate(value)}  # for the message
    return tuple(text_field(named, key, where).strip() for key in named)


def _answer(row: Row, where: str, count: int) -> int:
    value = row["answer"]
    text = value.strip() if isinstance(value, str) else value
    index = -1
    # ASCII letters only: "ı".upper() is "I" and "ſ".upper() is "S". Decimal digits of any
    # script ("٣", "３"), not "²", which int() rejects; at most 5, as an index is below 26
    # and int() refuses more than 4300 digits.
    if isinstance(text, str) and len(text) == 1 and text.isascii() and text.isalpha():
        index = LETTERS.find(text.upper())
    elif isinstance(text, str) and text.isdecimal() and len(text) <= 5:
        index = int(text)
    elif isinstance(text, int) and not isinstance(text, bool):
        index = text
    if not 0 <= index < count:
        raise MCQDataError(
            f"{where}, field 'answer': {value!r} is not one of the {count} choices; write a "
            f"letter A-{LETTERS[count - 1]} or a 0-based index 0-{count - 1}."
        )
    return index


def accuracy_from_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    totals: Counter[str] = Counter(row["lang"] for row in rows)
    correct: Counter[str] = Counter(row["lang"] for row in rows if row["correct"])
    return {
        lang: {"accuracy": correct[lang] / totals[lang], "correct": correct[lang], "total": n}
        for lang, n in sorted(totals.items())
    }

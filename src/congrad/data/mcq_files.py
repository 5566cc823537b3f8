"""Multiple-choice question files: the alignment tax's input, read and checked.

In: the built-in sample (``congrad/data/builtin/mcq/sample.jsonl``: six easy questions in
each of en, de, zh, fr and es) or user files: JSONL, CSV, Parquet, or a folder written by
``datasets.Dataset.save_to_disk``, with columns ``question``, ``choices`` (a list of 2 to 26
texts; in CSV a JSON array), ``answer`` (a letter, or a 0-based index) and ``lang``, and an
optional ``id``. Global-MMLU's ``option_a`` .. ``option_d`` may stand in for ``choices``;
its files carry no ``lang`` column, so add one. Out: :class:`MCQuestion` records, in file
order; every problem is an :class:`MCQDataError` naming the file, line and field.
Scoring them is :mod:`congrad.evaluation.mcq`'s job.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

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

LETTERS = string.ascii_uppercase
SAMPLE = "sample"  # the name :func:`load_mcq` reads as the built-in file
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

"""Stage 1, prompts: the instructions the model answers in each language, round by round.

In: the built-in set shipped in ``congrad/data/builtin/prompts/{train,eval}.jsonl`` (train: the 10
training languages; eval: held out, the same 10 plus hi, vi and ru, unseen in training), or
user files: JSONL, CSV, Parquet, or a folder written by ``datasets.Dataset.save_to_disk``,
each with columns ``prompt`` and ``lang`` and an optional ``id``.
Out: :class:`~congrad.data.records.PromptRecord` lists in file order, and
:func:`partition_rounds`, which gives each self-rewarding round (docs/design.md section 2) its own
disjoint slice of every language's prompts.

A ``lang`` must be an ISO 639-1 code or a tag built on one (``pt-BR``; see
:mod:`congrad.util.languages`). A row without ``id`` gets one derived from its text
(:func:`derive_prompt_id`), so ids are stable across runs and never depend on row order.
Bad input raises :class:`PromptDataError` naming the file, line or row, and field (the
reading and its checks are :mod:`congrad.data.tables`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

from congrad.data.records import PromptRecord
from congrad.data.tables import (
    DataError,
    Rows,
    jsonl_rows,
    read_rows,
    reraise_as,
    select_languages,
    text_field,
)
from congrad.util.languages import check_language_code

BUILTIN_TRAIN_LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "zh", "ja", "ko", "ar")
BUILTIN_EVAL_LANGUAGES = (*BUILTIN_TRAIN_LANGUAGES, "hi", "vi", "ru")

_COLUMNS = ("id", "lang", "prompt")
_REQUIRED = ("prompt", "lang")


class PromptDataError(DataError):
    """A prompt file or prompt set that cannot be used; the message says where and why."""


def derive_prompt_id(lang: str, prompt: str) -> str:
    """A stable id for a row without one: ``<lang>-`` and 12 hex digits of SHA-256.

    >>> derive_prompt_id("en", "Why is the sky blue?")
    'en-4d365bb0b822'
    """
    digest = hashlib.sha256(f"{lang}\n{prompt}".encode()).hexdigest()
    return f"{lang}-{digest[:12]}"


def load_builtin_prompts(
    split: Literal["train", "eval"], languages: Sequence[str] | None = None
) -> list[PromptRecord]:
    """The shipped prompts of ``split``, optionally only those of ``languages``."""
    available = {"train": BUILTIN_TRAIN_LANGUAGES, "eval": BUILTIN_EVAL_LANGUAGES}
    languages = _language_list(languages)
    if split not in available:
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    missing = [lang for lang in languages or () if lang not in available[split]]
    if missing:
        raise PromptDataError(
            f"the built-in {split} prompts have no language {', '.join(map(repr, missing))}; "
            f"available: {', '.join(available[split])}. Pass your own files for other languages."
        )
    resource = resources.files("congrad.data.builtin") / "prompts" / f"{split}.jsonl"
    source = f"built-in {split}.jsonl"
    text = resource.read_text(encoding="utf-8")
    with reraise_as(PromptDataError):
        records = _to_records(jsonl_rows(text, source, columns=_COLUMNS, required=_REQUIRED), {})
    return _select_languages(records, languages, source)


def load_prompt_files(
    paths: Sequence[str | Path], languages: Sequence[str] | None = None
) -> list[PromptRecord]:
    """Read prompts from JSONL, CSV or Parquet files or ``datasets`` folders, in order.

    Ids must be unique across all ``paths``. Rows are kept in file order; when
    ``languages`` is given only those languages are kept, and each must have a prompt.
    """
    languages = _language_list(languages)
    if isinstance(paths, str | Path) or not paths:
        raise PromptDataError("pass a non-empty list of prompt files, e.g. [path]")
    seen: dict[str, str] = {}  # id -> where it was first read, across all files
    records: list[PromptRecord] = []
    with reraise_as(PromptDataError):
        for path in paths:
            records.extend(_to_records(read_rows(path, columns=_COLUMNS, required=_REQUIRED), seen))
    return _select_languages(records, languages, ", ".join(map(str, paths)))


def partition_rounds(
    prompts: Sequence[PromptRecord], rounds: int, per_round: int, seed: int
) -> dict[int, list[PromptRecord]]:
    """Disjoint prompts for rounds ``1..rounds``: ``per_round`` of every language each.

    Each language's prompts are ordered by SHA-256 of ``f"{seed}:{prompt_id}"`` and
    round ``t`` takes positions ``[(t-1)*per_round, t*per_round)``, so the result does
    not depend on input order, and raising ``rounds`` leaves earlier rounds unchanged.
    Each round is sorted by ``(lang, prompt_id)``.

    >>> ps = [PromptRecord(f"en-{i}", "en", f"q{i}") for i in range(4)]
    >>> split = partition_rounds(ps, rounds=2, per_round=2, seed=0)
    >>> sorted(len(v) for v in split.values()), len({p for v in split.values() for p in v})
    ([2, 2], 4)
    """
    if rounds < 1 or per_round < 1:
        raise ValueError(f"rounds and per_round must be >= 1, got {rounds} and {per_round}")
    repeated = [pid for pid, n in Counter(p.prompt_id for p in prompts).items() if n > 1]
    if repeated:
        raise PromptDataError(f"prompt ids must be unique; repeated: {sorted(repeated)[:5]}")
    by_lang: dict[str, list[PromptRecord]] = {}
    for record in prompts:
        by_lang.setdefault(record.lang, []).append(record)
    needed = rounds * per_round
    short = {lang: len(group) for lang, group in sorted(by_lang.items()) if len(group) < needed}
    if short:
        counts = ", ".join(f"{lang} has {n}" for lang, n in short.items())
        raise PromptDataError(
            f"{rounds} rounds of {per_round} prompts per language need {needed} prompts in "
            f"each language, but {counts}; lower the per-round count or add prompts."
        )
    result: dict[int, list[PromptRecord]] = {t: [] for t in range(1, rounds + 1)}
    for group in by_lang.values():
        ordered = sorted(group, key=lambda p: (_order_key(seed, p.prompt_id), p.prompt_id))
        for t in result:
            result[t].extend(ordered[(t - 1) * per_round : t * per_round])
    for chosen in result.values():
        chosen.sort(key=lambda p: (p.lang, p.prompt_id))
    return result


def _order_key(seed: int, prompt_id: str) -> str:
    return hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest()


def _language_list(languages: Sequence[str] | None) -> list[str] | None:
    if isinstance(languages, str):
        raise TypeError(f"languages must be a list of codes such as [{languages!r}], not a str")
    return None if languages is None else [lang.strip() for lang in languages]


def _select_languages(
    records: list[PromptRecord], languages: Sequence[str] | None, source: str
) -> list[PromptRecord]:
    if languages is None:
        return records
    with reraise_as(PromptDataError):
        return select_languages(records, languages, source, "prompt")


def _to_records(rows: Rows, seen: dict[str, str]) -> list[PromptRecord]:
    """Validate rows into records; ``seen`` maps ids to where they were first read."""
    records = []
    for where, row in rows:
        prompt = text_field(row, "prompt", where).strip()
        lang = text_field(row, "lang", where).strip()
        if problem := check_language_code(lang):
            raise PromptDataError(f"{where}, field 'lang': {problem}")
        if "id" in row:
            prompt_id = text_field(row, "id", where, "or drop the id column").strip()
            what = f"id {prompt_id!r}"
        else:
            prompt_id = derive_prompt_id(lang, prompt)
            what = f"prompt (derived id {prompt_id!r})"
        if prompt_id in seen:
            raise PromptDataError(
                f"{where}: duplicate {what}, first seen at {seen[prompt_id]}; "
                "give each prompt its own id, or delete the repeated row."
            )
        seen[prompt_id] = where
        records.append(PromptRecord(prompt_id=prompt_id, lang=lang, prompt=prompt))
    return records

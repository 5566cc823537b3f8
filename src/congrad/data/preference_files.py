"""External preference pairs: a multilingual dataset read in place of self-rewarding pairs.

In: JSONL, CSV or Parquet files, or folders written by ``datasets.Dataset.save_to_disk``,
with columns ``prompt``, ``chosen``, ``rejected`` and ``lang``, and optionally ``id``,
``chosen_score`` and ``rejected_score`` (read and checked by :mod:`congrad.data.tables`).
Out: :class:`~congrad.data.records.PreferencePair` lists in file order, for the filter and
training stages.

A row without ``id`` gets a stable ``pair_id`` derived from its texts
(:func:`derive_pair_id`), never from its position. Prompts and language codes are stripped
of surrounding whitespace, as in :mod:`congrad.data.prompts`; responses are kept verbatim, since
they are what the policy is trained to produce. Rejected, with a :class:`PairDataError`
naming the file, line or row, and field: a blank text, a ``lang`` that is not a language
code (:mod:`congrad.util.languages`), a row whose chosen and rejected responses are the same
text (it carries no preference), a score given for one response but not the other, and an
id used twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from congrad.data.records import PreferencePair
from congrad.data.tables import (
    DataError,
    optional_number,
    read_rows,
    reraise_as,
    select_languages,
    text_field,
)
from congrad.util.languages import check_language_code

_COLUMNS = ("id", "lang", "prompt", "chosen", "rejected", "chosen_score", "rejected_score")
_REQUIRED = ("prompt", "chosen", "rejected", "lang")


class PairDataError(DataError):
    """A pair file or pair set that cannot be used; the message says where and why."""


def derive_pair_id(lang: str, prompt: str, chosen: str, rejected: str) -> str:
    """A stable id for a row without one: ``<lang>-`` and 12 hex digits of SHA-256.

    The four texts are hashed as one JSON list, so no two different rows hash the same
    string (``"a\\nb", "c"`` and ``"a", "b\\nc"`` differ).

    >>> derive_pair_id("en", "What is 2 + 2?", "4", "5")
    'en-85094d6a11fb'
    """
    key = json.dumps([lang, prompt, chosen, rejected])
    return f"{lang}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def load_pair_files(
    paths: Sequence[str | Path], languages: Sequence[str] | None = None
) -> list[PreferencePair]:
    """Read preference pairs from JSONL, CSV or Parquet files or ``datasets`` folders.

    Ids must be unique across all ``paths``. Pairs are kept in file order; when
    ``languages`` is given only those languages are kept, and each must have a pair.
    Scores are floats (numeric CSV cells included); a row has both or neither.
    """
    if isinstance(languages, str):
        raise TypeError(f"languages must be a list of codes such as [{languages!r}], not a str")
    if isinstance(paths, str | Path) or not paths:
        raise PairDataError("pass a non-empty list of pair files, e.g. [path]")
    seen: dict[str, str] = {}  # pair id -> where it was first read, across all files
    pairs: list[PreferencePair] = []
    with reraise_as(PairDataError):
        for path in paths:
            for where, row in read_rows(path, columns=_COLUMNS, required=_REQUIRED):
                pair, what = _to_pair(row, where)
                if pair.pair_id in seen:
                    raise PairDataError(
                        f"{where}: duplicate {what}, first seen at {seen[pair.pair_id]}; "
                        "give each pair its own id, or delete the repeated row."
                    )
                seen[pair.pair_id] = where
                pairs.append(pair)
    if languages is None:
        return pairs
    with reraise_as(PairDataError):
        source = ", ".join(map(str, paths))
        return select_languages(pairs, [lang.strip() for lang in languages], source, "pair")


def _to_pair(row: Mapping[Any, Any], where: str) -> tuple[PreferencePair, str]:
    """One checked pair, and how to name it in a duplicate-id message."""
    prompt = text_field(row, "prompt", where).strip()
    chosen = text_field(row, "chosen", where)
    rejected = text_field(row, "rejected", where)
    lang = text_field(row, "lang", where).strip()
    if problem := check_language_code(lang):
        raise PairDataError(f"{where}, field 'lang': {problem}")
    if chosen.strip() == rejected.strip():
        raise PairDataError(
            f"{where}: fields 'chosen' and 'rejected' are the same text, so the pair carries "
            "no preference; fix one of them or delete the row."
        )
    chosen_score = optional_number(row, "chosen_score", where)
    rejected_score = optional_number(row, "rejected_score", where)
    if (chosen_score is None) != (rejected_score is None):
        given, absent = "chosen_score", "rejected_score"
        if chosen_score is None:
            given, absent = absent, given
        raise PairDataError(
            f"{where}: field {given!r} is set but {absent!r} is not; give both scores or neither."
        )
    if "id" in row:
        pair_id = text_field(row, "id", where, "or drop the id column").strip()
        what = f"id {pair_id!r}"
    else:
        pair_id = derive_pair_id(lang, prompt, chosen, rejected)
        what = f"pair (derived id {pair_id!r})"
    pair = PreferencePair(pair_id, lang, prompt, chosen, rejected, chosen_score, rejected_score)
    return pair, what

"""Rows of user data files checked against a set of columns: the reading shared by the
prompt loader (:mod:`congrad.data.prompts`) and the preference-pair loader
(:mod:`congrad.data.preference_files`).

In: a JSONL, CSV or Parquet file or a ``datasets`` save_to_disk folder, and the columns the
caller reads. Out: ``(where, row)`` pairs in file order, ``where`` naming file and line or row
(``"p.jsonl, line 3"``) to open an error message; field readers that check values.
Every problem raises :class:`DataError` saying where, which field and what to do. Unknown
columns are ignored unless they look like a misspelt known one. Lines are counted at ``\\n``
only, as editors count them: a U+2028 or U+0085 inside a text is text, not a line break.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import reprlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from congrad.errors import CongradError

Row = Mapping[Any, Any]
Rows = Iterator[tuple[str, Row]]  # (where, row), where = "<file>, line 3" or "<file>, row 2"


class DataError(CongradError, ValueError):
    """A data file or row that cannot be used; the message says where and what to do."""


class _HasLang(Protocol):
    @property
    def lang(self) -> str: ...


Record = TypeVar("Record", bound=_HasLang)


def select_languages(
    records: Sequence[Record], languages: Sequence[str], source: str, noun: str
) -> list[Record]:
    """The records of ``languages``, in order; :class:`DataError` naming ``source`` when a
    language has none (``noun`` says what a record is: "prompt", "pair", "question")."""
    counts = Counter(record.lang for record in records)
    empty = sorted({lang for lang in languages if counts[lang] == 0})
    if empty:
        found = ", ".join(f"{lang} ({n})" for lang, n in sorted(counts.items())) or "none"
        raise DataError(
            f"{source}: no {noun}s for language {', '.join(map(repr, empty))}; languages found "
            f"({noun} count): {found}. Fix the language list or the files' lang column."
        )
    wanted = set(languages)
    return [record for record in records if record.lang in wanted]


@contextmanager
def reraise_as(error: type[DataError]) -> Iterator[None]:
    """Raise a :class:`DataError` from the block as ``error``, the caller's own subclass."""
    try:
        yield
    except error:
        raise
    except DataError as exc:
        raise error(*exc.args).with_traceback(exc.__traceback__) from exc.__cause__


def read_rows(path: str | Path, *, columns: Sequence[str], required: Sequence[str]) -> Rows:
    """The rows of one file or ``datasets`` folder, in order, as ``(where, row)`` pairs.

    ``columns`` are the names the caller reads and ``required`` those every row must have.
    An unknown column that looks like a misspelling of an absent one (``promt``, ``ID``) is
    an error; other unknown columns are ignored. Values come as stored: JSON values from
    JSONL, Python values from Parquet and ``datasets``, strings from CSV.
    """
    schema = _Schema(tuple(columns), tuple(required))
    path = Path(path)
    if path.is_dir():
        return _dataset_rows(path, schema)
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return jsonl_rows(_read_utf8(path), str(path), columns=columns, required=required)
    if suffix == ".csv":
        return _csv_rows(_read_utf8(path), str(path), schema)
    if suffix == ".parquet":
        return _parquet_rows(path, schema)
    formats = ".jsonl, .csv, .parquet, or a folder written by datasets' save_to_disk"
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; use {formats}")


def jsonl_rows(text: str, source: str, *, columns: Sequence[str], required: Sequence[str]) -> Rows:
    """The rows of JSONL ``text`` read from ``source``, as :func:`read_rows` gives them."""
    schema = _Schema(tuple(columns), tuple(required))
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problem = exc.msg.removesuffix(" at")  # "Unterminated string starting at"
            raise DataError(
                f"{source}, line {number}: malformed JSON ({problem} at column {exc.colno}); "
                f"each line must be one object such as {schema.example}."
            ) from exc
        except (ValueError, RecursionError) as exc:  # a 5000-digit number, nesting too deep
            raise DataError(f"{source}, line {number}: unreadable JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise DataError(f"{source}, line {number}: each line must be a JSON object")
        schema.check(row, f"{source}, line {number}")
        yield f"{source}, line {number}", row


def text_field(row: Row, field: str, where: str, fix: str = "") -> str:
    """``row[field]`` as a string that is not blank, unstripped; ``fix`` extends the advice
    given when it is not a string (e.g. ``"or drop the id column"``)."""
    value = row[field]
    if not isinstance(value, str):
        raise DataError(
            f"{where}, field {field!r}: expected a string, got {type(value).__name__} "
            f"{reprlib.repr(value)}; write it as text{', ' + fix if fix else ''}."
        )
    if not value.strip():
        raise DataError(f"{where}, field {field!r}: empty; fill it in or delete the row")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, from a JSON escape such as \ud800
        raise DataError(f"{where}, field {field!r}: not valid Unicode ({exc}); fix it") from exc
    return value


def optional_number(row: Row, field: str, where: str) -> float | None:
    """``row[field]`` as a finite float, or ``None`` when absent, null or a blank CSV cell.

    Numbers and numeric strings (CSV cells are strings) are accepted; a boolean, NaN,
    infinity or anything else raises :class:`DataError` naming the field.

    >>> optional_number({"score": "7.5"}, "score", "p.csv, row 2"), optional_number({}, "s", "")
    (7.5, None)
    """
    value = row.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = math.nan
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        with suppress(ValueError, OverflowError):  # not a number; an integer past 1e308
            number = float(value)
    if not math.isfinite(number):
        raise DataError(
            f"{where}, field {field!r}: expected a finite number, got {type(value).__name__} "
            f"{reprlib.repr(value)}; write a number such as 7.5, or leave it empty."
        )
    return number


@dataclass(frozen=True)
class _Schema:
    columns: tuple[str, ...]
    required: tuple[str, ...]

    @property
    def example(self) -> str:  # a JSONL line with the required columns
        shown = [c for c in self.columns if c in self.required]  # lang shows a real code
        return json.dumps({c: "en" if c == "lang" else "..." for c in shown})

    def check(self, present: Iterable[Any], where: str) -> None:
        """Reject a missing required column, or an unknown one that looks like a misspelling
        of an absent known one (``promt``, ``language``, ``ID``); other extra columns pass."""
        found = [str(c) for c in present]
        unknown = {c.lower(): c for c in found if c not in self.columns}
        optional = [c for c in self.columns if c not in self.required]
        for name in self.columns:
            if name in found:
                continue
            close = difflib.get_close_matches(name, unknown, n=1, cutoff=_cutoff(name))
            if close:
                verb = "is" if len(optional) == 1 else "are"
                note = f"; {_listing(optional)} {verb} optional" if optional else ""
                raise DataError(
                    f"{where}: column {unknown[close[0]]!r} is not known; did you mean {name!r}? "
                    f"Rename it (the columns are {', '.join(self.columns)}{note})."
                )
            if name in self.required:
                may = f", and may have {_listing(map(repr, optional))}" if optional else ""
                raise DataError(
                    f"{where}: field {name!r} is missing (found: {', '.join(found) or 'nothing'});"
                    f" every row needs {_listing(map(repr, self.required))}{may}."
                )


def _cutoff(name: str) -> float:
    """How alike (difflib ratio) an unknown column must be to ``name`` to count as its typo."""
    if len(name) <= 2:
        return 0.8  # 0.6 would take "kind" or "side" for "id"
    # In long compound names a shared word alone scores 0.6 to 0.8 ("chosen_model" against
    # "chosen_score"), so only a near copy (one or two typos) counts.
    return 0.85 if len(name) >= 10 else 0.6


def _listing(items: Iterable[str]) -> str:
    *head, last = items
    return f"{', '.join(head)} and {last}" if head else last


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8; save it as UTF-8") from exc


def _csv_rows(text: str, source: str, schema: _Schema) -> Rows:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if reader.fieldnames is None:
            raise DataError(f"{source}: empty CSV; the first row must name the columns")
        schema.check(reader.fieldnames, f"{source}, header row")
        for number, row in enumerate(reader, start=2):
            location = f"{source}, row {number} (header is row 1)"
            if None in row or None in row.values():
                raise DataError(
                    f"{location}: has a different number of cells than the header; "
                    "quote cells that contain commas or line breaks."
                )
            yield location, row
    except csv.Error as exc:  # e.g. a cell past the csv module's 131072-character limit
        raise DataError(
            f"{source}, line {reader.line_num}: unreadable CSV ({exc}); "
            "for very long texts use JSONL or Parquet"
        ) from exc


def _parquet_rows(path: Path, schema: _Schema) -> Rows:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from exc
    try:
        with pq.ParquetFile(path) as table:
            names = table.schema_arrow.names
            return _numbered_rows(path, names, schema, lambda c: table.read(c).to_pylist())
    except DataError:
        raise
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc


def _dataset_rows(path: Path, schema: _Schema) -> Rows:
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(f"reading {path} needs datasets: pip install datasets") from exc
    _check_dataset_metadata(path)
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:  # no such folder or file; a damaged .arrow file
        raise DataError(f"{path}: not a folder from datasets' save_to_disk ({exc})") from exc
    if isinstance(loaded, datasets.DatasetDict):
        splits = ", ".join(str(path / name) for name in loaded)
        raise DataError(f"{path}: holds several splits; pass one of: {splits}")
    names = loaded.column_names
    return _numbered_rows(path, names, schema, lambda c: loaded.select_columns(c).to_list())


def _check_dataset_metadata(path: Path) -> None:
    """Reject a damaged ``save_to_disk`` folder, whose JSON files ``datasets`` reads
    unchecked (it then fails with KeyError, TypeError or AttributeError); a folder of
    splits is named as such without loading them, as :func:`_dataset_rows` refuses it."""
    damaged = "the folder is damaged; write it again with save_to_disk"
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():  # a Dataset
        _json_object(path / "dataset_info.json", damaged)
        files = _json_object(path / "state.json", damaged).get("_data_files")
        files = files if isinstance(files, list) else []
        if not files or not all(
            isinstance(f, dict) and isinstance(f.get("filename"), str) for f in files
        ):
            raise DataError(f"{path / 'state.json'}: '_data_files' lists no data files; {damaged}")
    elif (path / "dataset_dict.json").is_file():
        splits = _json_object(path / "dataset_dict.json", damaged).get("splits")
        if not isinstance(splits, list) or not all(isinstance(split, str) for split in splits):
            raise DataError(
                f"{path / 'dataset_dict.json'}: 'splits' is not a list of names; {damaged}"
            )
        raise DataError(
            f"{path}: holds several splits; pass one of: {', '.join(str(path / s) for s in splits)}"
        )


def _json_object(file: Path, damaged: str) -> dict[str, Any]:
    try:
        value = json.loads(file.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:  # unreadable, not UTF-8, not JSON
        raise DataError(f"{file}: not readable JSON ({exc}); {damaged}") from exc
    if not isinstance(value, dict):
        raise DataError(f"{file}: holds {type(value).__name__}, not a JSON object; {damaged}")
    return value


def _numbered_rows(
    path: Path, names: list[str], schema: _Schema, read: Callable[[list[str]], list[Any]]
) -> Rows:
    """Rows of a Parquet table or a ``datasets.Dataset``, numbered from 1; ``read`` reads
    only the named columns, so unknown ones are never loaded."""
    schema.check(names, f"{path}, columns")
    rows = read([c for c in schema.columns if c in names])
    return ((f"{path}, row {number}", row) for number, row in enumerate(rows, start=1))

"""External preference pairs: every format, every bad-input message, stable ids, fuzzing.

Also covers the shared readers in congrad.data.tables where pairs exercise what prompts do not:
scores, long column names, line breaks other than \\n, and error types.
"""

from __future__ import annotations

import csv
import json
import random
import re
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from congrad.data.preference_files import PairDataError, derive_pair_id, load_pair_files
from congrad.data.prompts import PromptDataError
from congrad.data.records import PreferencePair
from congrad.data.tables import DataError, optional_number, read_rows, reraise_as

COLUMNS = ["id", "lang", "prompt", "chosen", "rejected", "chosen_score", "rejected_score"]
REQUIRED = ["lang", "prompt", "chosen", "rejected"]
# Commas, quotes, line breaks, non-Latin scripts, padding, a row without scores.
ROWS: list[dict[str, object]] = [
    {"id": "p-1", "lang": "en", "prompt": 'Say "hi".', "chosen": "Hi!", "rejected": "No.",
     "chosen_score": 9.0, "rejected_score": 2.5},
    {"id": "p-2", "lang": "de", "prompt": "Zwei Zeilen:\nerste, zweite.", "chosen": "Ja,\nso.",
     "rejected": "Nein", "chosen_score": 7.0, "rejected_score": -1.0},
    {"id": "p-3", "lang": "zh", "prompt": "天空为什么是蓝色的？", "chosen": "因为瑞利散射。",
     "rejected": "因为大海。", "chosen_score": None, "rejected_score": None},
    {"id": " p-4 ", "lang": " ar ", "prompt": "  ما هي عاصمة المغرب؟ ", "chosen": " الرباط ",
     "rejected": "الدار البيضاء", "chosen_score": 10, "rejected_score": 0},
]  # fmt: skip
EXPECTED = [
    PreferencePair("p-1", "en", 'Say "hi".', "Hi!", "No.", 9.0, 2.5),
    PreferencePair("p-2", "de", "Zwei Zeilen:\nerste, zweite.", "Ja,\nso.", "Nein", 7.0, -1.0),
    PreferencePair("p-3", "zh", "天空为什么是蓝色的？", "因为瑞利散射。", "因为大海。"),
    PreferencePair("p-4", "ar", "ما هي عاصمة المغرب؟", " الرباط ", "الدار البيضاء", 10.0, 0.0),
]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)  # None is written as an empty cell
    return path


def write_parquet(path: Path, rows: list[dict[str, object]]) -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_dataset(path: Path, rows: list[dict[str, object]]) -> Path:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


WRITERS = {
    "jsonl": lambda d, rows: write_jsonl(d / "p.jsonl", rows),
    "csv": lambda d, rows: write_csv(d / "p.csv", rows),
    "parquet": lambda d, rows: write_parquet(d / "p.parquet", rows),
    "datasets": lambda d, rows: write_dataset(d / "p_ds", rows),
}


def pair_row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {"lang": "en", "prompt": "2 + 2?", "chosen": "4", "rejected": "5"}
    return {**row, **changes}


# ---------------------------------------------------------------- formats and ids


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_format_gives_the_same_pairs(tmp_path, fmt):
    assert load_pair_files([WRITERS[fmt](tmp_path, ROWS)]) == EXPECTED


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_without_id_and_scores_ids_are_derived(tmp_path, fmt):
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected", "lang")} for r in ROWS]
    pairs = load_pair_files([WRITERS[fmt](tmp_path, rows)])
    assert [p.pair_id for p in pairs] == [
        derive_pair_id(e.lang, e.prompt, e.chosen, e.rejected) for e in EXPECTED
    ]
    assert re.fullmatch(r"en-[0-9a-f]{12}", pairs[0].pair_id)
    assert all(p.chosen_score is None and p.rejected_score is None for p in pairs)


def test_derived_ids_are_stable_distinct_and_order_independent(tmp_path):
    assert derive_pair_id("en", "What is 2 + 2?", "4", "5") == "en-85094d6a11fb"
    base = ("en", "q", "a", "b")
    variants = [("de", "q", "a", "b"), ("en", "q2", "a", "b"), ("en", "q", "a2", "b"),
                ("en", "q", "a", "b2"), ("en", "q", "b", "a")]  # fmt: skip
    ids = {derive_pair_id(*v) for v in [base, *variants]}
    assert len(ids) == 6  # every field counts, and swapping chosen/rejected is another pair
    # Field boundaries cannot be moved: joining with a separator would make these collide.
    assert derive_pair_id("en", "a\nb", "c", "d") != derive_pair_id("en", "a", "b\nc", "d")

    rows = [pair_row(prompt=f"q{i}", lang=lang) for i in range(6) for lang in ("en", "ko")]
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    first = load_pair_files([write_jsonl(tmp_path / "a.jsonl", rows)])
    second = load_pair_files([write_jsonl(tmp_path / "b.jsonl", shuffled)])
    assert {p.pair_id: p for p in first} == {p.pair_id: p for p in second}
    assert load_pair_files([tmp_path / "a.jsonl"]) == first  # same file, same ids


def test_extra_columns_are_ignored_and_files_concatenate(tmp_path):
    # chosen_model/rejected_reason share a word with an absent score column: not misspellings.
    extra = {"source": "web", "chosen_model": "m1", "rejected_reason": "wrong", "prompt_id": 3}
    first = write_jsonl(tmp_path / "a.jsonl", [dict(ROWS[0], **extra)])
    rows = [{k: v for k, v in r.items() if "score" not in k} for r in ROWS[2:]]
    second = write_csv(tmp_path / "b.csv", [dict(r, chosen_model="m2") for r in rows])
    unscored = [replace(e, chosen_score=None, rejected_score=None) for e in EXPECTED[2:]]
    assert load_pair_files([first, str(second)]) == [EXPECTED[0], *unscored]


def test_language_filter(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    assert load_pair_files([path], languages=["zh", " en"]) == [EXPECTED[0], EXPECTED[2]]
    with pytest.raises(PairDataError, match=r"no pairs for language 'fr'; .*\(pair count\): ar"):
        load_pair_files([path], languages=["en", "fr"])
    with pytest.raises(TypeError, match="list of codes"):
        load_pair_files([path], languages="en")


def test_csv_scores_are_parsed_and_blank_cells_are_missing(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        "lang,prompt,chosen,rejected,chosen_score,rejected_score\n"
        "en,q1,a,b, 7.5 ,-2\nen,q2,a,b,,\nen,q3,a,b,1e1,0x10\n",
        "utf-8",
    )
    with pytest.raises(PairDataError, match=r"row 4 .*field 'rejected_score': expected a finite"):
        load_pair_files([path])
    path.write_text(path.read_text("utf-8").replace("0x10", "3"), "utf-8")
    scores = [(p.chosen_score, p.rejected_score) for p in load_pair_files([path])]
    assert scores == [(7.5, -2.0), (None, None), (10.0, 3.0)]


def test_line_separators_inside_texts_are_text(tmp_path):
    # U+2028, U+0085 and form feed are line breaks to str.splitlines, but not to editors.
    odd = "one\u2028two\x85three\x0cfour\r"
    rows = [pair_row(prompt="q1"), pair_row(prompt=odd), pair_row(prompt="q3", chosen=" ")]
    with pytest.raises(PairDataError, match=r"p\.jsonl, line 3, field 'chosen': empty"):
        load_pair_files([write_jsonl(tmp_path / "p.jsonl", rows)])
    pairs = load_pair_files([write_csv(tmp_path / "p.csv", rows[:2])])
    assert pairs[1].prompt == odd.strip()


def test_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\ufeff" + json.dumps(pair_row()) + "\n", "utf-8")
    assert len(load_pair_files([path])) == 1


# ---------------------------------------------------------------- errors


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(pair_row()) + '\n\n{"lang": "en", "prompt": "x"\n', "utf-8")
    with pytest.raises(PairDataError, match=r'bad\.jsonl, line 3: malformed JSON.*"chosen"'):
        load_pair_files([path])
    path.write_text(json.dumps(pair_row()) + "\n" + "[" * 100_000 + "\n", "utf-8")
    with pytest.raises(PairDataError, match=r"line 2: unreadable JSON"):
        load_pair_files([path])
    path.write_text('{"lang": "en", "prompt": ' + "9" * 5000 + "}\n", "utf-8")
    with pytest.raises(PairDataError, match=r"line 1: unreadable JSON"):
        load_pair_files([path])
    path.write_text('"just a string"\n', "utf-8")
    with pytest.raises(PairDataError, match=r"line 1: each line must be a JSON object"):
        load_pair_files([path])


def test_misspelt_column_suggests_the_closest_name(tmp_path):
    row = pair_row()
    row["choosen"] = row.pop("chosen")
    path = write_jsonl(tmp_path / "p.jsonl", [pair_row(), row])
    with pytest.raises(PairDataError, match=r"line 2: column 'choosen'.*did you mean 'chosen'\?"):
        load_pair_files([path])
    rows = [{**pair_row(), "Rejected_Score": "1", "chosen_score": "2"}]
    with pytest.raises(PairDataError, match=r"header row: .*'Rejected_Score'.*'rejected_score'"):
        load_pair_files([write_csv(tmp_path / "p.csv", rows)])
    path = write_parquet(tmp_path / "p.parquet", [{**pair_row(), "ID": "x"}])
    with pytest.raises(
        PairDataError,
        match=r"columns: column 'ID'.*mean 'id'\? Rename it \(the columns are id, lang, prompt, "
        r"chosen, rejected, chosen_score, rejected_score; id, chosen_score and rejected_score "
        r"are optional\)",
    ):
        load_pair_files([path])


def test_missing_column_lists_what_was_found(tmp_path):
    row = pair_row()
    del row["rejected"]
    path = write_jsonl(tmp_path / "p.jsonl", [row])
    with pytest.raises(
        PairDataError,
        match=r"line 1: field 'rejected' is missing \(found: lang, prompt, chosen\); every row "
        r"needs 'prompt', 'chosen', 'rejected' and 'lang', and may have 'id', 'chosen_score' "
        r"and 'rejected_score'\.",
    ):
        load_pair_files([path])


@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected", "lang", "id"])
@pytest.mark.parametrize("value", ["", "  \n\t"])
def test_empty_texts_name_line_and_field(tmp_path, field, value):
    path = write_jsonl(tmp_path / "p.jsonl", [pair_row(), pair_row(**{field: value})])
    with pytest.raises(PairDataError, match=rf"line 2, field '{field}': empty"):
        load_pair_files([path])


@pytest.mark.parametrize(
    ("field", "value"),
    [("prompt", 42), ("chosen", ["4"]), ("rejected", None), ("lang", {"code": "en"}), ("id", 7)],
)
def test_non_string_texts_are_errors(tmp_path, field, value):
    path = write_jsonl(tmp_path / "p.jsonl", [pair_row(**{field: value})])
    with pytest.raises(PairDataError, match=rf"line 1, field '{field}': expected a string"):
        load_pair_files([path])


def test_lone_surrogate_is_an_error(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(pair_row(chosen="ok \ud800")) + "\n", "utf-8")  # as \ud800 escape
    with pytest.raises(PairDataError, match=r"line 1, field 'chosen': not valid Unicode"):
        load_pair_files([path])


@pytest.mark.parametrize(("chosen", "rejected"), [("4", "4"), ("4", " 4\n")])
def test_chosen_equal_to_rejected_is_an_error(tmp_path, chosen, rejected):
    rows = [pair_row(), pair_row(prompt="b", chosen=chosen, rejected=rejected)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(PairDataError, match=r"line 2: .*same text.*carries no preference"):
        load_pair_files([path])


@pytest.mark.parametrize(
    ("scores", "given", "absent"),
    [
        ({"chosen_score": 1.0}, "chosen_score", "rejected_score"),
        ({"rejected_score": 1.0, "chosen_score": None}, "rejected_score", "chosen_score"),
    ],
)
def test_one_score_without_the_other_is_an_error(tmp_path, scores, given, absent):
    path = write_jsonl(tmp_path / "p.jsonl", [pair_row(**scores)])
    with pytest.raises(PairDataError, match=rf"line 1: field '{given}' is set but '{absent}'"):
        load_pair_files([path])


@pytest.mark.parametrize("score", ["high", True, [1], float("nan"), float("inf"), 10**400])
def test_bad_scores_name_the_field(tmp_path, score):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(pair_row(chosen_score=1, rejected_score=score)) + "\n", "utf-8")
    with pytest.raises(PairDataError, match=r"line 1, field 'rejected_score': expected a finite"):
        load_pair_files([path])


def test_duplicate_ids_name_both_places(tmp_path):
    rows = [pair_row(id="x"), pair_row(id="y", prompt="b"), pair_row(id=" x", prompt="c")]
    with pytest.raises(PairDataError, match=r"line 3: duplicate id 'x', first seen at .*line 1"):
        load_pair_files([write_jsonl(tmp_path / "p.jsonl", rows)])
    first = write_jsonl(tmp_path / "first.jsonl", [pair_row()])
    second = write_csv(tmp_path / "second.csv", [pair_row(prompt="other"), pair_row()])
    with pytest.raises(
        PairDataError, match=r"second\.csv, row 3 .*duplicate pair \(derived id 'en-.*first\.jsonl"
    ):
        load_pair_files([first, second])


def test_ragged_csv_row_is_an_error(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("lang,prompt,chosen,rejected\nen,q,a,b\nen,q,a,b,c\n", "utf-8")
    with pytest.raises(PairDataError, match=r"row 3 \(header is row 1\): has a different number"):
        load_pair_files([path])


def test_unusable_paths(tmp_path):
    with pytest.raises(PairDataError, match="no such file"):
        load_pair_files([tmp_path / "missing.jsonl"])
    (tmp_path / "p.txt").write_text("hello", "utf-8")
    with pytest.raises(PairDataError, match=r"unsupported file type '\.txt'"):
        load_pair_files([tmp_path / "p.txt"])
    with pytest.raises(PairDataError, match="non-empty list"):
        load_pair_files([])
    with pytest.raises(PairDataError, match="non-empty list"):
        load_pair_files(str(tmp_path / "p.jsonl"))  # type: ignore[arg-type]
    (tmp_path / "bad.jsonl").write_bytes(json.dumps(pair_row()).encode() + b"\n\n\xff\n")
    with pytest.raises(PairDataError, match=r"bad\.jsonl, line 3: not valid UTF-8"):
        load_pair_files([tmp_path / "bad.jsonl"])
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(PairDataError, match=r"bad\.parquet: not a readable Parquet file"):
        load_pair_files([tmp_path / "bad.parquet"])


def test_dataset_dict_folder_asks_for_one_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    splits = {"train": datasets.Dataset.from_list(ROWS[:2])}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(PairDataError, match=r"several splits.*dd/train"):
        load_pair_files([tmp_path / "dd"])
    assert load_pair_files([tmp_path / "dd" / "train"]) == EXPECTED[:2]


# ---------------------------------------------------------------- the shared readers


def test_error_types():
    assert issubclass(PairDataError, DataError) and issubclass(PromptDataError, DataError)
    assert issubclass(DataError, ValueError)
    with pytest.raises(PairDataError, match=r"^where: why$") as info, reraise_as(PairDataError):
        raise DataError("where: why")
    assert type(info.value) is PairDataError
    with pytest.raises(KeyError), reraise_as(PairDataError):
        raise KeyError("not a data error")


def test_optional_number():
    where = "f.csv, row 2"
    assert optional_number({"s": 3}, "s", where) == 3.0
    assert isinstance(optional_number({"s": 3}, "s", where), float)
    assert optional_number({"s": " -0.5 "}, "s", where) == -0.5
    assert optional_number({}, "s", where) is None
    assert optional_number({"s": None}, "s", where) is None
    assert optional_number({"s": "  "}, "s", where) is None
    for bad in ("nan", "-inf", "1,5", False, 10**400, {"v": 1}):
        with pytest.raises(DataError, match=r"f\.csv, row 2, field 's': expected a finite"):
            optional_number({"s": bad}, "s", where)


def test_read_rows_returns_only_known_columns_of_tables(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", [{"a": 1, "big": "x" * 10, "b": 2}])
    assert list(read_rows(path, columns=["b", "a"], required=["a"])) == [
        (f"{path}, row 1", {"b": 2, "a": 1})
    ]


# ---------------------------------------------------------------- fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=4,
)
texts = st.text(alphabet="abc \n\u2028", min_size=1, max_size=3).filter(str.strip)
finite = st.floats(-10, 10) | st.integers(-5, 5) | st.sampled_from(["7", "-0.5"])
odd = st.sampled_from(["", " ", "\ud800", "x", float("nan"), True]) | json_values


@st.composite
def rows(draw: st.DrawFn) -> dict[str, object]:
    """A usable row (small alphabet: repeats and chosen == rejected happen), often with one
    field made bad or removed, or a near-miss column ``choosen`` added."""
    row = draw(st.fixed_dictionaries({k: texts for k in REQUIRED}, optional={"id": texts}))
    if row["chosen"].strip() == row["rejected"].strip() and draw(st.integers(0, 3)):
        row["rejected"] += "!"  # keep some ties, but fewer than the tiny alphabet makes
    if draw(st.booleans()):
        row.update(chosen_score=draw(finite), rejected_score=draw(finite))
    field = draw(st.sampled_from([None, None, *REQUIRED, "id", "chosen_score", "choosen"]))
    if field is not None:
        value = draw(odd | st.just(KeyError))
        if value is KeyError:
            row.pop(field, None)
        else:
            row[field] = value
    return row


noise = st.one_of(
    st.dictionaries(st.sampled_from([*COLUMNS, "choosen"]), json_values).map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=20),
)
ascii_rows = rows().map(json.dumps)
raw_rows = rows().map(lambda r: json.dumps(r, ensure_ascii=False))  # raw U+2028, surrogates
lines = st.sampled_from([ascii_rows, ascii_rows, ascii_rows, raw_rows, noise]).flatmap(lambda s: s)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines, max_size=6), st.sampled_from(["\n", "\r\n"]))
def test_fuzzed_jsonl_raises_nothing_but_data_errors(content, newline):
    """Any bytes in a JSONL file load or raise PairDataError (the loader's own DataError):
    never a KeyError, TypeError or UnicodeError, and never a pair that breaks the rules."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.jsonl"
        path.write_bytes(newline.join(content).encode("utf-8", "surrogatepass"))
        try:
            pairs = load_pair_files([path])
        except PairDataError:
            return
    assert len({p.pair_id for p in pairs}) == len(pairs)
    assert all(p.chosen.strip() != p.rejected.strip() for p in pairs)
    assert all((p.chosen_score is None) == (p.rejected_score is None) for p in pairs)
    for p in pairs:  # every text can be written back as UTF-8
        json.dumps(p.to_dict(), ensure_ascii=False).encode("utf-8")

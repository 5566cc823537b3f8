"""Stage 1, prompts: the built-in set, file loading in every format, errors, round partition."""

from __future__ import annotations

import csv
import itertools
import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from congrad.data.prompts import (
    BUILTIN_EVAL_LANGUAGES,
    BUILTIN_TRAIN_LANGUAGES,
    PromptDataError,
    derive_prompt_id,
    load_builtin_prompts,
    load_prompt_files,
    partition_rounds,
)
from congrad.data.records import PromptRecord
from tests.conftest import REPO_ROOT

# Rows that stress every format: commas, quotes, a line break, non-Latin scripts, padding.
ROWS = [
    {"id": "a-1", "lang": "en", "prompt": 'Say "hi", then stop.'},
    {"id": "a-2", "lang": "de", "prompt": "Zwei Zeilen:\nerste, zweite."},
    {"id": "a-3", "lang": "zh", "prompt": "为什么天空是蓝色的？"},
    {"id": "a-4", "lang": "ar", "prompt": "ما هي عاصمة المغرب؟"},
    {"id": "a-5", "lang": " zh-Hant-TW ", "prompt": "  A tag with script and region.  "},
]
EXPECTED = [
    PromptRecord("a-1", "en", 'Say "hi", then stop.'),
    PromptRecord("a-2", "de", "Zwei Zeilen:\nerste, zweite."),
    PromptRecord("a-3", "zh", "为什么天空是蓝色的？"),
    PromptRecord("a-4", "ar", "ما هي عاصمة المغرب؟"),
    PromptRecord("a-5", "zh-Hant-TW", "A tag with script and region."),
]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
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
    "csv": lambda d, rows: write_csv(d / "p.csv", rows, list(rows[0])),
    "parquet": lambda d, rows: write_parquet(d / "p.parquet", rows),
    "datasets": lambda d, rows: write_dataset(d / "p_ds", rows),
}


def normalise(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"[\W_]+", " ", folded).strip()


def trigrams(text: str) -> set[str]:
    norm = normalise(text)
    return {norm[i : i + 3] for i in range(max(1, len(norm) - 2))}


# ---------------------------------------------------------------- the built-in set


def test_builtin_counts_per_language():
    train = Counter(p.lang for p in load_builtin_prompts("train"))
    evaluation = Counter(p.lang for p in load_builtin_prompts("eval"))
    assert set(train) == set(BUILTIN_TRAIN_LANGUAGES)
    assert all(train[lang] >= 48 for lang in BUILTIN_TRAIN_LANGUAGES), train
    assert evaluation == dict.fromkeys(BUILTIN_EVAL_LANGUAGES, 16)
    assert {"hi", "vi", "ru"} == set(BUILTIN_EVAL_LANGUAGES) - set(BUILTIN_TRAIN_LANGUAGES)


def test_builtin_ids_are_unique_and_well_formed():
    records = load_builtin_prompts("train") + load_builtin_prompts("eval")
    assert len({p.prompt_id for p in records}) == len(records)
    for p in records:
        assert re.fullmatch(rf"(train|eval)-{p.lang}-\d{{3}}", p.prompt_id), p.prompt_id


def test_builtin_train_and_eval_texts_are_disjoint():
    train = {normalise(p.prompt) for p in load_builtin_prompts("train")}
    evaluation = {normalise(p.prompt) for p in load_builtin_prompts("eval")}
    assert not train & evaluation


def test_builtin_has_no_near_duplicates_within_a_language():
    records = load_builtin_prompts("train") + load_builtin_prompts("eval")
    by_lang: dict[str, list[PromptRecord]] = {}
    for p in records:
        by_lang.setdefault(p.lang, []).append(p)
    for lang, group in by_lang.items():
        texts = [normalise(p.prompt) for p in group]
        assert len(set(texts)) == len(texts), f"exact duplicate in {lang}"
        for a, b in itertools.combinations(group, 2):
            ga, gb = trigrams(a.prompt), trigrams(b.prompt)
            assert len(ga & gb) / len(ga | gb) < 0.7, (a.prompt_id, b.prompt_id)


def test_builtin_language_filter_and_errors():
    french = load_builtin_prompts("train", ["fr"])
    assert french and {p.lang for p in french} == {"fr"}
    assert {p.lang for p in load_builtin_prompts("eval", ["ru", "hi"])} == {"ru", "hi"}
    with pytest.raises(PromptDataError, match=r"no language 'ru'.*available: en, de, fr"):
        load_builtin_prompts("train", ["ru"])
    with pytest.raises(ValueError, match="split must be"):
        load_builtin_prompts("test")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of codes"):
        load_builtin_prompts("train", "en")


def test_builtin_data_files_are_utf8_jsonl_with_exactly_three_fields():
    folder = REPO_ROOT / "src" / "congrad" / "data" / "builtin" / "prompts"
    for split in ("train", "eval"):
        for line in (folder / f"{split}.jsonl").read_text("utf-8").splitlines():
            assert set(json.loads(line)) == {"id", "lang", "prompt"}
            assert "\\u" not in line  # written with ensure_ascii=False


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_format_gives_the_same_records(tmp_path, fmt):
    assert load_prompt_files([WRITERS[fmt](tmp_path, ROWS)]) == EXPECTED


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_missing_id_column_derives_stable_ids(tmp_path, fmt):
    rows = [{"lang": r["lang"], "prompt": r["prompt"]} for r in ROWS]
    records = load_prompt_files([WRITERS[fmt](tmp_path, rows)])
    assert [r.prompt_id for r in records] == [derive_prompt_id(e.lang, e.prompt) for e in EXPECTED]
    assert records[0].prompt_id == derive_prompt_id("en", 'Say "hi", then stop.')
    assert re.fullmatch(r"en-[0-9a-f]{12}", records[0].prompt_id)


def test_extra_columns_are_ignored_and_files_concatenate(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [dict(ROWS[0], source="web", kind="qa")])
    second = write_csv(tmp_path / "b.csv", ROWS[1:3], ["id", "lang", "prompt"])
    assert load_prompt_files([first, str(second)]) == EXPECTED[:3]


def test_language_filter(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    assert load_prompt_files([path], languages=["zh", "en"]) == [EXPECTED[0], EXPECTED[2]]
    with pytest.raises(PromptDataError, match=r"no prompts for language 'fr'.*en \(1\)"):
        load_prompt_files([path], languages=["en", "fr"])


# ---------------------------------------------------------------- errors


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"lang": "en", "prompt": "fine"}\n\n{"lang": "en", "prompt": "broken"\n', "utf-8"
    )
    with pytest.raises(PromptDataError, match=r"bad\.jsonl, line 3: malformed JSON"):
        load_prompt_files([path])


def test_misspelt_column_suggests_the_closest_name(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"lang": "en", "promt": "hello"}])
    with pytest.raises(PromptDataError, match=r"line 1: column 'promt'.*did you mean 'prompt'"):
        load_prompt_files([path])
    rows = [{"language": "en", "prompt": "hello"}]
    path = write_csv(tmp_path / "p.csv", rows, ["language", "prompt"])
    with pytest.raises(PromptDataError, match=r"header row: column 'language'.*mean 'lang'"):
        load_prompt_files([path])
    path = write_parquet(tmp_path / "p.parquet", [{"ID": "x", "lang": "en", "prompt": "hi"}])
    with pytest.raises(PromptDataError, match=r"columns: column 'ID'.*did you mean 'id'"):
        load_prompt_files([path])


def test_missing_column_lists_what_was_found(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"lang": "en", "text": "hello"}])
    with pytest.raises(PromptDataError, match=r"field 'prompt' is missing \(found: lang, text\)"):
        load_prompt_files([path])


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt_names_line_and_field(tmp_path, prompt):
    rows = [{"lang": "en", "prompt": "ok"}, {"lang": "en", "prompt": prompt}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(PromptDataError, match=r"line 2, field 'prompt': empty"):
        load_prompt_files([path])


def test_empty_csv_cell_names_the_row(tmp_path):
    rows = [{"lang": "en", "prompt": "ok"}, {"lang": " ", "prompt": "hi"}]
    path = write_csv(tmp_path / "p.csv", rows, ["lang", "prompt"])
    with pytest.raises(PromptDataError, match=r"row 3 \(header is row 1\), field 'lang': empty"):
        load_prompt_files([path])


def test_ragged_csv_row_is_an_error(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("lang,prompt\nen,hello,extra\n", "utf-8")
    with pytest.raises(PromptDataError, match=r"row 2 .*different number of cells"):
        load_prompt_files([path])


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"lang": "en", "prompt": 42}, "prompt"),
        ({"lang": ["en"], "prompt": "hi"}, "lang"),
        ({"id": 7, "lang": "en", "prompt": "hi"}, "id"),
        ({"id": None, "lang": "en", "prompt": "hi"}, "id"),
    ],
)
def test_non_string_values_are_errors(tmp_path, row, field):
    path = write_jsonl(tmp_path / "p.jsonl", [row])
    with pytest.raises(PromptDataError, match=rf"line 1, field '{field}': expected a string"):
        load_prompt_files([path])


def test_duplicate_ids_name_both_lines(tmp_path):
    rows = [dict(ROWS[0]), dict(ROWS[1]), dict(ROWS[2], id="a-1")]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(
        PromptDataError, match=r"line 3: duplicate id 'a-1', first seen at .*line 1"
    ):
        load_prompt_files([path])


def test_duplicate_ids_across_files_name_both_files(tmp_path):
    first = write_jsonl(tmp_path / "first.jsonl", ROWS[:1])
    second = write_csv(tmp_path / "second.csv", ROWS[:1], ["id", "lang", "prompt"])
    with pytest.raises(PromptDataError, match=r"second\.csv, row 2.*first\.jsonl, line 1"):
        load_prompt_files([first, second])


def test_repeated_prompt_without_ids_is_a_duplicate(tmp_path):
    rows = [{"lang": "en", "prompt": "Same."}, {"lang": "en", "prompt": " Same. "}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(PromptDataError, match=r"line 2: duplicate prompt \(derived id 'en-"):
        load_prompt_files([path])


def test_unusable_paths(tmp_path):
    with pytest.raises(PromptDataError, match="no such file"):
        load_prompt_files([tmp_path / "missing.jsonl"])
    (tmp_path / "p.txt").write_text("hello", "utf-8")
    with pytest.raises(PromptDataError, match=r"unsupported file type '\.txt'"):
        load_prompt_files([tmp_path / "p.txt"])
    with pytest.raises(PromptDataError, match="non-empty list"):
        load_prompt_files([])
    (tmp_path / "bad.jsonl").write_bytes(b'{"lang": "en", "prompt": "ok"}\n\xff\n')
    with pytest.raises(PromptDataError, match=r"bad\.jsonl, line 2: not valid UTF-8"):
        load_prompt_files([tmp_path / "bad.jsonl"])


def test_dataset_dict_folder_asks_for_one_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    splits = {"train": datasets.Dataset.from_list(ROWS[:2])}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(PromptDataError, match=r"several splits.*dd/train"):
        load_prompt_files([tmp_path / "dd"])
    assert load_prompt_files([tmp_path / "dd" / "train"]) == EXPECTED[:2]


# ---------------------------------------------------------------- partition


def make_prompts(counts: dict[str, int]) -> list[PromptRecord]:
    return [
        PromptRecord(f"{lang}-{i:03d}", lang, f"prompt {i} in {lang}")
        for lang, n in counts.items()
        for i in range(n)
    ]


partition_cases = st.fixed_dictionaries(
    {
        "rounds": st.integers(1, 4),
        "per_round": st.integers(1, 5),
        "extra": st.dictionaries(
            st.sampled_from(["en", "de", "zh", "ar"]), st.integers(0, 6), min_size=1
        ),
        "seed": st.integers(-(2**40), 2**40),
    }
)


@settings(max_examples=60, deadline=None)
@given(case=partition_cases, data=st.data())
def test_partition_properties(case, data):
    rounds, per_round, seed = case["rounds"], case["per_round"], case["seed"]
    needed = rounds * per_round
    prompts = make_prompts({lang: needed + n for lang, n in case["extra"].items()})
    result = partition_rounds(prompts, rounds, per_round, seed)

    assert sorted(result) == list(range(1, rounds + 1))
    chosen = [p.prompt_id for t in result for p in result[t]]
    assert len(chosen) == len(set(chosen))  # disjoint across rounds
    for records in result.values():
        assert Counter(p.lang for p in records) == dict.fromkeys(case["extra"], per_round)
        assert records == sorted(records, key=lambda p: (p.lang, p.prompt_id))
    assert partition_rounds(prompts, rounds, per_round, seed) == result
    shuffled = data.draw(st.permutations(prompts))
    assert partition_rounds(shuffled, rounds, per_round, seed) == result
    if rounds > 1:  # more rounds only append: earlier rounds keep their prompts
        fewer = partition_rounds(prompts, rounds - 1, per_round, seed)
        assert all(fewer[t] == result[t] for t in fewer)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_partition_depends_on_the_seed(seed):
    # 40 prompts into 2 rounds of 10: a repeat is about 1 in 10^16 per language.
    prompts = make_prompts({"en": 40, "ko": 40})
    assert partition_rounds(prompts, 2, 10, seed) != partition_rounds(prompts, 2, 10, seed + 1)


def test_partition_of_the_builtin_set_covers_five_rounds():
    result = partition_rounds(load_builtin_prompts("train"), rounds=5, per_round=10, seed=1)
    assert all(len(records) == 10 * len(BUILTIN_TRAIN_LANGUAGES) for records in result.values())


def test_partition_with_too_few_prompts_says_how_many():
    prompts = make_prompts({"en": 12, "de": 7, "fr": 5})
    with pytest.raises(
        PromptDataError, match=r"need 8 .* but de has 7, fr has 5; lower the per-round count"
    ):
        partition_rounds(prompts, rounds=2, per_round=4, seed=0)


def test_partition_rejects_bad_arguments():
    prompts = make_prompts({"en": 4})
    with pytest.raises(ValueError, match=">= 1"):
        partition_rounds(prompts, rounds=0, per_round=1, seed=0)
    with pytest.raises(PromptDataError, match="repeated"):
        partition_rounds(prompts + prompts[:1], rounds=1, per_round=1, seed=0)

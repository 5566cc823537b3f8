"""Evaluation, multiple choice: loading and its errors, the prompt, shot choice, and letter
scoring checked against a slow one-sequence-at-a-time reference and a model with known odds."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from congrad.data.mcq_files import (
    LETTERS,
    MCQDataError,
    MCQuestion,
    load_builtin_mcq,
    load_mcq,
    load_mcq_files,
)
from congrad.evaluation.mcq import MCQResult, accuracy_by_lang, choose_shots, mcq_prompt, score_mcq

ROWS = [
    {"id": "q1", "lang": "en", "question": "Capital of Italy?", "choices": ["Rome", "Oslo"],
     "answer": "A"},
    {"id": "q2", "lang": "de", "question": 'Wie viel ist "2, plus 2"?',
     "choices": ["3", "4", "5"], "answer": "b"},
    {"id": "q3", "lang": "zh", "question": "一年有几个月？", "choices": ["10", "11", "12"],
     "answer": 2},
    {"lang": "en", "question": "Ice is water that is...", "choices": ["hot", "frozen"],
     "answer": "1"},
]  # fmt: skip
EXPECTED = [
    MCQuestion("q1", "en", "Capital of Italy?", ("Rome", "Oslo"), 0),
    MCQuestion("q2", "de", 'Wie viel ist "2, plus 2"?', ("3", "4", "5"), 1),
    MCQuestion("q3", "zh", "一年有几个月？", ("10", "11", "12"), 2),
]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            cells = {k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()}
            writer.writerow(cells)
    return path


# --- loading ----------------------------------------------------------------------------


def test_jsonl_and_csv_give_the_same_questions(tmp_path):
    rows = ROWS[:3]  # CSV needs the id column in every row, so the id-less row is separate
    from_jsonl = load_mcq_files([write_jsonl(tmp_path / "q.jsonl", rows)])
    from_csv = load_mcq_files([write_csv(tmp_path / "q.csv", rows)])  # answer 2 becomes "2"
    assert from_jsonl == from_csv == EXPECTED


def test_row_without_id_gets_a_stable_derived_id(tmp_path):
    first = load_mcq_files([write_jsonl(tmp_path / "a.jsonl", ROWS[3:])])
    again = load_mcq_files([write_jsonl(tmp_path / "b.jsonl", ROWS[3:])])
    assert first == again
    assert first[0].question_id.startswith("en-") and first[0].answer == 1


@pytest.mark.parametrize(
    ("answer", "index"), [("A", 0), ("c", 2), (" D ", 3), (0, 0), (3, 3), ("2", 2)]
)
def test_answer_is_a_letter_or_a_zero_based_index(tmp_path, answer, index):
    row = {"lang": "en", "question": "?", "choices": ["w", "x", "y", "z"], "answer": answer}
    assert load_mcq_files([write_jsonl(tmp_path / "q.jsonl", [row])])[0].answer == index


def test_global_mmlu_option_columns(tmp_path):
    row = {"id": "g1", "lang": "fr", "question": "2+2 ?", "answer": "C", "subject": "math",
           "option_a": "3", "option_b": "5", "option_c": "4", "option_d": "22"}  # fmt: skip
    expected = [MCQuestion("g1", "fr", "2+2 ?", ("3", "5", "4", "22"), 2)]
    assert load_mcq_files([write_csv(tmp_path / "g.csv", [row])]) == expected
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "g.parquet")
    assert load_mcq_files([tmp_path / "g.parquet"]) == expected


GOOD = {"id": "x", "lang": "en", "question": "?", "choices": ["a", "b"], "answer": "A"}
BAD_ROWS = {
    "missing column": ({"id": "y", "lang": "en", "question": "?", "choices": ["a", "b"]},
                       "field 'answer' is missing"),
    "answer out of range": ({**GOOD, "id": "y", "answer": "C"}, "field 'answer': 'C'"),
    "index out of range": ({**GOOD, "id": "y", "answer": 2}, "field 'answer': 2"),
    "empty choice": ({**GOOD, "id": "y", "choices": ["a", " "]}, "field 'choice B': empty"),
    "one choice": ({**GOOD, "id": "y", "choices": ["a"]}, "field 'choices'"),
    "no choices": ({"id": "y", "lang": "en", "question": "?", "answer": "A"},
                   "field 'choices' is missing"),
    "misspelt column": ({"id": "y", "lang": "en", "question": "?", "choises": ["a", "b"],
                         "answer": "A"}, "did you mean 'choices'"),
    "option gap": ({"id": "y", "lang": "en", "question": "?", "answer": "A", "option_a": "a",
                    "option_c": "c"}, "option columns option_a, option_c leave a gap"),
    "two layouts": ({**GOOD, "id": "y", "option_a": "a"}, "'choices' and 'option_a'"),
    "empty question": ({**GOOD, "id": "y", "question": ""}, "field 'question': empty"),
    "empty lang": ({**GOOD, "id": "y", "lang": " "}, "field 'lang': empty"),
    "duplicate id": ({**GOOD, "question": "again?"}, "duplicate id 'x', first seen at"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows_name_file_line_and_field(tmp_path, case):
    row, expected = BAD_ROWS[case]
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, row])
    with pytest.raises(MCQDataError) as error:
        load_mcq_files([path])
    assert f"{path}, line 2" in str(error.value)
    assert expected in str(error.value)


def test_duplicate_ids_across_files_name_both_places(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [GOOD])
    second = write_csv(tmp_path / "b.csv", [GOOD])
    with pytest.raises(MCQDataError, match=r"b\.csv, row 2.*first seen at .*a\.jsonl, line 1"):
        load_mcq_files([first, second])


def test_csv_choices_must_be_a_json_array(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,lang,question,choices,answer\nx,en,?,a; b,A\n", "utf-8")
    with pytest.raises(MCQDataError, match=r"bad\.csv, row 2 .*field 'choices'.*JSON array"):
        load_mcq_files([path])


def test_languages_filter_and_an_absent_language_is_named(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", ROWS[:3])
    assert load_mcq_files([path], languages=["zh", "en"]) == [EXPECTED[0], EXPECTED[2]]
    with pytest.raises(MCQDataError, match=r"q\.jsonl: no questions for language 'ja'.*en \(1\)"):
        load_mcq_files([path], languages=["en", "ja"])
    with pytest.raises(TypeError):
        load_mcq_files([path], languages="en")


def test_builtin_sample():
    questions = load_builtin_mcq()
    by_lang = {
        lang: [q for q in questions if q.lang == lang] for lang in ("en", "de", "zh", "fr", "es")
    }
    assert {q.lang for q in questions} == set(by_lang)
    assert all(len(group) >= 5 for group in by_lang.values())
    assert all(len(q.choices) == 4 and 0 <= q.answer < 4 for q in questions)
    assert len({q.question_id for q in questions}) == len(questions)
    assert load_builtin_mcq(["de"]) == by_lang["de"]
    with pytest.raises(MCQDataError, match="'ja'"):
        load_builtin_mcq(["ja"])


def test_load_mcq_reads_sample_by_name_beside_files(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", ROWS[:3])
    assert load_mcq(["sample", path]) == [*load_builtin_mcq(), *EXPECTED]
    with pytest.raises(MCQDataError, match="no such file"):
        load_mcq_files(["sample"])  # only load_mcq knows the name


# --- prompt and shots -------------------------------------------------------------------


def test_prompt_exact_text():
    shot = MCQuestion("s", "en", "2+2?", ("3", "4"), 1)
    target = MCQuestion("t", "en", "Sky colour?", ("Blue", "Green", "Red"), 0)
    assert mcq_prompt(target, [shot]) == (
        "The following are multiple choice questions (with answers).\n\n"
        "Question: 2+2?\nA. 3\nB. 4\nAnswer: B\n\n"
        "Question: Sky colour?\nA. Blue\nB. Green\nC. Red\nAnswer:"
    )


def pool() -> list[MCQuestion]:
    return [MCQuestion(f"{lang}-{i}", lang, f"q{i}", ("a", "b"), i % 2)
            for lang, n in (("en", 6), ("de", 3)) for i in range(n)]  # fmt: skip


def test_shots_same_language_without_target_and_seeded():
    questions = pool()
    english = [q for q in questions if q.lang == "en"]
    for target in questions:
        shots = choose_shots(questions, target, k=3, seed=7)
        same = [q for q in questions if q.lang == target.lang and q is not target]
        assert len(shots) == min(3, len(same)) and len(set(shots)) == len(shots)
        assert target not in shots and all(q in same for q in shots)
        everything = choose_shots(questions, target, k=50, seed=7)  # k past the pool: all others
        assert sorted(everything, key=lambda q: q.question_id) == same
    target = english[0]
    shots = choose_shots(questions, target, k=3, seed=7)
    shuffled = random.Random(0).sample(questions, len(questions))
    assert choose_shots(shuffled, target, k=3, seed=7) == shots  # pool order does not matter
    assert choose_shots(english, target, k=3, seed=7) == shots  # nor other languages
    by_seed = {
        tuple(q.question_id for q in choose_shots(questions, target, 3, s)) for s in range(20)
    }
    by_target = {tuple(q.question_id for q in choose_shots(questions, t, 3, 7)) for t in english}
    assert len(by_seed) > 5 and len(by_target) > 3  # a seed and a target change the draw
    assert choose_shots(questions, target, k=0, seed=7) == []
    with pytest.raises(ValueError):
        choose_shots(questions, target, k=-1, seed=7)


# --- scoring ----------------------------------------------------------------------------


def letter_tokenizer():
    """A byte-level BPE in which " A" .. " E" are single tokens (the fast path), with ids
    inside the tiny model's vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|pad|>", "<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([" A B C D E"] * 8, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|end|>", pad_token="<|pad|>"
    )


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def reference_logprobs(model, tokenizer, prompt: str, count: int, max_length=None) -> list[float]:
    """For each letter, one unbatched forward of the whole text ``prompt + " X"`` and the
    float64 sum of the log-probs of the tokens after the prompt's own tokens; with
    ``max_length``, the prompt's tokens are cut from the left to fit the longest choice."""
    context = ids_of(tokenizer, prompt)
    wholes = [ids_of(tokenizer, f"{prompt} {letter}") for letter in LETTERS[:count]]
    scored = [len(whole) - len(context) for whole in wholes]
    kept = len(context) if max_length is None else max_length - max(scored)
    totals = []
    for whole, n in zip(wholes, scored, strict=True):
        whole = whole[-(kept + n) :]
        logps = model(torch.tensor([whole])).logits[0].double().log_softmax(-1)
        totals.append(sum(logps[t - 1, whole[t]].item() for t in range(len(whole) - n, len(whole))))
    return totals


def mixed_questions() -> list[MCQuestion]:
    """The sample's en and zh questions plus a 5-choice and a 2-choice one."""
    extra = [
        MCQuestion("x-5", "en", "Pick the vowel.", ("b", "c", "d", "e", "f"), 3),
        MCQuestion("x-2", "zh", "水是湿的吗？", ("是", "不是"), 0),
    ]
    return [*load_builtin_mcq(["en", "zh"]), *extra]


def check_against_reference(results, model, tokenizer, questions, shots, seed, max_length=None):
    assert [r.question_id for r in results] == [q.question_id for q in questions]
    for question, result in zip(questions, results, strict=True):
        chosen = choose_shots(questions, question, shots, seed)
        prompt = mcq_prompt(question, chosen[len(chosen) - result.shots :])
        expected = reference_logprobs(model, tokenizer, prompt, len(question.choices), max_length)
        assert result.logprobs == pytest.approx(expected, abs=1e-4)
        best = max(range(len(expected)), key=expected.__getitem__)
        assert result.predicted == best and result.correct == (best == question.answer)


@pytest.mark.parametrize("fast", [False, True], ids=["multi-token letters", "one-token letters"])
def test_score_matches_slow_reference(tiny, fast):
    model, tokenizer = tiny
    tokenizer = letter_tokenizer() if fast else tokenizer
    questions = mixed_questions()
    results = score_mcq(model, tokenizer, questions, shots=2, seed=3, batch_size=4)
    assert all(r.shots == 2 for r in results)
    check_against_reference(results, model, tokenizer, questions, shots=2, seed=3)


def test_batch_size_does_not_change_results(tiny):
    model, tokenizer = tiny
    questions = mixed_questions()
    one = score_mcq(model, tokenizer, questions, shots=3, seed=0, batch_size=1)
    three = score_mcq(model, tokenizer, questions, shots=3, seed=0, batch_size=3)
    assert [(r.predicted, r.shots) for r in one] == [(r.predicted, r.shots) for r in three]
    for a, b in zip(one, three, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_long_prompts_drop_shots_from_the_front_then_cut_the_context(tiny):
    model, tokenizer = tiny
    questions = load_builtin_mcq(["en", "de"])
    full = [
        len(ids_of(tokenizer, mcq_prompt(q, choose_shots(questions, q, 4, 0)))) for q in questions
    ]
    max_length = min(full) - 5  # no question fits all 4 shots
    results = score_mcq(model, tokenizer, questions, shots=4, seed=0, max_length=max_length)
    assert all(r.shots < 4 for r in results) and any(r.shots > 0 for r in results)
    for question, result in zip(questions, results, strict=True):  # the most shots that fit
        chosen = choose_shots(questions, question, 4, 0)
        one_more = mcq_prompt(question, chosen[len(chosen) - result.shots - 1 :]) + " A"
        assert len(ids_of(tokenizer, one_more)) > max_length
    check_against_reference(results, model, tokenizer, questions, shots=4, seed=0)

    tight = score_mcq(model, tokenizer, questions, shots=4, seed=0, max_length=12)
    assert all(r.shots == 0 for r in tight)  # even zero shots are too long: left-cut
    check_against_reference(tight, model, tokenizer, questions, shots=4, seed=0, max_length=12)
    with pytest.raises(ValueError, match="max_length"):
        score_mcq(model, tokenizer, questions, shots=0, seed=0, max_length=2)


class LetterModel(torch.nn.Module):
    """Logits ``bias`` on one token and 0 elsewhere, at every position; records input shapes."""

    def __init__(self, vocab_size: int, token_id: int, bias: float) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(vocab_size))
        with torch.no_grad():
            self.logits[token_id] = bias
        self.calls: list[tuple[int, ...]] = []

    def forward(self, input_ids, logits_to_keep=0, **_):
        self.calls.append(tuple(input_ids.shape))
        rows, width = input_ids.shape
        keep = logits_to_keep or width
        return SimpleNamespace(logits=self.logits.expand(rows, keep, -1))


KNOWN = [
    MCQuestion("e1", "en", "?", ("a", "b", "c", "d"), 1),
    MCQuestion("e2", "en", "?", ("a", "b", "c", "d"), 0),
    MCQuestion("d1", "de", "?", ("a", "b", "c", "d"), 1),
    MCQuestion("d2", "de", "?", ("a", "b", "c", "d"), 1),
    MCQuestion("d3", "de", "?", ("a", "b", "c", "d"), 3),
]


@pytest.mark.parametrize("fast", [False, True], ids=["multi-token letters", "one-token letters"])
def test_model_that_always_says_b(tiny, fast):
    tokenizer = letter_tokenizer() if fast else tiny[1]
    vocab, bias = len(tiny[1]), 5.0
    model = LetterModel(vocab, ids_of(tokenizer, " B")[-1], bias)
    results = score_mcq(model, tokenizer, KNOWN, shots=1, seed=0, batch_size=5)
    assert [r.predicted for r in results] == [1] * 5
    # Hand-worked: every position has log-softmax b - log(e^b + V - 1) on "B" and
    # -log(e^b + V - 1) elsewhere; without the fast path " B" is two tokens, " " then "B".
    log_z = math.log(math.exp(bias) + vocab - 1)
    tokens = 1 if fast else 2
    expected = [-tokens * log_z] * 4
    expected[1] += bias
    assert all(r.logprobs == pytest.approx(expected, abs=1e-5) for r in results)
    assert accuracy_by_lang(results) == {
        "de": {"accuracy": 2 / 3, "correct": 2, "total": 3},
        "en": {"accuracy": 0.5, "correct": 1, "total": 2},
    }
    # One forward per batch: a row per question on the fast path, a row per choice otherwise.
    assert [shape[0] for shape in model.calls] == [5 if fast else 20]


def test_ties_go_to_the_first_choice(tiny):
    model = LetterModel(len(tiny[1]), 0, 0.0)  # uniform: every choice scores the same
    results = score_mcq(model, tiny[1], KNOWN, shots=0, seed=0)
    assert [r.predicted for r in results] == [0] * 5
    assert [r.correct for r in results] == [False, True, False, False, False]


def test_bos_is_prepended_when_the_tokenizer_adds_one():
    from tokenizers import processors

    from congrad.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", bos)]
    )
    seen = []

    class Recorder(LetterModel):
        def forward(self, input_ids, attention_mask=None, **kwargs):
            seen.extend(
                ids[mask.bool()][0].item()
                for ids, mask in zip(input_ids, attention_mask, strict=True)
            )
            return super().forward(input_ids, **kwargs)

    score_mcq(Recorder(len(tokenizer), 0, 0.0), tokenizer, KNOWN, shots=1, seed=0)
    assert seen and set(seen) == {bos}


def test_accuracy_by_lang_by_hand():
    def result(lang: str, correct: bool) -> MCQResult:
        return MCQResult("q", lang, 0, 0 if correct else 1, correct, (0.0, 0.0), 0)

    results = [result("fr", True), result("en", False), result("fr", False), result("fr", True)]
    assert accuracy_by_lang(results) == {
        "en": {"accuracy": 0.0, "correct": 0, "total": 1},
        "fr": {"accuracy": 2 / 3, "correct": 2, "total": 3},
    }
    assert list(accuracy_by_lang(results)) == ["en", "fr"]
    assert accuracy_by_lang([]) == {}


def test_records_serialise_to_json():
    question = load_builtin_mcq(["zh"])[0]
    assert json.loads(json.dumps(question.to_dict(), ensure_ascii=False)) == question.to_dict()
    assert question.to_dict()["choices"] == list(question.choices)
    result = MCQResult("q", "en", 1, 1, True, (-1.5, -0.5), 2)
    assert result.to_dict()["logprobs"] == [-1.5, -0.5]


def test_an_invalid_language_code_names_file_line_and_field(tmp_path):
    path = tmp_path / "q.jsonl"
    row = {"question": "2+2?", "choices": ["3", "4"], "answer": "B", "lang": "english"}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(MCQDataError, match=r"q\.jsonl, line 1, field 'lang'.*'en'"):
        load_mcq_files([path])

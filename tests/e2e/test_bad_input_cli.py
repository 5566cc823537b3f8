"""Bad input through the CLI: every case stops with one clear line (exit 2) naming the file,
line or key and what to do, or warns and goes on where that is the useful behaviour, and
no artifact the user already has is lost (issue "Reliability and safety").

One small run (configs/smoke.yaml cut to one round of 2 prompts x 2 samples per language)
is shared; a test that lets the CLI write works on a copy. "Untouched" is checked by a
snapshot of every file's SHA-256 and mtime taken before the command and compared after.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from congrad.cli import main
from congrad.config.run import load_config
from congrad.data import artifacts
from congrad.data.artifacts import read_jsonl, read_manifest
from congrad.pipeline.runner import Runner
from tests.conftest import REPO_ROOT
from tests.fakes.fake_openai import FakeOpenAIServer

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")
SMALL = [
    "rounds=1",
    "prompts.per_round=2",
    "generate.num_samples=2",
    "generate.max_new_tokens=8",
    "evaluate.max_prompts=2",
    "evaluate.mcq.files=[]",
]
KEY_VARIABLE = "CONGRAD_TEST_BAD_INPUT_KEY"


def _args(folder: Path, *extra: str) -> list[str]:
    return ["--config", SMOKE, "--quiet", f"output_dir={folder}", *SMALL, *extra]


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    """Stderr on one line (rich wraps long log lines at the console width)."""
    return " ".join(capsys.readouterr().err.split())


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its SHA-256 and modification time (ns)."""
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _without(files: dict[str, tuple[str, int]], *names: str) -> dict[str, tuple[str, int]]:
    return {name: state for name, state in files.items() if name not in names}


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shared") / "run"
    assert main(["run", *_args(folder)]) == 0
    pairs = read_jsonl(folder / "round_1" / "pairs.jsonl")
    assert {p["lang"] for p in pairs} == {"en", "de", "zh"}  # the cases below start here
    return folder


@pytest.fixture()
def run_copy(shared_run: Path, tmp_path: Path) -> Path:
    """A copy of the shared run whose saved config names the copy as its output_dir."""
    folder = tmp_path / "run"
    shutil.copytree(shared_run, folder)
    saved = folder / "config.yaml"
    saved.write_text(saved.read_text().replace(str(shared_run), str(folder)))
    return folder


def _jsonl(path: Path, rows: list[object]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = [
    {"id": f"{lang}-{i}", "lang": lang, "prompt": f"Question {i} in {lang}?"}
    for lang in ("en", "de", "zh")
    for i in range(2)
]
BAD_PROMPT_FILES = {
    "malformed-line-3": (
        [GOOD[0], GOOD[1], '{"id": "de-0", "lang": "de", "prompt": "Wie', *GOOD[3:]],
        ["bad.jsonl, line 3: malformed JSON", "each line must be one object"],
    ),
    "missing-column": (
        [GOOD[0], {"id": "en-1", "lang": "en", "question": "Why?"}],
        ["bad.jsonl, line 2: field 'prompt' is missing", "every row needs 'prompt' and 'lang'"],
    ),
    "misspelt-column": (
        [{"id": "en-0", "lang": "en", "promt": "Why?"}],
        ["bad.jsonl, line 1: column 'promt' is not known; did you mean 'prompt'? Rename it"],
    ),
    "empty-prompt": (
        [GOOD[0], {"id": "en-1", "lang": "en", "prompt": "   "}],
        ["bad.jsonl, line 2, field 'prompt': empty; fill it in or delete the row"],
    ),
    "duplicate-id": (
        [GOOD[0], GOOD[1], dict(GOOD[2], id="en-0")],
        ["bad.jsonl, line 3: duplicate id 'en-0', first seen at", "bad.jsonl, line 1;"],
    ),
    "unknown-lang": (
        [GOOD[0], dict(GOOD[1], lang="english")],
        [
            "bad.jsonl, line 2, field 'lang': 'english' is not a valid language code",
            "did you mean 'en' (English)?",
        ],
    ),
}


@pytest.mark.parametrize("case", BAD_PROMPT_FILES)
def test_a_bad_prompt_file_names_the_line_and_loses_nothing(case, run_copy, tmp_path, capsys):
    """Cases 1-4 and a data file's unknown ``lang``, rerun over an existing run with --force
    (a new prompts.files is a changed config). --force rewrites config.yaml, as it always
    does; no round artifact changes."""
    rows, expected = BAD_PROMPT_FILES[case]
    bad = _jsonl(tmp_path / "bad.jsonl", rows)
    before = snapshot(run_copy)
    assert main(["run", *_args(run_copy, f"prompts.files=[{bad}]"), "--force"]) == 2
    error = _error(capsys)
    assert error.startswith("congrad: ") and "Traceback" not in error
    for fragment in expected:
        assert fragment in error, (fragment, error)
    assert _without(snapshot(run_copy), "config.yaml") == _without(before, "config.yaml")


def test_a_bad_lang_in_a_preference_dataset_names_file_line_and_code(tmp_path, capsys):
    rows = [{"prompt": "Why?", "chosen": "Because.", "rejected": "No.", "lang": "deu"}]
    dataset = _jsonl(tmp_path / "prefs.jsonl", rows)
    output = tmp_path / "selected"
    args = ["filter", "--dataset", str(dataset), "--output", str(output), *_args(tmp_path)]
    assert main(args) == 2
    error = _error(capsys)
    assert "prefs.jsonl, line 1, field 'lang': 'deu' is not a valid language code" in error
    assert "did you mean 'de' (German)?" in error
    assert not output.exists()


@pytest.mark.parametrize(
    ("override", "key", "suggestion"),
    [
        ("prompts.languages=[en,english]", "prompts.languages", "did you mean 'en' (English)?"),
        ("prompts.languages=[eng]", "prompts.languages", "did you mean 'en' (English)?"),
        ("prompts.languages=[xx]", "prompts.languages", "use an ISO 639-1 code"),
        ("evaluate.languages=[german]", "evaluate.languages", "did you mean 'de' (German)?"),
        ("evaluate.unseen_languages=[hi,jp]", "evaluate.unseen_languages", "'ja' (Japanese)"),
    ],
)
def test_an_unknown_language_code_is_a_config_error(override, key, suggestion, shared_run, capsys):
    """Case 5: refused while the config loads, before anything touches the run folder."""
    before = snapshot(shared_run)
    assert main(["run", *_args(shared_run, override)]) == 2
    error = _error(capsys)
    assert f"{key}: " in error and suggestion in error
    assert snapshot(shared_run) == before


def test_language_tags_built_on_a_valid_code_are_accepted(capsys):
    assert main(["show-config", "prompts.languages=[en,pt-BR,zh-Hant,es-419]"]) == 0
    assert "- pt-BR" in capsys.readouterr().out


def _equal_scores(folder: Path, languages: set[str]) -> None:
    """Give every response of ``languages`` the same score, in the judge's own format."""
    path = folder / "round_1" / "judgments.jsonl"
    rows = read_jsonl(path)
    for row in rows:
        if row["lang"] in languages:
            row["score"], row["repeat_scores"] = 5.0, [5.0]
    lines = [json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows]
    path.write_text("".join(lines), encoding="utf-8")


def _ema_languages(path: Path, capsys: pytest.CaptureFixture[str]) -> set[str]:
    assert main(["inspect-ema", str(path)]) == 0
    out = capsys.readouterr().out
    return {line.split(":")[0].strip() for line in out.splitlines() if "updates" in line}


def test_a_language_left_without_pairs_sits_out_with_a_warning(run_copy, capsys):
    """Case 6. The judge's output of round 1 is edited in place so that both responses to
    every German prompt score the same (every other field and the file's format kept), and
    the pairs manifest is removed, as after fixing a stage's input by hand: the pairs stage
    reruns on the crafted judgments, filter and train rerun because their input changed,
    and generation and judging are not redone. German then has ties only: a warning names
    it and the round, the run finishes, training sees en and zh only, and the EMA the next
    round's consensus is built from holds no German."""
    _equal_scores(run_copy, {"de"})
    (run_copy / "round_1" / "pairs.manifest.json").unlink()
    upstream = ("prompts", "completions", "judgments", "prompts.manifest", "generate.manifest")
    before = {k: v for k, v in snapshot(run_copy).items() if k.startswith("round_1/")}
    assert main(["run", *_args(run_copy)]) == 0
    error = _error(capsys)
    assert "warning: round 1: language de has no preference pairs" in error
    assert "2 tie" in error and "sits out this round's training" in error
    assert "language en" not in error and "language zh" not in error
    after = snapshot(run_copy)
    for name, state in before.items():
        if name.removeprefix("round_1/").startswith(upstream):
            assert after[name] == state, name
    folder = run_copy / "round_1"
    assert {d["reason"] for d in read_jsonl(folder / "dropped.jsonl") if d["lang"] == "de"} == {
        "tie"
    }
    assert {row["lang"] for row in read_jsonl(folder / "train_log.jsonl")} == {"en", "zh"}
    assert _ema_languages(folder / "ema.safetensors", capsys) == {"en", "zh"}
    rows = json.loads((run_copy / "summary.json").read_text())["rows"]
    assert {row["lang"]: row["pairs"] for row in rows} == {"de": 0, "en": 2, "zh": 2}


def test_every_language_without_pairs_stops_training_clearly(run_copy, capsys):
    """Case 7: all ties, crafted as in case 6; the train stage refuses with StageFailed,
    the files of the earlier training (its manifest included) are left as they were, and
    the stage counts as not done for the new pairs, so it runs when asked again."""
    _equal_scores(run_copy, {"en", "de", "zh"})
    (run_copy / "round_1" / "pairs.manifest.json").unlink()
    before = snapshot(run_copy)
    assert main(["run", *_args(run_copy)]) == 2
    error = _error(capsys)
    assert "congrad: round 1: no preference pairs to train on" in error
    assert "see dropped.jsonl and judgments.jsonl" in error
    after = snapshot(run_copy)
    trained = ("model/", "ema.safetensors", "train_log.jsonl", "train.manifest.json")
    for name, state in before.items():
        if name.removeprefix("round_1/").startswith(("judgments", *trained)):
            assert after[name] == state, name
    runner = Runner(load_config(SMOKE, [f"output_dir={run_copy}", *SMALL]), progress=False)
    assert runner.is_complete("filter", 1) and not runner.is_complete("train", 1)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("filter.keep_fraction=0", "filter.keep_fraction: Input should be greater than 0"),
        ("filter.keep_fraction=1.5", "filter.keep_fraction: Input should be less than or equal"),
        ("ema.rank=0", "ema.rank: Input should be greater than or equal to 1"),
        ("train.learnin_rate=1e-6", "unknown key; did you mean 'train.learning_rate'?"),
    ],
)
def test_an_invalid_setting_names_the_key(override, expected, shared_run, capsys):
    """Cases 8 and 9, as overrides: refused before the run folder is touched."""
    before = snapshot(shared_run)
    assert main(["run", *_args(shared_run, override)]) == 2
    assert expected in _error(capsys)
    assert snapshot(shared_run) == before


def test_an_unknown_key_in_a_config_file_suggests_the_closest(tmp_path, capsys):
    config = tmp_path / "my.yaml"
    config.write_text("model:\n  name_or_path: tiny-random\nfilter:\n  keep_fractoin: 0.5\n")
    assert main(["run", "--config", str(config), f"output_dir={tmp_path / 'out'}"]) == 2
    error = _error(capsys)
    assert f"invalid config ({config}" in error
    assert "filter.keep_fractoin: unknown key; did you mean 'filter.keep_fraction'?" in error
    assert not (tmp_path / "out").exists()


def test_a_missing_model_path_stops_before_any_stage(shared_run, tmp_path, capsys):
    """Case 10: a new run folder is not even created; an existing one is left alone."""
    fresh = tmp_path / "fresh"
    assert main(["run", *_args(fresh, "model.name_or_path=/nope")]) == 2
    error = _error(capsys)
    assert "model.name_or_path='/nope' is not an existing folder" in error
    assert not fresh.exists()
    before = snapshot(shared_run)
    assert main(["run", *_args(shared_run, "model.name_or_path=/nope"), "--force"]) == 2
    assert "'/nope'" in _error(capsys)
    assert snapshot(shared_run) == before


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _evaluate(folder: Path, base_url: str) -> int:
    judge = {
        "backend": "openai",
        "model": "m",
        "base_url": base_url,
        "api_key_env": KEY_VARIABLE,
        "max_retries": "1",
        "timeout": "0.5",
    }
    overrides = [f"evaluate.judge.{key}={value}" for key, value in judge.items()]
    return main(["evaluate", *_args(folder, *overrides)])


def test_an_unreachable_judge_stops_with_the_answers_kept(run_copy, monkeypatch, capsys):
    """Case 11: connection refused (a closed port), then a judge slower than the timeout.
    Each exits 2 naming the endpoint and saying to rerun; the answers generated before the
    first failure are kept and the second evaluate reuses them untouched."""
    monkeypatch.setenv(KEY_VARIABLE, "sk-test-bad-input")
    trained = snapshot(run_copy)
    refused = f"http://127.0.0.1:{_closed_port()}/v1"
    assert _evaluate(run_copy, refused) == 2
    error = _error(capsys)
    assert f"judge endpoint {refused} (model 'm') failed: APIConnectionError" in error
    assert "rerun the same command" in error
    answers = snapshot(run_copy)
    for t in (0, 1):
        assert read_manifest(run_copy / f"round_{t}", "answers") is not None
        assert read_manifest(run_copy / f"round_{t}", "verdicts") is None
    assert _without(answers, "config.yaml").items() >= _without(trained, "config.yaml").items()
    with FakeOpenAIServer() as slow:
        slow.delay = 3.0
        assert _evaluate(run_copy, slow.base_url) == 2
        error = _error(capsys)
        assert f"judge endpoint {slow.base_url} (model 'm') failed: APITimeoutError" in error
        assert "rerun the same command" in error and "sk-test" not in error
    assert _without(snapshot(run_copy), "config.yaml") == _without(answers, "config.yaml")


class _FillingFile:
    """A text file opened for writing whose disk fails after ``room`` characters, with
    ``code`` (ENOSPC: it is full)."""

    def __init__(self, real, room: int, code: int = errno.ENOSPC) -> None:
        self._real, self._room, self._code = real, room, code

    def write(self, text: str) -> int:
        if len(text) > self._room:
            self._real.write(text[: self._room])
            self._room = 0
            raise OSError(self._code, os.strerror(self._code))
        self._room -= len(text)
        return self._real.write(text)

    def __enter__(self) -> _FillingFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._real.close()

    def __getattr__(self, name: str):
        return getattr(self._real, name)


def _fill_disk(monkeypatch: pytest.MonkeyPatch, room: int, code: int = errno.ENOSPC) -> None:
    """Make every file congrad.data.artifacts opens for writing fail after ``room`` characters
    (the ``open`` its JSONL writers call: write_jsonl into atomic_path's temporary file)."""

    def failing_open(file, mode="r", *args, **kwargs):
        # The caller's ``with`` closes it, through _FillingFile.__exit__.
        handle = open(file, mode, *args, **kwargs)  # noqa: SIM115
        return _FillingFile(handle, room, code) if "w" in mode or "a" in mode else handle

    monkeypatch.setattr(artifacts, "open", failing_open, raising=False)


def test_a_full_disk_keeps_the_previous_file_and_says_so(run_copy, monkeypatch, capsys):
    """Case 12: the prompts stage is rerun (its manifest removed) and its prompts.jsonl
    write finds the disk full after 100 characters."""
    folder = run_copy / "round_1"
    (folder / "prompts.manifest.json").unlink()
    before = snapshot(run_copy)
    _fill_disk(monkeypatch, 100)
    assert main(["prompts", "--round", "1", *_args(run_copy)]) == 2
    error = _error(capsys)
    assert "congrad: the disk is full (No space left on device)" in error
    assert f"while writing {folder / 'prompts.jsonl'}" in error
    assert "free some space on it and rerun the same command" in error
    after = snapshot(run_copy)
    assert after == {**before, "config.yaml": after["config.yaml"]}  # rewritten, same bytes
    assert after["config.yaml"][0] == before["config.yaml"][0]
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()  # space freed: the same command now completes
    assert main(["prompts", "--round", "1", *_args(run_copy)]) == 0
    assert snapshot(run_copy)["round_1/prompts.jsonl"][0] == before["round_1/prompts.jsonl"][0]


def test_other_write_errors_keep_their_traceback(run_copy, monkeypatch):
    """Only a full disk becomes a one-line message; another OSError is not the user's to
    fix and propagates. The previous file is intact all the same."""
    (run_copy / "round_1" / "prompts.manifest.json").unlink()
    before = snapshot(run_copy)["round_1/prompts.jsonl"]
    _fill_disk(monkeypatch, 100, errno.EIO)
    with pytest.raises(OSError, match="Input/output error"):
        main(["prompts", "--round", "1", *_args(run_copy)])
    assert snapshot(run_copy)["round_1/prompts.jsonl"] == before

"""Evaluation end to end through the CLI: the tiny model, a fake OpenAI-compatible judge.

The fake judge answers each judge prompt deterministically from its hash with a win for
A, a win for B, a tie or an unparsable reply, so every case of the win-rate arithmetic
occurs; the tests recompute the numbers by hand from the verdict files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import statistics
from pathlib import Path

import pytest

from congrad.cli import main
from congrad.data.artifacts import read_jsonl, read_manifest
from tests.conftest import REPO_ROOT
from tests.fakes.fake_openai import FakeOpenAIServer

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")
SECRET = "sk-test-Do-Not-Leak-4f1c9e"
KEY_VARIABLE = "CONGRAD_TEST_JUDGE_KEY"
REPLIES = ("Both are short.\nVerdict: A", "Verdict: B", "Verdict: tie", "I cannot tell.")


def fake_verdict(prompt: str) -> str:
    return REPLIES[hashlib.sha256(prompt.encode()).digest()[0] % len(REPLIES)]


def _judge_overrides(server: FakeOpenAIServer, **extra: str) -> list[str]:
    settings = {
        "evaluate.judge.backend": "openai",
        "evaluate.judge.model": "fake-judge",
        "evaluate.judge.base_url": server.base_url,
        "evaluate.judge.api_key_env": KEY_VARIABLE,
        "evaluate.judge.max_retries": "1",
        "evaluate.judge.max_concurrency": "4",
        **extra,
    }
    return [f"{key}={value}" for key, value in settings.items()]


def _evaluate(folder: Path, server: FakeOpenAIServer, *extra: str) -> int:
    overrides = _judge_overrides(server)
    return main(
        ["evaluate", "--config", SMOKE, "--quiet", f"output_dir={folder}", *overrides, *extra]
    )


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(fake_verdict) as running:
        yield running


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, server):
    folder = tmp_path_factory.mktemp("evaluated")
    os.environ[KEY_VARIABLE] = SECRET
    assert main(["run", "--config", SMOKE, "--quiet", f"output_dir={folder}"]) == 0
    # The judge settings differ from the run's saved config; evaluate.* may change freely.
    assert _evaluate(folder, server) == 0
    yield folder
    os.environ.pop(KEY_VARIABLE, None)


def _hand_win_rates(rows: list[dict]) -> dict[str, float]:
    """Per language: the mean over prompts of the mean over parsed orders (tie = 1/2)."""
    value = {"candidate": 1.0, "tie": 0.5, "baseline": 0.0}
    per_prompt: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row["winner"] is not None:
            per_prompt.setdefault((row["lang"], row["prompt_id"]), []).append(value[row["winner"]])
    by_lang: dict[str, list[float]] = {}
    for (lang, _), scores in per_prompt.items():
        by_lang.setdefault(lang, []).append(sum(scores) / len(scores))
    return {lang: sum(v) / len(v) for lang, v in by_lang.items()}


def test_win_rates_equal_a_hand_computation_from_the_verdict_files(evaluated):
    for t in (1, 2):
        rows = read_jsonl(evaluated / f"round_{t}" / "eval_verdicts.jsonl")
        assert {row["winner"] for row in rows} == {"candidate", "baseline", "tie", None}
        hand = _hand_win_rates(rows)
        stored = json.loads((evaluated / f"round_{t}" / "winrates.json").read_text())
        for lang, rate in hand.items():
            assert stored["languages"][lang]["win_rate"] == pytest.approx(rate, abs=1e-12)
        seen = [lang for lang in ("en", "de", "zh") if lang in hand]
        average = statistics.fmean(hand[lang] for lang in seen)
        assert stored["average"]["win_rate"] == pytest.approx(average, abs=1e-12)
        assert stored["unseen"] == ["hi", "vi", "ru"]
        unseen = statistics.fmean(hand[lang] for lang in ("hi", "vi", "ru") if lang in hand)
        assert stored["average_unseen"]["win_rate"] == pytest.approx(unseen, abs=1e-12)
        unparsed = sum(row["winner"] is None for row in rows)
        assert sum(e["unparsed"] for e in stored["languages"].values()) == unparsed
    # The report, rebuilt from the artifacts alone, prints the same numbers (as %).
    assert main(["report", str(evaluated)]) == 0
    with open(evaluated / "report" / "table1_win_rate_by_round.csv", newline="") as handle:
        table = list(csv.reader(handle))
    for t in (1, 2):
        stored = json.loads((evaluated / f"round_{t}" / "winrates.json").read_text())
        cell = table[1][t]
        assert cell.startswith(f"{100 * stored['average']['win_rate']:.1f} [")


def test_every_verdict_maps_the_judges_reply_to_the_right_side(evaluated):
    for t in (1, 2):
        for row in read_jsonl(evaluated / f"round_{t}" / "eval_verdicts.jsonl"):
            label = re.search(r"Verdict: (\w+)", row["raw"])
            choice = label.group(1) if label else None
            assert row["choice"] == choice
            if choice in ("A", "B"):
                first = "candidate" if row["order"] == "candidate_first" else "baseline"
                other = "baseline" if first == "candidate" else "candidate"
                assert row["winner"] == (first if choice == "A" else other)
            else:
                assert row["winner"] == choice  # "tie" or None, never guessed
                assert (row["reason"] is None) == (choice == "tie")


def _replies(prompt: str) -> tuple[str, str]:
    found = re.search(r"\[Reply A\]\n(.*)\n\n\[Reply B\]\n(.*)\n\nGive a brief", prompt, re.S)
    assert found, prompt[-300:]
    return found.group(1), found.group(2)


def test_both_answer_orders_are_judged(evaluated, server):
    asked = {_replies(request["prompt"]) for request in server.requests}
    for t in (1, 2):
        candidate = {
            r["prompt_id"]: r for r in read_jsonl(evaluated / f"round_{t}" / "eval_answers.jsonl")
        }
        baseline = {
            r["prompt_id"]: r for r in read_jsonl(evaluated / "round_0" / "eval_answers.jsonl")
        }
        assert set(candidate) == set(baseline) and len(candidate) == 6 * 3
        rows = read_jsonl(evaluated / f"round_{t}" / "eval_verdicts.jsonl")
        orders = {(row["prompt_id"], row["order"]) for row in rows}
        assert orders == {(p, o) for p in candidate for o in ("candidate_first", "baseline_first")}
        for prompt_id, answer in candidate.items():
            mine, theirs = answer["response"], baseline[prompt_id]["response"]
            assert (mine, theirs) in asked and (theirs, mine) in asked


def test_the_api_key_is_sent_but_never_written(evaluated, server):
    assert server.requests and all(
        request["authorization"] == f"Bearer {SECRET}" for request in server.requests
    )
    assert main(["report", str(evaluated)]) == 0
    written = [path for path in evaluated.rglob("*") if path.is_file()]
    assert len(written) > 20
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
        assert b"Do-Not-Leak" not in path.read_bytes(), path


def test_a_rerun_asks_the_judge_nothing(evaluated, server):
    before = len(server.requests)
    assert _evaluate(evaluated, server) == 0  # every stage complete
    assert len(server.requests) == before
    for t in (1, 2):  # forget the verdicts: they come back from the cache
        (evaluated / f"round_{t}" / "verdicts.manifest.json").unlink()
        (evaluated / f"round_{t}" / "eval_verdicts.jsonl").unlink()
    assert _evaluate(evaluated, server) == 0
    assert len(server.requests) == before
    for t in (1, 2):
        manifest = read_manifest(evaluated / f"round_{t}", "verdicts")
        assert manifest["judge_calls"] == 0 and manifest["cache_hits"] > 0


def test_a_missing_key_stops_before_any_work(tmp_path, server, monkeypatch, capsys):
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    assert _evaluate(tmp_path, server) == 2
    assert KEY_VARIABLE in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing started


def test_a_judge_outage_stops_with_finished_verdicts_kept(evaluated, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_VARIABLE, SECRET)
    folder = tmp_path / "run"
    shutil.copytree(evaluated, folder)
    for t in (1, 2):  # a run whose verdicts were never asked for
        (folder / f"round_{t}" / "verdicts.manifest.json").unlink()
    (folder / "judge_cache.jsonl").unlink()
    answers = (folder / "round_1" / "eval_answers.jsonl").read_bytes()
    with FakeOpenAIServer(fake_verdict) as failing:
        failing.fail_next(10_000, status=503, skip=10)
        assert _evaluate(folder, failing, "--force") == 2  # --force: a copied run folder
        error = capsys.readouterr().err
        assert "rerun" in error and SECRET not in error
        assert (folder / "round_1" / "eval_answers.jsonl").read_bytes() == answers  # kept
        assert read_manifest(folder / "round_1", "verdicts") is None
        assert len(read_jsonl(folder / "judge_cache.jsonl")) == 10
        failing.clear_failures()
        asked = len(failing.requests)
        assert _evaluate(folder, failing) == 0
        hits = sum(read_manifest(folder / f"round_{t}", "verdicts")["cache_hits"] for t in (1, 2))
        calls = sum(read_manifest(folder / f"round_{t}", "verdicts")["judge_calls"] for t in (1, 2))
        assert hits >= 10 and len(failing.requests) - asked == calls

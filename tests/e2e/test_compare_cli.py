"""`congrad compare` and `congrad report` end to end on the tiny model with a fake judge."""

from __future__ import annotations

import csv
import json
import os
import statistics
from pathlib import Path

import pytest

from congrad.cli import main
from congrad.data.artifacts import read_jsonl
from tests.e2e.test_evaluate_cli import KEY_VARIABLE, SECRET, SMOKE, _hand_win_rates, fake_verdict
from tests.fakes.fake_openai import FakeOpenAIServer

STRATEGIES = "full,rand,max-congrad,uab,lcl,mono"


def _compare(folder: Path, server: FakeOpenAIServer, *extra: str) -> int:
    return main(
        [
            "compare",
            "--config",
            SMOKE,
            "--quiet",
            "--strategies",
            STRATEGIES,
            "--seeds",
            "2",
            "--keep",
            "0.5,0.75",
            f"output_dir={folder}",
            "prompts.languages=[en, de]",
            "evaluate.max_prompts=2",
            "evaluate.judge.backend=openai",
            "evaluate.judge.model=fake-judge",
            f"evaluate.judge.base_url={server.base_url}",
            f"evaluate.judge.api_key_env={KEY_VARIABLE}",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    os.environ[KEY_VARIABLE] = SECRET
    with FakeOpenAIServer(fake_verdict) as server:
        assert _compare(folder, server) == 0
        yield folder, server
    os.environ.pop(KEY_VARIABLE, None)


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_every_planned_run_is_trained_and_evaluated(compared):
    folder, _ = compared
    plan = json.loads((folder / "compare.json").read_text())
    names = [run["name"] for run in plan["runs"]]
    assert names == [
        "full",
        "rand-keep0.5-seed0",
        "rand-keep0.5-seed1",
        "rand-keep0.75-seed0",
        "rand-keep0.75-seed1",
        "max-congrad-keep0.5",
        "max-congrad-keep0.75",
        "uab",
        "lcl",
        "mono-en",
        "mono-de",
    ]
    for name in names:
        for t in (1, 2):
            assert (folder / "runs" / name / f"round_{t}" / "verdicts.manifest.json").exists()


def test_round_one_is_computed_once_and_shared(compared):
    folder, _ = compared
    runs = folder / "runs"

    def inode(run: str, name: str) -> int:
        return (runs / run / "round_1" / name).stat().st_ino

    model = "model/model.safetensors"
    for run in ("rand-keep0.5-seed1", "rand-keep0.75-seed0", "max-congrad-keep0.75"):
        assert inode(run, model) == inode("full", model)
        assert inode(run, "eval_verdicts.jsonl") == inode("full", "eval_verdicts.jsonl")
    for run in ("uab", "lcl"):  # same data, their own schedule
        assert inode(run, "pairs.jsonl") == inode("full", "pairs.jsonl")
        assert inode(run, model) != inode("full", model)
    assert inode("mono-en", "pairs.jsonl") != inode("full", "pairs.jsonl")
    # Round 2 differs by strategy: max-congrad keeps half of each language, full all.
    kept = [
        r for r in read_jsonl(runs / "max-congrad-keep0.5/round_2/selection.jsonl") if r["kept"]
    ]
    pairs = read_jsonl(runs / "max-congrad-keep0.5/round_2/pairs.jsonl")
    assert 0 < len(kept) < len(pairs)


def _average(run: Path, t: int, languages: list[str]) -> float:
    hand = _hand_win_rates(read_jsonl(run / f"round_{t}" / "eval_verdicts.jsonl"))
    return statistics.fmean(hand[lang] for lang in languages)


def test_table_one_equals_a_hand_computation_from_the_verdicts(compared):
    folder, _ = compared
    runs = folder / "runs"
    header, *rows = _csv(folder / "report" / "table1_win_rate_by_round.csv")
    assert header == ["strategy", "1", "2"]
    table = {row[0]: row[1:] for row in rows}
    assert list(table) == ["full", "rand", "max-congrad", "uab", "lcl", "mono"]
    for t in (1, 2):
        expected = {
            "full": _average(runs / "full", t, ["en", "de"]),
            "max-congrad": _average(runs / "max-congrad-keep0.5", t, ["en", "de"]),
            "uab": _average(runs / "uab", t, ["en", "de"]),
            "lcl": _average(runs / "lcl", t, ["en", "de"]),
            "rand": statistics.fmean(  # the mean over seeds, at the base keep fraction 0.5
                _average(runs / f"rand-keep0.5-seed{s}", t, ["en", "de"]) for s in (0, 1)
            ),
            "mono": statistics.fmean(  # each language from its own monolingual run
                _average(runs / f"mono-{lang}", t, [lang]) for lang in ("en", "de")
            ),
        }
        for strategy, value in expected.items():
            assert table[strategy][t - 1].split(" ")[0] == f"{100 * value:.1f}", (strategy, t)
    assert "(n=2)" in table["rand"][0]


def test_the_report_has_every_table_and_plot(compared):
    folder, _ = compared
    report = folder / "report"
    for stem in (
        "table1_win_rate_by_round",
        "table9_win_rate_by_language",
        "table4_unseen",
        "table2_mcq_by_round",
        "table3_mcq_by_language",
        "figure2_keep_sweep",
        "table7_stage_seconds",
        "judge",
    ):
        assert (report / f"{stem}.csv").exists(), stem
    for picture in ("win_rate_by_round", "win_rate_by_language", "keep_sweep", "stage_seconds"):
        assert (report / f"{picture}.png").read_bytes()[:4] == b"\x89PNG"
    sweep = _csv(report / "figure2_keep_sweep.csv")
    assert sweep[0] == ["strategy", "0.5", "0.75"]
    assert [row[0] for row in sweep[1:]] == ["rand", "max-congrad"]
    seconds = {row[0]: row for row in _csv(report / "table7_stage_seconds.csv")}
    assert seconds["full"][-1] == "1.00x" and seconds["max-congrad"][-1].endswith("x")
    mcq = {row[0]: row for row in _csv(report / "table2_mcq_by_round.csv")}
    seed_accuracy = {mcq[s][1].split(" ")[0] for s in ("full", "rand", "max-congrad", "uab", "lcl")}
    assert len(seed_accuracy) == 1  # round 0 is the same seed model M_0 for all


def test_report_rebuilds_the_same_tables_and_a_rerun_does_nothing(compared):
    folder, server = compared
    report = folder / "report"
    before = {p.name: p.read_text() for p in report.glob("*.csv")}
    for path in report.iterdir():
        path.unlink()
    assert main(["report", str(folder)]) == 0
    assert {p.name: p.read_text() for p in report.glob("*.csv")} == before
    manifests = {p: p.stat().st_mtime_ns for p in folder.rglob("*.manifest.json")}
    asked = len(server.requests)
    assert _compare(folder, server) == 0
    assert len(server.requests) == asked  # no judge call
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.manifest.json")} == manifests


def test_no_written_file_holds_the_api_key(compared):
    folder, server = compared
    assert all(r["authorization"] == f"Bearer {SECRET}" for r in server.requests)
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_changed_base_config_is_refused_naming_the_key(compared, capsys):
    folder, server = compared
    plan = (folder / "compare.json").read_bytes()
    assert _compare(folder, server, "train.learning_rate=0.5") == 2
    assert "train.learning_rate" in capsys.readouterr().err
    assert (folder / "compare.json").read_bytes() == plan

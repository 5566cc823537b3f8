"""The loop end to end through the CLI on the tiny model (configs/smoke.yaml)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from congrad.cli import main
from congrad.data.artifacts import PartialLog, read_jsonl, read_manifest
from congrad.pipeline.stage_graph import STAGES
from tests.conftest import REPO_ROOT

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")


def _run(tmp: Path, *extra: str) -> int:
    return main(["run", "--config", SMOKE, "--quiet", f"output_dir={tmp}", *extra])


def _manifests(tmp: Path) -> dict[tuple[int, str], float]:
    return {
        (r, stage): (tmp / f"round_{r}" / f"{stage}.manifest.json").stat().st_mtime_ns
        for r in (1, 2)
        for stage in STAGES
    }


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("smoke")
    assert _run(tmp) == 0
    return tmp


def test_every_artifact_is_present(smoke_run):
    assert (smoke_run / "config.yaml").exists() and (smoke_run / "summary.json").exists()
    for r in (1, 2):
        folder = smoke_run / f"round_{r}"
        for stage in STAGES:
            assert read_manifest(folder, stage) is not None, (r, stage)
        for name in (
            "prompts.jsonl",
            "completions.jsonl",
            "judgments.jsonl",
            "pairs.jsonl",
            "dropped.jsonl",
            "selection.jsonl",
            "ema.safetensors",
            "train_log.jsonl",
            "model/config.json",
            "model/model.safetensors",
        ):
            assert (folder / name).exists(), (r, name)
        assert not list(folder.glob("*.partial.jsonl"))


def test_funnel_counts_are_consistent(smoke_run):
    for r in (1, 2):
        folder = smoke_run / f"round_{r}"
        prompts = read_jsonl(folder / "prompts.jsonl")
        completions = read_jsonl(folder / "completions.jsonl")
        judgments = read_jsonl(folder / "judgments.jsonl")
        pairs = read_jsonl(folder / "pairs.jsonl")
        dropped = read_jsonl(folder / "dropped.jsonl")
        selection = read_jsonl(folder / "selection.jsonl")
        assert len(completions) == 4 * len(prompts) == 4 * 12
        assert [j["completion_id"] for j in judgments] == [c["completion_id"] for c in completions]
        assert len(pairs) + len(dropped) == len(prompts)
        assert [s["pair_id"] for s in selection] == [p["pair_id"] for p in pairs]
        kept = [s for s in selection if s["kept"]]
        expected = sum(math.ceil(n * (0.5 if r == 2 else 1.0)) for n in _per_lang(pairs).values())
        assert len(kept) == expected
        summary = json.loads((smoke_run / "summary.json").read_text())["rows"]
        assert sum(row["kept"] for row in summary if row["round"] == r) == len(kept)


def _per_lang(rows):
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["lang"]] = counts.get(row["lang"], 0) + 1
    return counts


def test_prompts_differ_between_rounds(smoke_run):
    first = {p["prompt_id"] for p in read_jsonl(smoke_run / "round_1" / "prompts.jsonl")}
    second = {p["prompt_id"] for p in read_jsonl(smoke_run / "round_2" / "prompts.jsonl")}
    assert first and second and not first & second


def test_round_two_keeps_the_highest_congrad_scores(smoke_run):
    folder = smoke_run / "round_2"
    scores = {s["pair_id"]: s for s in read_jsonl(folder / "scores.jsonl")}
    selection = read_jsonl(folder / "selection.jsonl")
    assert read_manifest(folder, "filter")["strategy"] == "max-congrad"
    for lang in {s["lang"] for s in selection}:
        rows = [s for s in selection if s["lang"] == lang]
        kept = [scores[s["pair_id"]]["cosine"] for s in rows if s["kept"]]
        dropped = [scores[s["pair_id"]]["cosine"] for s in rows if not s["kept"]]
        assert kept and min(kept) >= max(dropped, default=-2.0)
        assert all(s["score"] == scores[s["pair_id"]]["cosine"] for s in rows)
    # Round 1 is unfiltered whatever the strategy, and has no gradient scores.
    assert all(s["kept"] for s in read_jsonl(smoke_run / "round_1" / "selection.jsonl"))
    assert not (smoke_run / "round_1" / "scores.jsonl").exists()


def test_training_changes_weights_and_losses_are_finite(smoke_run):
    first = load_file(str(smoke_run / "round_1" / "model" / "model.safetensors"))
    second = load_file(str(smoke_run / "round_2" / "model" / "model.safetensors"))
    assert any(not first[k].equal(second[k]) for k in first)
    for r in (1, 2):
        log = read_jsonl(smoke_run / f"round_{r}" / "train_log.jsonl")
        assert log and all(math.isfinite(row["loss"]) for row in log)
        # Every kept pair is trained on exactly once, in minibatches of its own language.
        kept = _per_lang(
            [s for s in read_jsonl(smoke_run / f"round_{r}" / "selection.jsonl") if s["kept"]]
        )
        trained: dict[str, int] = {}
        for row in log:
            trained[row["lang"]] = trained.get(row["lang"], 0) + row["pairs"]
        assert trained == kept


def test_rerun_is_a_no_op(smoke_run):
    before = _manifests(smoke_run)
    assert _run(smoke_run) == 0
    assert _manifests(smoke_run) == before


def test_deleted_manifest_reruns_that_stage_only_when_needed(smoke_run):
    before = _manifests(smoke_run)
    (smoke_run / "round_2" / "judge.manifest.json").unlink()
    assert _run(smoke_run) == 0
    after = _manifests(smoke_run)
    rerun = {key for key in before if before[key] != after[key]}
    assert (2, "judge") in rerun
    assert all(key[0] == 2 and STAGES.index(key[1]) >= STAGES.index("judge") for key in rerun)


def test_changed_config_is_refused_then_forced(smoke_run, capsys):
    assert _run(smoke_run, "filter.keep_fraction=0.25") == 2
    assert "filter.keep_fraction" in capsys.readouterr().err
    before = _manifests(smoke_run)
    assert _run(smoke_run, "filter.keep_fraction=0.25", "--force") == 0
    after = _manifests(smoke_run)
    rerun = {key for key in before if before[key] != after[key]}
    assert (2, "filter") in rerun and (1, "generate") not in rerun
    kept = [s for s in read_jsonl(smoke_run / "round_2" / "selection.jsonl") if s["kept"]]
    assert len(kept) == 3  # ceil(0.25 * 4) for each of 3 languages
    assert _run(smoke_run, "--force") == 0  # back to the file's config


def test_stage_out_of_order_is_a_clear_error(tmp_path, capsys):
    args = ["--config", SMOKE, f"output_dir={tmp_path}", "--quiet"]
    assert main(["judge", "--round", "1", *args]) == 2
    assert "needs round 1's generate first" in capsys.readouterr().err
    assert main(["prompts", "--round", "1", *args]) == 0
    assert main(["generate", "--round", "1", *args]) == 0
    assert read_manifest(tmp_path / "round_1", "generate") is not None
    assert main(["generate", "--round", "3", *args]) == 2


def test_show_config_prints_resolved_yaml(capsys):
    assert main(["show-config", "--config", SMOKE, "rounds=3"]) == 0
    out = capsys.readouterr().out
    assert "rounds: 3" in out and "name_or_path: tiny-random" in out


def test_partial_log_recovers_from_a_torn_line(tmp_path):
    path = tmp_path / "x.partial.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    log = PartialLog(path)
    assert [row["a"] for row in log.done] == [1, 2]
    log.append([{"a": 4}])
    assert [row["a"] for row in read_jsonl(path)] == [1, 2, 4]


def test_no_pairs_at_all_stops_clearly_and_keeps_earlier_work(tmp_path, capsys):
    # min_mass 1.0: no judgment can reach it, so every response is unparsed.
    code = main(
        [
            "run",
            "--config",
            SMOKE,
            "--quiet",
            f"output_dir={tmp_path}",
            "rounds=1",
            "judge.min_mass=1.0",
        ]
    )
    assert code == 2
    assert "no preference pairs to train on" in capsys.readouterr().err
    folder = tmp_path / "round_1"
    for stage in ("prompts", "generate", "judge", "pairs", "filter"):
        assert read_manifest(folder, stage) is not None
    assert read_manifest(folder, "train") is None
    assert {d["reason"] for d in read_jsonl(folder / "dropped.jsonl")} == {"fewer_than_two_parsed"}


def test_interrupted_generation_resumes_to_the_same_result(tmp_path):
    from congrad.config.run import load_config
    from congrad.pipeline.runner import Runner

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for folder in (whole, resumed):
        args = ["--config", SMOKE, f"output_dir={folder}", "--quiet"]
        assert main(["prompts", "--round", "1", *args]) == 0
    assert main(["generate", "--round", "1", "--config", SMOKE, f"output_dir={whole}"]) == 0
    # Pretend a crash after 5 completions, with a torn sixth line.
    runner = Runner(load_config(SMOKE, [f"output_dir={resumed}"]), progress=False)
    fingerprint = runner.expected_fingerprint("generate", 1)
    done = (whole / "round_1" / "completions.jsonl").read_text().splitlines(keepends=True)
    partial = resumed / "round_1" / f"generate.{fingerprint}.partial.jsonl"
    partial.write_text("".join(done[:5]) + done[5][:20])
    (resumed / "round_1" / "generate.stale0000.partial.jsonl").write_text("{}\n")
    assert main(["generate", "--round", "1", "--config", SMOKE, f"output_dir={resumed}"]) == 0
    assert (resumed / "round_1" / "completions.jsonl").read_bytes() == (
        whole / "round_1" / "completions.jsonl"
    ).read_bytes()
    assert not list((resumed / "round_1").glob("*.partial.jsonl"))


def test_missing_model_is_refused_before_any_stage(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--quiet", f"output_dir={out}", "model.name_or_path=/no/such/model"])
    assert code == 2
    assert "/no/such/model" in capsys.readouterr().err
    assert not out.exists()


def test_summary_leaves_out_what_a_stale_stage_wrote(smoke_run, tmp_path):
    import shutil

    from congrad.config.run import load_config
    from congrad.pipeline.summary import build_summary

    folder = tmp_path / "copy"
    shutil.copytree(smoke_run, folder)
    config = load_config(folder / "config.yaml", [f"output_dir={folder}"])
    fresh = build_summary(config).to_dict()
    assert all(row["loss"] is not None for row in fresh["rows"])
    (folder / "round_2" / "filter.manifest.json").unlink()  # round 2's filter must rerun
    stale = build_summary(config).to_dict()["rows"]
    round_two = [row for row in stale if row["round"] == 2]
    assert round_two and all(row["loss"] is None and row["kept"] == 0 for row in round_two)
    assert [r for r in stale if r["round"] == 1] == [r for r in fresh["rows"] if r["round"] == 1]

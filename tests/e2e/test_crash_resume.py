"""Crashes never cost a run, and a run is a pure function of its config and seed.

Every run here is a real ``congrad`` process on the tiny random model (configs/smoke.yaml,
scaled down by :data:`OVERRIDES`), compared file by file with :func:`comparable_tree`:

- Determinism: two uninterrupted runs (``run``, then ``evaluate``) of one config and seed
  write byte-identical artifacts, up to what is run-specific by nature.
- SIGKILL mid-stage: one run folder is killed inside round 1's generate, judge and train
  and round 2's CONGRAD-scored filter (each kill in a fresh process that first resumes what
  the last one left), then evaluation is killed inside the seed model's answers and round
  1's verdicts; finished, it equals the uninterrupted run. A kill is triggered by what
  the stage leaves on disk (its partial log growing, or its upstream manifest present and
  its own absent), polled every 10 ms, so it lands mid-stage without sleep-and-hope; a
  kill that still lands after its stage finished is reported, and the comparison holds.
- A partial log cut mid-batch (a crash mid-append, with a torn last line) resumes to the
  same bytes too: stages batch the full record list, never what is left of it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import congrad
from congrad.cli import main
from congrad.config.run import load_config
from congrad.data.artifacts import read_jsonl
from congrad.pipeline.eval_stages import load_eval_prompts
from congrad.pipeline.runner import Runner
from congrad.util.atomic import remove_stale_temporaries, write_text_atomic
from tests.conftest import REPO_ROOT

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")
OVERRIDES = (
    # Small batches: partial logs grow a few records at a time (a wide window to kill in),
    # and batches of two have padded neighbours, so batch composition matters.
    "generate.batch_size=2",
    "judge.batch_size=2",
    "evaluate.batch_size=2",
    # Except the verdicts' judge: LocalJudge batches only the prompts the verdict cache
    # lacks, so a kill between two cache writes of one batch regroups what is left, and a
    # re-batched log-prob may differ in its last bits (judges.py, not fixed here).
    "evaluate.judge.batch_size=1",
    # Half the prompts of the smoke run: the file stays well inside a minute or two.
    "prompts.per_round=2",
    "evaluate.max_prompts=2",
)
POLL_SECONDS = 0.01
TIMEOUT_SECONDS = 300
# One torch thread per process: several runs share a small CI machine, and torch's
# spinning thread pools slow ten-fold when oversubscribed. Every compared run gets it.
ENVIRONMENT = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join(
        [
            str(Path(congrad.__file__).parents[1]),
            *os.environ.get("PYTHONPATH", "").split(os.pathsep),
        ]
    ).rstrip(os.pathsep),
}

Tree = dict[str, Any]
RESUMED = ("seconds", "judge_calls", "cache_hits")
"""Manifest facts a resumed run may tell differently: its verdicts stage counts the judge
calls this process made apart from the cache hits a killed one left it (their sum holds)."""


def comparable_tree(folder: Path, *, ignore: tuple[str, ...] = ("seconds",)) -> Tree:
    """Every file under ``folder`` by relative path: its bytes, or for manifests their JSON.

    Only what is run-specific by nature is stripped: the manifest facts named in ``ignore``
    (by default ``seconds``, the wall time), and the run's own absolute ``output_dir``
    (config.yaml's) wherever text holds it.
    """
    output_dir = str(yaml.safe_load((folder / "config.yaml").read_text())["output_dir"])
    tree: Tree = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        data = path.read_bytes()
        if path.suffix in (".json", ".jsonl", ".yaml"):
            data = data.replace(output_dir.encode(), b"<output_dir>")
        if name.endswith(".manifest.json"):
            manifest = json.loads(data)
            for key in ignore:
                manifest.pop(key, None)
            tree[name] = manifest
        else:
            tree[name] = data
    return tree


def _assert_same(actual: Tree, expected: Tree) -> None:
    assert sorted(actual) == sorted(expected), "the runs wrote different files"
    differing = [name for name in expected if actual[name] != expected[name]]
    assert not differing, f"these files differ: {differing}"


def _arguments(command: str, folder: Path) -> list[str]:
    return [command, "--config", SMOKE, "--quiet", f"output_dir={folder}", *OVERRIDES]


def _start(command: str, folder: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """``congrad <command>`` in a fresh process; its stderr goes to the returned log."""
    log = folder.with_name(f"{folder.name}.{command}.log")
    with open(log, "ab") as stderr:  # the child holds its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "congrad.cli", *_arguments(command, folder)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=ENVIRONMENT,
        )
    return process, log


def _finish(process: subprocess.Popen[bytes], log: Path) -> None:
    returncode = process.wait(timeout=TIMEOUT_SECONDS)
    assert returncode == 0, f"{process.args} failed ({returncode}):\n{log.read_text()[-3000:]}"


def _run(command: str, folder: Path) -> None:
    _finish(*_start(command, folder))


def _run_in_process(command: str, folder: Path) -> None:
    """``congrad <command>`` in this process (no second import of torch), with one torch
    thread like the subprocesses."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_arguments(command, folder)) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Any]:
    """Two uninterrupted runs, A in this process and B at the same time in a fresh one:
    their trees after ``run`` and after ``evaluate``."""
    base = tmp_path_factory.mktemp("reference")
    folders = (base / "A", base / "B")
    trees: dict[str, list[Tree]] = {}
    for command in ("run", "evaluate"):
        process, log = _start(command, folders[1])
        _run_in_process(command, folders[0])
        _finish(process, log)
        trees[command] = [comparable_tree(folder) for folder in folders]
    return {"folder": folders[0], "trained": trees["run"], "evaluated": trees["evaluate"]}


def test_same_config_and_seed_write_identical_artifacts(reference):
    trained_a, trained_b = reference["trained"]
    evaluated_a, evaluated_b = reference["evaluated"]
    assert "round_2/model/model.safetensors" in trained_a and "round_2/scores.jsonl" in trained_a
    assert "round_2/eval_verdicts.jsonl" in evaluated_a and "judge_cache.jsonl" in evaluated_a
    _assert_same(trained_b, trained_a)
    _assert_same(evaluated_b, evaluated_a)


# -- SIGKILL mid-stage -------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """Where to kill: when ``started`` holds for the run folder; ``finished``: the stage's
    manifest is there (then the kill came too late to interrupt it)."""

    stage: str
    started: Callable[[Path], bool]
    finished: Callable[[Path], bool]


def _logged(pattern: str) -> Callable[[Path], bool]:
    """A partial log (or cache) matching ``pattern`` holds at least one complete record."""
    return lambda folder: any(b"\n" in path.read_bytes() for path in folder.glob(pattern))


def _manifest(round_index: int, stage: str) -> Callable[[Path], bool]:
    return lambda folder: (folder / f"round_{round_index}" / f"{stage}.manifest.json").exists()


def _after(round_index: int, upstream: str, stage: str) -> Callable[[Path], bool]:
    """``stage`` has started: the manifest of the stage before it is there, its own not."""
    before, own = _manifest(round_index, upstream), _manifest(round_index, stage)
    return lambda folder: before(folder) and not own(folder)


LOOP_KILLS = (
    Kill("round 1 generate", _logged("round_1/generate.*.partial.jsonl"), _manifest(1, "generate")),
    Kill("round 1 judge", _logged("round_1/judge.*.partial.jsonl"), _manifest(1, "judge")),
    Kill("round 1 train", _after(1, "filter", "train"), _manifest(1, "train")),
    Kill("round 2 filter", _after(2, "pairs", "filter"), _manifest(2, "filter")),
)
EVAL_KILLS = (
    Kill("round 0 answers", _logged("round_0/answers.*.partial.jsonl"), _manifest(0, "answers")),
    Kill("round 1 verdicts", _logged("judge_cache.jsonl"), _manifest(1, "verdicts")),
)


def _kill_during(command: str, folder: Path, kill: Kill) -> bool:
    """Start ``command``, SIGKILL it once ``kill.started`` holds; whether the kill landed
    inside the stage (its manifest absent after the process died)."""
    process, log = _start(command, folder)
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not kill.started(folder):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(
                f"{kill.stage} never visibly started ({process.returncode}):\n"
                f"{log.read_text()[-3000:]}"
            )
        time.sleep(POLL_SECONDS)
    assert process.poll() is None, f"{command} had exited before the kill in {kill.stage}"
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=TIMEOUT_SECONDS) == -signal.SIGKILL, log.read_text()[-3000:]
    landed = not kill.finished(folder)
    if not landed:
        warnings.warn(f"the kill came after {kill.stage} had finished", stacklevel=2)
    return landed


def _kill_chain(command: str, folder: Path, kills: tuple[Kill, ...]) -> list[str]:
    """Kill ``command`` once per stage of ``kills`` (each process first resumes what the last
    one left), then run it to completion; returns the stages interrupted."""
    interrupted = [kill.stage for kill in kills if _kill_during(command, folder, kill)]
    _run(command, folder)
    return interrupted


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("killed") / "run"
    return folder, _kill_chain("run", folder, LOOP_KILLS)


def test_run_killed_in_each_stage_resumes_to_the_uninterrupted_artifacts(reference, killed_run):
    folder, interrupted = killed_run
    print("interrupted:", interrupted)
    assert len(interrupted) >= len(LOOP_KILLS) // 2, f"most kills came late: {interrupted}"
    assert not list(folder.rglob("*.partial.jsonl"))
    _assert_same(comparable_tree(folder), reference["trained"][0])


def test_evaluation_killed_in_each_stage_resumes_to_the_uninterrupted_artifacts(
    reference, killed_run
):
    folder, _ = killed_run
    interrupted = _kill_chain("evaluate", folder, EVAL_KILLS)
    print("interrupted:", interrupted)
    assert interrupted, "every kill came after its stage had finished"
    _assert_same(
        comparable_tree(folder, ignore=RESUMED),
        comparable_tree(reference["folder"], ignore=RESUMED),
    )
    resumed, whole = comparable_tree(folder), reference["evaluated"][0]
    for name in ("round_1/verdicts.manifest.json", "round_2/verdicts.manifest.json"):
        total = whole[name]["judge_calls"] + whole[name]["cache_hits"]
        assert resumed[name]["judge_calls"] + resumed[name]["cache_hits"] == total


# -- a partial log cut mid-batch -------------------------------------------------------


def _write_partial(folder: Path, stage: str, round_index: int, rows: list[dict]) -> None:
    """What a crash mid-append leaves: ``rows``, then half of one more line."""
    config = load_config(folder / "config.yaml")
    fingerprint = Runner(config, progress=False).expected_fingerprint(stage, round_index)
    lines = [json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows]
    torn = lines.pop()[:25]
    path = folder / f"round_{round_index}" / f"{stage}.{fingerprint}.partial.jsonl"
    path.write_text("".join(lines) + torn, encoding="utf-8")
    (folder / f"round_{round_index}" / f"{stage}.manifest.json").unlink()


def test_partial_logs_cut_mid_batch_resume_to_the_same_bytes(reference, tmp_path):
    folder = tmp_path / "resumed"
    shutil.copytree(reference["folder"], folder)
    saved = folder / "config.yaml"
    saved.write_text(saved.read_text().replace(str(reference["folder"]), str(folder)))
    round_1 = folder / "round_1"
    # Batches of two (generate, answers) and chunks of eight (judge): 3 and 5 records
    # cut a batch or a chunk in two, so the records left to do start mid-batch.
    # Records in the order the stage asks for them; the judge's is completions.jsonl's.
    _write_partial(folder, "judge", 1, read_jsonl(round_1 / "judgments.jsonl")[:6])
    prompt_ids = [row["prompt_id"] for row in read_jsonl(round_1 / "prompts.jsonl")]
    completions = sorted(
        read_jsonl(round_1 / "completions.jsonl"),
        key=lambda row: (prompt_ids.index(row["prompt_id"]), row["sample_index"]),
    )
    _write_partial(folder, "generate", 1, completions[:4])
    _run_in_process("run", folder)
    eval_ids = [p.prompt_id for p in load_eval_prompts(load_config(saved))]
    answers = sorted(
        read_jsonl(round_1 / "eval_answers.jsonl"), key=lambda row: eval_ids.index(row["prompt_id"])
    )
    _write_partial(folder, "answers", 1, answers[:4])
    _run_in_process("evaluate", folder)
    _assert_same(comparable_tree(folder), reference["evaluated"][0])


def test_a_killed_writers_temporaries_go_with_the_next_write(tmp_path):
    """SIGKILL runs no cleanup: a temporary (or a model's staging folder) of a process that
    is gone is removed by the next write to its destination; a live writer's is kept."""
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    gone = int(finished.stdout)
    stale = tmp_path / f".summary.json.{gone}.k2j4q.tmp"
    stale.write_text("{")
    live = tmp_path / f".summary.json.{os.getppid()}.x8c1d.tmp"
    live.write_text("{")
    staging = tmp_path / f".model.{gone}.1234.tmp"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half")
    write_text_atomic(tmp_path / "summary.json", "{}\n")
    assert remove_stale_temporaries(tmp_path / "model") == [staging]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "summary.json"])

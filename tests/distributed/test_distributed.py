"""Multi-process invariance on CPU (gloo): N processes compute what one process computes.

Each slow test runs the same job alone and under ``torchrun --standalone --nproc_per_node 2``
(DDP; FSDP2 with the model sharded by ``fully_shard`` as accelerate's FSDP v2 does; DeepSpeed
ZeRO 2 and 3 through accelerate, on gloo)
(each with one thread per process, so each is deterministic) and compares: the loss curve,
the weights, the per-language EMA (identical on every rank, and equal to the one-process
EMA to float tolerance), the CONGRAD scores and the selection; end to end through the CLI,
the run folders' artifacts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from congrad.config.run import Strategy
from congrad.core.selection import select_pairs, strategy_scores
from congrad.data.artifacts import read_jsonl
from congrad.data.records import PairScore, PreferencePair
from congrad.parallel import distributed
from tests.conftest import (
    REPO_ROOT,
    accelerate_launch_environment,
    make_pairs,
    write_preference_file,
)

ROOT = REPO_ROOT
WORKER = ROOT / "tests" / "distributed" / "distributed_worker.py"
VLLM_CLI = ROOT / "tests" / "fakes" / "vllm_cli.py"  # congrad.cli.main with the fake vllm installed
SMOKE = ROOT / "configs" / "smoke.yaml"


def _launch(
    args: list[str], processes: int, cwd: Path, expect: int = 0, zero_stage: int | None = None
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` alone, or under torchrun with ``processes`` ranks; asserts the exit
    status is ``expect``. ``zero_stage``: the ranks run DeepSpeed ZeRO at that stage, with
    the environment ``accelerate launch`` gives them for the shipped
    ``configs/accelerate/zero<stage>-1node-8gpu.yaml`` (on gloo: there is no GPU here)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("WORLD_SIZE", None)
    env.pop("ACCELERATE_USE_DEEPSPEED", None)
    if zero_stage is not None:
        shipped = ROOT / "configs" / "accelerate" / f"zero{zero_stage}-1node-8gpu.yaml"
        env.update(accelerate_launch_environment(shipped))
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone"]
        launcher += [f"--nproc_per_node={processes}"]
    done = subprocess.run(
        [*launcher, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == expect, done.stdout[-3000:] + done.stderr[-3000:]
    return done


# -- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "parts", "expected"),
    [
        (5, 2, [[0, 1, 2], [3, 4]]),
        (4, 2, [[0, 1], [2, 3]]),
        (1, 2, [[0], []]),
        (0, 3, [[], [], []]),
        (7, 3, [[0, 1, 2], [3, 4], [5, 6]]),
    ],
)
def test_split_evenly_covers_every_index_once_in_order(count, parts, expected):
    indices = list(range(count))
    slices = [distributed.split_evenly(indices, p, parts) for p in range(parts)]
    assert slices == expected
    assert [i for part in slices for i in part] == indices


def test_one_process_is_a_world_of_one_and_waves_are_a_plain_map(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched()
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.gather("x") == ["x"]
    assert distributed.broadcast({"a"}) == {"a"}
    assert list(distributed.map_in_waves([3, 1, 2], lambda v: v * 10)) == [
        (0, 30),
        (1, 10),
        (2, 20),
    ]
    with distributed.main_first():
        pass
    tensor = torch.ones(2)
    distributed.all_reduce_sum([tensor])
    assert tensor.tolist() == [1.0, 1.0]


def test_a_launched_process_running_a_stage_alone_is_a_world_of_one(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched()
    with distributed.solo():
        assert not distributed.launched()
        assert distributed.world_size() == 1 and distributed.gather("x") == ["x"]
        assert list(distributed.map_in_waves([3, 1], lambda v: v * 10)) == [(0, 30), (1, 10)]
    assert distributed.launched()  # only inside


# -- train_round and score_pairs ------------------------------------------------------------


def _selection(scores: list[dict]) -> list[bool]:
    pairs = [PreferencePair(s["pair_id"], s["lang"], "p", "c", "r") for s in scores]
    cosines = {s["pair_id"]: s["cosine"] for s in scores}
    values = strategy_scores(pairs, Strategy.MAX_CONGRAD, seed=0, congrad_cosines=cosines)
    return [row.kept for row in select_pairs(pairs, values, Strategy.MAX_CONGRAD, 0.5)]


SHARDINGS = [
    (1, "ddp"),
    (2, "ddp"),
    (1, "fsdp"),
    (1, "lora"),
    (1, "zero2"),
    (2, "zero3"),
    (1, "zero3-checkpointing"),  # train.gradient_checkpointing in both runs
]


@pytest.mark.slow
@pytest.mark.parametrize(("accumulation", "sharding"), SHARDINGS, ids=str)
def test_two_processes_train_and_score_like_one(tmp_path, accumulation, sharding):
    runs = {}
    for processes in (1, 2):
        out = tmp_path / f"w{processes}"
        args = [str(WORKER), str(out), "4", str(accumulation)]
        if sharding == "lora":  # LoRA in both runs (DDP over the adapter's parameters)
            args.append("lora")
        elif processes > 1 and sharding == "fsdp":  # the one-process run is unsharded
            args.append("fsdp")
        if sharding.endswith("checkpointing"):
            args.append("checkpointing")
        zero_stage = int(sharding[4]) if processes > 1 and sharding.startswith("zero") else None
        _launch(args, processes, tmp_path, zero_stage=zero_stage)
        runs[processes] = out
    one = json.loads((runs[1] / "result.json").read_text())
    two = json.loads((runs[2] / "result.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert (one["deepspeed"], two["deepspeed"]) == (False, sharding.startswith("zero"))

    # The same schedule, minibatch by minibatch (17 pairs: minibatches of 4, 2 and 1 pairs,
    # the 1-pair one smaller than the world: one rank takes part with weight 0).
    assert [(r["step"], r["lang"], r["pairs"]) for r in one["log"]] == [
        (r["step"], r["lang"], r["pairs"]) for r in two["log"]
    ]
    assert 1 in {r["pairs"] for r in one["log"]}
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in two["log"]] == pytest.approx(
            [r[key] for r in one["log"]], rel=1e-5, abs=1e-7
        ), key
    for key in ("chosen_reward_mean", "rejected_reward_mean"):  # beta * (policy - ref): a
        # difference of sums of ~100 token log-probs, so absolute, not relative, agreement
        assert [r[key] for r in two["log"]] == pytest.approx(
            [r[key] for r in one["log"]], rel=0, abs=1e-5
        ), key
    assert [r["accuracy"] for r in two["log"]] == [r["accuracy"] for r in one["log"]]
    assert two["lang_mean_loss"] == pytest.approx(one["lang_mean_loss"], rel=1e-5)

    weights_one = load_file(runs[1] / "weights.safetensors")
    weights_two = load_file(runs[2] / "weights.safetensors")
    for name, value in weights_one.items():  # lr 1e-3: steps move weights by ~1e-3
        torch.testing.assert_close(weights_two[name], value, rtol=0, atol=1e-5, msg=name)

    # Every rank holds the same EMA, bit for bit (same all-reduced gradients, same seeds;
    # under FSDP2 each tracked gradient is gathered whole before the update).
    ema_rank0 = load_file(runs[2] / "ema.0.safetensors")
    ema_rank1 = load_file(runs[2] / "ema.1.safetensors")
    assert ema_rank0.keys() == ema_rank1.keys()
    assert all(torch.equal(ema_rank0[k], ema_rank1[k]) for k in ema_rank0)
    ema_single = load_file(runs[1] / "ema.0.safetensors")
    for name, value in ema_single.items():
        scale = value.abs().max().clamp_min(1e-12)
        assert (ema_rank0[name] - value).abs().max() / scale < 1e-3, name

    if sharding == "fsdp" or two["deepspeed"]:  # (the loop scores with M_t reloaded whole)
        assert two["scores"] == []
        # M_t saved from the shards (DeepSpeed: its fp32 masters, gathered from its
        # partitions before its engine let go) loads as a plain model: the trained weights
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(runs[2] / "model")
        for name, value in saved.state_dict().items():
            torch.testing.assert_close(value, weights_one[name], rtol=0, atol=1e-5, msg=name)
        return
    # Sharded scoring gathers every pair's score; the selection is the same.
    assert [s["pair_id"] for s in two["scores"]] == [s["pair_id"] for s in one["scores"]]
    cosines_one = [s["cosine"] for s in one["scores"]]
    assert [s["cosine"] for s in two["scores"]] == pytest.approx(cosines_one, abs=1e-5)
    assert _selection(two["scores"]) == _selection(one["scores"])
    assert PairScore(**two["scores"][0])  # whole records, not just numbers


# -- end to end through the CLI -------------------------------------------------------------


def _cli_run(
    folder: Path, processes: int, commands: tuple[str, ...], zero_stage: int | None = None
) -> Path:
    for command in commands:
        cli = ["-m", "congrad.cli", command, "--config", str(SMOKE), "--quiet"]
        _launch([*cli, f"output_dir={folder}"], processes, folder.parent, zero_stage=zero_stage)
    return folder


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    """``congrad run`` then ``congrad evaluate`` of the smoke config in one process."""
    return _cli_run(tmp_path_factory.mktemp("single") / "run1", 1, ("run", "evaluate"))


def _assert_trained_and_filtered_alike(one: Path, two: Path) -> None:
    """Training's gradients are summed in another order: floats agree to tolerance, and
    round 2's CONGRAD scores (from round 1's EMA and M_1) select the same pairs."""
    for round_index in (1, 2):
        logs = [read_jsonl(f / f"round_{round_index}/train_log.jsonl") for f in (one, two)]
        assert [r["lang"] for r in logs[0]] == [r["lang"] for r in logs[1]]
        assert [r["loss"] for r in logs[1]] == pytest.approx([r["loss"] for r in logs[0]], rel=1e-4)
    scores = [read_jsonl(f / "round_2/scores.jsonl") for f in (one, two)]
    assert [s["cosine"] for s in scores[1]] == pytest.approx(
        [s["cosine"] for s in scores[0]], abs=1e-5
    )
    selections = [read_jsonl(f / "round_2/selection.jsonl") for f in (one, two)]
    assert [(s["pair_id"], s["kept"]) for s in selections[0]] == [
        (s["pair_id"], s["kept"]) for s in selections[1]
    ]


@pytest.mark.slow
def test_congrad_run_and_evaluate_on_two_processes_write_what_one_process_writes(
    tmp_path, one_process_run
):
    one = one_process_run
    two = _cli_run(tmp_path / "run2", 2, ("run", "evaluate"))
    # Round 1 up to training and round 2's sampling are the same bytes: records are cut
    # into the same batches whichever rank computes them.
    for name in (
        "round_1/prompts.jsonl",
        "round_1/completions.jsonl",
        "round_1/judgments.jsonl",
        "round_1/pairs.jsonl",
        "round_1/selection.jsonl",
        "round_2/completions.jsonl",
        "round_0/eval_answers.jsonl",  # evaluation answers are shared out the same way
        "round_1/eval_answers.jsonl",
    ):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    _assert_trained_and_filtered_alike(one, two)
    assert (two / "round_2/winrates.json").exists() and (two / "round_2/eval_mcq.jsonl").exists()
    # A changed config is refused on every rank (each exits 2 with the reason; none hangs
    # waiting for the main process), and nothing in the folder changes.
    before = {p: p.stat().st_mtime_ns for p in two.rglob("*") if p.is_file()}
    cli = ["-m", "congrad.cli", "run", "--config", str(SMOKE), "--quiet"]
    refused = _launch([*cli, f"output_dir={two}", "rounds=3"], 2, tmp_path, expect=1)
    assert refused.stderr.count("changed keys: rounds") == 2
    assert {p: p.stat().st_mtime_ns for p in two.rglob("*") if p.is_file()} == before
    # Only the main process wrote: one manifest per stage, no stray partial logs.
    assert not list(two.rglob("*.partial.jsonl"))
    assert (two / "summary.json").exists() and (two / "round_2/model/model.safetensors").exists()


@pytest.mark.slow
def test_congrad_run_under_deepspeed_zero3_trains_and_filters_like_one_process(
    tmp_path, one_process_run
):
    two = _cli_run(tmp_path / "zero3", 2, ("run",), zero_stage=3)
    _assert_trained_and_filtered_alike(one_process_run, two)
    # Each round's M_t was gathered from the partitions and saved whole; round 2 reloaded it.
    # Round 2 starts from weights ~1e-6 apart, and Adam's first steps turn tiny gradient
    # differences into whole lr-sized ones: DDP's M_2 differs from one process's by 1.3e-4.
    for round_index, tolerance in ((1, 1e-5), (2, 1e-3)):
        saved = load_file(two / f"round_{round_index}/model/model.safetensors")
        ours = load_file(one_process_run / f"round_{round_index}/model/model.safetensors")
        assert saved.keys() == ours.keys()
        for name, value in ours.items():
            torch.testing.assert_close(saved[name], value, rtol=0, atol=tolerance, msg=name)


@pytest.mark.slow
def test_vllm_stages_run_on_the_main_process_alone_and_write_what_one_process_writes(tmp_path):
    # generate.backend=vllm: generate, judge and evaluation answers run on rank 0 only (the
    # fake vllm of tests/fakes/fake_vllm.py), whose own broadcasts and waves must not wait for
    # the other ranks, parked at the stage's barrier (they hung here before).
    folders = {}
    for processes in (1, 2):
        folders[processes] = tmp_path / f"vllm{processes}"
        for command in ("run", "evaluate"):
            cli = [str(VLLM_CLI), command, "--config", str(SMOKE), "--quiet"]
            cli += [f"output_dir={folders[processes]}", "generate.backend=vllm"]
            _launch(cli, processes, tmp_path)
    one, two = folders[1], folders[2]
    for name in (
        "round_1/completions.jsonl",
        "round_1/judgments.jsonl",
        "round_1/pairs.jsonl",
        "round_2/completions.jsonl",
        "round_0/eval_answers.jsonl",
        "round_2/eval_answers.jsonl",
    ):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    _assert_trained_and_filtered_alike(one, two)


@pytest.mark.slow
def test_a_deepspeed_launch_the_loop_cannot_honour_is_refused_on_every_rank(tmp_path):
    # Before any stage: each rank exits 2 with the reason, nothing is written
    folder = tmp_path / "refused"
    cli = ["-m", "congrad.cli", "run", "--config", str(SMOKE), "--quiet", f"output_dir={folder}"]
    cli.append("train.gradient_accumulation_steps=2")
    refused = _launch(cli, 2, tmp_path, expect=1, zero_stage=2)  # torchrun's own status
    assert refused.stderr.count("gradient_accumulation_steps=2 with DeepSpeed ZeRO-2") == 2
    assert len(re.findall(r"exitcode\s*:\s*2\b", refused.stderr)) >= 1  # congrad's: 2
    assert not folder.exists()  # refused before the run folder was made
    # LoRA cannot be merged into DeepSpeed's partitions
    cli[-1] = "model.lora.enabled=true"
    refused = _launch(cli, 2, tmp_path, expect=1, zero_stage=2)
    assert refused.stderr.count("model.lora with DeepSpeed is not supported") == 2
    assert not folder.exists()


@pytest.mark.slow
def test_standalone_filter_on_two_processes_selects_what_one_process_selects(tmp_path):
    dataset = tmp_path / "prefs.jsonl"
    write_preference_file(dataset, make_pairs(14))
    outputs = {}
    for processes in (1, 2):
        outputs[processes] = tmp_path / f"selected{processes}"
        cli = ["-m", "congrad.cli", "filter", "--dataset", str(dataset), "--model", "tiny-random"]
        cli += ["--output", str(outputs[processes]), "--quiet", "train.batch_size=3", "ema.rank=4"]
        _launch(cli, processes, tmp_path)
    scores = [read_jsonl(outputs[p] / "scores.jsonl") for p in (1, 2)]
    assert [s["cosine"] for s in scores[1]] == pytest.approx(
        [s["cosine"] for s in scores[0]], abs=1e-5
    )
    selections = [read_jsonl(outputs[p] / "selection.jsonl") for p in (1, 2)]
    assert [s["kept"] for s in selections[0]] == [s["kept"] for s in selections[1]]
    emas = [load_file(outputs[p] / "ema.safetensors") for p in (1, 2)]
    for name, value in emas[0].items():
        scale = value.abs().max().clamp_min(1e-12)
        assert (emas[1][name] - value).abs().max() / scale < 1e-3, name


# -- engines congrad refuses ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fsdp_version", "refused"),
    [
        ("MULTI_GPU", None, False),
        ("MULTI_CPU", None, False),
        ("FSDP", 2, False),
        ("FSDP", 1, True),
        ("DEEPSPEED", None, False),  # congrad.parallel.zero reads its partitioned gradients
    ],
)
def test_training_refuses_engines_that_hide_the_per_minibatch_gradient(kind, fsdp_version, refused):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from congrad.rounds.engines import uses_deepspeed

    plugin = None if fsdp_version is None else SimpleNamespace(fsdp_version=fsdp_version)
    accelerator = SimpleNamespace(
        distributed_type=DistributedType[kind], state=SimpleNamespace(fsdp_plugin=plugin)
    )
    if refused:
        with pytest.raises(NotImplementedError, match=r"not FSDP version 1: .*fsdp2-\*\.yaml"):
            uses_deepspeed(accelerator)
    else:
        assert uses_deepspeed(accelerator) is (kind == "DEEPSPEED")

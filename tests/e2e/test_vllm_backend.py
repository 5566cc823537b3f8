"""The vLLM backend and its engine lifecycle, against a fake ``vllm`` (tests/fakes/fake_vllm.py).

The fake computes with the tiny transformers model, so the vLLM backend's texts and
log-probabilities can be compared with the hf backend's on identical numbers.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from congrad.backends.generation import HFBackend, SamplingParams, VLLMBackend
from congrad.backends.vllm_engine import VLLMUnavailable, engine_args
from congrad.cli import main
from congrad.config.run import ConfigError, load_config
from congrad.data.artifacts import read_jsonl
from congrad.util.seeds import stable_seed
from tests.conftest import REPO_ROOT
from tests.fakes.fake_vllm import install

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")


@pytest.fixture()
def fake(monkeypatch):
    return install(monkeypatch)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """The tiny model saved as a folder, as vLLM loads models, and reloaded for hf."""
    from congrad.models.tiny import tiny_causal_lm
    from congrad.rounds.train import save_round_model

    folder = tmp_path_factory.mktemp("tiny") / "model"
    model, tokenizer = tiny_causal_lm(seed=0)
    save_round_model(model, tokenizer, folder)
    return folder, model.eval(), tokenizer


@pytest.fixture(scope="module")
def ending_folder(tmp_path_factory, tiny_folder):
    """The tiny model made to end some answers: the end-of-turn token's output row is a
    token's row of one greedy continuation (slightly scaled up), not of another's."""
    import copy

    from congrad.rounds.train import save_round_model

    _, model, tokenizer = tiny_folder
    model = copy.deepcopy(model)
    hf = HFBackend(model, tokenizer, batch_size=4)
    prompts = [hf.chat_prompt(text) for text in PROMPTS]
    rows = [
        model.generate(**tokenizer(p, return_tensors="pt", add_special_tokens=False),
                       max_new_tokens=24, do_sample=False)[0].tolist()
        for p in prompts
    ]  # fmt: skip
    token = next(t for t in rows[0][-20:] if t not in rows[1] + rows[2])
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head[tokenizer.eos_token_id] = 1.01 * head[token]
    folder = tmp_path_factory.mktemp("ending") / "model"
    save_round_model(model, tokenizer, folder)
    return folder, model.eval(), tokenizer


def _vllm(folder: Path, tokenizer, **args) -> VLLMBackend:
    return VLLMBackend(
        str(folder),
        tokenizer,
        engine_args={"seed": 0, "max_logprobs": 20, **args},
        eos_ids=[tokenizer.eos_token_id],
    )


PROMPTS = ("Explain the sky", "Warum ist der Himmel blau?", "你好", "Bonjour")


# -- config --------------------------------------------------------------------------------


def test_engine_args_carry_the_config():
    config = load_config(
        SMOKE,
        [
            "generate.backend=vllm",
            "generate.vllm.tensor_parallel_size=4",
            "generate.vllm.gpu_memory_utilization=0.6",
            "generate.vllm.max_model_len=2048",
            "generate.vllm.engine_args.max_num_seqs=64",
            "model.trust_remote_code=true",
            "seed=7",
        ],
    )
    assert engine_args(config) == {
        "tensor_parallel_size": 4,
        "gpu_memory_utilization": 0.6,
        "enforce_eager": False,
        "dtype": "float32",  # model.dtype auto on a CPU, as the hf backend resolves it
        "seed": 7,
        "trust_remote_code": True,
        "max_logprobs": 512,  # configs/smoke.yaml: the tiny model's vocabulary
        "max_model_len": 2048,
        "max_num_seqs": 64,
    }
    unset = engine_args(load_config(SMOKE, ["generate.vllm.dtype=bfloat16"]))
    assert unset["dtype"] == "bfloat16" and "max_model_len" not in unset


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("generate.vllm.tensor_parallel_size=0", "generate.vllm.tensor_parallel_size"),
        ("generate.vllm.gpu_memory_utilization=0", "generate.vllm.gpu_memory_utilization"),
        ("generate.vllm.gpu_memory_utilization=1.5", "generate.vllm.gpu_memory_utilization"),
        ("generate.vllm.max_logprobs=0", "generate.vllm.max_logprobs"),
        ("generate.vllm.engine_args.trust_remote_code=true", "use model.trust_remote_code"),
        ("generate.vllm.engine_args.tensor_parallel_size=2", "set generate.vllm.tensor_parall"),
        ("generate.vllm.engine_args.model=x", "model.name_or_path"),
        ("generate.vllm.engine_args.seed=3", "the run's seed"),
        ("generate.vllm.engine_args.start=2024-01-01", "must be plain data, not date"),
        ("generate.vllm.engine_args={'not a name': 1}", "is not a keyword argument name"),
        (
            "generate.vllm.tensor_paralel_size=2",
            "did you mean 'generate.vllm.tensor_parallel_size'",
        ),
    ],
)
def test_bad_vllm_settings_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SMOKE, ["generate.backend=vllm", override])


def test_hf_fingerprints_ignore_the_vllm_section(tmp_path):
    from congrad.pipeline.runner import Runner

    def generate_print(*overrides: str) -> object:
        runner = Runner(load_config(SMOKE, [f"output_dir={tmp_path}", *overrides]))
        return runner._settings("generate", 1), runner._settings("judge", 1)

    assert generate_print() == generate_print("generate.vllm.tensor_parallel_size=8")
    vllm = generate_print("generate.backend=vllm")
    assert vllm != generate_print("generate.backend=vllm", "generate.vllm.max_logprobs=40")
    # memory settings decide how, not what: they do not touch the fingerprints
    assert vllm == generate_print(
        "generate.backend=vllm",
        "generate.vllm.gpu_memory_utilization=0.5",
        "generate.vllm.enforce_eager=true",
    )


# -- the backend against the hf backend ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("keep_stop_token", [True, False])
def test_greedy_generations_match_the_hf_backend(fake, ending_folder, keep_stop_token):
    folder, model, tokenizer = ending_folder
    fake.keep_stop_token = keep_stop_token  # vLLM may or may not return the stop token
    hf = HFBackend(model, tokenizer, batch_size=4)
    vllm = _vllm(folder, tokenizer)
    prompts = [hf.chat_prompt(text) for text in PROMPTS]
    params = SamplingParams(max_new_tokens=24)
    expected = hf.generate(prompts, params, [0] * 4)
    assert vllm.generate(prompts, params, [0] * 4) == expected
    assert any(g.finished for g in expected) and any(not g.finished for g in expected)


def test_each_request_carries_its_seed_and_the_sampling_settings(fake, tiny_folder):
    folder, _, tokenizer = tiny_folder
    backend = _vllm(folder, tokenizer)
    prompts = [backend.chat_prompt(text) for text in PROMPTS]
    params = SamplingParams(max_new_tokens=8, temperature=0.7, top_p=0.9)
    together = backend.generate(prompts, params, [11, 12, 13, 2**62 + 5])
    requests = fake.engines[0].requests
    assert [r.seed for _, r in requests] == [11, 12, 13, 2**62 + 5]
    for prompt, (ids, request) in zip(prompts, requests, strict=True):
        assert (request.temperature, request.top_p, request.max_tokens) == (0.7, 0.9, 8)
        assert request.stop_token_ids == [tokenizer.eos_token_id] and not request.detokenize
        # our tokenizer's ids of the rendered chat template, no special tokens added twice
        assert ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
    alone = [
        backend.generate([p], params, [s])[0]
        for p, s in zip(prompts[:3], [11, 12, 13], strict=True)
    ]
    assert alone == together[:3]
    assert backend.generate(prompts[:3], params, [21, 22, 23]) != together[:3]


def test_greedy_requests_turn_top_p_off(fake, tiny_folder):
    folder, _, tokenizer = tiny_folder
    backend = _vllm(folder, tokenizer)
    backend.generate([backend.chat_prompt("Hi")], SamplingParams(4, 0.0, 0.5), [3])
    request = fake.engines[0].requests[0][1]
    assert (request.temperature, request.top_p) == (0.0, 1.0)


def test_next_token_logprobs_are_the_hf_numbers_within_the_top_k(fake, tiny_folder):
    folder, model, tokenizer = tiny_folder
    hf = HFBackend(model, tokenizer, batch_size=4)
    vllm = _vllm(folder, tokenizer)
    prompts = [hf.chat_prompt(text, assistant_prefix="Score: ") for text in PROMPTS]
    everything = list(range(len(tokenizer)))
    reference = hf.next_token_logprobs(prompts, everything)
    table = vllm.next_token_logprobs(prompts, everything)
    _, request = fake.engines[0].requests[0]
    assert (request.max_tokens, request.temperature, request.top_p) == (1, 1.0, 1.0)
    assert request.logprobs == 20
    seen = torch.isfinite(table)
    counts = seen.sum(dim=1)
    assert int(counts.min()) >= 20 and int(counts.max()) <= 21  # the top 20 and the sampled
    torch.testing.assert_close(table[seen], reference[seen], rtol=1e-5, atol=1e-5)
    # what is missing is no likelier than the 20th most likely token: that bounds the error
    for row in range(len(prompts)):
        assert reference[row][~seen[row]].max() <= reference[row].topk(20).values.min() + 1e-6


@pytest.mark.slow
def test_the_logprob_judge_scores_as_hf_when_every_token_is_returned(fake, tiny_folder):
    from congrad.config.run import JudgeConfig
    from congrad.data.records import Completion
    from congrad.rounds.self_judge import judge_completions

    folder, model, tokenizer = tiny_folder
    completions = [
        Completion(f"p{i}#0", f"p{i}", "en", text, f"Answer {i}.", 0, 3, True)
        for i, text in enumerate(PROMPTS)
    ]
    judge = JudgeConfig(mode="logprob", min_mass=0.0, batch_size=2)
    exact = _vllm(folder, tokenizer, max_logprobs=len(tokenizer))
    by_vllm = judge_completions(exact, completions, config=judge, seed=0)
    by_hf = judge_completions(HFBackend(model, tokenizer), completions, config=judge, seed=0)
    assert [j.completion_id for j in by_vllm] == [j.completion_id for j in by_hf]
    for mine, theirs in zip(by_vllm, by_hf, strict=True):
        assert mine.score == pytest.approx(theirs.score, rel=1e-5)
        assert mine.outputs == theirs.outputs


def test_a_top_k_without_any_digit_is_unparsed_not_a_crash(fake, tiny_folder):
    from congrad.rounds.self_judge import expected_score, score_candidates

    folder, _, tokenizer = tiny_folder
    backend = _vllm(folder, tokenizer, max_logprobs=1)
    _, candidates = score_candidates(tokenizer)
    prompt = backend.chat_prompt("Hi", assistant_prefix="Score: ")
    row = backend.next_token_logprobs([prompt], [i for _, i in candidates])[0].tolist()
    assert all(math.isinf(x) for x in row)  # the random model's top-k holds no digit here
    assert expected_score(candidates, row, 0.0) == (None, 0.0)


def test_a_prompt_longer_than_the_context_is_a_clear_error(fake, tiny_folder):
    folder, _, tokenizer = tiny_folder
    backend = _vllm(folder, tokenizer, max_model_len=8)
    with pytest.raises(ValueError, match=r"generate\.vllm\.max_model_len=8"):
        backend.generate([backend.chat_prompt("a long prompt " * 5)], SamplingParams(4), [0])


def test_close_shuts_the_engine_down_and_is_idempotent(fake, tiny_folder):
    folder, _, tokenizer = tiny_folder
    backend = _vllm(folder, tokenizer)
    assert fake.live
    backend.close()
    backend.close()
    assert not fake.live and fake.cleanups == 1


def test_missing_vllm_is_a_clear_error(monkeypatch, tmp_path, capsys, tiny_folder):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    folder, _, tokenizer = tiny_folder
    with pytest.raises(VLLMUnavailable, match="pip install vllm"):
        _vllm(folder, tokenizer)
    out = tmp_path / "run"
    assert (
        main(["run", "--config", SMOKE, "--quiet", f"output_dir={out}", "generate.backend=vllm"])
        == 2
    )
    assert "generate.backend=vllm needs the vllm package" in capsys.readouterr().err
    assert not out.exists()  # refused before the run folder was made


# -- the loop --------------------------------------------------------------------------------


def _run(out: Path, *extra: str) -> int:
    return main(["run", "--config", SMOKE, "--quiet", f"output_dir={out}", *extra])


@pytest.fixture()
def watched(fake, monkeypatch):
    """Events of one run: engine starts (and whether an HF model was held), HF model
    loads and training starts (and whether an engine was live)."""
    import congrad.models.loading
    import congrad.rounds.train
    from congrad.pipeline.runner import Runner

    events: list[tuple] = []
    runners: list[Runner] = []
    init = Runner.__init__

    def remember(self, *args, **kwargs):
        init(self, *args, **kwargs)
        runners.append(self)

    monkeypatch.setattr(Runner, "__init__", remember)
    fake.on_build = lambda record: events.append(
        ("engine", record.model, all(r._model is None for r in runners))
    )
    load_model, train_round = congrad.models.loading.load_model, congrad.rounds.train.train_round

    def watched_load(config, path=None, **kwargs):
        events.append(("load", None if path is None else str(path), bool(fake.live)))
        return load_model(config, path, **kwargs)

    def watched_train(*args, **kwargs):
        events.append(("train", None, bool(fake.live)))
        return train_round(*args, **kwargs)

    monkeypatch.setattr(congrad.models.loading, "load_model", watched_load)
    monkeypatch.setattr(congrad.rounds.train, "train_round", watched_train)
    return events


@pytest.mark.slow
def test_a_smoke_run_and_evaluation_with_vllm_reload_each_rounds_weights(fake, watched, tmp_path):
    out = tmp_path / "run"
    settings = ("generate.vllm.tensor_parallel_size=2", "generate.vllm.gpu_memory_utilization=0.5")
    assert _run(out, "generate.backend=vllm", *settings) == 0
    seed_folder, round_1 = str(out / "round_0" / "model"), str(out / "round_1" / "model")
    # one engine per round, shared by generate and judge, built from M_{t-1}'s folder
    assert [record.model for record in fake.engines] == [seed_folder, round_1]
    assert not fake.live and fake.cleanups == 2
    for record in fake.engines:
        assert record.kwargs["tensor_parallel_size"] == 2
        assert record.kwargs["gpu_memory_utilization"] == 0.5
        assert record.kwargs["tokenizer"] == record.model
    # no HF model beside an engine, no engine beside an HF model or training
    assert all(held_nothing for kind, _, held_nothing in watched if kind == "engine")
    assert not any(live for kind, _, live in watched if kind in ("load", "train"))
    # the HF model is loaded only to train round 1 (M_0) and score round 2's pairs (M_1)
    assert [(k, path) for k, path, _ in watched if k == "load"] == [
        ("load", None),
        ("load", round_1),
    ]
    # every generation request carries its record's seed; judging reads top log-probs
    for round_index, record in ((1, fake.engines[0]), (2, fake.engines[1])):
        completions = read_jsonl(out / f"round_{round_index}" / "completions.jsonl")
        expected = sorted(
            stable_seed("generate", 0, round_index, c["prompt_id"], c["sample_index"])
            for c in completions
        )
        sampled = [params for _, params in record.requests if params.logprobs is None]
        assert sorted(p.seed for p in sampled) == expected
        judged = [params for _, params in record.requests if params.logprobs is not None]
        assert len(judged) == len(completions)
    # evaluation answers: an engine on M_0, then on M_1; the rest of evaluation on hf
    command = ["evaluate", "--config", SMOKE, "--quiet", "--round", "1", f"output_dir={out}"]
    assert main([*command, "generate.backend=vllm", *settings]) == 0
    assert [record.model for record in fake.engines[2:]] == [seed_folder, round_1]
    assert not fake.live and not any(live for kind, _, live in watched if kind == "load")
    assert read_jsonl(out / "round_0" / "eval_answers.jsonl")
    assert read_jsonl(out / "round_1" / "eval_answers.jsonl")


@pytest.mark.slow
def test_an_interrupted_vllm_generation_resumes_to_the_same_samples(fake, tmp_path, monkeypatch):
    from congrad.data.artifacts import PartialLog

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = ("generate.backend=vllm", "generate.batch_size=8")

    def stage(name: str, out: Path) -> int:
        return main(
            [name, "--config", SMOKE, "--quiet", "--round", "1", f"output_dir={out}", *args]
        )

    assert stage("prompts", whole) == stage("generate", whole) == stage("prompts", cut) == 0
    append, calls = PartialLog.append, []

    def crash_on_second_chunk(self, rows):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return append(self, rows)

    monkeypatch.setattr(PartialLog, "append", crash_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        stage("generate", cut)
    assert not fake.live  # shut down on the way out
    monkeypatch.setattr(PartialLog, "append", append)
    assert stage("generate", cut) == 0
    assert len(fake.engines[-1].requests) == 48 - 8  # resumed after the logged first chunk
    name = "round_1/completions.jsonl"
    assert (cut / name).read_bytes() == (whole / name).read_bytes()


def test_memory_settings_may_change_without_force_other_vllm_settings_may_not(tmp_path):
    from congrad.pipeline.runner import prepare_run_dir

    base = [f"output_dir={tmp_path}", "generate.backend=vllm"]
    prepare_run_dir(load_config(SMOKE, base))
    lowered = [
        *base,
        "generate.vllm.gpu_memory_utilization=0.7",
        "generate.vllm.enforce_eager=true",
    ]
    prepare_run_dir(load_config(SMOKE, lowered))
    with pytest.raises(ConfigError, match=r"generate\.vllm\.max_model_len"):
        prepare_run_dir(load_config(SMOKE, [*lowered, "generate.vllm.max_model_len=512"]))


def test_an_engine_is_refused_off_the_main_process(fake, monkeypatch, tmp_path):
    from congrad.pipeline.runner import Runner

    monkeypatch.setenv("RANK", "1")
    runner = Runner(load_config(SMOKE, [f"output_dir={tmp_path}", "generate.backend=vllm"]))
    with pytest.raises(VLLMUnavailable, match="main process only"):
        runner.engines.backend(runner, 0)
    assert not fake.engines

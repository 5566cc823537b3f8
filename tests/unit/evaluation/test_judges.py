"""Pairwise judge backends: the OpenAI-compatible client against a fake endpoint, the
local judge on the tiny random model, and the verdict cache that makes evaluation resume."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
import torch

from congrad.backends.generation import HFBackend
from congrad.data.artifacts import ArtifactError
from congrad.errors import CongradError
from congrad.evaluation.judges import (
    JudgeReply,
    JudgeSetupError,
    JudgeUnavailable,
    LocalJudge,
    OpenAIJudge,
    VerdictCache,
    cache_key,
    judge_prompts,
)
from congrad.evaluation.pairwise import (
    VERDICT_LABELS,
    Verdict,
    pairwise_prompt,
    parse_verdict,
    verdict_candidates,
)
from tests.conftest import REPO_ROOT
from tests.fakes.fake_openai import FakeOpenAIServer

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")

KEY_ENV = "CONGRAD_TEST_JUDGE_KEY"
KEY = "sk-test-SECRET-4b1d"


def label_for(prompt: str) -> str:
    return VERDICT_LABELS[int(prompt.rsplit(" ", 1)[-1]) % 3]


def respond(prompt: str) -> str:
    """The fake judge: a line of analysis, then the verdict the prompt's number picks."""
    return f"Both replies are relevant.\nVerdict: {label_for(prompt)}"


PROMPTS = [f"compare pair {i}" for i in range(6)]


@pytest.fixture()
def server():
    with FakeOpenAIServer(respond) as fake:
        yield fake


@pytest.fixture(autouse=True)
def judge_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def make_judge(server: FakeOpenAIServer, **overrides) -> OpenAIJudge:
    settings = {"model": "judge-model", "base_url": server.base_url, "api_key_env": KEY_ENV}
    settings |= {"max_retries": 0, "timeout": 5.0} | overrides
    return OpenAIJudge(**settings)


def test_openai_judge_replies_in_input_order_from_the_calling_thread(server):
    # Later prompts answer sooner, so replies arrive out of order.
    server.responder = lambda p: time.sleep(0.02 * (6 - int(p[-1]))) or respond(p)
    arrivals = []
    replies = make_judge(server, max_concurrency=6).complete(
        PROMPTS, lambda index, reply: arrivals.append((index, reply, threading.get_ident()))
    )
    assert [reply.verdict.choice for reply in replies] == [label_for(p) for p in PROMPTS]
    assert replies[0] == JudgeReply(respond(PROMPTS[0]), Verdict("A", None))
    assert sorted(index for index, _, _ in arrivals) == list(range(6))
    assert [index for index, _, _ in arrivals] != list(range(6))  # really out of order
    assert all(replies[index] == reply for index, reply, _ in arrivals)
    assert {thread for _, _, thread in arrivals} == {threading.get_ident()}


def test_openai_judge_sends_the_key_from_the_environment_and_keeps_it_out_of_sight(server):
    judge = make_judge(server)
    judge.complete(PROMPTS[:2], lambda index, reply: None)
    assert [request["authorization"] for request in server.requests] == [f"Bearer {KEY}"] * 2
    assert sorted(request["prompt"] for request in server.requests) == PROMPTS[:2]
    assert KEY not in repr(judge) and KEY not in json.dumps(judge.identity)
    assert judge.identity == {
        "backend": "openai",
        "base_url": server.base_url,
        "model": "judge-model",
        "mode": "text",
        "temperature": 0.0,
        "max_tokens": 512,
    }


@pytest.mark.parametrize("value", [None, "", "  \n"])
def test_openai_judge_without_a_key_names_the_variable(server, monkeypatch, value):
    if value is None:
        monkeypatch.delenv(KEY_ENV)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(JudgeSetupError, match=KEY_ENV):
        make_judge(server)
    assert issubclass(JudgeSetupError, CongradError)
    assert issubclass(JudgeUnavailable, CongradError)


def test_transient_server_errors_are_retried_by_the_sdk(server):
    server.fail_next(2, status=500)
    replies = make_judge(server, max_retries=2).complete(PROMPTS[:1], lambda i, r: None)
    assert replies[0].verdict == Verdict("A", None)
    assert len(server.requests) == 3  # two failures, then the answer


def test_rate_limits_are_retried_by_the_sdk(server):
    server.fail_next(1, status=429)
    replies = make_judge(server, max_retries=1).complete(PROMPTS[1:2], lambda i, r: None)
    assert replies[0].verdict == Verdict("B", None)
    assert len(server.requests) == 2


def test_permanent_failure_stops_sending_and_says_how_to_continue(server):
    server.fail_next(1000, status=503)
    judge = make_judge(server, max_retries=1, max_concurrency=1)
    with pytest.raises(JudgeUnavailable) as raised:
        judge.complete(PROMPTS[:3], lambda i, r: None)
    message = str(raised.value)
    assert server.base_url in message and "HTTP 503" in message and "0/3" in message
    assert "rerun the same command to continue: finished verdicts are cached" in message
    assert KEY not in message
    assert len(server.requests) == 2  # the first prompt and its retry; the rest never sent


def test_answers_before_a_failure_reach_on_reply(server):
    server.fail_next(1000, status=500, skip=2)
    delivered = {}
    with pytest.raises(JudgeUnavailable, match="2/5"):
        make_judge(server, max_concurrency=1).complete(PROMPTS[:5], delivered.__setitem__)
    assert sorted(delivered) == [0, 1]


def test_an_authentication_error_is_not_retried(server):
    server.fail_next(5, status=401)
    with pytest.raises(JudgeUnavailable, match="HTTP 401 AuthenticationError"):
        make_judge(server, max_retries=3).complete(PROMPTS[:1], lambda i, r: None)
    assert len(server.requests) == 1


def test_a_reply_slower_than_the_timeout_is_a_failure(server):
    server.delay = 1.0
    with pytest.raises(JudgeUnavailable, match="APITimeoutError"):
        make_judge(server, timeout=0.2, max_retries=0).complete(PROMPTS[:1], lambda i, r: None)
    assert len(server.requests) == 1


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_never_exceeds_the_limit(server, limit):
    server.delay = 0.03
    make_judge(server, max_concurrency=limit).complete(
        [f"compare pair {i}" for i in range(12)], lambda i, r: None
    )
    assert len(server.requests) == 12
    assert min(limit, 2) <= server.max_in_flight <= limit  # used in parallel, never past it


def test_a_reply_cut_at_max_tokens_parses_as_unfinished(server):
    server.responder = lambda prompt: "Reply A is better.\nVerdict: A"
    server.finish_reason = "length"
    (reply,) = make_judge(server).complete(PROMPTS[:1], lambda i, r: None)
    assert reply.verdict == Verdict(None, "truncated")


def test_a_failing_on_reply_stops_the_run_without_asking_the_rest(server):
    def on_reply(index: int, reply: JudgeReply) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        make_judge(server, max_concurrency=1).complete(PROMPTS, on_reply)
    assert len(server.requests) == 1


# ---- the cache and judge_prompts ----------------------------------------------------------


def test_a_second_run_is_answered_from_the_cache(server, tmp_path):
    judge = make_judge(server, max_concurrency=3)
    first, stats = judge_prompts(judge, PROMPTS, VerdictCache(tmp_path / "verdicts.jsonl"))
    assert (stats.calls, stats.cache_hits, len(server.requests)) == (6, 0, 6)
    again, stats = judge_prompts(judge, PROMPTS, VerdictCache(tmp_path / "verdicts.jsonl"))
    assert again == first
    assert (stats.calls, stats.cache_hits, len(server.requests)) == (0, 6, 6)


def test_the_cache_key_includes_the_judges_identity(server, tmp_path):
    cache = VerdictCache(tmp_path / "verdicts.jsonl")
    judge_prompts(make_judge(server), PROMPTS[:2], cache)
    _, stats = judge_prompts(make_judge(server, temperature=0.7), PROMPTS[:2], cache)
    assert (stats.calls, stats.cache_hits) == (2, 0)
    assert cache_key({"t": 0.0}, "p") != cache_key({"t": 0.7}, "p")


def test_identical_prompts_are_asked_once(server, tmp_path):
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[0]]
    replies, stats = judge_prompts(make_judge(server), prompts, None, progress=True)
    assert sorted(request["prompt"] for request in server.requests) == PROMPTS[:2]
    assert (stats.calls, stats.cache_hits) == (2, 0)
    assert replies[0] == replies[2] == replies[3] != replies[1]


def test_verdicts_answered_before_the_endpoint_fails_are_cached(server, tmp_path):
    path = tmp_path / "verdicts.jsonl"
    server.fail_next(1000, status=500, skip=2)
    judge = make_judge(server, max_concurrency=1)
    with pytest.raises(JudgeUnavailable, match="2/5"):
        judge_prompts(judge, PROMPTS[:5], VerdictCache(path))
    assert len(VerdictCache(path)) == 2
    server.clear_failures()  # the endpoint is back: rerun the same command
    replies, stats = judge_prompts(judge, PROMPTS[:5], VerdictCache(path))
    assert (stats.calls, stats.cache_hits) == (3, 2)
    assert [reply.verdict.choice for reply in replies] == [label_for(p) for p in PROMPTS[:5]]
    assert len(server.requests) == 3 + 3  # 2 answers and 1 failure, then only the 3 missing


def test_a_torn_last_line_is_dropped_and_cut(tmp_path):
    path = tmp_path / "verdicts.jsonl"
    cache = VerdictCache(path)
    parsed, failed = (
        JudgeReply("Verdict: B", Verdict("B", None)),
        JudgeReply("", Verdict(None, "empty")),
    )
    cache.put("k1", parsed)
    cache.put("k2", failed)
    intact = path.read_bytes()
    with open(path, "ab") as handle:
        handle.write(b'{"key": "k3", "raw": "Verd')  # the crash came mid-write
    reloaded = VerdictCache(path)
    assert (reloaded.get("k1"), reloaded.get("k2"), reloaded.get("k3")) == (parsed, failed, None)
    assert path.read_bytes() == intact
    reloaded.put("k3", parsed)
    assert len(VerdictCache(path)) == 3


def test_a_foreign_file_is_refused_not_overwritten(tmp_path):
    path = tmp_path / "verdicts.jsonl"
    path.write_text('{"prompt_id": "p1", "score": 4}\n')
    with pytest.raises(ArtifactError, match="line 1"):
        VerdictCache(path)


# ---- the local judge ----------------------------------------------------------------------

LOCAL_PROMPTS = [
    pairwise_prompt("Warum ist der Himmel blau?", "Streuung des Lichts.", "Weil."),
    pairwise_prompt("为什么天空是蓝色的？", "因为散射。", "不知道。"),
    pairwise_prompt("Why is the sky blue?", "Rayleigh scattering.", "It is."),
]


@pytest.fixture(scope="module")
def backend(tiny):
    model, tokenizer = tiny
    return HFBackend(model, tokenizer, batch_size=2)


def test_local_text_judge_records_why_a_reply_did_not_parse(backend):
    judge = LocalJudge(backend, name="tiny", mode="text", max_new_tokens=8)
    delivered = {}
    replies = judge.complete(LOCAL_PROMPTS, delivered.__setitem__)
    assert [delivered[index] for index in range(3)] == replies
    for reply in replies:  # a random model writes no verdict, and none is guessed
        assert reply.verdict.choice is None
        assert reply.verdict.reason in {"empty", "no_verdict", "truncated", "invalid_label"}
        assert parse_verdict(reply.raw).choice is None
    assert judge.identity == {
        "backend": "local",
        "name": "tiny",
        "mode": "text",
        "max_new_tokens": 8,
    }


def test_local_logprob_judge_matches_the_models_own_distribution(backend, tiny):
    model, tokenizer = tiny
    judge = LocalJudge(backend, name="tiny", mode="logprob", min_mass=0.0)
    replies = judge.complete(LOCAL_PROMPTS, lambda i, r: None)
    assert judge.complete(LOCAL_PROMPTS, lambda i, r: None) == replies  # deterministic
    prefix, candidates = verdict_candidates(tokenizer)
    for prompt, reply in zip(LOCAL_PROMPTS, replies, strict=True):
        # Reference: one unpadded forward, the full next-token distribution.
        ids = tokenizer(backend.chat_prompt(prompt, prefix), add_special_tokens=False)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids["input_ids"]])).logits[0, -1]
        probabilities = torch.softmax(logits.float(), dim=-1)
        expected = {label: 0.0 for label in VERDICT_LABELS}
        for label, token_id in candidates:
            expected[label] += float(probabilities[token_id])
        shown = dict(part[2:].split(")=") for part in reply.raw.split())
        assert {label: float(p) for label, p in shown.items()} == pytest.approx(expected, rel=1e-2)
        assert reply.verdict.choice == max(expected, key=expected.__getitem__)


def test_local_logprob_judge_with_little_label_mass_says_so(backend):
    judge = LocalJudge(backend, name="tiny", mode="logprob", min_mass=0.999)
    replies = judge.complete(LOCAL_PROMPTS, lambda i, r: None)
    assert {reply.verdict for reply in replies} == {Verdict(None, "low_mass")}
    assert judge.identity == {
        "backend": "local",
        "name": "tiny",
        "mode": "logprob",
        "min_mass": 0.999,
    }


class _LeansB:
    """The tiny backend, but the next-token distribution puts 0.9 on the letter B."""

    def __init__(self, backend: HFBackend) -> None:
        self.inner, self.tokenizer, self.asked = backend, backend.tokenizer, []

    def chat_prompt(self, user_message: str, assistant_prefix: str = "") -> str:
        return self.inner.chat_prompt(user_message, assistant_prefix)

    def next_token_logprobs(self, prompts, candidate_ids):
        self.asked.extend(prompts)
        row = [
            math.log(0.9 if self.tokenizer.decode([token_id]).strip() == "B" else 0.01)
            for token_id in candidate_ids
        ]
        return torch.tensor([row] * len(prompts))


def test_local_logprob_judge_reads_the_label_holding_the_mass(backend):
    leaning = _LeansB(backend)
    judge = LocalJudge(leaning, name="tiny", mode="logprob", batch_size=2)
    replies = judge.complete(LOCAL_PROMPTS, lambda i, r: None)
    assert [reply.verdict for reply in replies] == [Verdict("B", None)] * 3
    prefix, _ = verdict_candidates(backend.tokenizer)
    assert prefix in ("Verdict:", "Verdict: ")
    assert all(prompt.endswith(prefix) for prompt in leaning.asked) and len(leaning.asked) == 3


def test_verdict_candidates_decode_to_their_labels(tiny):
    _, tokenizer = tiny
    _, candidates = verdict_candidates(tokenizer)
    for label, token_id in candidates:
        text = tokenizer.decode([token_id]).strip()
        assert text == label if label in ("A", "B") else label.startswith(text.lower())
    assert {label for label, _ in candidates} == set(VERDICT_LABELS)


def test_an_unknown_local_mode_is_refused(backend):
    with pytest.raises(JudgeSetupError, match="mode"):
        LocalJudge(backend, name="tiny", mode="pairwise")  # type: ignore[arg-type]


class _RecordingBatchedJudge:
    """A batched judge that records the batches it was asked (as prompt tuples)."""

    def __init__(self, batch_size: int) -> None:
        self.identity = {"backend": "recording"}
        self.batch_size = batch_size
        self.batches: list[tuple[str, ...]] = []

    def complete(self, prompts, on_reply):
        from congrad.evaluation.judges import batches_by_length

        replies = {}
        for batch in batches_by_length(prompts, self.batch_size):
            self.batches.append(tuple(prompts[i] for i in batch))
            for i in batch:
                replies[i] = JudgeReply(f"Verdict: A ({prompts[i]})", parse_verdict("Verdict: A"))
                on_reply(i, replies[i])
        return [replies[i] for i in range(len(prompts))]


def test_a_resumed_batched_judge_sees_the_uninterrupted_runs_batches(tmp_path):
    prompts = [f"prompt {'x' * (n % 5)} {n}" for n in range(11)]
    uninterrupted = _RecordingBatchedJudge(3)
    judge_prompts(uninterrupted, prompts, VerdictCache(tmp_path / "a.jsonl"))
    # A crash left some replies cached, one batch only in part.
    cache = VerdictCache(tmp_path / "b.jsonl")
    first, second = uninterrupted.batches[0], uninterrupted.batches[1]
    for prompt in [*first, second[0]]:
        cache.put(
            cache_key(uninterrupted.identity, prompt),
            JudgeReply("cached", parse_verdict("Verdict: B")),
        )
    resumed = _RecordingBatchedJudge(3)
    replies, stats = judge_prompts(resumed, prompts, cache)
    assert resumed.batches == uninterrupted.batches[1:]  # whole batches, the same ones
    assert stats.calls == len(prompts) - 4 and stats.cache_hits == 4
    by_prompt = dict(zip(prompts, replies, strict=True))
    assert by_prompt[second[0]].raw == "cached"  # a cached reply is kept, not replaced
    assert len(VerdictCache(tmp_path / "b.jsonl")) == len(prompts)


def test_a_local_judge_folder_is_named_by_its_weights_so_replaced_weights_get_new_verdicts(
    tmp_path,
):
    import os

    from congrad.pipeline.eval_stages import judge_cache_name

    folder = tmp_path / "judge"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"first weights")
    os.utime(weights, ns=(1_000_000_000, 1_000_000_000))
    first = judge_cache_name(str(folder))
    assert first.startswith(f"{folder} (weights ") and first == judge_cache_name(str(folder))
    (folder / "config.json").write_text('{"edited": true}')  # not weights: same name
    assert judge_cache_name(str(folder)) == first
    weights.write_bytes(b"other weights")  # a model saved again into the same folder
    os.utime(weights, ns=(2_000_000_000, 2_000_000_000))
    assert judge_cache_name(str(folder)) != first
    # the cache key follows the name, so the old verdicts are not reused
    identity = {"backend": "local", "mode": "logprob"}
    old_key = cache_key({**identity, "name": first}, "prompt")
    assert cache_key({**identity, "name": judge_cache_name(str(folder))}, "prompt") != old_key
    # a hub id or a built-in name is not a path: kept as it is
    assert judge_cache_name("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    assert judge_cache_name("tiny-random") == "tiny-random"


@pytest.mark.parametrize("backend", ["hf", "self"])
def test_the_configured_local_judge_names_its_folders_weights(tmp_path, backend):
    # evaluate.judge.backend=hf (a judge model folder) or self (the seed model's folder):
    # what pairwise_judge builds carries the weights' stamps into its cache identity.
    from congrad.config.run import load_config
    from congrad.models.tiny import tiny_causal_lm
    from congrad.pipeline.eval_stages import judge_cache_name, pairwise_judge
    from congrad.pipeline.runner import Runner

    folder = tmp_path / "model"
    model, tokenizer = tiny_causal_lm(seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    overrides = [f"output_dir={tmp_path / 'run'}", f"evaluate.judge.backend={backend}"]
    if backend == "hf":
        overrides.append(f"evaluate.judge.model={folder}")
    else:
        overrides.append(f"model.name_or_path={folder}")
    config = load_config(SMOKE, overrides)
    judge = pairwise_judge(Runner(config, progress=False, log=lambda message: None))
    assert judge.identity["name"] == judge_cache_name(str(folder)) != str(folder)

"""Pairwise judge backends and the verdict cache that makes evaluation resumable.

In: pairwise prompts (:func:`congrad.evaluation.pairwise.pairwise_prompt`), a judge (an
OpenAI-compatible chat endpoint, or a local model) and a cache file. Out: one
:class:`JudgeReply` per prompt, in input order, and :class:`JudgeStats` (endpoint calls,
cache hits).

Every reply is appended to the :class:`VerdictCache` (JSONL, fsynced) the moment it
arrives, keyed by :func:`cache_key` of the judge's ``identity`` and the prompt, so a run
stopped by an unavailable endpoint or a crash is continued by rerunning the same command:
answered prompts are not asked again. Unparsed replies are cached too; they are the judge's
answer, and asking again at temperature 0 gives the same one.

Nothing here imports torch or openai at import time (the CLI imports this module's errors).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from congrad.data.artifacts import ArtifactError, PartialLog
from congrad.errors import CongradError
from congrad.evaluation.pairwise import (
    Verdict,
    parse_verdict,
    read_verdict_logprobs,
    render_probabilities,
    verdict_candidates,
)

if TYPE_CHECKING:
    from congrad.backends.generation import ModelBackend


@dataclass(frozen=True)
class JudgeReply:
    raw: str
    """The judge's text; in logprob mode the label probabilities, ``p(A)=0.61 p(B)=0.3 ...``."""
    verdict: Verdict


@dataclass(frozen=True)
class JudgeStats:
    calls: int
    """Distinct prompts sent to the judge (cache misses)."""
    cache_hits: int
    """Distinct prompts answered from the cache."""


class JudgeUnavailable(CongradError, RuntimeError):
    """The judge endpoint failed after the SDK's retries; the message says how many
    prompts were answered (and cached) and to rerun the same command."""


class JudgeSetupError(CongradError, ValueError):
    """The judge cannot be set up (e.g. its API key variable is unset); the message names
    the variable, never a key."""


OnReply = Callable[[int, JudgeReply], None]


class PairwiseJudge(Protocol):
    identity: dict[str, Any]
    """Everything that determines the replies, hashed into the cache key; never secrets."""

    @property
    def batch_size(self) -> int | None:
        """Prompts that share one forward (a local model: padding makes their floats depend on
        each other in the last bits), or None when every prompt is answered on its own."""
        ...

    def complete(self, prompts: Sequence[str], on_reply: OnReply) -> list[JudgeReply]:
        """One reply per prompt, in input order; ``on_reply(index, reply)`` is called from
        the calling thread as each reply arrives."""
        ...


class OpenAIJudge:
    """Any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp server, ...).

    The API key is read from ``os.environ[api_key_env]`` and handed to the client only:
    it is not in ``identity``, the repr or any message. Retries are the openai SDK's own
    (``openai/_base_client.py``): connection errors, timeouts (``timeout`` seconds per
    attempt) and HTTP 408, 409, 429 and 5xx are retried up to ``max_retries`` times,
    after exponential back-off (0.5 s doubling to at most 8 s, less up to 25% jitter) or
    the server's ``Retry-After`` (a wait over 120 s is not retried; an ``x-should-retry``
    header overrides all this); other errors (400, 401, 403, 404, 422) are not retried.
    At most ``max_concurrency`` requests are outstanding; when one still fails, those in
    flight are finished (and delivered), no more are sent, and :class:`JudgeUnavailable`
    is raised. A reply cut at ``max_tokens`` (``finish_reason == "length"``) is parsed
    with ``finished=False``.
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 60.0,
        temperature: float = 0.0,
        max_tokens: int = 512,
    ) -> None:
        if max_concurrency < 1 or max_retries < 0 or timeout <= 0 or max_tokens < 1:
            raise JudgeSetupError(
                "judge settings out of range: need max_concurrency >= 1, max_retries >= 0, "
                "timeout > 0 and max_tokens >= 1"
            )
        # Stripped: a key pasted from a file often ends in a newline, illegal in a header.
        api_key = os.environ.get(api_key_env, "").strip()
        if not api_key:
            raise JudgeSetupError(
                f"the judge's API key is read from the environment variable {api_key_env}, "
                f"which is unset or empty: export it (for a local server that checks no "
                f"key, any value will do)"
            )
        import openai

        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=timeout
        )
        self.base_url = str(self._client.base_url).rstrip("/")  # None: OPENAI_BASE_URL or OpenAI
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        self.batch_size: int | None = None  # each request stands alone
        self.max_concurrency, self.max_retries = max_concurrency, max_retries
        self.identity: dict[str, Any] = {
            "backend": "openai",
            "base_url": self.base_url,
            "model": model,
            "mode": "text",
            "temperature": temperature,
            "max_tokens": max_tokens,
        }

    def __repr__(self) -> str:
        return f"OpenAIJudge({self.identity})"

    def _ask(self, prompt: str) -> JudgeReply:
        completion = self._client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": prompt}],
            temperature=self.temperature,
            max_tokens=self.max_tokens,
        )
        if not completion.choices:
            return JudgeReply(raw="", verdict=Verdict(None, "empty"))
        choice = completion.choices[0]
        text = choice.message.content or ""
        return JudgeReply(text, parse_verdict(text, finished=choice.finish_reason != "length"))

    def complete(self, prompts: Sequence[str], on_reply: OnReply) -> list[JudgeReply]:
        import openai

        replies: list[JudgeReply | None] = [None] * len(prompts)
        failure: BaseException | None = None
        queue = iter(enumerate(prompts))
        running: dict[Future[JudgeReply], int] = {}
        pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="congrad-judge")

        def send_next() -> None:  # submitted one at a time, so a failure stops all sending
            for index, prompt in queue:
                running[pool.submit(self._ask, prompt)] = index
                return

        try:
            for _ in range(self.max_concurrency):
                send_next()
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    index = running.pop(future)
                    error = future.exception()
                    if error is None:
                        replies[index] = reply = future.result()
                        on_reply(index, reply)
                    elif failure is None:  # the first failure; what is in flight still arrives
                        failure = error
                    if failure is None:
                        send_next()
        finally:
            pool.shutdown(wait=True)
        if failure is None:
            return [reply for reply in replies if reply is not None]
        if not isinstance(failure, openai.APIError):
            raise failure  # a bug, not the endpoint: keep its traceback
        done = sum(reply is not None for reply in replies)
        raise JudgeUnavailable(
            f"judge endpoint {self.base_url} (model {self.model!r}) failed: "
            f"{_describe(failure, self.max_retries)}; {done}/{len(prompts)} prompts were "
            f"answered before it stopped; rerun the same command to continue: finished "
            f"verdicts are cached"
        ) from failure


def _describe(error: Exception, max_retries: int) -> str:
    """The error's type and HTTP status, never its message (a 401's can echo the key)."""
    import openai

    name = type(error).__name__
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code} {name} (408, 409, 429 and 5xx retried {max_retries}x)"
    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return f"{name} (retried {max_retries}x)"
    return name


class LocalJudge:
    """A local model behind a :class:`~congrad.backends.generation.ModelBackend`, in batches.

    ``text``: greedy generation of up to ``max_new_tokens``, read by
    :func:`~congrad.evaluation.pairwise.parse_verdict` (``finished`` from the backend). ``logprob``:
    the answer is opened with the :func:`verdict_candidates` prefix and the verdict read
    from the next-token distribution over the labels (:func:`read_verdict_logprobs`).
    ``batch_size`` prompts per backend call (our addition to the interface: each batch's
    replies reach ``on_reply``, and so the cache, before the next batch starts). ``name``
    must identify the weights (model and round): the cache key trusts it. For a model
    folder, :func:`congrad.pipeline.eval_stages.judge_cache_name` adds its weight files' stamps.
    """

    def __init__(
        self,
        backend: ModelBackend,
        *,
        name: str,
        mode: Literal["text", "logprob"],
        max_new_tokens: int = 256,
        min_mass: float = 0.05,
        batch_size: int = 8,
    ) -> None:
        if mode not in ("text", "logprob"):
            raise JudgeSetupError(f"unknown local judge mode {mode!r}; expected text or logprob")
        self.backend, self.mode, self.batch_size = backend, mode, batch_size
        self.max_new_tokens, self.min_mass = max_new_tokens, min_mass
        setting = {"max_new_tokens": max_new_tokens} if mode == "text" else {"min_mass": min_mass}
        self.identity: dict[str, Any] = {"backend": "local", "name": name, "mode": mode, **setting}
        self._candidates: tuple[str, tuple[tuple[str, int], ...]] | None = None

    def complete(self, prompts: Sequence[str], on_reply: OnReply) -> list[JudgeReply]:
        ask = self._generate if self.mode == "text" else self._read_logprobs
        replies: dict[int, JudgeReply] = {}
        for batch in batches_by_length(prompts, self.batch_size):
            for index, reply in zip(batch, ask([prompts[i] for i in batch]), strict=True):
                replies[index] = reply
                on_reply(index, reply)
        return [replies[index] for index in range(len(prompts))]

    def _generate(self, prompts: Sequence[str]) -> list[JudgeReply]:
        from congrad.backends.generation import SamplingParams

        params = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0.0)
        chat = [self.backend.chat_prompt(prompt) for prompt in prompts]
        generations = self.backend.generate(chat, params, [0] * len(chat))  # greedy: no seed
        return [JudgeReply(g.text, parse_verdict(g.text, finished=g.finished)) for g in generations]

    def _read_logprobs(self, prompts: Sequence[str]) -> list[JudgeReply]:
        if self._candidates is None:  # a vocabulary scan: once per judge
            self._candidates = verdict_candidates(self.backend.tokenizer)
        prefix, candidates = self._candidates
        chat = [self.backend.chat_prompt(prompt, assistant_prefix=prefix) for prompt in prompts]
        rows = self.backend.next_token_logprobs(chat, [token_id for _, token_id in candidates])
        labels = [label for label, _ in candidates]
        replies = []
        for row in rows.tolist():
            verdict, probabilities = read_verdict_logprobs(labels, row, min_mass=self.min_mass)
            replies.append(JudgeReply(render_probabilities(probabilities), verdict))
        return replies


def batches_by_length(prompts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of ``prompts`` sorted by length (less padding), cut into batches.

    >>> batches_by_length(["ccc", "a", "bb"], 2)
    [[1, 2], [0]]
    """
    order = sorted(range(len(prompts)), key=lambda index: (len(prompts[index]), index))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def cache_key(identity: dict[str, Any], prompt: str) -> str:
    """SHA-256 hex of the canonical JSON of ``identity``, a newline and the prompt.

    >>> key = cache_key({"model": "m", "backend": "openai"}, "Hi")
    >>> key == cache_key({"backend": "openai", "model": "m"}, "Hi"), len(key)
    (True, 64)
    """
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{canonical}\n{prompt}".encode()).hexdigest()


class VerdictCache:
    """Append-only JSONL of ``{"key", "raw", "choice", "reason"}`` rows, one per reply.

    Existing rows are loaded at construction; a torn last line (a crash mid-write) is
    dropped and cut from the file (:class:`~congrad.data.artifacts.PartialLog`). ``put``
    appends and fsyncs one row. One writer at a time: not for concurrent processes.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._log = PartialLog(self.path)
        self._replies: dict[str, JudgeReply] = {}
        for number, row in enumerate(self._log.done, start=1):
            try:
                verdict = Verdict(row["choice"], row["reason"])
                self._replies[str(row["key"])] = JudgeReply(str(row["raw"]), verdict)
            except (KeyError, TypeError, ValueError):
                raise ArtifactError(
                    f"{self.path}, line {number}: not a verdict cache row (expected key, "
                    f"raw, choice and reason); move the file away to start afresh"
                ) from None
        self._log.done.clear()  # the replies are held here; no second copy

    def __len__(self) -> int:
        return len(self._replies)

    def get(self, key: str) -> JudgeReply | None:
        return self._replies.get(key)

    def put(self, key: str, reply: JudgeReply) -> None:
        verdict = reply.verdict
        row = {"key": key, "raw": reply.raw, "choice": verdict.choice, "reason": verdict.reason}
        self._log.append([row])
        self._log.done.clear()
        self._replies[key] = reply


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[], None]]:
    """Yield ``advance()``: one step of a rich progress bar, or nothing when disabled."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task("judging pairs", total=total)
        yield lambda: bar.advance(task)


def judge_prompts(
    judge: PairwiseJudge,
    prompts: Sequence[str],
    cache: VerdictCache | None,
    *,
    progress: bool = False,
) -> tuple[list[JudgeReply], JudgeStats]:
    """One reply per prompt, in input order, asking the judge only what is not cached.

    Identical prompts are asked once. Each reply is written to ``cache`` as it arrives, so
    when ``judge.complete`` raises :class:`JudgeUnavailable` the answered prompts are
    already cached and a rerun asks only the rest. A rich progress bar over the asked
    prompts when ``progress``.
    """
    unique = list(dict.fromkeys(prompts))
    keys = {prompt: cache_key(judge.identity, prompt) for prompt in unique}
    answered: dict[str, JudgeReply] = {}
    if cache is not None:
        for prompt in unique:
            hit = cache.get(keys[prompt])
            if hit is not None:
                answered[prompt] = hit
    missing = [prompt for prompt in unique if prompt not in answered]
    stats = JudgeStats(calls=len(missing), cache_hits=len(unique) - len(missing))
    if missing and judge.batch_size is not None:
        # A batched judge gets whole batches cut from ALL the prompts, as an uninterrupted
        # run would batch them, so a resumed run's floats (and verdicts) are the same; a
        # batch partly cached (a crash between two of its replies) is asked whole again.
        # Only the missing prompts' replies are cached and counted as calls.
        wanted = set(missing)
        missing = [
            unique[index]
            for batch in batches_by_length(unique, judge.batch_size)
            if any(unique[index] in wanted for index in batch)
            for index in batch
        ]
    if missing:
        with _progress_bar(progress, stats.calls) as advance:

            def on_reply(index: int, reply: JudgeReply) -> None:
                prompt = missing[index]
                if prompt not in answered:
                    if cache is not None:
                        cache.put(keys[prompt], reply)
                    advance()

            replies = judge.complete(missing, on_reply)
            for prompt, reply in zip(missing, replies, strict=True):
                answered.setdefault(prompt, reply)  # a cached reply stays as it was
    return [answered[prompt] for prompt in prompts], stats

"""A fake ``vllm`` package for CPU tests: vLLM's offline API, computed by a transformers model.

In: :func:`install` (a pytest ``monkeypatch``) puts module objects ``vllm``, ``vllm.inputs``
and ``vllm.distributed`` into ``sys.modules``. Out: a :class:`FakeVLLM` recording every
engine built (constructor arguments), every request (prompt ids, sampling parameters) and
every shutdown.

What it copies of vLLM's documented API, so a backend written against the fake is
written against vLLM:

* ``LLM(model, tokenizer=None, tensor_parallel_size=1, dtype="auto", seed=0,
  gpu_memory_utilization=0.9, max_model_len=None, enforce_eager=False,
  trust_remote_code=False, max_logprobs=20, **kwargs)``; the weights are loaded from
  the ``model`` folder (a missing folder fails as vLLM's loader does).
* ``SamplingParams`` takes only vLLM's keyword names (others are a ``TypeError``, as the
  real msgspec struct raises) with vLLM's defaults (``temperature=1.0``, ``max_tokens=16``).
* ``LLM.generate(prompts, sampling_params, use_tqdm=...)``: ``prompts`` as
  ``TokensPrompt`` dicts, one ``SamplingParams`` or one per prompt; returns
  ``RequestOutput`` objects in input order, each with ``.outputs[0]`` a
  ``CompletionOutput`` (``token_ids``, ``text``, ``finish_reason`` ``"stop"`` or
  ``"length"``, ``logprobs``: one ``{token id: Logprob}`` per generated token).
* Sampling: per request, a generator seeded with the request's ``seed`` (the engine
  seed when None) draws after temperature and top-p; temperature 0 is greedy. A stop
  token (``stop_token_ids`` or the model's EOS) ends the request with ``"stop"`` and stays
  in ``token_ids``, as vLLM keeps an EOS. ``detokenize=False`` leaves ``text`` empty.
* Log-probs: vLLM V1's default ``raw_logprobs``: log-softmax of the raw logits over the
  whole vocabulary, the top ``logprobs`` tokens plus the sampled one; asking for more
  than the engine's ``max_logprobs`` is a ``ValueError``, as in vLLM.
* One GPU: building an engine while another is alive is a ``RuntimeError`` (a real
  second engine would find no free memory). ``llm.llm_engine.engine_core.shutdown()``
  frees it (vLLM V1's engine core); ``vllm.distributed.cleanup_dist_env_and_memory``
  is recorded.
"""

from __future__ import annotations

import importlib.machinery
import inspect
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool = True


class SamplingParams:
    """vLLM's sampling parameters, keyword-only, with vLLM's defaults."""

    def __init__(
        self,
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        seed: int | None = None,
        max_tokens: int | None = 16,
        logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        stop_token_ids: list[int] | None = None,
        ignore_eos: bool = False,
        skip_special_tokens: bool = True,
        detokenize: bool = True,
        repetition_penalty: float = 1.0,
    ) -> None:
        if n != 1:
            raise NotImplementedError("the fake samples one sequence per request")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.n, self.temperature, self.top_p, self.top_k = n, temperature, top_p, top_k
        self.min_p, self.seed, self.max_tokens, self.logprobs = min_p, seed, max_tokens, logprobs
        self.prompt_logprobs, self.stop_token_ids = prompt_logprobs, list(stop_token_ids or [])
        self.ignore_eos, self.skip_special_tokens = ignore_eos, skip_special_tokens
        self.detokenize, self.repetition_penalty = detokenize, repetition_penalty


@dataclass
class EngineRecord:
    """One engine the fake built: its arguments, requests, and whether it was shut down."""

    model: str
    kwargs: dict[str, Any]
    requests: list[tuple[list[int], SamplingParams]] = field(default_factory=list)
    shut_down: bool = False


class FakeVLLM:
    """The state behind the installed modules (one fake GPU)."""

    def __init__(self) -> None:
        self.engines: list[EngineRecord] = []
        self.cleanups = 0
        self.on_build: Callable[[EngineRecord], None] | None = None
        self.keep_stop_token = True

    @property
    def live(self) -> list[EngineRecord]:
        return [record for record in self.engines if not record.shut_down]

    def modules(self) -> dict[str, types.ModuleType]:
        state = self

        class _EngineCore:
            def __init__(self, record: EngineRecord) -> None:
                self.record = record

            def shutdown(self) -> None:
                self.record.shut_down = True

        class LLM:
            def __init__(
                self,
                model: str,
                *,
                tokenizer: str | None = None,
                tensor_parallel_size: int = 1,
                dtype: str = "auto",
                seed: int = 0,
                gpu_memory_utilization: float = 0.9,
                max_model_len: int | None = None,
                enforce_eager: bool = False,
                trust_remote_code: bool = False,
                max_logprobs: int = 20,
                **kwargs: Any,
            ) -> None:
                from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

                if state.live:
                    raise RuntimeError("fake GPU: another vLLM engine still holds the memory")
                record = EngineRecord(
                    model,
                    dict(
                        tokenizer=tokenizer,
                        tensor_parallel_size=tensor_parallel_size,
                        dtype=dtype,
                        seed=seed,
                        gpu_memory_utilization=gpu_memory_utilization,
                        max_model_len=max_model_len,
                        enforce_eager=enforce_eager,
                        trust_remote_code=trust_remote_code,
                        max_logprobs=max_logprobs,
                        **kwargs,
                    ),
                )
                self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
                self.model.eval()
                self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
                parameters = inspect.signature(self.model.forward).parameters
                self.cache_name = "cache" if "cache" in parameters else "past_key_values"
                eos = GenerationConfig.from_pretrained(model).eos_token_id
                self.eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
                self.seed, self.max_logprobs, self.record = seed, max_logprobs, record
                self.llm_engine = types.SimpleNamespace(engine_core=_EngineCore(record))
                state.engines.append(record)
                if state.on_build is not None:
                    state.on_build(record)

            def generate(
                self, prompts: Any, sampling_params: Any = None, *, use_tqdm: bool = True
            ) -> list[RequestOutput]:
                if self.record.shut_down:
                    raise RuntimeError("the engine was shut down")
                if not isinstance(sampling_params, list):
                    sampling_params = [sampling_params or SamplingParams()] * len(prompts)
                if len(sampling_params) != len(prompts):
                    raise ValueError("one SamplingParams per prompt, or a single one")
                return [
                    self._one(str(index), dict(prompt)["prompt_token_ids"], params)
                    for index, (prompt, params) in enumerate(
                        zip(prompts, sampling_params, strict=True)
                    )
                ]

            @torch.no_grad()
            def _one(self, request_id: str, ids: list[int], params: SamplingParams) -> Any:
                if params.logprobs is not None and params.logprobs > self.max_logprobs:
                    raise ValueError(
                        f"Requested sample logprobs of {params.logprobs}, which is greater "
                        f"than max allowed: {self.max_logprobs}"
                    )
                self.record.requests.append((list(ids), params))
                seed = self.seed if params.seed is None else params.seed
                generator = torch.Generator().manual_seed(int(seed))
                stops = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_ids)
                tokens, logprobs, finish = list(ids), [], "length"
                step, cache = torch.tensor([ids]), None  # a KV cache, as vLLM's paged one
                for _ in range(params.max_tokens or 16):
                    out = self.model(input_ids=step, use_cache=True, **{self.cache_name: cache})
                    logits, cache = out.logits[0, -1].float(), out.past_key_values
                    raw = torch.log_softmax(logits, dim=-1)
                    token = _draw(logits, params, generator)
                    if params.logprobs is not None:
                        logprobs.append(_top(raw, params.logprobs, token))
                    tokens.append(token)
                    step = torch.tensor([[token]])
                    if token in stops:
                        finish = "stop"
                        break
                generated = tokens[len(ids) :]
                if finish == "stop" and not state.keep_stop_token:
                    generated = generated[:-1]
                return RequestOutput(
                    request_id=request_id,
                    prompt=None,
                    prompt_token_ids=list(ids),
                    prompt_logprobs=None,
                    outputs=[
                        CompletionOutput(
                            index=0,
                            text=self._text(generated, params),
                            token_ids=generated,
                            cumulative_logprob=None,
                            logprobs=logprobs if params.logprobs is not None else None,
                            finish_reason=finish,
                        )
                    ],
                )

            def _text(self, ids: list[int], params: SamplingParams) -> str:
                if not params.detokenize:
                    return ""
                return str(
                    self.tokenizer.decode(ids, skip_special_tokens=params.skip_special_tokens)
                )

        def cleanup_dist_env_and_memory(shutdown_ray: bool = False) -> None:
            state.cleanups += 1

        vllm = types.ModuleType("vllm")
        vllm.LLM = LLM  # type: ignore[attr-defined]
        vllm.SamplingParams = SamplingParams  # type: ignore[attr-defined]
        inputs = types.ModuleType("vllm.inputs")
        inputs.TokensPrompt = lambda **fields: dict(fields)  # type: ignore[attr-defined]
        distributed = types.ModuleType("vllm.distributed")
        distributed.cleanup_dist_env_and_memory = cleanup_dist_env_and_memory  # type: ignore[attr-defined]
        vllm.inputs, vllm.distributed = inputs, distributed  # type: ignore[attr-defined]
        modules = {"vllm": vllm, "vllm.inputs": inputs, "vllm.distributed": distributed}
        for name, module in modules.items():
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        return modules


def _draw(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """vLLM's order: greedy at temperature 0, else temperature, then top-p, then a draw."""
    if params.temperature < 1e-5:
        return int(logits.argmax())
    probabilities = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        ordered, order = probabilities.sort(descending=True)
        drop = ordered.cumsum(0) - ordered > params.top_p
        ordered[drop] = 0.0
        probabilities = torch.zeros_like(probabilities).scatter(0, order, ordered)
    return int(torch.multinomial(probabilities, 1, generator=generator))


def _top(raw: torch.Tensor, count: int, sampled: int) -> dict[int, Logprob]:
    values, ids = raw.topk(min(count, raw.numel()))
    top = {
        int(i): Logprob(float(v), rank=r + 1)
        for r, (v, i) in enumerate(zip(values, ids, strict=True))
    }
    if sampled not in top:
        rank = int((raw > raw[sampled]).sum()) + 1
        top[sampled] = Logprob(float(raw[sampled]), rank=rank)
    return top


def install(monkeypatch: Any) -> FakeVLLM:
    """Put a fresh fake ``vllm`` into ``sys.modules`` for one test; returns its state."""
    fake = FakeVLLM()
    for name, module in fake.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    return fake

"""Model access for generation and judging, behind one protocol.

In: chat-rendered prompt texts and sampling parameters, with one seed per record. Out:
generated texts (:class:`Generation`) or log-probabilities of candidate next tokens.

Backends: ``hf`` (transformers ``generate``, batched, left padding; the default) and
``vllm`` (GPU, imported lazily). Sampling in the ``hf`` backend is done per row with the
row's own seeded generator (a logits processor draws the token and the decoder then
takes it greedily), so a record's sample depends on its seed alone: not on batch size,
batch neighbours or the global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    """``temperature = 0`` means greedy decoding."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass(frozen=True)
class Generation:
    text: str
    num_tokens: int
    finished: bool
    """True when the model ended the turn itself (EOS), False when cut at max_new_tokens."""


class ModelBackend(Protocol):
    """What the generate and judge stages need from a model."""

    tokenizer: Any

    def chat_prompt(self, user_message: str, assistant_prefix: str = "") -> str:
        """The chat-template text for one user turn, opened for the assistant's answer,
        optionally followed by the beginning of that answer."""
        ...

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, seeds: Sequence[int]
    ) -> list[Generation]:
        """One generation per chat-rendered prompt, sampled with that record's seed."""
        ...

    def next_token_logprobs(
        self, prompts: Sequence[str], candidate_ids: Sequence[int]
    ) -> torch.Tensor:
        """``(N, C)`` log-probabilities of each candidate token id as the next token."""
        ...


def render_chat(tokenizer: Any, user_message: str, assistant_prefix: str = "") -> str:
    """The tokenizer's chat template for one user turn plus the generation prompt
    (plain ``message + newline`` for a tokenizer without a template)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = f"{user_message}\n"
    return str(text) + assistant_prefix


def eos_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """The ids that end a turn: the tokenizer's EOS and the generation config's (a chat
    model often ends turns with a token other than its tokenizer's EOS), sorted."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    return sorted(ids)


def decode_generation(
    tokenizer: Any, row: Sequence[int], eos_ids: Sequence[int], stopped: bool = False
) -> Generation:
    """A :class:`Generation` from generated token ids: cut at the first EOS (which is not
    counted), special tokens dropped, whitespace stripped. ``stopped``: the engine said
    the turn ended even though no EOS id is in ``row`` (vLLM may leave the stop token out)."""
    row, finished = list(row), stopped
    for position, token in enumerate(row):
        if token in eos_ids:
            row, finished = row[:position], True
            break
    text = tokenizer.decode(row, skip_special_tokens=True).strip()
    return Generation(text=text, num_tokens=len(row), finished=finished)


class _SeededSampler:
    """A logits processor that draws each row's next token with that row's generator,
    after temperature and top-p, and leaves only that token finite."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(scores.float() / self.temperature, dim=-1).cpu()
        if self.top_p < 1.0:
            sorted_probs, order = probabilities.sort(dim=-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always the top token).
            outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= self.top_p
            sorted_probs[outside] = 0.0
            probabilities = torch.zeros_like(probabilities).scatter(-1, order, sorted_probs)
        chosen = torch.stack(
            [
                torch.multinomial(row, 1, generator=generator)[0]
                for row, generator in zip(probabilities, self.generators, strict=True)
            ]
        ).to(scores.device)
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(-1, chosen[:, None], 0.0)
        return forced


class HFBackend:
    """transformers model and tokenizer; batches of ``batch_size`` prompts, left padded."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def chat_prompt(self, user_message: str, assistant_prefix: str = "") -> str:
        return render_chat(self.tokenizer, user_message, assistant_prefix)

    def _left_padded(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), int(self.pad_id), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[index, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[str], params: SamplingParams, seeds: Sequence[int]
    ) -> list[Generation]:
        if len(prompts) != len(seeds):
            raise ValueError("generate needs one seed per prompt")
        from transformers import LogitsProcessorList

        self.model.eval()
        eos_ids = self._eos_ids()
        outputs: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            ids, mask = self._left_padded(batch)
            processors = LogitsProcessorList()
            if params.temperature > 0:
                processors.append(
                    _SeededSampler(
                        seeds[start : start + self.batch_size], params.temperature, params.top_p
                    )
                )
            generated = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=params.max_new_tokens,
                do_sample=False,
                logits_processor=processors,
                pad_token_id=int(self.pad_id),
                eos_token_id=eos_ids,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            for row in generated[:, ids.shape[1] :].tolist():
                outputs.append(self._decode(row, eos_ids))
        return outputs

    def _eos_ids(self) -> list[int]:
        return eos_token_ids(self.tokenizer, self.model.generation_config)

    def _decode(self, row: list[int], eos_ids: list[int]) -> Generation:
        return decode_generation(self.tokenizer, row, eos_ids)

    @torch.no_grad()
    def next_token_logprobs(
        self, prompts: Sequence[str], candidate_ids: Sequence[int]
    ) -> torch.Tensor:
        self.model.eval()
        rows = []
        candidates = torch.tensor(list(candidate_ids), dtype=torch.long)
        for start in range(0, len(prompts), self.batch_size):
            ids, mask = self._left_padded(prompts[start : start + self.batch_size])
            # Only the last position's logits are needed: logits_to_keep=1 skips the
            # vocabulary projection (and its memory) everywhere else.
            logits = self.model(
                input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1
            ).logits
            last = torch.log_softmax(logits[:, -1, :].float(), dim=-1).cpu()
            rows.append(last[:, candidates])
        return torch.cat(rows) if rows else torch.empty(0, len(candidates))


class VLLMBackend:
    """A vLLM engine serving one model folder (GPU; ``vllm`` imported here, not at import).

    Prompts go in as token ids from our own tokenizer (``TokensPrompt``), so the chat
    template is rendered exactly as in the ``hf`` backend, and the generated ids come back
    decoded by that tokenizer with the ``hf`` backend's rule (:func:`decode_generation`),
    so both backends' texts mean the same. Every request carries its record's seed
    (``SamplingParams(seed=...)``). Log-probabilities: see :meth:`next_token_logprobs`.
    :meth:`close` shuts the engine down and frees its GPU memory
    (:func:`congrad.backends.vllm_engine.shutdown_engine`). Built by
    :class:`congrad.backends.vllm_engine.EngineCache`; tested against a fake ``vllm`` module
    (tests/fakes/fake_vllm.py), never against a real GPU engine in this project's CI.
    """

    def __init__(
        self,
        model_path: str,
        tokenizer: Any,
        *,
        engine_args: dict[str, Any],
        eos_ids: Sequence[int],
    ) -> None:
        from congrad.backends.vllm_engine import distributed_is_set_up, import_vllm

        self._vllm = import_vllm()
        from vllm.inputs import TokensPrompt  # a TypedDict: {"prompt_token_ids": [...]}

        self._tokens_prompt = TokensPrompt
        self.tokenizer, self.model_path = tokenizer, model_path
        self.eos_ids = sorted({int(i) for i in eos_ids})
        self.max_logprobs = int(engine_args.get("max_logprobs", 20))
        self.max_model_len = engine_args.get("max_model_len")
        self._owns_distributed = not distributed_is_set_up()
        self.engine: Any = self._vllm.LLM(model=model_path, tokenizer=model_path, **engine_args)

    def chat_prompt(self, user_message: str, assistant_prefix: str = "") -> str:
        return render_chat(self.tokenizer, user_message, assistant_prefix)

    def _token_prompts(self, prompts: Sequence[str]) -> list[Any]:
        token_prompts = []
        for prompt in prompts:
            ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if self.max_model_len is not None and len(ids) >= self.max_model_len:
                raise ValueError(
                    f"a prompt of {len(ids)} tokens does not fit the vLLM context of "
                    f"generate.vllm.max_model_len={self.max_model_len}: raise it (or unset "
                    "it for the model's own length)"
                )
            token_prompts.append(self._tokens_prompt(prompt_token_ids=ids))
        return token_prompts

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, seeds: Sequence[int]
    ) -> list[Generation]:
        if len(prompts) != len(seeds):
            raise ValueError("generate needs one seed per prompt")
        sampled = params.temperature > 0
        requests = [
            self._vllm.SamplingParams(
                n=1,
                max_tokens=params.max_new_tokens,
                temperature=params.temperature if sampled else 0.0,
                top_p=params.top_p if sampled else 1.0,
                seed=int(seed),  # stable_seed: 63 bits, fits vLLM's int64
                stop_token_ids=list(self.eos_ids),
                detokenize=False,  # decoded below with our tokenizer, as the hf backend does
            )
            for seed in seeds
        ]
        outputs = self.engine.generate(self._token_prompts(prompts), requests, use_tqdm=False)
        results = []
        for output in outputs:  # LLM.generate returns outputs in the order of its inputs
            best = output.outputs[0]
            stopped = best.finish_reason == "stop"
            results.append(decode_generation(self.tokenizer, best.token_ids, self.eos_ids, stopped))
        return results

    def next_token_logprobs(
        self, prompts: Sequence[str], candidate_ids: Sequence[int]
    ) -> torch.Tensor:
        """``(N, C)`` next-token log-probs, log-softmax over the full vocabulary as in the
        ``hf`` backend, read from vLLM's top ``max_logprobs`` of one sampled token.

        The request samples at temperature 1 with no top-p/top-k and no penalties, so the
        log-probs are the model's raw ones whichever way vLLM reports them (vLLM V1
        returns raw log-probs by default; V0 returned them after temperature and
        penalties, identities here). vLLM returns only the top ``max_logprobs`` tokens
        (plus the sampled one): a candidate outside them gets ``-inf``, probability 0,
        though its true probability may be up to that of the ``max_logprobs``-th likeliest
        token. So a digit or verdict that rare is dropped from the expectation (a judge
        that answers with a score puts its digits on top); raise
        ``generate.vllm.max_logprobs`` (up to the vocabulary size) to make the table exact.
        """
        request = self._vllm.SamplingParams(
            n=1,
            max_tokens=1,
            temperature=1.0,
            top_p=1.0,
            seed=0,  # the sampled token is not used
            logprobs=self.max_logprobs,
            detokenize=False,
        )
        outputs = self.engine.generate(self._token_prompts(prompts), request, use_tqdm=False)
        table = torch.full((len(prompts), len(candidate_ids)), float("-inf"))
        for row, output in enumerate(outputs):
            top = output.outputs[0].logprobs[0]  # {token id: Logprob} of the first token
            for column, token_id in enumerate(candidate_ids):
                if token_id in top:
                    table[row, column] = float(top[token_id].logprob)
        return table

    def close(self) -> None:
        """Shut the engine down and free its GPU memory; idempotent."""
        from congrad.backends.vllm_engine import shutdown_engine

        engine, self.engine = self.engine, None
        if engine is not None:
            shutdown_engine(engine, owns_distributed=self._owns_distributed)

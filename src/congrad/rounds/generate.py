"""Stage 2: sample k responses per prompt from the round's model (self-rewarding).

In: :class:`~congrad.data.records.PromptRecord` rows, a
:class:`~congrad.backends.generation.ModelBackend`
and :class:`~congrad.config.run.GenerateConfig`. Out: one
:class:`~congrad.data.records.Completion` per prompt and sample, id ``<prompt_id>#<i>``.

Each sample's seed is derived from the run seed, the round, the prompt id and the sample
index (hashlib), so a record's random draws do not depend on batching. Completions are
handed to ``on_done`` chunk by chunk, so the caller can log them and resume an
interrupted stage where it stopped. The chunks (one backend batch each) are cut from the
full request list, never from what is left of it: a resumed run batches every record with
the same neighbours as an uninterrupted one, so it writes the same bytes. With several
processes and the HF backend the chunks are spread over the ranks
(:func:`congrad.parallel.distributed.map_in_waves`) and every rank gets every completion, in the
single-process order; vLLM generates on the main process alone.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from congrad.backends.generation import ModelBackend, SamplingParams
from congrad.config.run import GenerateConfig
from congrad.data.records import Completion, PromptRecord
from congrad.parallel.distributed import is_main, map_in_waves
from congrad.util.seeds import stable_seed


def completion_id(prompt_id: str, sample_index: int) -> str:
    return f"{prompt_id}#{sample_index}"


def generate_completions(
    backend: ModelBackend,
    prompts: Sequence[PromptRecord],
    config: GenerateConfig,
    *,
    seed: int,
    round_index: int,
    skip: Collection[str] = (),
    on_done: Callable[[list[Completion]], None] | None = None,
    progress: bool = False,
) -> list[Completion]:
    """Sample ``config.num_samples`` responses for every prompt not in ``skip``.

    ``skip`` holds completion ids already generated (a resumed run); they are not
    returned. Returns the new completions in prompt order.
    """
    requests = [(prompt, index) for prompt in prompts for index in range(config.num_samples)]
    params = SamplingParams(config.max_new_tokens, config.temperature, config.top_p)
    chunk = max(config.batch_size, 1)
    # Why chunks of the FULL list: a padded batch's floats depend on its neighbours (left
    # padding changes the attention shapes), so batching only the records left after a
    # crash could sample a different token and a resumed run would differ from an
    # uninterrupted one. A chunk wholly in ``skip`` is skipped; a partly done one (a crash
    # mid-append) is generated whole, and only its missing records are handed on.
    starts = [
        start
        for start in range(0, len(requests), chunk)
        if any(
            completion_id(prompt.prompt_id, index) not in skip
            for prompt, index in requests[start : start + chunk]
        )
    ]

    def generate_chunk(start: int) -> list[Completion]:
        batch = requests[start : start + chunk]
        texts = [backend.chat_prompt(prompt.prompt) for prompt, _ in batch]
        seeds = [
            stable_seed("generate", seed, round_index, prompt.prompt_id, index)
            for prompt, index in batch
        ]
        generations = backend.generate(texts, params, seeds)
        return [
            Completion(
                completion_id=completion_id(prompt.prompt_id, index),
                prompt_id=prompt.prompt_id,
                lang=prompt.lang,
                prompt=prompt.prompt,
                response=generation.text,
                sample_index=index,
                num_tokens=generation.num_tokens,
                finished=generation.finished,
            )
            for (prompt, index), generation in zip(batch, generations, strict=True)
            if completion_id(prompt.prompt_id, index) not in skip
        ]

    chunks: Any = map_in_waves(starts, generate_chunk)
    if progress and is_main():
        from rich.progress import track

        chunks = track(chunks, description=f"round {round_index}: generating", total=len(starts))
    results: list[Completion] = []
    for _, done in chunks:
        if on_done is not None:
            on_done(done)
        results.extend(done)
    return results

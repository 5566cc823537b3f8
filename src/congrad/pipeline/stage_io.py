"""What the stages of training and of evaluation share: resumable partial logs, the
generation backend of a round, and round 0's multiple-choice accuracy.

In: a :class:`~congrad.pipeline.context.RunContext` and a round. Out: a
:class:`~congrad.data.artifacts.PartialLog` named by the stage's fingerprint, a
:class:`~congrad.backends.generation.ModelBackend`, accuracies per language.
"""

from __future__ import annotations

from typing import Any

from congrad.data.artifacts import PartialLog, read_jsonl
from congrad.evaluation.mcq import accuracy_from_rows
from congrad.pipeline.context import RunContext


def partial_log(context: RunContext, round_index: int, stage: str) -> PartialLog:
    # The fingerprint in the name keeps a partial log from another config from being reused;
    # logs of other fingerprints are stale (the config or an input changed) and removed.
    print_ = context.expected_fingerprint(stage, round_index)
    current = context.folder(round_index) / f"{stage}.{print_}.partial.jsonl"
    for stale in context.folder(round_index).glob(f"{stage}.*.partial.jsonl"):
        if stale != current:
            stale.unlink()
    return PartialLog(current)


def generation_backend(context: RunContext, round_index: int, batch_size: int) -> Any:
    """The generation backend serving round ``round_index``'s starting weights M_{t-1}.

    ``vllm``: the runner's engine cache builds (or reuses) an engine that loads M_{t-1}
    from its folder; no HF model is loaded, only the tokenizer (congrad.backends.vllm_engine)."""
    if context.config.generate.backend == "vllm":
        return context.engines.backend(context, round_index - 1)
    from congrad.backends.generation import HFBackend

    model, tokenizer = context.model_for(round_index)
    return HFBackend(model, tokenizer, batch_size=batch_size)


def mcq_accuracy(context: RunContext, round_index: int) -> dict[str, dict[str, float]]:
    """``{lang: {"accuracy", "correct", "total"}}`` from round ``round_index``'s file."""
    return accuracy_from_rows(read_jsonl(context.folder(round_index) / "eval_mcq.jsonl"))

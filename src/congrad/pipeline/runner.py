"""The self-rewarding CONGRAD loop: rounds of generate -> judge -> pairs -> filter -> train.

In: a validated :class:`~congrad.config.run.RunConfig`. Out: ``<output_dir>/config.yaml``, and
per round ``round_<t>/`` with ``prompts.jsonl``, ``completions.jsonl``,
``judgments.jsonl``, ``pairs.jsonl`` + ``dropped.jsonl``, ``selection.jsonl`` (+
``scores.jsonl`` when gradients were scored), ``model/``, ``ema.safetensors`` and
``train_log.jsonl``, each stage closed by its manifest; ``summary.json`` at the end.
:meth:`Runner.evaluate` adds the evaluation stages (``answers``, ``mcq``, ``verdicts``;
:mod:`congrad.pipeline.eval_stages`), with the seed model's in ``round_0/``.

This is the one module that knows the order of the stages (Algorithm 2, reconstructed
in docs/design.md section 2). A stage is complete when its manifest carries the expected
fingerprint: a hash of the config sections it depends on and the output digests of the
stages it reads. So rerunning skips finished work, an interrupted stage is redone (or
resumed from its partial log: generate, judge), and a stage downstream of changed data
reruns. A changed config is refused, naming the keys, unless ``force`` (``evaluate.*``
keys may change freely). Round 1 keeps every pair whatever the strategy, so its filter
fingerprint ignores the filter settings and all strategies share one round 1.

Several processes (``torchrun`` / ``accelerate launch``, :mod:`congrad.parallel.distributed`): every
rank runs this same loop. The stages in :data:`COLLECTIVE_STAGES` run on all ranks, each
doing its share (HF generation and judging by batches, scoring by batches, training as
DDP); the others run on the main process while the rest wait. The main process alone
writes artifacts and manifests, and all ranks meet at a barrier after every stage, so each
rank sees the same completed stages.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from congrad.config.run import (
    VLLM_RESOURCE_KEYS,
    ConfigError,
    RunConfig,
    config_changes,
    config_to_yaml,
    load_config,
)
from congrad.parallel import distributed
from congrad.pipeline import eval_stages, train_stages
from congrad.pipeline.context import RunContext
from congrad.pipeline.stage_graph import (
    COLLECTIVE_STAGES,
    ENGINE_STAGES,
    STAGES,
    StageNotReady,
)
from congrad.pipeline.summary import build_summary
from congrad.util.atomic import write_text_atomic

StageFunction = Callable[[RunContext, int], dict[str, Any]]
STAGE_FUNCTIONS: dict[str, StageFunction] = {
    "prompts": train_stages.run_prompts,
    "generate": train_stages.run_generate,
    "judge": train_stages.run_judge,
    "pairs": train_stages.run_pairs,
    "filter": train_stages.run_filter,
    "train": train_stages.run_train,
    "answers": eval_stages.run_answers,
    "mcq": eval_stages.run_mcq,
    "verdicts": eval_stages.run_verdicts,
}
"""Each stage's code: reads the round's artifacts, calls the stage's pure core, writes its
files and returns the facts for its manifest."""


def prepare_run_dir(config: RunConfig, *, force: bool = False) -> Path:
    """Create the run folder and write the resolved config; refuse a changed config."""
    folder = Path(config.output_dir)
    saved = folder / "config.yaml"
    if saved.exists():
        try:
            previous = load_config(saved)
        except ConfigError as error:
            raise ConfigError(f"{saved} no longer loads ({error}); use a new output_dir") from None
        # Evaluation settings (another judge, more prompts) never touch training artifacts,
        # and their stages rerun by fingerprint: changing them needs no --force.
        # Nor do the vLLM engine's memory settings (lowered after an out-of-memory error).
        changed = [
            k
            for k in config_changes(previous, config)
            if not k.startswith("evaluate.") and k not in VLLM_RESOURCE_KEYS
        ]
        if changed and not force:
            raise ConfigError(
                f"{folder} was run with a different config; changed keys: {', '.join(changed)}. "
                "Use another output_dir, or --force to rerun the stages these keys affect."
            )
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(saved, config_to_yaml(config))
    return folder


@dataclass
class Runner(RunContext):
    """Runs the stages of one run folder in order, skipping complete ones."""

    timings: dict[tuple[int, str], float] = field(default_factory=dict)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def collective(self, stage: str) -> bool:
        """Whether every rank takes part in ``stage`` (see :data:`COLLECTIVE_STAGES`)."""
        if stage in ENGINE_STAGES and self.config.generate.backend == "vllm":
            return False
        return stage in COLLECTIVE_STAGES

    def run_stage(self, stage: str, round_index: int) -> bool:
        """Run one stage unless complete; returns whether it ran. With several processes,
        every rank calls this in the same order (see the module docstring)."""
        if self.is_complete(stage, round_index):
            return False
        self.expected_fingerprint(stage, round_index)  # raises StageNotReady early
        if stage not in ENGINE_STAGES:
            self.engines.close()  # an engine holds most of the GPU: free it for the HF model
        start = time.perf_counter()
        main = distributed.is_main()
        if main:
            self.folder(round_index).mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        if self.collective(stage) and distributed.launched():
            from congrad.models.offline import is_offline_alias, resolve_model_path

            if is_offline_alias(self.config.model.name_or_path):
                with distributed.main_first():  # one process builds the cached model
                    resolve_model_path(self.config.model.name_or_path)
        if main or self.collective(stage):
            alone = contextlib.nullcontext() if self.collective(stage) else distributed.solo()
            with alone:  # a main-only stage's own collectives must not wait for the others
                facts = STAGE_FUNCTIONS[stage](self, round_index)
        elif stage in ENGINE_STAGES and self.config.generate.backend == "vllm":
            self.release_model()  # the main process's engine may span this rank's GPU (TP)
        seconds = time.perf_counter() - start
        self.timings[(round_index, stage)] = seconds
        if main:
            self.finish(stage, round_index, facts, seconds)
            self.log(f"round {round_index}: {stage} done in {seconds:.1f}s")
        distributed.barrier()  # every rank now sees the manifest
        return True

    def run_all(self) -> dict[str, Any]:
        if self.config.train.schedule == "lcl":
            self.run_stage("mcq", 0)  # the curriculum's language ranking
        for round_index in range(1, self.config.rounds + 1):
            for stage in STAGES:
                self.run_stage(stage, round_index)
        summary = build_summary(self.config)
        if distributed.is_main():
            write_text_atomic(Path(self.config.output_dir) / "summary.json", summary.to_json())
        return summary.to_dict()

    def trained_rounds(self) -> list[int]:
        """Rounds whose training is complete, in order."""
        return [t for t in range(1, self.config.rounds + 1) if self.is_complete("train", t)]

    def evaluate(self, rounds: list[int] | None = None) -> None:
        """Answers (and multiple-choice accuracy) of M_0 and each round's M_t, then the
        judge's verdicts of M_t against M_0. ``rounds`` default: every trained round."""
        if rounds is None:
            rounds = self.trained_rounds()
        untrained = [t for t in rounds if not self.is_complete("train", t)]
        if untrained:
            raise StageNotReady(
                f"round {untrained[0]} has no trained model yet: run `congrad run` first"
            )
        with_mcq = bool(self.config.evaluate.mcq.files)
        for round_index in [0, *rounds]:  # one model load per round for both
            self.run_stage("answers", round_index)
            if with_mcq:
                self.run_stage("mcq", round_index)
        for round_index in rounds:
            self.run_stage("verdicts", round_index)

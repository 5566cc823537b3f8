"""The self-rewarding CONGRAD loop: rounds of generate -> judge -> pairs -> filter -> train.

In: a validated :class:`~congrad.config.run.RunConfig`. Out: ``<output_dir>/config.yaml``, and
per round ``round_<t>/`` with ``prompts.jsonl``, ``completions.jsonl``,
``judgments.jsonl``, ``pairs.jsonl`` + ``dropped.jsonl``, ``selection.jsonl`` (+
``scores.jsonl`` when gradients were scored), ``model/``, ``ema.safetensors`` and
``train_log.jsonl``, each stage closed by its manifest; ``summary.json`` at the end.
:meth:`Runner.evaluate` adds the evaluation stages (``answers``, ``mcq``, ``verdicts``;
:mod:`congrad.pipeline.eval_stages`), with the seed model's in ``round_0/``.

This is the one module that knows the order of the stages (Algorithm 2, reconstructed
in DESIGN.md section 2). A stage is complete when its manifest carries the expected
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
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from congrad.backends.vllm_engine import ENGINE_STAGES, EngineCache
from congrad.config.run import (
    VLLM_RESOURCE_KEYS,
    ConfigError,
    RunConfig,
    config_changes,
    config_to_yaml,
    load_config,
)
from congrad.data.artifacts import fingerprint, read_manifest, round_dir, write_manifest
from congrad.util.atomic import write_text_atomic

STAGES = ("prompts", "generate", "judge", "pairs", "filter", "train")
COLLECTIVE_STAGES = ("generate", "judge", "filter", "train", "answers")
"""Stages every rank of a multi-process run takes part in (generate, judge and answers only
with the HF backend: a vLLM engine spans its own GPUs, tensor-parallel, from the main
process)."""
EVAL_STAGES = ("answers", "mcq", "verdicts")
"""Evaluation (congrad.pipeline.eval_stages): ``answers`` and ``mcq`` of round t use M_t (round 0:
the seed model, in ``round_0/``); ``verdicts`` compares round t's answers with round 0's."""
UPSTREAM = {
    "prompts": (),
    "generate": ("prompts",),
    "judge": ("generate",),
    "pairs": ("judge",),
    "filter": ("pairs",),
    "train": ("filter",),
    "answers": (),
    "mcq": (),
    "verdicts": ("answers",),
}
OUTPUTS = {
    "prompts": ("prompts.jsonl",),
    "generate": ("completions.jsonl",),
    "judge": ("judgments.jsonl",),
    "pairs": ("pairs.jsonl", "dropped.jsonl"),
    "filter": ("selection.jsonl", "scores.jsonl?"),
    "train": ("model/model.safetensors", "ema.safetensors", "train_log.jsonl"),
    "answers": ("eval_answers.jsonl",),
    "mcq": ("eval_mcq.jsonl",),
    "verdicts": ("eval_verdicts.jsonl", "winrates.json"),
}


class StageNotReady(RuntimeError):
    """A stage was asked to run before the stages it reads have completed."""


class StageFailed(RuntimeError):
    """A stage cannot produce its output from its inputs; the message says why and where
    to look. Earlier artifacts are untouched and the stage reruns when asked again."""


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()[:16]


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
class Runner:
    """Runs stages of one run folder, holding at most one model in memory."""

    config: RunConfig
    progress: bool = True
    log: Callable[[str], None] = print
    _model: Any = None
    _tokenizer: Any = None
    _model_round: int | None = None  # the loaded weights are the output of this round
    timings: dict[tuple[int, str], float] = field(default_factory=dict)
    engines: EngineCache = field(default_factory=EngineCache)
    """The live vLLM engine, if any (``generate.backend=vllm``; congrad.backends.vllm_engine)."""

    # -- bookkeeping -------------------------------------------------------------------

    def folder(self, round_index: int) -> Path:
        return round_dir(self.config.output_dir, round_index)

    def _settings(self, stage: str, round_index: int) -> Any:
        c = self.config
        common = {"seed": c.seed, "round": round_index}
        # The vLLM settings that decide what is sampled; none with the hf backend.
        engine = [identity] if (identity := c.generate.engine_identity()) else []
        return {
            "prompts": [common, c.prompts.model_dump(mode="json")],
            "generate": [
                common,
                c.model.model_dump(mode="json"),
                c.generate.model_dump(mode="json", exclude={"vllm"}),
                *engine,
            ],
            "judge": [common, c.judge.model_dump(mode="json"), *engine],
            "pairs": [common],
            # Round 1 keeps every pair whatever the strategy: no filter setting matters, so
            # every strategy's round 1 has one fingerprint (congrad compare shares it).
            "filter": [common, {"strategy": "full"}]
            if round_index == 1
            else [
                common,
                c.filter.model_dump(mode="json"),
                c.ema.model_dump(mode="json"),
                c.train.max_length,
            ],
            "train": [common, c.train.model_dump(mode="json"), c.ema.model_dump(mode="json")],
            **self._eval_settings(common, engine),
        }[stage]

    def _eval_settings(self, common: dict[str, Any], engine: list[Any]) -> dict[str, list[Any]]:
        c, evaluate = self.config, self.config.evaluate
        judge = evaluate.judge
        # What decides a verdict; concurrency, retries, timeout and the cache path do not.
        judge_identity: dict[str, Any] = {"backend": judge.backend, "model": judge.model}
        if judge.backend == "openai":
            judge_identity |= {"temperature": judge.temperature, "max_tokens": judge.max_tokens}
        else:
            judge_identity |= {"mode": judge.mode, "batch_size": judge.batch_size}
            judge_identity |= (
                {"min_mass": judge.min_mass}
                if judge.mode == "logprob"
                else {"max_tokens": judge.max_tokens}
            )
        if judge.backend == "self":
            judge_identity["model"] = c.model.model_dump(mode="json")
        answers = evaluate.model_dump(mode="json", exclude={"judge", "mcq", "bootstrap"})
        answers["languages"] = evaluate.eval_languages(c.prompts.languages)
        return {
            "answers": [common, c.model.model_dump(mode="json"), answers, *engine],
            "mcq": [common, c.model.model_dump(mode="json"), evaluate.mcq.model_dump(mode="json")],
            "verdicts": [common, judge_identity, evaluate.bootstrap, c.prompts.languages],
        }

    def dependencies(self, stage: str, round_index: int) -> list[tuple[int, str]]:
        """The (round, stage) outputs that ``stage`` of ``round_index`` reads."""
        deps = [(round_index, upstream) for upstream in UPSTREAM[stage]]
        if stage in ("generate", "judge", "filter") and round_index > 1:
            deps.append((round_index - 1, "train"))  # the round's starting model M_{t-1}
        if stage in ("answers", "mcq") and round_index >= 1:
            deps.append((round_index, "train"))  # the evaluated model M_t
        if stage == "verdicts":
            deps.append((0, "answers"))  # the seed model's answers
        if stage == "train" and self.config.train.schedule == "lcl":
            deps.append((0, "mcq"))  # the curriculum ranks languages by M_0's accuracy
        return deps

    def expected_fingerprint(self, stage: str, round_index: int) -> str:
        """Hash of the stage's settings and the outputs of the stages it reads."""
        inputs = []
        for dep_round, dep_stage in self.dependencies(stage, round_index):
            manifest = read_manifest(self.folder(dep_round), dep_stage)
            if manifest is None:
                raise StageNotReady(
                    f"round {round_index}: {stage} needs round {dep_round}'s {dep_stage} first"
                )
            inputs.append(manifest["outputs"])
        return fingerprint(stage, self._settings(stage, round_index), inputs)

    def is_complete(self, stage: str, round_index: int) -> bool:
        manifest = read_manifest(self.folder(round_index), stage)
        if manifest is None:
            return False
        try:
            return manifest.get("fingerprint") == self.expected_fingerprint(stage, round_index)
        except StageNotReady:
            return False

    def _finish(self, stage: str, round_index: int, facts: dict[str, Any], seconds: float) -> None:
        folder = self.folder(round_index)
        outputs = {}
        for name in OUTPUTS[stage]:  # a trailing "?" marks a file the stage may not write
            path = folder / name.rstrip("?")
            if name.endswith("?") and not path.exists():
                continue
            outputs[name.rstrip("?")] = _digest(path)
        write_manifest(
            folder,
            stage,
            {
                "round": round_index,
                "fingerprint": self.expected_fingerprint(stage, round_index),
                "outputs": outputs,
                "seconds": round(seconds, 3),
                **facts,
            },
        )

    # -- models ------------------------------------------------------------------------

    def model_for(self, round_index: int) -> tuple[Any, Any]:
        """The weights round ``round_index`` starts from: M_{t-1}."""
        return self.model_after(round_index - 1)

    def model_after(self, wanted: int) -> tuple[Any, Any]:
        """The weights round ``wanted`` trained: M_wanted (0: the seed model)."""
        from congrad.models.loading import load_model

        if self._model_round != wanted:
            self.engines.close()  # never an HF model beside a live vLLM engine
            self._model = self._tokenizer = None
            path = None if wanted == 0 else self.folder(wanted) / "model"
            self._model, self._tokenizer = load_model(
                self.config.model, path, seed=self.config.seed
            )
            self._model_round = wanted
        return self._model, self._tokenizer

    def close(self) -> None:
        """Shut down the live vLLM engine, if any (the HF model goes with the runner)."""
        self.engines.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def release_model(self) -> None:
        """Drop the in-memory HF model and free its GPU memory (before a vLLM engine
        takes the GPU); the next :meth:`model_after` loads it again."""
        if self._model is None:
            return
        from congrad.backends.vllm_engine import free_accelerator_memory

        self._model = self._tokenizer = self._model_round = None
        free_accelerator_memory()

    def set_model_round(self, round_index: int | None) -> None:
        """Record whose output the in-memory weights are (None: mid-training, unusable)."""
        self._model_round = round_index

    # -- running -----------------------------------------------------------------------

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
        from congrad.parallel import distributed
        from congrad.pipeline import eval_stages
        from congrad.pipeline import train_stages as stages

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
            module = eval_stages if stage in EVAL_STAGES else stages
            alone = contextlib.nullcontext() if self.collective(stage) else distributed.solo()
            with alone:  # a main-only stage's own collectives must not wait for the others
                facts = getattr(module, f"run_{stage}")(self, round_index)
        elif stage in ENGINE_STAGES and self.config.generate.backend == "vllm":
            self.release_model()  # the main process's engine may span this rank's GPU (TP)
        seconds = time.perf_counter() - start
        self.timings[(round_index, stage)] = seconds
        if main:
            self._finish(stage, round_index, facts, seconds)
            self.log(f"round {round_index}: {stage} done in {seconds:.1f}s")
        distributed.barrier()  # every rank now sees the manifest
        return True

    def run_all(self) -> dict[str, Any]:
        if self.config.train.schedule == "lcl":
            self.run_stage("mcq", 0)  # the curriculum's language ranking
        for round_index in range(1, self.config.rounds + 1):
            for stage in STAGES:
                self.run_stage(stage, round_index)
        from congrad.parallel.distributed import is_main
        from congrad.pipeline.summary import build_summary

        summary = build_summary(self.config)
        if is_main():
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

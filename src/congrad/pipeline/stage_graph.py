"""The stage graph of a run and the record of which stages are complete.

In: a validated :class:`~congrad.config.run.RunConfig`. Out: the stage order
(:data:`STAGES`, :data:`EVAL_STAGES`), what each stage reads (:data:`UPSTREAM`, and
:meth:`StageGraph.dependencies` across rounds) and writes (:data:`OUTPUTS`), and
:class:`StageGraph`, which says whether a stage of a round is complete and writes its
manifest. No model, no stage code: the runner, the summary and ``congrad compare`` all
ask this one place.

A stage is complete when its manifest (``<stage>.manifest.json``, written last) carries
the expected fingerprint: a hash of the config sections the stage depends on and the
output digests of the stages it reads. So rerunning skips finished work, an interrupted
stage is redone, and a stage downstream of changed data reruns. Round 1 keeps every pair
whatever the strategy, so its filter fingerprint ignores the filter settings and all
strategies share one round 1 (the order of a round: docs/design.md section 2).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from congrad.config.run import RunConfig
from congrad.data.artifacts import fingerprint, read_manifest, round_dir, write_manifest
from congrad.errors import CongradError

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


ENGINE_STAGES = frozenset({"generate", "judge", "answers"})
"""Stages that use the generation backend (a vLLM engine with ``generate.backend=vllm``):
under ``accelerate launch`` they run on the main process only. Any other stage shuts the
engine down before it runs."""


class StageNotReady(CongradError, RuntimeError):
    """A stage was asked to run before the stages it reads have completed."""


class StageFailed(CongradError, RuntimeError):
    """A stage cannot produce its output from its inputs; the message says why and where
    to look. Earlier artifacts are untouched and the stage reruns when asked again."""


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()[:16]


@dataclass
class StageGraph:
    """Which stages of one run folder are complete, and the fingerprints that decide it."""

    config: RunConfig

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

    def finish(self, stage: str, round_index: int, facts: dict[str, Any], seconds: float) -> None:
        """Write the stage's manifest, last: its outputs' digests, fingerprint and facts."""
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

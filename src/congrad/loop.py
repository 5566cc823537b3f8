"""The self-rewarding CONGRAD loop: rounds of generate -> judge -> pairs -> filter -> train.

In: a validated :class:`~congrad.config.RunConfig`. Out: ``<output_dir>/config.yaml``, and
per round ``round_<t>/`` with ``prompts.jsonl``, ``completions.jsonl``,
``judgments.jsonl``, ``pairs.jsonl`` + ``dropped.jsonl``, ``selection.jsonl`` (+
``scores.jsonl`` when gradients were scored), ``model/``, ``ema.safetensors`` and
``train_log.jsonl``, each stage closed by its manifest; ``summary.json`` at the end.

This is the one module that knows the order of the stages (Algorithm 2, reconstructed
in DESIGN.md section 2). A stage is complete when its manifest carries the expected
fingerprint: a hash of the config sections it depends on and the output digests of the
stages it reads. So rerunning skips finished work, an interrupted stage is redone (or
resumed from its partial log: generate, judge), and a stage downstream of changed data
reruns. A changed config is refused, naming the keys, unless ``force``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from congrad.artifacts import fingerprint, read_manifest, round_dir, write_manifest
from congrad.atomic import write_text_atomic
from congrad.config import ConfigError, RunConfig, config_changes, config_to_yaml, load_config

STAGES = ("prompts", "generate", "judge", "pairs", "filter", "train")
UPSTREAM = {
    "prompts": (),
    "generate": ("prompts",),
    "judge": ("generate",),
    "pairs": ("judge",),
    "filter": ("pairs",),
    "train": ("filter",),
}
OUTPUTS = {
    "prompts": ("prompts.jsonl",),
    "generate": ("completions.jsonl",),
    "judge": ("judgments.jsonl",),
    "pairs": ("pairs.jsonl", "dropped.jsonl"),
    "filter": ("selection.jsonl", "scores.jsonl?"),
    "train": ("model/model.safetensors", "ema.safetensors", "train_log.jsonl"),
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
        changed = config_changes(previous, config)
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

    # -- bookkeeping -------------------------------------------------------------------

    def folder(self, round_index: int) -> Path:
        return round_dir(self.config.output_dir, round_index)

    def _settings(self, stage: str, round_index: int) -> Any:
        c = self.config
        common = {"seed": c.seed, "round": round_index}
        return {
            "prompts": [common, c.prompts.model_dump(mode="json")],
            "generate": [
                common,
                c.model.model_dump(mode="json"),
                c.generate.model_dump(mode="json"),
            ],
            "judge": [common, c.judge.model_dump(mode="json")],
            "pairs": [common],
            "filter": [
                common,
                c.filter.model_dump(mode="json"),
                c.ema.model_dump(mode="json"),
                c.train.max_length,
            ],
            "train": [common, c.train.model_dump(mode="json"), c.ema.model_dump(mode="json")],
        }[stage]

    def expected_fingerprint(self, stage: str, round_index: int) -> str:
        """Hash of the stage's settings and the outputs of the stages it reads."""
        inputs = []
        for upstream in UPSTREAM[stage]:
            manifest = read_manifest(self.folder(round_index), upstream)
            if manifest is None:
                raise StageNotReady(f"round {round_index}: stage {stage} needs {upstream} first")
            inputs.append(manifest["outputs"])
        if stage in ("generate", "judge", "filter") and round_index > 1:
            previous = read_manifest(self.folder(round_index - 1), "train")
            if previous is None:
                raise StageNotReady(
                    f"round {round_index}: {stage} needs round {round_index - 1}'s model"
                )
            inputs.append(previous["outputs"])
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
        from congrad.modeling import load_model

        wanted = round_index - 1
        if self._model_round != wanted:
            self._model = self._tokenizer = None
            path = None if wanted == 0 else self.folder(wanted) / "model"
            self._model, self._tokenizer = load_model(
                self.config.model, path, seed=self.config.seed
            )
            self._model_round = wanted
        return self._model, self._tokenizer

    def set_model_round(self, round_index: int | None) -> None:
        """Record whose output the in-memory weights are (None: mid-training, unusable)."""
        self._model_round = round_index

    # -- running -----------------------------------------------------------------------

    def run_stage(self, stage: str, round_index: int) -> bool:
        """Run one stage unless complete; returns whether it ran."""
        if self.is_complete(stage, round_index):
            return False
        self.expected_fingerprint(stage, round_index)  # raises StageNotReady early
        from congrad import stages

        start = time.perf_counter()
        self.folder(round_index).mkdir(parents=True, exist_ok=True)
        facts = getattr(stages, f"run_{stage}")(self, round_index)
        seconds = time.perf_counter() - start
        self.timings[(round_index, stage)] = seconds
        self._finish(stage, round_index, facts, seconds)
        self.log(f"round {round_index}: {stage} done in {seconds:.1f}s")
        return True

    def run_all(self) -> dict[str, Any]:
        for round_index in range(1, self.config.rounds + 1):
            for stage in STAGES:
                self.run_stage(stage, round_index)
        from congrad.summary import build_summary

        summary = build_summary(self.config)
        write_text_atomic(Path(self.config.output_dir) / "summary.json", summary.to_json())
        return summary.to_dict()

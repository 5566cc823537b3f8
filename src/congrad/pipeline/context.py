"""The context every stage runs in: the run's config and folders, its one HF model, its
vLLM engine, and how it reports progress.

In: a validated :class:`~congrad.config.run.RunConfig`. Out: :class:`RunContext`, which
stage code (:mod:`congrad.pipeline.train_stages`, :mod:`congrad.pipeline.eval_stages`)
receives: the round folders and fingerprints of :class:`~congrad.pipeline.stage_graph.StageGraph`,
the weights a round starts from or trained (loaded once, kept until another round's are
wanted) and the vLLM engine cache. The order of stages is not here: that is
:class:`~congrad.pipeline.runner.Runner`'s job, so stage code never imports the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from congrad.pipeline.engine_cache import EngineCache
from congrad.pipeline.stage_graph import StageGraph


@dataclass
class RunContext(StageGraph):
    """One run folder's stage state, holding at most one model in memory."""

    progress: bool = True
    log: Callable[[str], None] = print
    _model: Any = None
    _tokenizer: Any = None
    _model_round: int | None = None  # the loaded weights are the output of this round
    engines: EngineCache = field(default_factory=EngineCache)
    """The live vLLM engine, if any (``generate.backend=vllm``; congrad.pipeline.engine_cache)."""

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

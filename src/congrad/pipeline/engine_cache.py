"""The run's vLLM engine: which model folder it serves, and when it starts and stops.

In: a run context (:class:`EngineHost`: the config, the round folders, the HF model to
release, a log) and the round whose trained weights are wanted (``t - 1`` for round t's
``generate`` and ``judge``: M_{t-1}; ``t`` for round t's evaluation ``answers``: M_t; 0 is
the seed model). Out: a :class:`~congrad.backends.generation.VLLMBackend` whose engine
loaded those weights from their folder, and that engine's shutdown before any stage that
puts the HF model on the GPU.

How engines live (the scale-out design: "reloading the new round's weights each round"):

* **Per-round reload from the folder.** Training writes M_t to ``round_<t>/model``; the
  engine for round t+1 is built from that folder, so each round's sampling uses the
  weights trained the round before. The seed model is its resolved path or hub id
  (``tiny-random``, which exists only in memory, is first saved to ``round_0/model``).
* **A cache of one engine** (:class:`EngineCache`, held by the runner), keyed by model
  folder and engine settings. ``generate`` and ``judge`` of one round ask for the same
  folder (both use M_{t-1}), so they share one engine: one start per round, not two.
  Asking for another folder shuts the live engine down first.
* **Shut down before the HF model.** :meth:`~congrad.pipeline.runner.Runner.run_stage`
  closes the cache before any stage outside
  :data:`~congrad.pipeline.stage_graph.ENGINE_STAGES` runs (``pairs``, ``filter``,
  ``train``, ``mcq``, ``verdicts``), and the cache releases the runner's HF model before
  it builds an engine:
  the training model and an engine that reserves ``gpu_memory_utilization`` of the GPU
  never coexist. The price: the HF model M_{t-1} is reloaded from disk for ``filter``,
  and an engine starts once per round (load the weights, profile memory, capture CUDA
  graphs unless ``enforce_eager``: from tens of seconds to a few minutes for 2-8B
  models), small beside a round's generation and judging.
* **Not taken:** one engine for the whole run put to sleep during training
  (``enable_sleep_mode``, ``sleep(level=2)``, then reloading weights in place). It saves
  the starts, but in-place weight reloading is not one stable API across vLLM versions,
  and a sleeping engine still holds its CUDA context and memory pools beside the trainer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from congrad.backends.vllm_engine import check_main_process, engine_args, generation_config

if TYPE_CHECKING:
    from congrad.backends.generation import VLLMBackend
    from congrad.config.run import RunConfig


class EngineHost(Protocol):
    """What the engine cache needs of the run (:class:`~congrad.pipeline.context.RunContext`)."""

    @property
    def config(self) -> RunConfig: ...

    @property
    def log(self) -> Callable[[str], None]: ...

    def folder(self, round_index: int) -> Path: ...

    def release_model(self) -> None: ...


def model_folder(runner: EngineHost, trained_round: int) -> str:
    """Where the weights M_trained_round are: ``round_<t>/model``, or for M_0 the seed
    model's folder or hub id (``tiny-random`` saved to ``round_0/model`` first)."""
    config = runner.config
    if trained_round > 0:
        return str(runner.folder(trained_round) / "model")
    from congrad.models.loading import TINY_RANDOM, seed_model_source

    if config.model.name_or_path == TINY_RANDOM:
        return str(_saved_tiny_random(runner))
    return seed_model_source(config.model.name_or_path)


def _saved_tiny_random(runner: EngineHost) -> Path:
    """The tiny random seed model (built in memory from the run seed) as a model folder,
    written once, atomically, to ``round_0/model``."""
    folder = runner.folder(0) / "model"
    if not (folder / "config.json").exists():  # save_round_model publishes a whole folder
        from congrad.models.loading import pick_device, resolve_dtype
        from congrad.models.tiny import tiny_causal_lm
        from congrad.rounds.train import save_round_model

        config = runner.config
        dtype = resolve_dtype(config.model.dtype, pick_device())
        model, tokenizer = tiny_causal_lm(seed=config.seed, dtype=dtype)
        save_round_model(model, tokenizer, folder)
    return folder


class EngineCache:
    """At most one live vLLM engine, keyed by model folder and engine settings."""

    def __init__(self) -> None:
        self._backend: VLLMBackend | None = None
        self._key: tuple[str, str] | None = None

    def backend(self, runner: EngineHost, trained_round: int) -> VLLMBackend:
        """The engine serving M_trained_round: the live one when it serves that folder,
        else a new one (the live engine shut down and the runner's HF model released)."""
        from congrad.backends.generation import VLLMBackend, eos_token_ids
        from congrad.models.loading import load_tokenizer

        config = runner.config
        path = model_folder(runner, trained_round)
        args = engine_args(config)
        key = (path, json.dumps(args, sort_keys=True))
        if self._backend is not None and self._key == key:
            return self._backend
        self.close()
        check_main_process()
        runner.release_model()
        tokenizer = load_tokenizer(config.model, path)
        eos_ids = eos_token_ids(tokenizer, generation_config(path))
        runner.log(
            f"starting a vLLM engine on {path} "
            f"(tensor parallel {args['tensor_parallel_size']}, dtype {args['dtype']})"
        )
        self._backend = VLLMBackend(path, tokenizer, engine_args=args, eos_ids=eos_ids)
        self._key = key
        return self._backend

    def close(self) -> None:
        """Shut the live engine down, freeing its GPU memory; a no-op when none is live."""
        backend, self._backend, self._key = self._backend, None, None
        if backend is not None:
            backend.close()

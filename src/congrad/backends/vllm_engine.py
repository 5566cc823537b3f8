"""vLLM engines for generation, self-judging and evaluation answers, one model folder each.

In: a :class:`~congrad.pipeline.runner.Runner` and the round whose trained weights are wanted
(``t - 1`` for round t's ``generate`` and ``judge``: M_{t-1}; ``t`` for round t's
evaluation ``answers``: M_t; 0 is the seed model). Out: a
:class:`~congrad.backends.generation.VLLMBackend` whose engine loaded those weights from their
folder, and that engine's shutdown before any stage that puts the HF model on the GPU.

How engines live (issue #5: "reloading the new round's weights each round"):

* **Per-round reload from the folder.** Training writes M_t to ``round_<t>/model``; the
  engine for round t+1 is built from that folder, so each round's sampling uses the
  weights trained the round before. The seed model is its resolved path or hub id
  (``tiny-random``, which exists only in memory, is first saved to ``round_0/model``).
* **A cache of one engine** (:class:`EngineCache`, held by the runner), keyed by model
  folder and engine settings. ``generate`` and ``judge`` of one round ask for the same
  folder (both use M_{t-1}), so they share one engine: one start per round, not two.
  Asking for another folder shuts the live engine down first.
* **Shut down before the HF model.** :meth:`Runner.run_stage` closes the cache before any
  stage outside :data:`ENGINE_STAGES` runs (``pairs``, ``filter``, ``train``, ``mcq``,
  ``verdicts``), and the cache releases the runner's HF model before it builds an engine:
  the training model and an engine that reserves ``gpu_memory_utilization`` of the GPU
  never coexist. The price: the HF model M_{t-1} is reloaded from disk for ``filter``,
  and an engine starts once per round (load the weights, profile memory, capture CUDA
  graphs unless ``enforce_eager``: from tens of seconds to a few minutes for 2-8B
  models), small beside a round's generation and judging.
* **Not taken:** one engine for the whole run put to sleep during training
  (``enable_sleep_mode``, ``sleep(level=2)``, then reloading weights in place). It saves
  the starts, but in-place weight reloading is not one stable API across vLLM versions,
  and a sleeping engine still holds its CUDA context and memory pools beside the trainer.

Multi-process runs (``accelerate launch``): vLLM runs on the main process only, sharding
the model over ``generate.vllm.tensor_parallel_size`` GPUs of that machine; the stages in
:data:`ENGINE_STAGES` must run on rank 0 while the other ranks, their HF models released
(:meth:`Runner.release_model`), wait. Building an engine on another rank is refused
(:func:`check_main_process`). An engine started while torch.distributed is already set
up (by accelerate) leaves that process group alone on shutdown. Data-parallel generation
(an engine per GPU, each on a shard of the prompts) is out of scope.

Reproducibility: every request carries its record's seed, so a resumed stage asks for
the same samples. vLLM batches requests itself and its kernels are not batch-invariant,
so a token sampled near a tie of probabilities may differ between a resumed and an
uninterrupted run, or between vLLM versions and ``tensor_parallel_size`` values; the
``hf`` backend is bit-reproducible, vLLM is reproducible per record up to that.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from congrad.backends.generation import VLLMBackend
    from congrad.config.run import RunConfig
    from congrad.pipeline.runner import Runner

ENGINE_STAGES = frozenset({"generate", "judge", "answers"})
"""Stages that use the generation backend (a vLLM engine with ``generate.backend=vllm``):
under ``accelerate launch`` they run on the main process only. Any other stage shuts the
engine down before it runs."""


class VLLMUnavailable(RuntimeError):
    """``generate.backend=vllm`` was asked for where vLLM cannot run."""


def _missing(reason: str = "") -> VLLMUnavailable:
    return VLLMUnavailable(
        f"generate.backend=vllm needs the vllm package on a CUDA machine{reason}; "
        "install it (pip install vllm) or use generate.backend=hf"
    )


def import_vllm() -> Any:
    """The ``vllm`` module, or :class:`VLLMUnavailable` saying what to do."""
    try:
        import vllm
    except ImportError as error:
        raise _missing(f" ({error})") from error
    return vllm


def check_vllm_available(config: RunConfig) -> None:
    """Before any stage runs: refuse ``generate.backend=vllm`` without vLLM installed."""
    if config.generate.backend == "vllm" and not _vllm_importable():
        raise _missing()


def _vllm_importable() -> bool:
    if "vllm" in sys.modules:  # imported already (or blocked with None)
        return sys.modules["vllm"] is not None
    return importlib.util.find_spec("vllm") is not None


def check_main_process() -> None:
    """Refuse to build an engine on a process other than the main one (rank 0)."""
    rank = int(os.environ.get("RANK", "0") or 0)
    if rank != 0:
        raise VLLMUnavailable(
            f"generate.backend=vllm: this is process rank {rank}; the vLLM engine runs on "
            "the main process only (rank 0), sharding the model over "
            "generate.vllm.tensor_parallel_size GPUs. Run the "
            f"{', '.join(sorted(ENGINE_STAGES))} stages on rank 0 while the others wait."
        )


def engine_args(config: RunConfig) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` (besides ``model``, ``tokenizer``) from the config."""
    from congrad.models.loading import pick_device, resolve_dtype

    settings = config.generate.vllm
    dtype: str | None = settings.dtype
    if dtype is None:  # what the hf backend would use on this machine
        dtype = str(resolve_dtype(config.model.dtype, pick_device())).removeprefix("torch.")
    args: dict[str, Any] = {
        "tensor_parallel_size": settings.tensor_parallel_size,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "enforce_eager": settings.enforce_eager,
        "dtype": dtype,
        "seed": config.seed,
        "trust_remote_code": config.model.trust_remote_code,
        "max_logprobs": settings.max_logprobs,
    }
    if settings.max_model_len is not None:
        args["max_model_len"] = settings.max_model_len
    return {**args, **settings.engine_args}


def model_folder(runner: Runner, trained_round: int) -> str:
    """Where the weights M_trained_round are: ``round_<t>/model``, or for M_0 the seed
    model's folder or hub id (``tiny-random`` saved to ``round_0/model`` first)."""
    config = runner.config
    if trained_round > 0:
        return str(runner.folder(trained_round) / "model")
    from congrad.models.loading import TINY_RANDOM, seed_model_source

    if config.model.name_or_path == TINY_RANDOM:
        return str(_saved_tiny_random(runner))
    return seed_model_source(config.model.name_or_path)


def _saved_tiny_random(runner: Runner) -> Path:
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


def _generation_config(path: str) -> Any:
    """The model's generation config (its end-of-turn ids), or None when it has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return None


class EngineCache:
    """At most one live vLLM engine, keyed by model folder and engine settings."""

    def __init__(self) -> None:
        self._backend: VLLMBackend | None = None
        self._key: tuple[str, str] | None = None

    def backend(self, runner: Runner, trained_round: int) -> VLLMBackend:
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
        eos_ids = eos_token_ids(tokenizer, _generation_config(path))
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


def distributed_is_set_up() -> bool:
    """Whether torch.distributed has a process group in this process (accelerate's)."""
    import torch

    return bool(torch.distributed.is_available() and torch.distributed.is_initialized())


def shutdown_engine(engine: Any, *, owns_distributed: bool) -> None:
    """Stop a ``vllm.LLM`` and free its GPU memory.

    vLLM has no single documented call for this across versions: ``LLM.shutdown()`` where
    it exists, else the V1 engine core's ``shutdown()``; then, when torch.distributed was
    not set up before the engine (``owns_distributed``), vLLM's
    ``cleanup_dist_env_and_memory`` tears down the model-parallel groups it created in
    this process. A process group that existed before (accelerate's) is left alone.
    Last, the CUDA cache is emptied.
    """
    stop = getattr(engine, "shutdown", None)
    if not callable(stop):
        core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
        stop = getattr(core, "shutdown", None)
    if callable(stop):
        stop()
    del engine, stop
    if owns_distributed:
        try:
            from vllm.distributed import cleanup_dist_env_and_memory
        except ImportError:  # vLLM before 0.6 lacks it; its finalizers free the engine
            pass
        else:
            cleanup_dist_env_and_memory()
    free_accelerator_memory()


def free_accelerator_memory() -> None:
    """Collect garbage and return cached CUDA blocks to the driver (no-op on CPU)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

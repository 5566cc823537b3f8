"""vLLM engine helpers: import, engine arguments, the main-process check and shutdown.

In: the run config (:func:`engine_args`), a model folder (:func:`generation_config`), a live
``vllm.LLM`` (:func:`shutdown_engine`). Out: what :class:`~congrad.backends.generation.VLLMBackend`
and the run's engine cache (:mod:`congrad.pipeline.engine_cache`, which decides when an
engine starts and stops) need. vLLM itself is imported only when an engine is built.

Multi-process runs (``accelerate launch``): vLLM runs on the main process only, sharding
the model over ``generate.vllm.tensor_parallel_size`` GPUs of that machine; building an
engine on another rank is refused (:func:`check_main_process`). An engine started while
torch.distributed is already set up (by accelerate) leaves that process group alone on
shutdown. Data-parallel generation (an engine per GPU, each on a shard of the prompts) is
out of scope.

Reproducibility: every request carries its record's seed, so a resumed stage asks for
the same samples. vLLM batches requests itself and its kernels are not batch-invariant,
so a token sampled near a tie of probabilities may differ between a resumed and an
uninterrupted run, or between vLLM versions and ``tensor_parallel_size`` values; the
``hf`` backend is bit-reproducible, vLLM is reproducible per record up to that.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any

from congrad.errors import CongradError

if TYPE_CHECKING:
    from congrad.config.run import RunConfig


class VLLMUnavailable(CongradError, RuntimeError):
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
            "answers, generate and judge stages on rank 0 while the others wait."
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


def generation_config(path: str) -> Any:
    """The model's generation config (its end-of-turn ids), or None when it has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return None


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
